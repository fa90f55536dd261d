"""Several frame streams read as one, in timestamp order."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .frames import FrameBatch

def _last(b: FrameBatch) -> tuple[int, int]:
    i = int(np.lexsort((b.nsec, b.sec))[-1])
    return int(b.sec[i]), int(b.nsec[i])


def _upto(b: FrameBatch, t: tuple[int, int]) -> np.ndarray:
    return (b.sec < t[0]) | ((b.sec == t[0]) & (b.nsec <= t[1]))


class _Stream:
    __slots__ = ("it", "head")

    def __init__(self, it: Iterator[FrameBatch]):
        self.it = it
        self.head: FrameBatch | None = None

    def pull(self) -> bool:
        """Load the next non-empty batch as head; False at the end of the stream."""
        for b in self.it:
            if len(b):
                self.head = b
                return True
            if b.losses:
                self.head = b
                return True
        self.head = None
        return False


def merge(streams: list[tuple[tuple[int, int], Callable[[], Iterator[FrameBatch]]]]) -> Iterator[FrameBatch]:
    """Merge frame streams by capture time.

    ``streams`` are ``(first_time, open)`` pairs: a stream is opened only once the
    merged output reaches its first frame's time, so a directory of a thousand ring
    files keeps one or two open at a time. Each stream is expected in time order (a
    capture file's own disorder is passed through as it is). A batch that no other
    stream overlaps is handed on without a copy.
    """
    pending = sorted(streams, key=lambda s: s[0])
    active: list[_Stream] = []
    while True:
        if not active:
            if not pending:
                return
            _, opener = pending.pop(0)
            s = _Stream(opener())
            if s.pull():
                active.append(s)
            continue
        # a head that has only losses, or no frames, goes straight out
        for s in active:
            if not len(s.head):
                yield s.head
                if not s.pull():
                    active.remove(s)
                break
        else:
            bound = min(_last(s.head) for s in active)
            if pending and pending[0][0] <= bound:
                _, opener = pending.pop(0)
                s = _Stream(opener())
                if s.pull():
                    active.append(s)
                continue
            if len(active) == 1:
                s = active[0]
                yield s.head
                if not s.pull():
                    active.clear()
                continue
            parts = []
            for s in list(active):
                mask = _upto(s.head, bound)
                if mask.all():
                    parts.append(s.head)
                    s.head = None
                elif mask.any():
                    parts.append(s.head.take(mask))
                    s.head = s.head.take(~mask)
            merged = FrameBatch.concat(parts)
            order = np.lexsort((merged.nsec, merged.sec))
            if not np.array_equal(order, np.arange(len(order))):
                merged = merged.take(order)
            yield merged
            for s in list(active):
                if s.head is None and not s.pull():
                    active.remove(s)
