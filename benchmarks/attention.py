"""Training attention: forward + backward time by number of causal blocks, and the numba kernels it replaced.

    python benchmarks/attention.py                 # GPT-2 d12 and SmolLM2-135M shapes, T = 64..1024
    python benchmarks/attention.py --old-kernels   # also the per-query numba kernels of commit d3f2952

attention.py computes its products through BLAS over blocks of positions (causal_blocks): with
n blocks they do (n+1)/2n of the full T x T square's work, in n BLAS calls per head instead of
one. For each shape this times forward + backward over all layers (each layer with its own
probability buffer, as in a training step, so caches are as cold as there) with n = 1..4
blocks, and marks the n that causal_blocks picks. --old-kernels also times the numba kernels
(one query at a time, in registers) that attention.py replaced, taken from git.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import REPO_ROOT, command_line, print_machine

import tui_llm.engine.kernels.attention as A

# name, layers, heads, key/value heads, head dim
SHAPES = [("GPT-2 d12", 12, 12, 12, 64), ("SmolLM2-135M", 30, 9, 3, 64)]


def old_kernels():
    """kernels.py as of the commit before attention.py (its numba attention_forward/backward)."""
    source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", "d3f2952:tui_llm/engine/kernels.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_kernels.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_layers(B, T, L, H, KV, hd, run, repeats=3) -> float:
    """Best of `repeats` passes of forward then backward over L layers; seconds."""
    rng = np.random.default_rng(0)
    W = (H + 2 * KV) * hd
    qkv = rng.standard_normal((L, B, T, W), dtype=np.float32)
    datty = rng.standard_normal((B, T, H * hd), dtype=np.float32)
    att = np.zeros((L, B, H, T, T), np.float32)
    atty, dqkv = np.empty((B, T, H * hd), np.float32), np.empty((B, T, W), np.float32)
    dscores, per_head = np.empty((B, H, T, T), np.float32), np.empty((B, T, H * hd), np.float32)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass compiles / warms up
        t0 = time.perf_counter()
        run(qkv, datty, att, atty, dqkv, dscores, per_head if KV < H else None, L, H, KV)
        best = min(best, time.perf_counter() - t0)
    return best


def blas_run(qkv, datty, att, atty, dqkv, dscores, per_head, L, H, KV):
    for l in range(L):
        A.attention_forward(atty, att[l], qkv[l], H, KV)
    for l in reversed(range(L)):
        A.attention_backward(dqkv, datty, att[l], qkv[l], H, KV, dscores, per_head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqs", default="64,256,1024")
    ap.add_argument("--old-kernels", action="store_true")
    args = ap.parse_args()
    print_machine()
    print(f"command: {command_line()}\n")
    old = old_kernels() if args.old_kernels else None
    chosen = A.causal_blocks
    B = args.batch
    for name, L, H, KV, hd in SHAPES:
        for T in (int(t) for t in args.seqs.split(",")):
            cells = []
            for n in range(1, 5):
                size = -(-T // n)
                A.causal_blocks = lambda T, size=size: [(r, min(r + size, T)) for r in range(0, T, size)]
                seconds = time_layers(B, T, L, H, KV, hd, blas_run)
                A.causal_blocks = chosen
                mark = "*" if len(chosen(T)) == n else " "
                cells.append(f"n={n}{mark} {seconds * 1e3:7.1f} ms")
            line = f"{name:13s} B={B} T={T:5d} {L} layers fwd+bwd: " + "  ".join(cells)
            if old is not None:
                if KV == H:
                    def old_run(qkv, datty, att, atty, dqkv, dscores, per_head, L, H, KV):
                        for l in range(L):
                            old.attention_forward(atty, att[l], qkv[l], H)
                        for l in reversed(range(L)):
                            old.attention_backward(dqkv, datty, att[l], qkv[l], H)
                    line += f"  | numba kernels {time_layers(B, T, L, H, KV, hd, old_run) * 1e3:7.1f} ms"
                else:
                    line += "  | (numba GQA kernels: benchmarks/llama_step.py at d3f2952)"
            print(line, flush=True)
    print("\n* = what causal_blocks picks")


if __name__ == "__main__":
    sys.exit(main())
