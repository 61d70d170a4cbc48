"""The bf16 GEMM (kernels/bf16_matmul.py) against numpy's fp32 matmul on the step's product shapes.

    python benchmarks/bf16_matmul.py                       # d12 (C=768), N=256 and 4096 rows, 2 threads
    python benchmarks/bf16_matmul.py --rows 256 --reps 9 --markdown

For GPT-2 d12 (C=768, vocabulary 50304) with N = B*T rows, every product shape of one block and
the head, in the layouts the model uses them:
    forward   y  = x @ W.T        (N, in) @ (out, in).T
    backward  dx = dy @ W         (N, out) @ (out, in)
    backward  dW = dy.T @ x       (N, out).T @ (N, in)
Each shape runs the bf16 kernel (rounding and packing included) and np.matmul on the same
operands, alternating, --reps times each; medians, their ratio (fp32 time / bf16 time), and the
bf16 kernel's rate in GFLOP/s. Threads: each of --threads (default "2,1") for both (numba and
numpy's BLAS). With one thread both products run on the calling thread, so its CPU time
(time.thread_time) is also shown: on a shared, loaded machine it leaves out the time the thread
waited for a core, which the wall-clock includes.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import (
    Stats,
    add_markdown_arg,
    command_line,
    emit_markdown,
    fmt_ms,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

from tui_llm.engine.kernels.bf16_matmul import bf16_matmul, cpu_has_bf16
from tui_llm.engine.machine import set_threads

C, VOCAB = 768, 50304
MATRICES = {"qkv": (3 * C, C), "attproj": (C, C), "fc": (4 * C, C), "fcproj": (C, 4 * C), "head": (VOCAB, C)}


def cases(rows: int):
    """(name, a, b) for every product shape with N = rows, operands as the model lays them out."""
    rng = np.random.default_rng(0)
    for name, (out_f, in_f) in MATRICES.items():
        W = (rng.standard_normal((out_f, in_f)) * 0.02).astype(np.float32)
        x = rng.standard_normal((rows, in_f)).astype(np.float32)
        dy = (rng.standard_normal((rows, out_f)) * 0.01).astype(np.float32)
        yield f"{name} y=x@W.T", x, W.T
        yield f"{name} dx=dy@W", dy, W
        yield f"{name} dW=dy.T@x", dy.T, x


def time_pair(a: np.ndarray, b: np.ndarray, reps: int) -> dict[str, Stats]:
    """Wall-clock and calling-thread CPU time of both products, alternating."""
    out_bf16 = np.empty((a.shape[0], b.shape[1]), np.float32)
    out_fp32 = np.empty_like(out_bf16)
    bf16_matmul(a, b, out=out_bf16)  # warm-up (compiles on the first shape)
    np.matmul(a, b, out=out_fp32)
    times: dict[str, list[float]] = {"bf16": [], "fp32": [], "bf16 cpu": [], "fp32 cpu": []}
    for _ in range(reps):
        for name, product in (("bf16", lambda: bf16_matmul(a, b, out=out_bf16)),
                              ("fp32", lambda: np.matmul(a, b, out=out_fp32))):
            start, cpu = time.perf_counter(), time.thread_time()
            product()
            times[name + " cpu"].append(time.thread_time() - cpu)
            times[name].append(time.perf_counter() - start)
    return {name: Stats(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="256,4096", help="comma-separated N = B*T values (default 256,4096)")
    parser.add_argument("--threads", default="2,1", help="comma-separated thread counts (default 2,1)")
    parser.add_argument("--reps", type=int, default=7, help="timed calls of each (default 7; 3 for the 4096-row head)")
    parser.add_argument("--only", default="", help="run only shapes whose name contains this")
    add_markdown_arg(parser)
    args = parser.parse_args()
    if not cpu_has_bf16():
        raise SystemExit("this CPU has no avx512_bf16: the bf16 kernel cannot run here")
    info = print_machine(machine_info())
    headers = ["threads", "N", "product", "M x K x N", "bf16 ms", "fp32 ms", "fp32/bf16", "bf16 GFLOP/s",
               "1-thread CPU: bf16 ms", "fp32 ms", "fp32/bf16"]
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        threads = set_threads(threads)
        for n_rows in (int(r) for r in args.rows.split(",")):
            for name, a, b in cases(n_rows):
                if args.only and args.only not in name:
                    continue
                M, K = a.shape
                N = b.shape[1]
                reps = args.reps if M * K * N < 5e10 else max(3, args.reps // 2)
                s = time_pair(a, b, reps)
                cpu = ["", "", ""]
                if threads == 1:
                    cpu = [fmt_ms(s["bf16 cpu"].median, unit=False), fmt_ms(s["fp32 cpu"].median, unit=False),
                           f"{s['fp32 cpu'].median / s['bf16 cpu'].median:.2f}"]
                rows.append([str(threads), str(n_rows), name, f"{M}x{K}x{N}", s["bf16"].ms(), s["fp32"].ms(),
                             f"{s['fp32'].median / s['bf16'].median:.2f}",
                             f"{2 * M * K * N / s['bf16'].median / 1e9:.0f}"] + cpu)
                print(text_table(headers, [rows[-1]]).splitlines()[-1], flush=True)
    print()
    print(text_table(headers, rows))
    emit_markdown(f"command: `{command_line()}`\n\n{machine_markdown(info)}\n\n"
                  f"{markdown_table(headers, rows)}", args.markdown)

if __name__ == "__main__":
    main()
