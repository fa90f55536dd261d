"""Rendering records: text (the version-2 line), JSON Lines, CSV and aligned tables."""

from __future__ import annotations

import csv
import io
import json

from .errors import ConfigError
from .records import NUMERIC_FIELDS, TIME_FIELDS, V2_FIELDS, Record, format_time

FORMATS = ("text", "json", "csv", "table")


def _text(value, field: str) -> str:
    if value is None:
        return "-"
    if field in TIME_FIELDS:
        return format_time(value)
    return str(value)


class Formatter:
    """Turns records into lines of one format. ``finish()`` returns what a format holds back (tables)."""

    def __init__(self, fmt: str = "text", fields=None, header: bool = False):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; formats are: {', '.join(FORMATS)}")
        self.fmt = fmt
        self.fields = tuple(fields or V2_FIELDS)
        self.header = header
        self._rows: list[list[str]] = []

    def start(self) -> list[str]:
        """Lines that open the output (a header line where the format has one)."""
        if self.fmt == "csv":
            return [self._csv_line(self.fields)]
        if self.fmt == "text" and self.header:
            return [" ".join(self.fields)]
        return []

    def lines(self, records: list[Record]) -> list[str]:
        fields = self.fields
        if self.fmt == "text":
            return [" ".join([_text(r.get(f), f) for f in fields]) for r in records]
        if self.fmt == "json":
            return [self._json(r) for r in records]
        if self.fmt == "csv":
            return [self._csv_line([_text(r.get(f), f) for f in fields]) for r in records]
        self._rows.extend([_text(r.get(f), f) for f in fields] for r in records)
        return []

    def render(self, batch):
        """The batch's lines as chunks of bytes by the compiled text kernel, or None where it does not apply."""
        if batch.compiled and self.fmt == "text" and self.fields == V2_FIELDS:
            from .fast.text import text_v2_chunks

            return text_v2_chunks(batch)
        return None

    def finish(self) -> list[str]:
        if self.fmt != "table":
            return []
        from tabulate import tabulate

        align = ["right" if f in NUMERIC_FIELDS or f in TIME_FIELDS else "left" for f in self.fields]
        text = tabulate(self._rows, headers=list(self.fields), tablefmt="simple",
                        disable_numparse=True, colalign=align)
        self._rows = []
        return text.split("\n")

    def _json(self, r: Record) -> str:
        parts = []
        for f in self.fields:
            v = r.get(f)
            if v is None:
                s = "null"
            elif f in TIME_FIELDS:
                s = format_time(v)          # a JSON number, written with all its digits
            elif f in NUMERIC_FIELDS:
                s = str(int(v))
            else:
                s = json.dumps(v, ensure_ascii=False)
            parts.append(f"{json.dumps(f)}: {s}")
        return "{" + ", ".join(parts) + "}"

    @staticmethod
    def _csv_line(values) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(values)
        return buf.getvalue()
