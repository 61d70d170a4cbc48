"""Never lose a run: kill -9 at random moments, then check what is left.

    python benchmarks/reliability.py --kills 60            # ~3-5 minutes on 2 cores

A tiny model (d2) trains headless with a checkpoint after every step; each round starts (or
resumes) the run, waits a random time (0-1.5 s after the first line: kernels loading, steps,
saves), and SIGKILLs it. After every kill: every checkpoint present must load, and the next
`--resume` must start. At the end one resume runs to completion and the run's history must have
exactly one train record per step, and its losses must equal an uninterrupted run's.
Prints the counts (kills, checkpoints checked, corrupt ones, temp files found and cleaned, resumes).
A run killed before its first checkpoint is started again with the same command (its directory
holds only leftovers; nothing is deleted by hand).

The newer surfaces (issue 20), each a count of outcomes:

    python benchmarks/reliability.py --kills 0 --signals 30 --pipes 10 --fuzz 300 --history 4

  --signals N  SIGINT or SIGTERM at a random moment 0-4 s after launch (start-up included): the exit
               status must be 130/143, no traceback, and a checkpoint exactly at the last step
               trained (none when nothing was trained)
  --pipes N    `tui-llm --no-ui | head -n K` (K random), SIGINT once head has gone: exit 130, the
               checkpoint of the last step, no traceback
  --fuzz N     N hostile request lines (tests/fuzz_cases.py) to the control channel of one live run:
               every reply `ok` or an error, the run trains on and stops cleanly
  --history N  N seeds of a metrics.jsonl mixed with hostile lines: `watch --no-ui` and `--resume`
               exit 0 with no traceback
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
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
BASE = ["--no-ui", "--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1",
        "--init-style", "numpy"]
TINY = [*BASE, "--val-every", "0", "--sample-every", "0", "--save-every", "1"]
LIVE = [*BASE, "--val-every", "0", "--sample-every", "0", "--save-every", "0", "--steps", "100000"]


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
    p.add_argument("--signals", type=int, default=0)
    p.add_argument("--pipes", type=int, default=0)
    p.add_argument("--fuzz", type=int, default=0)
    p.add_argument("--history", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print_machine()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tui-llm-reliability-"))
    tokens = np.tile(np.random.default_rng(0).integers(0, 50257, 37), 60)
    write_tokens(work / "t_train.bin", tokens[:1800])
    ok = True
    if args.signals:
        ok &= signal_trials(work, rng, args.signals)
    if args.pipes:
        ok &= pipe_trials(work, rng, args.pipes)
    if args.fuzz:
        ok &= control_fuzz(work, rng, args.fuzz)
    if args.history:
        ok &= history_fuzz(work, args.history)
    if args.kills:
        ok &= kill_trials(work, rng, args.kills)
    return 0 if ok else 1


def kill_trials(work: Path, rng: random.Random, kills: int) -> bool:
    straight = work / "straight"
    subprocess.run([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *TINY, "--steps", str(STEPS),
                    "--out-dir", str(straight)], check=True, capture_output=True)
    expected = [r["loss"] for r in train_records(straight)]

    run = work / "run"
    counts = dict(kills=0, checkpoints_checked=0, corrupt=0, temp_files_seen=0, resumes=0, resume_failures=0,
                  restarts_over_leftovers=0, restart_failures=0)
    started = time.perf_counter()
    for _ in range(kills):
        fresh = not any(run.glob("ckpt_*.safetensors"))
        if fresh and run.exists():
            counts["restarts_over_leftovers"] += 1  # killed before its first checkpoint: the same command again
        cmd = ([str(work / "t_train.bin"), "--out-dir", str(run)] if fresh else ["--resume", str(run)])
        proc = subprocess.Popen([sys.executable, "-m", "tui_llm", *cmd, *TINY, "--steps", str(STEPS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        out, err = proc.communicate(timeout=60)
        counts["kills"] += 1
        if "error:" in err and "Traceback" not in err and not (first + out).strip():
            counts["restart_failures" if fresh else "resume_failures"] += 1
            print("start failed:", err.strip().splitlines()[-1])
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
    return counts["corrupt"] == 0 and counts["resume_failures"] == 0 and counts["restart_failures"] == 0 \
        and steps_ok and losses_ok and left_tmp == 0 and final.returncode in (0, 2)


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name[5:13]) for p in run.glob("ckpt_*.safetensors"))


def signal_trials(work: Path, rng: random.Random, trials: int) -> bool:
    """A stop signal at any moment, start-up included."""
    counts = collections.Counter()
    for i in range(trials):
        run = work / f"signal{i}"
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *LIVE, "--out-dir", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, 4.0))
        proc.send_signal(signum)
        err = proc.communicate(timeout=120)[1]
        trained = [r["step"] for r in train_records(run)]
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
        counts[f"exit {proc.returncode}"] += 1
        counts["right exit status"] += proc.returncode == expected
        counts["tracebacks"] += "Traceback" in err
        if trained:
            counts["stopped while training"] += 1
            counts["saved the last step"] += checkpoint_steps(run) == [trained[-1]]
        else:
            counts["stopped before the first step"] += 1
            counts["nothing saved"] += not checkpoint_steps(run)
    print("signals:", json.dumps(dict(sorted(counts.items()))))
    return counts["right exit status"] == trials and counts["tracebacks"] == 0 and \
        counts["saved the last step"] == counts["stopped while training"] and \
        counts["nothing saved"] == counts["stopped before the first step"]


def pipe_trials(work: Path, rng: random.Random, trials: int) -> bool:
    """`tui-llm --no-ui | head -n K`, then SIGINT once head has exited."""
    counts = collections.Counter()
    for i in range(trials):
        run = work / f"pipe{i}"
        proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *LIVE, "--out-dir", str(run)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        head = subprocess.Popen(["head", "-n", str(rng.randrange(1, 12))], stdin=proc.stdout, stdout=subprocess.DEVNULL)
        proc.stdout.close()
        head.wait(120)
        seen = len(train_records(run))
        deadline = time.monotonic() + 120
        while len(train_records(run)) < seen + 3 and time.monotonic() < deadline:  # it goes on after head left
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        trained = [r["step"] for r in train_records(run)]
        counts["exit 130"] += proc.returncode == 130
        counts["tracebacks"] += "Traceback" in err
        counts["saved the last step"] += bool(trained) and checkpoint_steps(run) == [trained[-1]]
        counts["said once"] += err.count("standard output failed") == 1
    print("pipes:", json.dumps(dict(sorted(counts.items()))))
    return counts["exit 130"] == counts["saved the last step"] == trials and counts["tracebacks"] == 0


def control_fuzz(work: Path, rng: random.Random, cases: int) -> bool:
    """Hostile request lines to the control channel of one live run."""
    import socket

    from tests.fuzz_cases import control_cases
    from tui_llm.engine.run.channel import socket_path

    run = work / "fuzzed"
    proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *LIVE, "--out-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counts = collections.Counter()
    try:
        while not (run / "control.sock").exists() or not train_records(run):
            time.sleep(0.05)
        for case in control_cases(rng, cases):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(60)
                sock.connect(str(socket_path(run)))
                sock.sendall(case)
                if not case.endswith(b"\n"):
                    counts["no reply due"] += 1
                    continue
                data = b""
                while data.count(b"\n") < case.count(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                replies = [json.loads(line) for line in data.split(b"\n") if line]
                counts["connection closed"] += not replies
                for reply in replies:
                    good = reply == {"ok": True} or (reply.get("ok") is False and isinstance(reply.get("error"), str))
                    counts["ok" if reply.get("ok") is True else "error reply" if good else "bad reply"] += 1
        before = len(train_records(run))
        while len(train_records(run)) < before + 3 and proc.poll() is None:
            time.sleep(0.05)
        counts["trained on"] = int(proc.poll() is None)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path(run)))
            sock.sendall(b'{"command": "stop"}\n')
            sock.recv(100)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    trained = [r["step"] for r in train_records(run)]
    counts["cases"] = cases
    counts["stopped cleanly"] = int(proc.returncode == 0 and checkpoint_steps(run) == [trained[-1]])
    counts["tracebacks"] = int("Traceback" in err)
    print("control channel fuzz:", json.dumps(dict(sorted(counts.items()))))
    return counts["bad reply"] == 0 and counts["trained on"] == 1 and counts["stopped cleanly"] == 1


def history_fuzz(work: Path, seeds: int) -> bool:
    """metrics.jsonl mixed with hostile lines, read by watch --no-ui and --resume."""
    import shutil

    from tests.fuzz_cases import metrics_lines

    base = work / "history-base"
    subprocess.run([sys.executable, "-m", "tui_llm", str(work / "t_train.bin"), *BASE, "--save-every", "2",
                    "--val-every", "2", "--sample-every", "2", "--steps", "4", "--out-dir", str(base)],
                   check=True, capture_output=True)
    counts = collections.Counter()
    for seed in range(seeds):
        rng = random.Random(seed)
        run = work / f"history{seed}"
        shutil.copytree(base, run)
        good = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
        bad = [line + b"\n" for line in metrics_lines(rng, 150)]
        mixed = []
        for line in good:
            mixed += [line] + [bad.pop() for _ in range(rng.randrange(0, 12)) if bad]
        (run / "metrics.jsonl").write_bytes(b"".join(mixed + bad))
        counts["hostile lines"] += 150 + 14
        for name, cmd in (("watch", ["watch", str(run), "--no-ui"]),
                          ("resume", ["--resume", str(run), "--no-ui", "--steps", "6"])):
            r = subprocess.run([sys.executable, "-m", "tui_llm", *cmd], capture_output=True, text=True, timeout=120)
            counts[f"{name} exit {r.returncode}"] += 1
            counts["tracebacks"] += "Traceback" in r.stderr
    print("history fuzz:", json.dumps(dict(sorted(counts.items()))))
    return counts["tracebacks"] == 0 and counts["watch exit 0"] == counts["resume exit 0"] == seeds


if __name__ == "__main__":
    raise SystemExit(main())
