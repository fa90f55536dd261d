"""The ``flowlog`` command: a thin layer over flowlog.core."""

from __future__ import annotations

import glob
import json
import os
import signal
import sys

import click

from flowlog.cli.explain import explain, policy_options
from flowlog.cli.spool import spool
from flowlog.core import __version__
from flowlog.core.api import SinkOptions
from flowlog.core.delivery import DeliveryOptions
from flowlog.core.errors import ConfigError, FlowlogError
from flowlog.core.formats import FORMATS
from flowlog.core.plugins import get_registry
from flowlog.core.policy import DEFAULT_CONNTRACK_TIMEOUT, load_policy
from flowlog.core.records import parse_fields
from flowlog.core.run import MAX_WINDOW, Run, RunOptions
from flowlog.core.spool import parse_size
from flowlog.core.uri import URI

#: Inputs at least this large get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = int(os.environ.get("FLOWLOG_PROGRESS_MIN_BYTES", 64 << 20))


class UserError(click.ClickException):
    """A user's mistake or an unusable input: one line on stderr, exit status 2, nothing written."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"flowlog: error: {self.format_message()}", err=True)


def _say(message: str) -> None:
    click.echo(f"flowlog: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="flowlog")
def main():
    """Cloud-format network flow logs (Tencent Cloud Flow Logs, AWS VPC Flow Logs version 2)
    from network interfaces and capture files."""


def _interface_ids(values) -> tuple[dict[str, str], str | None]:
    mapping, default = {}, None
    for v in values:
        if "=" in v:
            name, _, iid = v.partition("=")
            if not name or not iid:
                raise click.BadParameter(f"{v!r}: expected NAME=ID or ID", param_hint="--interface-id")
            mapping[name] = iid
        elif default is not None:
            raise click.BadParameter("give one plain ID (for every interface) or NAME=ID pairs",
                                     param_hint="--interface-id")
        else:
            default = v
    return mapping, default


def _split_files(expression: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Leading words that name existing files (or globs that match) are more -r inputs; the rest is the filter."""
    files = []
    words = list(expression)
    while words:
        w = words[0]
        if os.path.exists(w) or (glob.has_magic(w) and glob.glob(w)):
            files.append(words.pop(0))
        else:
            break
    return files, words


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("-r", "--read", "read", multiple=True, metavar="FILE",
              help="Read frames from a capture file, glob or directory (repeatable; further FILE "
                   "words may follow the option).")
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Capture live from a network interface with libpcap (repeatable; same as --from live:IFACE).")
@click.option("--follow", "follow", multiple=True, metavar="DIR|GLOB",
              help="Read a rotating ring of capture files (tcpdump -C/-G -W, dumpcap -b) as it is written.")
@click.option("--checkpoint", metavar="PATH",
              help="With --follow: where to keep the reading position, so that a restart resumes exactly there.")
@click.option("--from", "sources", multiple=True, metavar="URI",
              help="Read from a source plugin URI, e.g. pcap:trace.pcap (repeatable).")
@click.option("--to", "sinks", multiple=True, metavar="URI",
              help="Write records to a sink plugin URI (repeatable; default stdout:).")
@click.option("-c", "--count", type=click.IntRange(min=1), metavar="COUNT",
              help="Stop after COUNT frames (that pass the filter).")
@click.option("-F", "filter_file", type=click.File("r"), metavar="FILE",
              help="Read the filter expression from FILE.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds of wall-clock time, then write every open window.")
@click.option("--snaplen", type=click.IntRange(min=64, max=262144), metavar="BYTES",
              help="Live capture: bytes kept of each frame (default: enough for the headers flowlog reads).")
@click.option("--buffer-size", type=click.IntRange(min=65536), metavar="BYTES",
              help="Live capture: the kernel's capture buffer size.")
@click.option("--no-promisc", is_flag=True, help="Live capture: do not put the interface in promiscuous mode.")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True, metavar="N",
              help="ring: capture: worker processes sharing the interface by flow hash (PACKET_FANOUT); records are merged per window.")
@click.option("--ring-blocks", type=click.IntRange(min=2), metavar="N",
              help="ring: capture: number of blocks in the memory-mapped ring.")
@click.option("--block-size", type=click.IntRange(min=4096), metavar="BYTES",
              help="ring: capture: size of one ring block (a multiple of the page size).")
@click.option("--window", type=click.IntRange(min=1, max=MAX_WINDOW), default=60, show_default=True, metavar="SECONDS",
              help="Capture window length; windows are aligned to the Unix epoch.")
@click.option("--lateness", type=click.IntRange(min=0), default=5, show_default=True, metavar="SECONDS",
              help="How long after its end a window waits for late frames.")
@click.option("--max-flows", type=click.IntRange(min=1), default=1_000_000, show_default=True, metavar="N",
              help="Flow table capacity over all open windows; traffic beyond it is SKIPDATA.")
@click.option("--timestamps", type=click.Choice(["window", "first-last"]), default="window", show_default=True,
              help="start/end: the window's bounds, or the flow's first and last packet times.")
@click.option("--account-id", metavar="ID", help="The account-id field (default -).")
@click.option("--interface-id", "interface_id", multiple=True, metavar="[NAME=]ID",
              help="The interface-id field: ID for every interface, or NAME=ID for one (repeatable).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Output format.")
@click.option("--fields", metavar="LIST",
              help="Comma-separated fields to write, in order (default: the 14 version-2 fields).")
@click.option("--header", is_flag=True, help="Write a line of field names first (text format).")
@click.option("--spool", "spool_dir", metavar="DIR",
              help="Network sinks: where batches wait until the sink confirms them (default: $FLOWLOG_SPOOL, "
                   "else $XDG_STATE_HOME/flowlog/spool, else ~/.local/state/flowlog/spool).")
@click.option("--spool-max", metavar="SIZE", default="1G", show_default=True,
              help="Network sinks: most bytes waiting in one sink's spool (K, M, G, T: powers of 1024).")
@click.option("--spool-full", type=click.Choice(["wait", "drop-oldest"]), default="wait", show_default=True,
              help="Network sinks: when a spool is full, wait for delivery to make room, or drop the oldest batches.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30, show_default=True, metavar="SECONDS",
              help="Network sinks: at the end, how long to wait for what is spooled to be delivered (0: not at all).")
@policy_options
@click.option("--traffic-type", type=click.Choice(["accept", "reject", "all"]), default="all", show_default=True,
              help="Write the records of accepted flows, of rejected flows, or all (NODATA and SKIPDATA always).")
@click.option("--conntrack-timeout", type=click.IntRange(min=1), default=DEFAULT_CONNTRACK_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="With --sg: idle time after which a security group forgets a connection (its replies).")
@click.option("--stats", is_flag=True, help="Print a summary of the run on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="No warnings and no progress bar on stderr.")
@click.argument("expression", nargs=-1)
def capture(read, interfaces, follow, checkpoint, sources, sinks, count, filter_file, duration, snaplen,
            buffer_size, no_promisc, workers, ring_blocks, block_size, window, lateness, max_flows, timestamps,
            account_id, interface_id, fmt, fields, header, spool_dir, spool_max, spool_full, drain_timeout, stats,
            quiet, expression, sg=(), acl=None, templates=(), interface_ip=(), traffic_type="all",
            conntrack_timeout=DEFAULT_CONNTRACK_TIMEOUT):
    """Turn captured frames into flow log records.

    \b
    flowlog capture -r trace.pcap
    flowlog capture -r trace.pcap tcp port 443
    flowlog capture -r 'ring/*.pcap' --format json --to stdout:

    EXPRESSION is a filter in tcpdump's language, compiled by libpcap. Words right
    after -r FILE that name existing files are read as more input files.
    """
    more_files, words = _split_files(expression) if read else ([], list(expression))
    read = list(read) + more_files
    if filter_file is not None:
        if words:
            raise click.UsageError("give the filter either with -F FILE or on the command line, not both")
        words = filter_file.read().split()
    bpf = " ".join(words) or None
    if not read and not sources and not interfaces and not follow:
        raise click.UsageError("nothing to read: give -r FILE, -i IFACE, --follow DIR or --from URI")
    if checkpoint and not follow:
        raise click.UsageError("--checkpoint goes with --follow")
    if checkpoint and (len(follow) > 1 or read or interfaces or sources):
        raise click.UsageError("--checkpoint works with one --follow input and no other")
    source_options = {k: v for k, v in dict(
        snaplen=snaplen, buffer_size=buffer_size, promisc=not no_promisc, workers=workers, blocks=ring_blocks,
        block_size=block_size, checkpoint=checkpoint).items() if v is not None}
    ids, default_id = _interface_ids(interface_id)
    try:
        registry = get_registry()
        field_list = parse_fields(fields)
        sink_options = SinkOptions(format=fmt, fields=field_list, header=header)
        policy = load_policy(sg, acl, templates, interface_ip, conntrack_timeout)
        src_objs = [registry.source("pcap").cls(URI.parse("pcap:" + f), source_options) for f in read]
        src_objs += [registry.source("pcap").cls(URI.parse("pcap:" + f), {**source_options, "follow": True})
                     for f in follow]
        src_objs += [registry.source("live").cls(URI.parse("live:" + i), source_options) for i in interfaces]
        for text in sources:
            uri = URI.parse(text)
            src_objs.append(registry.source(uri.scheme).cls(uri, source_options))
        sink_objs = []
        for text in sinks or ("stdout:",):
            uri = URI.parse(text)
            sink_objs.append(registry.sink(uri.scheme).cls(uri, sink_options))
        options = RunOptions(window=window, lateness=lateness, max_flows=max_flows, account_id=account_id,
                             interface_ids=ids, default_interface_id=default_id, timestamps=timestamps,
                             count=count, bpf_filter=bpf, duration=duration,
                             delivery=DeliveryOptions(spool=spool_dir, spool_max=parse_size(spool_max),
                                                      spool_full=spool_full, drain_timeout=drain_timeout),
                             policy=policy, traffic_type=traffic_type, interface_addresses=tuple(interface_ip))
        bar = None
        warn = (lambda m: None) if quiet else (lambda m: _say(f"warning: {m}"))

        def progress(done, total):
            nonlocal bar
            if bar is None:
                if quiet or not total or total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
                    bar = False
                else:
                    from tqdm import tqdm
                    bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False,
                               desc="flowlog")
            if bar:
                bar.update(done - bar.n)

        run = Run(src_objs, sink_objs, options, warn=_damage_or_warn(quiet), progress=progress)
        _on_signals(run, live=any(getattr(s, "live", False) for s in src_objs))
        try:
            result = run.run()
        except ConfigError as e:
            if bpf and words and any(c in words[0] for c in "./") and not os.path.exists(words[0]):
                raise UserError(f"{e} (is {words[0]!r} meant as an input file? it does not exist)") from None
            raise
        finally:
            if bar:
                bar.close()
    except FlowlogError as e:
        raise UserError(str(e)) from None
    st = result.stats
    if st.malformed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(st.malformed_reasons.items()))
        warn(f"{st.malformed} malformed frame(s) counted in SKIPDATA records ({reasons})")
    for reason, n in sorted(st.anomalies.items()):
        warn(f"{n} packet(s) counted with the IP header's length although it is inconsistent ({reason})")
    pc = result.policy or {}
    if pc.get("suppressed_flows"):
        warn(f"{pc['suppressed_flows']} reply flow(s) ({pc['suppressed_packets']} packets, {pc['suppressed_bytes']} "
             f"bytes) not written: they answer requests the policy rejected, so the cloud would never carry them")
    if stats and not result.output_closed:
        _print_stats(result)
    sys.exit(result.status)


def _on_signals(run: Run, live: bool = False) -> None:
    """SIGINT and SIGTERM stop reading; open windows are written and flowlog exits 0. A second one aborts.

    A live capture ignores SIGHUP: a capture started from a terminal goes on when the terminal goes away.
    """
    def handler(signum, frame):
        if run._stop:
            raise KeyboardInterrupt
        run.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if live and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _damage_or_warn(quiet: bool):
    """Warnings are hushed by --quiet; messages about damaged input are not."""
    def report(message: str) -> None:
        if message.startswith("warning:") and quiet:
            return
        _say(message)
    return report


def _delivery_rows(result) -> list[tuple[str, object]]:
    """--stats lines of each network sink (its URI as shown anywhere: no secret)."""
    rows: list[tuple[str, object]] = []
    for d in getattr(result, "delivery", ()):
        rows += [(f"sink {d.sink}", ""),
                 ("  delivered batches", d.delivered_batches),
                 ("  delivered records", d.delivered_records),
                 ("  retries", d.retries),
                 ("  batches from an earlier run", d.resumed_batches),
                 ("  waiting in the spool: batches", d.pending_batches),
                 ("  waiting in the spool: records", d.pending_records),
                 ("  rejected records", d.rejected_records),
                 ("  dropped records", d.dropped_records)]
        if d.failed:
            rows.append(("  stopped", d.failed))
    return rows


def _policy_rows(result) -> list[tuple[str, object]]:
    """--stats lines of the policy (--sg/--acl) and of --traffic-type."""
    pc = result.policy
    if not pc:
        return []
    rows: list[tuple[str, object]] = []
    if "judged_flows" in pc:
        rows += [("policy: flows judged", pc["judged_flows"]),
                 ("  REJECT", pc["rejected_flows"]),
                 ("  replies not written (request rejected): flows", pc["suppressed_flows"]),
                 ("  replies not written: packets", pc["suppressed_packets"]),
                 ("  replies not written: bytes", pc["suppressed_bytes"]),
                 ("  not the interface's (not judged): flows", pc["unjudged_flows"]),
                 ("  not the interface's: packets", pc["unjudged_packets"])]
    rows.append(("records left out by --traffic-type", pc.get("traffic_filtered", 0)))
    return rows


def _print_stats(result) -> None:
    from tabulate import tabulate

    st = result.stats
    rows = [
        ("frames", st.frames),
        ("filtered out", result.filtered_out),
        ("IP packets", st.ip_packets),
        ("IP bytes", st.ip_bytes),
        ("non-IP frames", st.non_ip),
        ("malformed frames", st.malformed),
        ("late packets", st.late_packets),
        ("skipped (flow table full)", st.overflow_packets),
        ("flows", st.flows),
        ("windows", st.windows),
        ("records", st.records),
        ("  NODATA", st.nodata_records),
        ("  SKIPDATA", st.skipdata_records),
        *((k, v) for k, v in result.capture.items()),
        ("interfaces", len(result.interfaces)),
        ("seconds", f"{result.elapsed:.3f}"),
        *_delivery_rows(result),
        *_policy_rows(result),
    ]
    click.echo(tabulate(rows, tablefmt="plain", disable_numparse=True, colalign=("left", "right")), err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin instead of a table.")
def plugins(as_json):
    """List the installed source and sink plugins."""
    try:
        registry = get_registry()
    except FlowlogError as e:
        raise UserError(str(e)) from None
    rows = [(r.plugin, r.kind, f"{r.scheme}:", r.origin, r.description) for r in registry.all()]
    if as_json:
        for name, kind, scheme, origin, desc in rows:
            click.echo(json.dumps({"name": name, "kind": kind, "scheme": scheme, "origin": origin,
                                   "description": desc}))
        return
    from tabulate import tabulate

    click.echo(tabulate(rows, headers=["name", "kind", "scheme", "from", "description"], tablefmt="simple"))


main.add_command(explain)
main.add_command(spool)


if __name__ == "__main__":  # pragma: no cover
    main()
