"""Scale-out: gradient accumulation against its BLAS floor, MPI ranks against threads, the all-reduce.

    python benchmarks/scale.py accum                  # d12, 4,096 tokens/step = 16 micro-batches of 4x64
    python benchmarks/scale.py ranks                  # 2 ranks x 1 thread vs 1 process x 2 threads (d6, d12)
    python benchmarks/scale.py zero                   # 2 ranks, d12: --zero 1 against the plain all-reduce
    mpiexec -n 2 python benchmarks/scale.py allreduce # all-reduce of a d12 gradient (0.5 GB), time and bandwidth
    python benchmarks/scale.py paper --step-s S --allreduce-gbps G   # the multi-machine estimate

accum: one optimizer step = 16 micro-batches (forward + backward, gradients accumulated) + one
AdamW update, timed through the trainer's own step; the floor is 16 x the same micro-batch's matrix
products replayed alone (benchmarks/step.py's recorder), alternating with the steps.
ranks: the same headless run (equal total batch, same data) launched both ways; median step time
over the steps after the first few, from each run's metrics.jsonl.
zero: the same 2-rank run with and without --zero 1; median step time and each rank's peak RSS
(getrusage, written at exit by a small runner around `python -m tui_llm`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import Stats, fmt_ms, print_machine

D12_PARAMS = 124_475_904


def synthetic_tokens(directory: Path, n: int = 400_000) -> Path:
    from tui_llm.engine.data.tokens import write_tokens

    path = directory / "scale_train.bin"
    write_tokens(path, np.random.default_rng(0).integers(0, 50257, n))
    return path


# ---------------------------------------------------------------------------------------
# accumulation vs floor

def accum(args) -> None:
    from step import Bench, Replay, RunSpec, record_matmuls

    import tui_llm
    from tui_llm.engine.machine import set_threads

    set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tui-llm-scale-"))
    train = synthetic_tokens(work)
    micro = args.batch * args.seq
    config = tui_llm.RunConfig(train_file=str(train), model=args.model, batch_size=args.batch, seq_len=args.seq,
                               total_batch_size=micro * args.accum, steps=10**6, init_style="numpy",
                               threads=args.threads, out_dir=str(work / "run"))
    trainer = tui_llm.Trainer(config)
    trainer._emit = lambda event: None
    bench = Bench(RunSpec(args.model, args.batch, args.seq))
    replay = Replay(record_matmuls(bench))
    del bench
    trainer._train_step()  # warm-up
    replay.run()
    steps, floors = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer._train_step()
        steps.append(time.perf_counter() - t0)
        floors.append(sum(sum(replay.run().values()) for _ in range(args.accum)))
    step, floor = Stats(steps), Stats(floors)
    print(f"{args.model} {args.accum} micro-batches of {args.batch}x{args.seq} ({micro * args.accum:,} tokens/step), "
          f"{args.threads or 'all'} threads")
    print(f"  step  median {fmt_ms(step.median)}  ({fmt_ms(step.median / args.accum)} per micro-batch)")
    print(f"  floor median {fmt_ms(floor.median)}  ({fmt_ms(floor.median / args.accum)} per micro-batch)")
    print(f"  step / floor {step.median / floor.median:.3f}x")
    trainer.run_dir.close()
    del trainer, replay
    shutil.rmtree(work, ignore_errors=True)
    if args.vs_torch:
        theirs = torch_accum_step(args)
        print(f"  PyTorch {theirs.median:.2f} s per step (median of {args.steps}; eager, same accumulation) -> "
              f"ours is {theirs.median / step.median:.2f}x faster")


def torch_accum_step(args) -> Stats:
    """The same accumulated step in PyTorch eager (benchmarks/vs_torch.py's nanoGPT-style model),
    after ours in the same process: K x (forward, backward of loss/K), clip, AdamW."""
    from step import Bench, RunSpec
    from vs_torch import HPARAMS, build_torch_gpt, make_torch_optimizer, torch_environment

    torch_environment()
    import torch

    from tui_llm.engine.machine import set_threads

    torch.set_num_threads(set_threads(args.threads))
    bench = Bench(RunSpec(args.model, args.batch, args.seq))
    model = build_torch_gpt(torch, bench.config, bench.config.padded_vocab_size, seed=1337)
    del bench.model, bench.optimizer
    optimizer = make_torch_optimizer(torch, model, "default")
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.accum):
        tokens = rng.integers(0, 50257, (args.batch, args.seq + 1))
        batches.append((torch.from_numpy(np.ascontiguousarray(tokens[:, :-1])),
                        torch.from_numpy(np.ascontiguousarray(tokens[:, 1:]))))

    def step():
        for inputs, targets in batches:
            loss = model(inputs, targets) / args.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, HPARAMS["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return Stats(times)


# ---------------------------------------------------------------------------------------
# ranks vs threads

def median_step_ms(run: Path, skip: int, key: str = "step_ms") -> float:
    """The median of a train record's `key` (step_ms, or fwd_ms/bwd_ms/opt_ms) after the first `skip` steps."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([r[key] for r in steps if r["type"] == "train"][skip:])


def ranks(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="tui-llm-ranks-"))
    train = synthetic_tokens(work)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rows = []
    for model, batch, seq in ((m.split(":")[0], int(m.split(":")[1]), int(m.split(":")[2])) for m in args.configs):
        common_args = [str(train), "--no-ui", "--model", model, "-t", str(seq), "--steps", str(args.steps),
                       "--val-every", "0", "--sample-every", "0", "--save-every", "0", "--init-style", "numpy",
                       "--total-batch-size", str(batch * seq)]
        result = {}
        for label, cmd in (
            ("1 process x 2 threads", [sys.executable, "-m", "tui_llm", *common_args, "-b", str(batch),
                                       "--threads", "2"]),
            ("2 ranks x 1 thread", [shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "tui_llm",
                                    *common_args, "-b", str(batch // 2), "--threads", "1"]),
        ):
            out = work / f"{model}-{label.split()[0]}"
            subprocess.run([*cmd, "--out-dir", str(out)], check=True, capture_output=True, env=env)
            result[label] = median_step_ms(out, args.skip)
        rows.append((f"{model} {batch}x{seq}", result))
    for name, result in rows:
        a, b = result.values()
        print(f"{name}: " + ", ".join(f"{k} {v:,.0f} ms" for k, v in result.items()) + f"  (ranks/threads {b / a:.2f}x)")
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# ZeRO-1 against the plain all-reduce

PEAK_RSS_RUNNER = """
import atexit, os, resource, runpy, sys
out = sys.argv.pop(1)
rank = os.environ.get("PMI_RANK", "0")
atexit.register(lambda: open(os.path.join(out, "peak_rss_kib." + rank), "w").write(
    str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv[0] = "tui-llm"
runpy.run_module("tui_llm", run_name="__main__")
"""


def zero(args) -> None:
    """2 ranks x 1 thread, the same run with and without --zero 1: step time and each rank's peak RSS."""
    work = Path(tempfile.mkdtemp(prefix="tui-llm-zero-"))
    train = synthetic_tokens(work)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    common_args = [str(train), "--no-ui", "--model", args.model, "-b", str(args.batch), "-t", str(args.seq),
                   "--steps", str(args.steps), "--val-every", "0", "--sample-every", "0", "--save-every", "0",
                   "--init-style", "numpy", "--threads", "1", "--weight-decay", "0.1", "--grad-clip", "1.0"]
    print(f"{args.model}, 2 ranks x 1 thread, -b {args.batch} -t {args.seq} per rank, {args.steps} steps "
          f"(median of all but the first {args.skip})")
    for label, extra in (("all-reduce, whole AdamW state per rank", []), ("--zero 1", ["--zero", "1"])):
        out = work / ("zero" if extra else "plain")
        out.mkdir()
        subprocess.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-c", PEAK_RSS_RUNNER, str(out),
                        *common_args, *extra, "--out-dir", str(out / "run")], check=True, capture_output=True, env=env)
        rss = [int((out / f"peak_rss_kib.{r}").read_text()) * 1024 for r in range(2)]
        parts = " + ".join(f"{name} {median_step_ms(out / 'run', args.skip, key):,.0f}"
                           for name, key in (("fwd", "fwd_ms"), ("bwd", "bwd_ms"), ("opt", "opt_ms")))
        print(f"  {label:40s} step {median_step_ms(out / 'run', args.skip):7,.0f} ms ({parts})   peak RSS per rank "
              + " / ".join(f"{b / 2**30:.2f} GiB" for b in rss))
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# the all-reduce

def allreduce(args) -> None:
    from tui_llm.engine.training.distributed import World

    world = World.detect()
    buf = np.ones(args.params, np.float32)
    world.allreduce_mean_(buf)  # warm-up (and page faults)
    times = []
    for _ in range(args.repeats):
        world.barrier()
        t0 = time.perf_counter()
        world.allreduce_mean_(buf)
        times.append(time.perf_counter() - t0)
    if world.is_root:
        s = Stats(times)
        n = world.size
        moved = 2 * (n - 1) / n * buf.nbytes  # what a ring all-reduce moves per rank
        print(f"all-reduce of {buf.nbytes / 1e9:.2f} GB over {n} ranks: median {fmt_ms(s.median)}, "
              f"{moved / s.median / 1e9:.2f} GB/s algorithm bandwidth (2(N-1)/N x size / time)")


# ---------------------------------------------------------------------------------------
# on paper

def paper(args) -> None:
    size = D12_PARAMS * 4
    tokens_per_step = 2**19  # 0.5M tokens
    compute_1 = args.step_s * tokens_per_step / args.step_tokens  # one machine alone
    print(f"d12, {tokens_per_step:,} tokens per step; one machine computes {args.step_tokens:,} tokens in "
          f"{args.step_s:.2f} s -> {compute_1:,.0f} s per step alone")
    for gbit in (10, 100):
        for n in (2, 8, 32):
            comm = 2 * (n - 1) / n * size / (gbit / 8 * 1e9)
            compute = compute_1 / n
            eff = compute / (compute + comm)
            need = 9 * comm * n * args.step_tokens / args.step_s  # tokens per step for >= 90% (no overlap)
            print(f"  {gbit:>3} Gbit/s, N={n:>2}: compute {compute:8.1f} s + all-reduce {comm:5.2f} s -> "
                  f"{eff * 100:5.1f}% efficient; >= 90% needs >= {need:,.0f} tokens per step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accum")
    a.add_argument("--model", default="d12")
    a.add_argument("--batch", type=int, default=4)
    a.add_argument("--seq", type=int, default=64)
    a.add_argument("--accum", type=int, default=16)
    a.add_argument("--steps", type=int, default=3)
    a.add_argument("--threads", type=int, default=0)
    a.add_argument("--vs-torch", action="store_true",
                   help="then the same step in PyTorch eager (run with /tmp/benchvenv/bin/python: see vs_torch.py)")
    r = sub.add_parser("ranks")
    r.add_argument("--configs", nargs="+", default=["d6:8:64", "d12:4:64"])
    r.add_argument("--steps", type=int, default=12)
    r.add_argument("--skip", type=int, default=2)
    z = sub.add_parser("zero")
    z.add_argument("--model", default="d12")
    z.add_argument("--batch", type=int, default=2)
    z.add_argument("--seq", type=int, default=64)
    z.add_argument("--steps", type=int, default=8)
    z.add_argument("--skip", type=int, default=2)
    ar = sub.add_parser("allreduce")
    ar.add_argument("--params", type=int, default=D12_PARAMS)
    ar.add_argument("--repeats", type=int, default=5)
    pp = sub.add_parser("paper")
    pp.add_argument("--step-s", type=float, required=True, help="measured seconds of one step of --step-tokens")
    pp.add_argument("--step-tokens", type=int, default=4096)
    args = p.parse_args()
    if args.what != "allreduce" or os.environ.get("PMI_RANK", "0") == "0":
        print_machine()
    {"accum": accum, "ranks": ranks, "zero": zero, "allreduce": allreduce, "paper": paper}[args.what](args)


if __name__ == "__main__":
    main()
