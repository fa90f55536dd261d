"""Compiled (numba) kernels: imported only when the compiled path runs (see flowlog.core.jit)."""
