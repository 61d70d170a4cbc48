"""One thread count for both halves of the engine: numba's kernels and the BLAS matmuls.

They run one after the other, never nested, so each gets every core in turn and neither
oversubscribes the other. numba's setting is per calling thread: call this from the thread
that trains.
"""

from __future__ import annotations

import os

import numba
from threadpoolctl import threadpool_limits


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int = 0) -> int:
    """Use n threads (0 = all available cores) for numba and BLAS. Returns the count used."""
    n = n if n > 0 else available_cores()
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
    return n
