"""The ``cos`` sink: gzip'd flow log files in Tencent Cloud Object Storage (COS).

``cos://BUCKET-APPID.REGION/PREFIX/`` writes one object per batch (one window and interface),
through COS's S3-compatible API with boto3: a header line of field names, then one text
record per line, gzip'd. Keys are laid out like the clouds' own flow-log delivery to object
storage::

    PREFIX/ACCOUNT/flowlogs/REGION/YYYY/MM/DD/ACCOUNT_flowlogs_REGION_INTERFACE_YYYYMMDDTHHmmZ_HASH.log.gz

or, with ``?layout=hive``, as partitions that query engines discover::

    PREFIX/account_id=ACCOUNT/region=REGION/year=YYYY/month=MM/day=DD/hour=HH/<same file name>

The date is the window start's (UTC); HASH comes from the batch's id, which stays the same
over retries and restarts, so a retry overwrites its object instead of adding a second one.

Query options: ``endpoint=URL`` (default ``https://cos.REGION.myqcloud.com``),
``addressing=virtual|path`` (virtual-host by default, path with an endpoint of one's own),
``layout=cloud|hive``, ``timeout=SECONDS``. Credentials come from ``TENCENTCLOUD_SECRET_ID``
and ``TENCENTCLOUD_SECRET_KEY`` (``TENCENTCLOUD_SESSION_TOKEN`` for temporary keys), never from
the URI. Needs boto3: ``pip install 'flowlog[cos]'``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import time
from urllib.parse import urlsplit

from flowlog.core.api import Answer, BatchMeta, DeliverySink, SinkOptions, Verdict
from flowlog.core.errors import ConfigError
from flowlog.core.formats import Formatter
from flowlog.core.hookspecs import hookimpl
from flowlog.core.records import V2_FIELDS
from flowlog.core.uri import URI, refuse_secrets

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"
ENV_SESSION_TOKEN = "TENCENTCLOUD_SESSION_TOKEN"
ENV_HINT = f"{ENV_SECRET_ID} and {ENV_SECRET_KEY} (and {ENV_SESSION_TOKEN} for temporary keys)"

QUERY_KEYS = ("endpoint", "addressing", "layout", "timeout")
LAYOUTS = ("cloud", "hive")
#: an account of ``-`` (none configured) in object keys
NO_ACCOUNT = "unknown"

_BUCKET = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[0-9]+$")
_REGION = re.compile(r"^[a-z]+(?:-[a-z0-9]+)+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

#: S3 error codes worth a retry (throttling, a busy or failing server, a body damaged in transit)
RETRY_CODES = frozenset(("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                         "ServiceUnavailable", "InternalError", "InternalServerError", "RequestTimeout",
                         "BadDigest", "OperationAborted"))
SPLIT_CODES = frozenset(("EntityTooLarge",))


@hookimpl
def register_sinks(register):
    register(CosSink)


def safe(text: str) -> str:
    """A key component: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return _UNSAFE.sub("_", text) or "_"


def object_key(prefix: str, layout: str, region: str, meta: BatchMeta) -> str:
    """The object key of a batch: deterministic in the batch's id, window, interface and account."""
    account = safe(meta.account_id) if meta.account_id and meta.account_id != "-" else NO_ACCOUNT
    t = time.gmtime(meta.start)
    iface = safe(meta.interface_id)
    digest = hashlib.sha256(meta.batch_id.encode()).hexdigest()[:16]
    name = (f"{account}_flowlogs_{region}_{iface}_{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}{t.tm_min:02d}Z_{digest}.log.gz")
    if layout == "hive":
        folder = (f"account_id={account}/region={region}/year={t.tm_year:04d}/month={t.tm_mon:02d}/"
                  f"day={t.tm_mday:02d}/hour={t.tm_hour:02d}")
    else:
        folder = f"{account}/flowlogs/{region}/{t.tm_year:04d}/{t.tm_mon:02d}/{t.tm_mday:02d}"
    return f"{prefix}/{folder}/{name}" if prefix else f"{folder}/{name}"


def classify_error(e: BaseException, items: int) -> Answer:
    """What a boto3/botocore exception from put_object means for the delivery layer."""
    from botocore import exceptions as bx

    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {}) or {}
        meta = e.response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code", "") or "")
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        message = " ".join(str(err.get("Message", "") or "").split())[:300]
        rid = (meta.get("HTTPHeaders") or {}).get("x-cos-request-id") or meta.get("RequestId")
        what = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "") + \
            (f" (request id {rid})" if rid else "")
        retry_after = None
        ra = (meta.get("HTTPHeaders") or {}).get("retry-after")
        if ra:
            try:
                retry_after = max(0.0, float(ra))
            except ValueError:
                pass
        if code in RETRY_CODES or status in (408, 429) or status >= 500:
            return Answer(Verdict.RETRY, f"cos: {what}", retry_after=retry_after)
        if code in SPLIT_CODES or status == 413:
            if items > 1:
                return Answer(Verdict.SPLIT, f"cos: {what}")
            return Answer(Verdict.FAIL, f"cos: one record is larger than the object store takes ({what})")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "RequestTimeTooSkewed", "InvalidSecurity"):
            return Answer(Verdict.FAIL, f"cos: authentication failed ({what}); check {ENV_SECRET_ID}, "
                                        f"{ENV_SECRET_KEY}, {ENV_SESSION_TOKEN} and the clock")
        if code == "NoSuchBucket" or status == 404:
            return Answer(Verdict.FAIL, f"cos: no such bucket ({what}); buckets are named BUCKET-APPID")
        if code == "AccessDenied" or status == 403:
            return Answer(Verdict.FAIL, f"cos: access denied ({what}); the key needs permission to put objects")
        return Answer(Verdict.FAIL, f"cos: upload refused ({what})")
    if isinstance(e, bx.ParamValidationError):
        return Answer(Verdict.FAIL, f"cos: {' '.join(str(e).split())}")
    if isinstance(e, bx.BotoCoreError):
        # connection refused or cut, timeouts, proxy and TLS errors: the network, try again
        return Answer(Verdict.RETRY, f"cos: {' '.join(str(e).split())[:300]}")
    raise e


class CosSink(DeliverySink):
    """Gzip'd flow log files in Tencent Cloud Object Storage."""

    scheme = "cos"
    description = "Tencent Cloud Object Storage: cos://BUCKET-APPID.REGION/PREFIX/ (needs flowlog[cos])"
    #: one object per batch: a window of one interface in one object, unless it is very large
    max_items = 500_000
    max_bytes = 64 << 20

    def __init__(self, uri: URI, options: SinkOptions):
        super().__init__(uri, options)
        refuse_secrets(uri, ENV_HINT)
        example = "cos://flowlogs-1250000000.ap-guangzhou/vpc/"
        if not uri.rest.startswith("//") or "." not in uri.netloc:
            raise ConfigError(f"{uri.text!r}: expected cos://BUCKET-APPID.REGION/PREFIX/, e.g. {example}")
        unknown = sorted(set(uri.query) - set(QUERY_KEYS))
        if unknown:
            raise ConfigError(f"cos: unknown URI option {', '.join(unknown)}; options are: {', '.join(QUERY_KEYS)}")
        self.bucket, _, self.region = uri.netloc.partition(".")
        if not _BUCKET.match(self.bucket):
            raise ConfigError(f"cos: {self.bucket!r} is not a COS bucket name: COS buckets are BUCKET-APPID "
                              f"(lower-case letters, digits and '-', then the AppID), e.g. {example}")
        if not _REGION.match(self.region):
            raise ConfigError(f"cos: {self.region!r} is not a COS region (e.g. ap-guangzhou); "
                              f"expected cos://BUCKET-APPID.REGION/PREFIX/")
        self.prefix = "/".join(p for p in uri.path.split("/") if p)
        self.layout = uri.query.get("layout", "cloud")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"cos: ?layout={self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        endpoint = uri.query.get("endpoint")
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"cos: ?endpoint={endpoint!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
            if parts.username or parts.password:
                raise ConfigError(f"cos: the endpoint carries credentials; set {ENV_HINT} in the environment")
            self.endpoint = endpoint.rstrip("/")
        else:
            self.endpoint = f"https://cos.{self.region}.myqcloud.com"
        self.addressing = uri.query.get("addressing", "path" if endpoint else "virtual")
        if self.addressing not in ("path", "virtual"):
            raise ConfigError(f"cos: ?addressing={self.addressing!r}: expected path or virtual")
        try:
            self.timeout = float(uri.query.get("timeout", 60))
            if not self.timeout > 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"cos: ?timeout={uri.query['timeout']!r}: expected seconds, e.g. 60") from None
        self.fields = tuple(options.fields or V2_FIELDS)
        self._formatter = Formatter("text", self.fields)
        self.header = " ".join(self.fields)
        self._client = None

    def open(self) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("cos: needs the boto3 package: pip install 'flowlog[cos]'") from None
        secret_id = os.environ.get(ENV_SECRET_ID, "").strip()
        secret_key = os.environ.get(ENV_SECRET_KEY, "").strip()
        token = os.environ.get(ENV_SESSION_TOKEN, "").strip() or None
        if not secret_id or not secret_key:
            missing = " and ".join(n for n, v in ((ENV_SECRET_ID, secret_id), (ENV_SECRET_KEY, secret_key)) if not v)
            raise ConfigError(f"cos: {missing} not set: set {ENV_HINT} in the environment")
        settings = dict(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing},
            retries={"total_max_attempts": 1},      # the delivery layer retries, with its own backoff
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
            user_agent_extra="flowlog",
        )
        try:
            # boto3 >= 1.36 adds CRC checksums to every upload by default, which COS does not take;
            # uploads carry Content-MD5 instead
            config = Config(request_checksum_calculation="when_required",
                            response_checksum_validation="when_required", **settings)
        except TypeError:   # an older botocore, which sends no such checksum anyway
            config = Config(**settings)
        try:
            # credentials given explicitly: no AWS_* variable or ~/.aws file changes who writes, or where
            session = boto3.session.Session(aws_access_key_id=secret_id, aws_secret_access_key=secret_key,
                                            aws_session_token=token, region_name=self.region)
            self._client = session.client("s3", endpoint_url=self.endpoint, config=config)
        except Exception as e:  # botocore's configuration errors (a bad AWS_PROFILE, a CA bundle not found)
            raise ConfigError(f"cos: cannot set up the S3 client: {' '.join(str(e).split())}") from None

    def encode(self, record) -> bytes:
        return self._formatter.lines([record])[0].encode()

    def key(self, meta: BatchMeta) -> str:
        return object_key(self.prefix, self.layout, self.region, meta)

    def body(self, items: list[bytes]) -> bytes:
        """The object's bytes: the header line and one record per line, gzip'd (same bytes every time)."""
        text = b"\n".join([self.header.encode(), *items]) + b"\n"
        return gzip.compress(text, compresslevel=6, mtime=0)

    def send(self, items: list[bytes], meta: BatchMeta) -> Answer:
        body = self.body(items)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.key(meta), Body=body, ContentMD5=md5,
                                    ContentType="application/gzip")
        except Exception as e:  # botocore's exceptions, classified; anything else is a bug and re-raised
            return classify_error(e, len(items))
        return Answer(Verdict.OK)
