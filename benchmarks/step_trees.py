"""One model's forward + backward in two checkouts of tui-llm, alternating, one thread, CPU time.

    git worktree add /tmp/before 8523bad
    python benchmarks/step_trees.py /tmp/before .                         # d12 B=4 T=64
    python benchmarks/step_trees.py /tmp/before . --layers 12 --channels 768 -b 1 -t 1024 --rounds 2

Each round runs every tree once, in a fresh process with that tree first on sys.path (either
package layout: engine/models/ or the flat engine/ before the architecture step), a GPT-2 shape
with random weights: two untimed steps, then --steps timed ones; the process's CPU time per step
(one numba and one BLAS thread, so that other jobs on a shared machine inflate it far less than
wall time). The medians per round are printed, then the median over rounds per tree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
from common import command_line, print_machine

CHILD = """
import json, statistics, sys, time
import numpy as np
try:
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.models.gpt2 import GPT, GPTConfig
except ImportError:  # the layout before the architecture step
    from tui_llm.engine.config import GPTConfig
    from tui_llm.engine.model import GPT
    from tui_llm.engine.threads import set_threads
L, C, B, T, steps = (int(a) for a in sys.argv[1:6])
set_threads(1)
cfg = GPTConfig(max_seq_len=max(T, 64), vocab_size=50257, num_layers=L, num_heads=C // 64, channels=C)
model = GPT.random_init(cfg, seed=1)
model.allocate_grads()
rng = np.random.default_rng(0)
x, y = (rng.integers(0, 50257, (B, T)).astype(np.int32) for _ in range(2))
times = []
for i in range(steps + 2):
    c0 = time.process_time()
    model.forward(x, y, training=True)
    model.backward()
    if i >= 2:
        times.append(time.process_time() - c0)
print(json.dumps(statistics.median(times)))
"""


def step_cpu_seconds(tree: Path, args) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, (args.layers, args.channels, args.batch, args.seq,
                                                                     args.steps))],
                         capture_output=True, text=True, check=True, cwd=tree, env={"PYTHONPATH": str(tree),
                                                                                   "PATH": "/usr/bin:/bin"})
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", type=Path, help="checkouts of tui-llm")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--channels", type=int, default=768)
    ap.add_argument("-b", "--batch", type=int, default=4)
    ap.add_argument("-t", "--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process (default 5)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print_machine()
    print(f"\ncommand: {command_line()}\n")
    trees = [t.resolve() for t in args.trees]
    samples: dict[Path, list[float]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for tree in trees:
            samples[tree].append(step_cpu_seconds(tree, args))
            print(f"round {r + 1}  {tree}: {samples[tree][-1]:.3f} s CPU per step", flush=True)
    first = statistics.median(samples[trees[0]])
    for tree in trees:
        median = statistics.median(samples[tree])
        print(f"{tree}: median {median:.3f} s ({median / first:.3f}x the first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
