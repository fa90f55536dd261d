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
