"""What this machine has: cores, memory, and one thread count for the engine's two halves.

numba's kernels and the BLAS matmuls run one after the other, never nested, so each gets every
core in turn and neither oversubscribes the other (set_threads). numba's setting is per calling
thread: call it from the thread that trains. Training attention (kernels/attention.py) reads it to
run that many worker threads, each with one BLAS thread. Memory is probed in one place (check_fits_memory):
whatever would allocate more than the machine has is refused in one line before it allocates.
"""

from __future__ import annotations

import os

from tui_llm.engine.errors import TuiLlmError


class NotEnoughMemory(TuiLlmError, ValueError):
    """Something would need more memory than this machine has (refused before allocating)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def physical_memory_bytes() -> int | None:
    """Physical memory of this machine, or None when the OS does not say (then nothing is refused)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def check_fits_memory(nbytes: int, what: str, *, path: object = None) -> None:
    """NotEnoughMemory (one line, naming `what` and the file it came from) if nbytes exceed the memory."""
    ram = physical_memory_bytes()
    if ram is not None and nbytes > ram:
        where = f"{path}: " if path is not None else ""
        raise NotEnoughMemory(f"{where}{what} needs {nbytes / 2**30:,.1f} GiB, more than this machine's "
                              f"{ram / 2**30:,.1f} GiB of memory", path=path)


def set_threads(n: int = 0) -> int:
    """Use n threads (0 = all available cores) for numba and BLAS. Returns the count used."""
    import numba
    from threadpoolctl import threadpool_limits

    n = n if n > 0 else available_cores()
    n = min(n, numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # numba sets it at import
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
    return n
