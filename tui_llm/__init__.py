"""tui-llm: train GPT-2-class language models on the CPU from a terminal."""

import os

# Numba's kernels (OpenMP threads) and numpy's matrix products (OpenBLAS threads) take turns on
# the same cores, a few hundred times per training step. By default both pools spin for a while
# after their work is done, so each steals cores from the other: on 2 cores a GPT-2 step ran
# about 45% slower (benchmarks/step.py). Idle threads of both pools should sleep instead.
# These take effect only if set before numpy and numba start their threads, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles of spinning, OpenBLAS's minimum

__version__ = "0.1.0"
