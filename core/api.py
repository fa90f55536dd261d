"""What plugins build on: the Source and Sink base classes and the context a source gets."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, NamedTuple, Sequence

from .frames import FrameBatch
from .uri import URI


class Link(NamedTuple):
    """One entry of the run's link table: frames of this link share an interface and link type."""

    interface: int     # index into SourceContext.interfaces
    linktype: int


class SourceContext:
    """What the core gives a source when it opens it.

    A source registers each interface it delivers frames from with
    :meth:`add_link` and stamps its frames with the returned index. Everything
    it cannot deliver or could not read is reported through :meth:`warn` (a
    recoverable condition, counted and shown on stderr) or :meth:`damaged` (the
    input is damaged: shown, and the run ends with status 1).
    """

    def __init__(self, *, bpf_filter: str | None = None, snaplen: int = 262144,
                 interface_ids: dict[str, str] | None = None, default_interface_id: str | None = None,
                 warn: Callable[[str], None] | None = None):
        self.bpf_filter = bpf_filter
        self.snaplen = snaplen
        self.interfaces: list[str] = []
        self.links: list[Link] = []
        self._interface_ids = interface_ids or {}
        self._default_interface_id = default_interface_id
        self._warn = warn or (lambda msg: None)
        self.warnings: list[str] = []
        self.damage: list[str] = []
        #: the run uses the compiled (numba) path: sources may use compiled kernels too
        self.compiled = False
        #: the run's window length (seconds): sources that keep a checkpoint need it
        self.window = 60
        #: interface index -> its own addresses as (family, high 64 bits, low 64 bits): flow-direction
        self.addresses: dict[int, set[tuple[int, int, int]]] = {}

    def add_addresses(self, name: str, addresses) -> None:
        """Record an interface's own IP addresses (text), for the flow-direction field."""
        import ipaddress

        own = self.addresses.setdefault(self._interface(name), set())
        for a in addresses:
            ip = ipaddress.ip_address(str(a).split("%", 1)[0])
            value = int(ip)
            own.add((4, 0, value) if ip.version == 4 else (6, value >> 64, value & (2**64 - 1)))

    def interface_id(self, name: str) -> str:
        """The interface-id records carry for an interface the source calls ``name``."""
        if name in self._interface_ids:
            return self._interface_ids[name]
        return self._default_interface_id or name

    def _interface(self, name: str) -> int:
        """Index of the interface a source calls ``name``, added to the run's list if new."""
        # records are space-separated: an interface-id never carries white space
        iid = "_".join(self.interface_id(name).split()) or "-"
        if iid not in self.interfaces:
            self.interfaces.append(iid)
        return self.interfaces.index(iid)

    def add_link(self, name: str, linktype: int) -> int:
        link = Link(self._interface(name), linktype)
        try:
            return self.links.index(link)
        except ValueError:
            self.links.append(link)
            return len(self.links) - 1

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._warn(f"warning: {message}")

    def damaged(self, message: str) -> None:
        self.damage.append(message)
        self._warn(message)


class Source(abc.ABC):
    """Base class of source plugins.

    Subclasses set ``scheme`` (the URI scheme) and ``description``, accept the
    URI and a dict of options in ``__init__``, register their interfaces in
    :meth:`open` (raising :class:`~flowlog.core.errors.SourceError` with a clear
    message when the input is unusable), and yield :class:`FrameBatch` objects
    from :meth:`batches`.
    """

    scheme: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True when the source applies the BPF filter itself (live capture in the kernel).
    applies_filter: ClassVar[bool] = False
    #: True for sources that capture as time goes on (an interface, a growing file ring): windows
    #: then also close on the wall clock. Such a source yields a batch (empty if need be) at
    #: least every few tenths of a second, so that the run can close windows and notice signals.
    live: ClassVar[bool] = False
    #: True when several processes can share the source's input (``--workers N``): the run then
    #: starts N worker processes, each opening its own copy of the source with the option
    #: ``fanout_group`` (0 for the first, which sets the attribute ``fanout_group`` to the group it
    #: created; the group's number for the others), and merges their records window by window.
    fanout: ClassVar[bool] = False

    def __init__(self, uri: URI, options: dict | None = None):
        self.uri = uri
        self.options = options or {}

    def open(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def batches(self) -> Iterator[FrameBatch]:
        """Yield the frames, in batches, until the input ends."""

    def drain(self) -> Iterator[FrameBatch]:
        """The run stops (SIGINT, SIGTERM, --duration): yield what is already captured, without waiting.

        A capturing source hands over what its kernel buffer or ring holds at this moment, so that
        a stop loses nothing that was captured before it. The default has nothing to hand over.
        """
        return iter(())

    def close(self) -> None:
        pass

    # Progress, for the progress bar: total and done in any unit (bytes of input for files).
    def size_hint(self) -> int | None:
        return None

    def commit(self, emitted: int | None, horizon: int | None, consumed: int | None = None) -> None:
        """The run has delivered records: a source that keeps a checkpoint can write it now.

        ``emitted``: how many frames of the last batch were counted before the last emission
        (every frame before that point whose window starts before ``horizon`` is in delivered
        records); None: everything the run took is delivered (its end). ``consumed``: how many
        frames of the last batch the run took, when it stopped inside it (``-c``).
        """

    def capture_stats(self) -> dict[str, int] | None:
        """Counters of a capturing source for ``--stats`` (received, dropped by the kernel, ...)."""
        return None

    def progress(self) -> int:
        return 0


@dataclass
class SinkOptions:
    """How records are rendered: the output format, the fields, and whether to write a header."""

    format: str = "text"
    fields: Sequence[str] | None = None
    header: bool = False
    extra: dict = field(default_factory=dict)
    #: the run's window length in seconds (the run sets it before opening its sinks): sinks that
    #: group records by window (file:DIR/, the delivery layer) use it
    window: int = 60


class Sink(abc.ABC):
    """Base class of sink plugins.

    Subclasses set ``scheme`` and ``description``; :meth:`write` receives the
    records of one emission (a closed window, or the final flush) as a list of
    :class:`flowlog.core.records.Record`.
    """

    scheme: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, uri: URI, options: SinkOptions):
        self.uri = uri
        self.options = options

    def open(self) -> None:
        pass

    @abc.abstractmethod
    def write(self, records: list) -> None:
        """Take the records of one emission (a list of :class:`flowlog.core.records.Record`)."""

    def write_batch(self, batch) -> None:
        """Take the records of one emission as a :class:`flowlog.core.records.RecordBatch`.

        The default hands :meth:`write` the records as objects; a sink that can use the
        columns directly (the stdout sink's fast text path) overrides this.
        """
        self.write(batch.records())

    def close(self) -> None:
        pass


class ListSink(Sink):
    """Keeps the records in a list (``.records``): for embedding flowlog in a program, and for tests."""

    scheme = "list"
    description = "records kept in memory (for programs that embed flowlog)"

    def __init__(self, uri: URI | None = None, options: SinkOptions | None = None):
        super().__init__(uri or URI.parse("list:"), options or SinkOptions())
        self.records: list = []

    def write(self, records: list) -> None:
        self.records.extend(records)


# --------------------------------------------------------------------------------------------
# Network sinks: the delivery contract (DESIGN.md, "Delivery"; man page flowlog-plugins(7)).
#
# A network sink subclasses DeliverySink and says only two things: how one record becomes
# an item of bytes (encode), and how to send a batch of items and what the answer means
# (send). The core does the rest for every such sink, third-party ones included: it groups
# the records of each emission into batches (one window and interface each, capped by the
# sink's max_items / max_bytes), writes every batch to an on-disk spool (fsync'd) before the
# records count as accepted, sends batches in order from a thread of its own, retries with
# exponential backoff and jitter, and removes a batch from the spool only when the sink
# confirms it. A restart sends what the spool still holds first.
# --------------------------------------------------------------------------------------------

class Verdict(str, enum.Enum):
    """What a sink's answer to one batch means for the delivery layer."""

    #: delivered (the items of ``Answer.pending`` excepted, if given; see Answer)
    OK = "ok"
    #: not delivered, try again later (throttled, busy, 5xx, connection lost, timeout)
    RETRY = "retry"
    #: not delivered and never will be as things are (bad credentials, no such index or topic):
    #: the sink stops with ``Answer.reason``; its batches stay in the spool
    FAIL = "fail"
    #: the batch as a whole cannot be taken (too large, one bad item): send it again in halves
    SPLIT = "split"


@dataclass
class Answer:
    """A sink's answer to one :meth:`DeliverySink.send` call.

    ``reason`` is shown to people: it must never contain a secret. ``retry_after`` is the
    server's own advice in seconds (Retry-After), if any. With ``Verdict.OK``:
    ``pending`` lists indexes (into the items sent) that were not delivered but may be on a
    retry (per-item 429 or 5xx in a bulk answer); ``rejected`` maps indexes of items the
    server refused for good to the reason (a mapping error): those are moved to the spool's
    ``rejected`` area, shown by ``flowlog spool``, never dropped silently. Every other item
    counts as delivered.
    """

    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None
    pending: Sequence[int] = ()
    rejected: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchMeta:
    """What a sink knows about the batch it sends.

    ``batch_id`` is fixed when the batch enters the spool and stays the same over retries
    and restarts: a sink that names objects or documents after it never duplicates on a
    retry. ``start``/``end`` are the window bounds, ``interface_id`` and ``account_id`` the
    record fields common to the batch; ``attempt`` counts from 1.
    """

    batch_id: str
    start: int
    end: int
    interface_id: str
    account_id: str | None
    records: int
    attempt: int = 1


class DeliverySink(Sink):
    """Base class of sinks that deliver over a network (or anything that can fail and recover).

    Subclasses set ``scheme`` and ``description``, check their URI and read their secrets
    from the environment in ``__init__`` or :meth:`open` (raising
    :class:`~flowlog.core.errors.ConfigError` with a one-line message), and implement
    :meth:`encode` and :meth:`send`. They never see the spool, the retries or the threads.
    """

    #: most items in one batch, and most bytes of items (the sink's own request limits)
    max_items: ClassVar[int] = 10_000
    max_bytes: ClassVar[int] = 5 << 20

    @abc.abstractmethod
    def encode(self, record) -> bytes:
        """One record (:class:`flowlog.core.records.Record`) as the bytes of one item."""

    @abc.abstractmethod
    def send(self, items: list[bytes], meta: BatchMeta) -> Answer:
        """Send one batch and classify the answer. Called from the delivery thread.

        Network errors (refused, reset, timeout) are answered with ``Verdict.RETRY``, not
        raised; an exception escaping here is treated as RETRY and reported as a bug.
        """

    def spool_key(self) -> str:
        """What identifies this sink's spool: by default the URI (which holds no secret)."""
        return self.uri.text

    def write(self, records: list) -> None:  # pragma: no cover - the delivery layer calls encode/send
        raise TypeError(f"{self.scheme}: records reach a network sink through the delivery layer")
