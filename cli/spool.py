"""``flowlog spool``: what waits in the spool of the network sinks; send it now, or drop it."""

from __future__ import annotations

import json
import sys
import time

import click

from flowlog.core.api import DeliverySink, SinkOptions
from flowlog.core.delivery import Courier, DeliveryOptions, finish
from flowlog.core.errors import FlowlogError
from flowlog.core.spool import SpoolBusy, SpoolDir, default_root, scan
from flowlog.core.uri import URI

_SPOOL_HELP = ("The spool directory (default: $FLOWLOG_SPOOL, else $XDG_STATE_HOME/flowlog/spool, "
               "else ~/.local/state/flowlog/spool).")


def _error(message: str):
    from flowlog.cli.main import UserError

    return UserError(message)


def _say(message: str) -> None:
    click.echo(f"flowlog: {message}", err=True)


def _root(ctx: click.Context, spool_dir: str | None):
    from pathlib import Path

    if spool_dir:
        return Path(spool_dir).expanduser()
    parent = ctx.find_object(dict) or {}
    return parent.get("root") or default_root()


def _scan(root) -> list[SpoolDir]:
    try:
        return scan(root)
    except FlowlogError as e:
        raise _error(str(e)) from None


def _select(dirs: list[SpoolDir], sink: str | None, root) -> list[SpoolDir]:
    if sink is None:
        return dirs
    found = [d for d in dirs if sink in (d.uri, d.name, str(d.spool.path))]
    if not found:
        known = ", ".join(d.uri for d in dirs) or "none"
        raise _error(f"no sink {sink!r} in the spool {root} (sinks there: {known})")
    return found


def _when(start: int | None) -> str:
    if start is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))


def _row(d: SpoolDir) -> dict:
    entries = d.spool.entries
    rejected = d.spool.rejected()
    return {"sink": d.uri, "directory": d.name, "batches": len(entries),
            "records": sum(e.records for e in entries), "bytes": d.spool.bytes,
            "oldest_window": min((e.start for e in entries), default=None),
            "rejected_batches": rejected.batches, "rejected_records": rejected.records}


@click.group(invoke_without_command=True)
@click.option("--spool", "spool_dir", metavar="DIR", help=_SPOOL_HELP)
@click.pass_context
def spool(ctx, spool_dir):
    """Show the batches waiting for network sinks; send them now, or drop them.

    \b
    flowlog spool                       what waits, per sink
    flowlog spool retry                 send it now
    flowlog spool drop SINK --yes       delete one sink's batches
    """
    ctx.ensure_object(dict)["root"] = _root(ctx, spool_dir)
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@spool.command("list")
@click.option("--spool", "spool_dir", metavar="DIR", help=_SPOOL_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sink instead of a table.")
@click.pass_context
def list_command(ctx, spool_dir=None, as_json=False):
    """List each sink's spool: batches, records, bytes, oldest window, rejected records."""
    root = _root(ctx, spool_dir)
    rows = [_row(d) for d in _scan(root)]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    if not rows:
        _say(f"nothing waits: the spool {root} holds no sink")
        return
    from tabulate import tabulate

    table = [(r["sink"], r["directory"], r["batches"], r["records"], r["bytes"], _when(r["oldest_window"]),
              r["rejected_records"]) for r in rows]
    click.echo(tabulate(table, headers=["sink", "directory", "batches", "records", "bytes", "oldest window",
                                        "rejected"], tablefmt="simple", disable_numparse=True))


def _rebuild(d: SpoolDir, root, drain_timeout: float) -> Courier:
    """The sink a spool directory belongs to, from its sink.json, wrapped for delivery."""
    from flowlog.core.plugins import get_registry

    info = d.info
    try:
        uri = URI.parse(str(info["uri"]))
        scheme = str(info.get("scheme") or uri.scheme)
        opts = info.get("options") or {}
        options = SinkOptions(format=opts.get("format", "text"),
                              fields=tuple(opts["fields"]) if opts.get("fields") else None,
                              header=bool(opts.get("header")), extra=dict(opts.get("extra") or {}),
                              window=int(info.get("window") or 60))
    except (KeyError, TypeError, ValueError) as e:
        raise _error(f"{d.spool.path}/sink.json is damaged ({type(e).__name__}); "
                     f"'flowlog spool drop' can remove the directory's batches") from None
    sink = get_registry().sink(scheme).cls(uri, options)
    if not isinstance(sink, DeliverySink):
        raise _error(f"{d.uri}: the {scheme}: sink is not a network sink; it has nothing to send from a spool")
    return Courier(sink, DeliveryOptions(spool=root, drain_timeout=drain_timeout), window=options.window,
                   warn=_say, directory=d.spool.path)


@spool.command("retry")
@click.argument("sink", required=False)
@click.option("--spool", "spool_dir", metavar="DIR", help=_SPOOL_HELP)
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30, show_default=True, metavar="SECONDS",
              help="How long to keep sending before leaving the rest in the spool.")
@click.pass_context
def retry(ctx, sink, spool_dir, drain_timeout):
    """Send what waits for SINK (a URI or directory name; default: every sink) now."""
    root = _root(ctx, spool_dir)
    dirs = _select(_scan(root), sink, root)
    left = False
    for d in dirs:
        if not d.spool.entries:
            continue
        try:
            courier = _rebuild(d, root, drain_timeout)
            courier.open()
        except SpoolBusy as e:
            raise _error(f"{d.uri}: {e}") from None
        except FlowlogError as e:
            raise _error(str(e)) from None
        [r] = finish([courier], drain_timeout)
        _say(f"sink {r.sink}: delivered {r.delivered_batches} batch(es) ({r.delivered_records} record(s))"
             + (f"; {r.pending_batches} batch(es) ({r.pending_records} record(s)) still wait"
                if r.pending_batches else "")
             + (f"; {r.rejected_records} record(s) refused, kept in rejected/" if r.rejected_records else "")
             + (f"; stopped: {r.failed}" if r.failed else ""))
        left = left or r.undelivered
    if not any(d.spool.entries for d in dirs):
        _say(f"nothing waits in the spool {root}")
    sys.exit(3 if left else 0)


@spool.command("drop")
@click.argument("sink")
@click.option("--spool", "spool_dir", metavar="DIR", help=_SPOOL_HELP)
@click.option("--rejected-only", is_flag=True, help="Delete only the records the server refused (rejected/).")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@click.pass_context
def drop(ctx, sink, spool_dir, rejected_only, yes):
    """Delete what waits for SINK (a URI or directory name), after showing how much it is."""
    root = _root(ctx, spool_dir)
    [d] = _select(_scan(root), sink, root)[:1]
    sp = d.spool
    try:
        sp.acquire()
    except FlowlogError as e:
        raise _error(f"{d.uri}: {e}") from None
    try:
        sp.load_readonly()
        batches = 0 if rejected_only else len(sp.entries)
        records = 0 if rejected_only else sum(e.records for e in sp.entries)
        rejected = sp.rejected()
        what = (f"{batches} batch(es) ({records} record(s)) waiting" if not rejected_only else "") \
            + (", and " if not rejected_only else "") + f"{rejected.records} rejected record(s)"
        if not batches and not rejected.batches:
            _say(f"sink {d.uri}: nothing to drop")
            return
        _say(f"sink {d.uri}: {what}")
        if not yes:
            if not sys.stdin.isatty():
                raise _error("add --yes to delete them")
            if not click.confirm("delete them?", err=True):
                _say("nothing deleted")
                return
        if not rejected_only:
            for e in list(sp.entries):
                sp.remove(e, sync=False)
        sp.clear_rejected()
        _say(f"sink {d.uri}: deleted {what}")
    finally:
        sp.release()
