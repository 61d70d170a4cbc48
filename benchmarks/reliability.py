"""Never lose a run: kill -9 at random moments, then check what is left.

    python benchmarks/reliability.py --kills 60            # ~3-5 minutes on 2 cores

A tiny model (d2) trains headless with a checkpoint after every step; each round starts (or
resumes) the run, waits a random time (0-1.5 s after the first line: kernels loading, steps,
saves), and SIGKILLs it. After every kill: every checkpoint present must load, and the next
`--resume` must start. At the end one resume runs to completion and the run's history must have
exactly one train record per step, and its losses must equal an uninterrupted run's.
Prints the counts (kills, checkpoints checked, corrupt ones, temp files found and cleaned, resumes).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_machine  # (importing common puts the repo on sys.path)

from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import CheckpointError, load_training_checkpoint

STEPS = 60
TINY = ["--no-ui", "--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1",
        "--val-every", "0", "--sample-every", "0", "--save-every", "1", "--init-style", "numpy"]


def train_records(run: Path) -> list[dict]:
    out = []
    if not (run / "metrics.jsonl").exists():
        return out
    for line in (run / "metrics.jsonl").read_bytes().split(b"\n")[:-1]:
        record = json.loads(line)
        if record["type"] == "train":
            out.append(record)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print_machine()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tui-llm-reliability-"))
    tokens = np.tile(np.random.default_rng(0).integers(0, 50257, 37), 60)
    write_tokens(work / "t_train.bin", tokens[:1800])
    straight = work / "straight"
    subprocess.run([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *TINY, "--steps", str(STEPS),
                    "--out-dir", str(straight)], check=True, capture_output=True)
    expected = [r["loss"] for r in train_records(straight)]

    run = work / "run"
    counts = dict(kills=0, checkpoints_checked=0, corrupt=0, temp_files_seen=0, resumes=0, resume_failures=0)
    started = time.perf_counter()
    for _ in range(args.kills):
        fresh = not any(run.glob("ckpt_*.safetensors"))
        if fresh and run.exists():
            import shutil
            shutil.rmtree(run)  # killed before its first checkpoint: start again
        cmd = ([str(work / "t_train.bin"), "--out-dir", str(run)] if fresh else ["--resume", str(run)])
        proc = subprocess.Popen([sys.executable, "-m", "tui_llm", *cmd, *TINY, "--steps", str(STEPS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        out, err = proc.communicate(timeout=60)
        counts["kills"] += 1
        if not fresh:
            counts["resumes"] += 1
            if "error:" in err and "resuming" not in first + out:
                counts["resume_failures"] += 1
                print("resume failed:", err.strip().splitlines()[-1])
        counts["temp_files_seen"] += len(list(run.glob(".*.tui-llm-tmp")))
        for ckpt in run.glob("ckpt_*.safetensors"):
            counts["checkpoints_checked"] += 1
            try:
                load_training_checkpoint(ckpt)
            except CheckpointError as e:
                counts["corrupt"] += 1
                print("corrupt:", e)
        if all(r["step"] >= STEPS for r in train_records(run)[-1:]) and any(run.glob("ckpt_*")):
            break
    final = subprocess.run([sys.executable, "-m", "tui_llm", "--resume", str(run), *TINY, "--steps", str(STEPS)],
                           capture_output=True, text=True)
    records = train_records(run)
    steps_ok = [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses_ok = [r["loss"] for r in records] == expected
    left_tmp = len(list(run.glob(".*.tui-llm-tmp")))
    print(json.dumps(counts))
    print(f"final resume exit {final.returncode}; one record per step: {steps_ok}; losses identical to an "
          f"uninterrupted run: {losses_ok}; temp files left: {left_tmp}; {time.perf_counter() - started:.0f} s")
    ok = counts["corrupt"] == 0 and counts["resume_failures"] == 0 and steps_ok and losses_ok and left_tmp == 0 \
        and final.returncode in (0, 2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
