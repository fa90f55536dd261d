"""Whether flowlog runs its compiled (numba) kernels, and how they are compiled.

The compiled path is the default. ``FLOWLOG_NO_JIT=1`` runs the pure-Python path
instead (for debugging, and on platforms without numba); both give identical records.
numba is imported only when the compiled path is used: it costs a few tenths of a
second to start, so small inputs are read by the pure-Python path (see
:data:`JIT_MIN_BYTES`).
"""

from __future__ import annotations

import os

#: Inputs smaller than this (bytes) are read by the pure-Python path: faster than starting numba.
JIT_MIN_BYTES = int(os.environ.get("FLOWLOG_JIT_MIN_BYTES", 8 << 20))

_available: bool | None = None


def disabled_by_user() -> bool:
    return os.environ.get("FLOWLOG_NO_JIT", "").strip().lower() in ("1", "true", "yes", "on")


def available() -> bool:
    """numba can be imported (and the user did not turn the compiled path off)."""
    global _available
    if disabled_by_user():
        return False
    if _available is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _available = False
        else:
            _available = True
    return _available


def wanted(size_hint: int | None) -> bool:
    """Use the compiled path for an input of this many bytes (None: unknown or unbounded)?"""
    if disabled_by_user():
        return False
    if size_hint is not None and size_hint < JIT_MIN_BYTES:
        return False
    return available()


def kernel(fn=None, **options):
    """Compile ``fn`` with numba: nopython, cached on disk, releasing the GIL."""
    import numba

    def wrap(f):
        return numba.njit(cache=True, nogil=True, **options)(f)

    return wrap(fn) if fn is not None else wrap


def warm_up() -> None:
    """Load every compiled kernel now (from the disk cache, or compiling it once).

    A live capture calls this before it opens the interface: loading takes a few tenths of a
    second, which the kernel's capture buffer would otherwise have to absorb.
    """
    import numpy as np

    from .decode import decode_batch
    from .fast.text import text_v2
    from .frames import FrameBatch
    from .meter import Meter
    from .synth import packet

    batch = FrameBatch.from_frames([(120, 0, packet("192.0.2.1", "192.0.2.2", 17, 1, 2)),
                                    (60, 0, packet("192.0.2.1", "192.0.2.2", 17, 1, 2))])
    cols = decode_batch(batch, np.array([1]), compiled=True)
    meter = Meter(["warm-up"], lambda: np.array([0]), compiled=True, lateness=0)
    for rb in meter.add(batch, cols) + meter.flush():
        text_v2(rb)
