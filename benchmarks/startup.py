"""Start-up time: a fresh `python -c` process, from launch to the end of its first training step.

    python benchmarks/startup.py                      # d6 B=4 T=64 (the trainer's defaults)
    python benchmarks/startup.py --repeats 3 --model d12

cold: NUMBA_CACHE_DIR points at an empty temporary directory, so every kernel is compiled;
warm: the same directory again, now holding the compiled kernels (loaded from disk).
The child does what the trainer does before its first step (import the engine, set the threads,
compile_kernels(), build the model and AdamW), runs one step and a second one (a second step
much faster than the first in the warm case would mean the first step still compiled something).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common
from common import (
    add_markdown_arg,
    command_line,
    emit_markdown,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

CHILD = r"""
import time, json
marks = [("launch", {launch})]
def mark(name): marks.append((name, time.time()))
mark("interpreter up")
import tui_llm  # first, as the CLI does: it sets the thread-pool environment before numpy loads
import numpy as np
from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.models.gpt2_config import preset_config
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.training.optim import AdamW, AdamWConfig
from tui_llm.engine.machine import set_threads
mark("engine imported")
set_threads({threads})
compile_kernels()
mark("kernels compiled/loaded")
model = GPT.random_init(preset_config({model!r}), seed=42)
opt = AdamW(model, AdamWConfig())
tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, size=({batch}, {seq} + 1), dtype=np.int32)
mark("model + optimizer built")
for i in range(2):
    model.forward(tokens[:, :-1], tokens[:, 1:], training=True)
    model.backward()
    opt.update(1e-4, opt.grad_norm())
    mark(f"step {{i + 1}} done")
print(json.dumps(marks))
"""


def run_child(args, cache_dir: str) -> list[tuple[str, float]]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    launch = time.time()
    code = CHILD.format(launch=launch, threads=args.threads, model=args.model, batch=args.batch, seq=args.seq)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=common.REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr}")
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    t0 = marks[0][1]
    return [(name, t - t0) for name, t in marks]


def cli_times(args, cache_dir: str, train_file: str) -> dict[str, float]:
    """The real command, as a user meets it: seconds from launch to `tui-llm --help` done, and from
    launch to the first line, the `model:` line and the first `step` line of a headless run."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONUNBUFFERED="1", PYTHONPATH=str(common.REPO_ROOT))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tui_llm", "--help"], env=env, capture_output=True, check=True)
    times = {"--help": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory(prefix="startup-run-") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tui_llm", train_file, "--no-ui", "--model", args.model,
                                 "-b", str(args.batch), "-t", str(args.seq), "--steps", "1", "--val-every", "0",
                                 "--sample-every", "0", "--save-every", "0", "--out-dir", f"{out}/run"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            now = time.perf_counter() - t0
            times.setdefault("first headless line", now)
            if line.startswith("model:"):
                times["model: line"] = now
            if line.startswith("step 1/"):
                times["first step done"] = now
        proc.wait()
    return times


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d6")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="cold and warm runs each, median (default 1)")
    p.add_argument("--cli", metavar="TRAIN_BIN",
                   help="time the real `tui-llm` instead: --help, and a headless run's first line, model line and "
                        "first step (cold and warm), on this token file")
    add_markdown_arg(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    info = print_machine(machine_info())
    if args.cli:
        cold, warm = [], []
        for _ in range(args.repeats):  # alternating cold and warm
            with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
                cold.append(cli_times(args, cache, args.cli))
                warm.append(cli_times(args, cache, args.cli))
        headers = ["seconds since launch", "cold (empty numba cache)", "warm (cached kernels)"]
        rows = [[name, f"{statistics.median(r[name] for r in cold):.2f}", f"{statistics.median(r[name] for r in warm):.2f}"]
                for name in cold[0]]
        print(f"tui-llm, {args.model} B={args.batch} T={args.seq} --no-ui, fresh process per run, median of {args.repeats}")
        print(text_table(headers, rows))
        md = "\n".join([f"## Start-up of the command ({info['date']})", "", f"`{command_line()}`", "",
                        machine_markdown(info), "", markdown_table(headers, rows), ""])
        emit_markdown(md, args.markdown)
        return
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            cold.append(run_child(args, cache))
            warm.append(run_child(args, cache))

    names = [name for name, _ in cold[0]][1:]

    def median_at(runs, i):
        return statistics.median(run[i + 1][1] for run in runs)

    headers = ["seconds since launch", "cold (empty numba cache)", "warm (cached kernels)"]
    rows = [[name, f"{median_at(cold, i):.2f}", f"{median_at(warm, i):.2f}"] for i, name in enumerate(names)]
    print(f"{args.model} B={args.batch} T={args.seq}, fresh `python -c` per run, median of {args.repeats}")
    print(text_table(headers, rows))
    first = names.index("step 1 done")
    summary = (f"start-up to the end of the first step: cold {median_at(cold, first):.1f} s, "
               f"warm {median_at(warm, first):.1f} s")
    print(summary)
    md = "\n".join([f"## Start-up ({info['date']})", "", f"`{command_line()}`", "", machine_markdown(info), "",
                    f"{args.model} B={args.batch} T={args.seq}, a fresh process per run, median of {args.repeats}.", "",
                    markdown_table(headers, rows), "", summary, ""])
    emit_markdown(md, args.markdown)


if __name__ == "__main__":
    main()
