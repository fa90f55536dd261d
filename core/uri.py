"""Source and sink addresses: ``scheme:rest`` URIs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.S)


@dataclass(frozen=True)
class URI:
    """A parsed ``scheme:rest`` address.

    ``rest`` is everything after the first colon, untouched (the pcap source uses
    it as a path or glob, where ``?`` is a wildcard). ``netloc``, ``path`` and
    ``query`` are the usual URL parts for plugins whose URIs are URLs.
    """

    text: str
    scheme: str
    rest: str
    netloc: str = ""
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "URI":
        m = _SCHEME.match(text)
        if not m or len(m.group(1)) < 2:  # one letter would be a Windows drive
            raise ConfigError(f"{text!r} is not a URI: expected SCHEME:..., e.g. pcap:trace.pcap or stdout:")
        scheme, rest = m.group(1).lower(), m.group(2)
        parts = urlsplit(text)
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        except ValueError as e:  # pragma: no cover - parse_qsl is lenient
            raise ConfigError(f"{text!r}: bad query string: {e}") from None
        return cls(text=text, scheme=scheme, rest=rest, netloc=parts.netloc, path=parts.path, query=query)

    def __str__(self) -> str:
        return self.text


#: Query keys that hold secrets: refused in any URI (they would show in argv, ps and logs).
SECRET_QUERY_KEYS = frozenset(("password", "passwd", "pass", "token", "secret", "secret_key", "secretkey",
                               "secret_id", "secretid", "api_key", "apikey", "key", "access_key",
                               "accesskey", "session_token", "auth", "authorization", "signature"))


def refuse_secrets(uri: URI, env_hint: str) -> None:
    """Raise ConfigError when ``uri`` carries a credential (user:password@, or a secret query key).

    ``env_hint`` says where the secret goes instead, e.g. ``"FLOWLOG_ES_API_KEY or
    FLOWLOG_ES_USER/FLOWLOG_ES_PASSWORD"``. The message never repeats the secret.
    """
    netloc = uri.netloc
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        what = "a password" if ":" in userinfo else "a user name"
        raise ConfigError(f"{uri.scheme}: URI carries {what} before '@': credentials are never given in a URI "
                          f"(it shows in the process list and logs); set {env_hint} in the environment")
    bad = sorted(k for k in uri.query if k.lower().replace("-", "_") in SECRET_QUERY_KEYS)
    if bad:
        raise ConfigError(f"{uri.scheme}: URI carries a secret in its query ({', '.join(bad)}=...): credentials are "
                          f"never given in a URI; set {env_hint} in the environment")


def redact(text: str) -> str:
    """A URI as it may be shown: any user information and secret query values replaced by ``***``."""
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if k.lower().replace("-", "_") in SECRET_QUERY_KEYS else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in [pair.partition("=")])
    return parts._replace(netloc=netloc, query=query).geturl()
