"""What the terminal UI costs the training loop: the same run with and without the UI.

Runs `tui-llm --no-ui` and then `tui-llm`, each in a tmux terminal of its own (200x50), on the
same data, model and seed, alternately, and compares the step times each wrote to its metrics.jsonl
(median over the steps after the first few). Also reads how much CPU the UI's own thread (the
process's main thread; training runs in a worker thread) used while the steps were timed: on a
machine whose cores the training threads keep busy, that time is what the UI costs. Needs tmux
and Linux's /proc.

`--load N` keeps N busy processes (one pure-Python spin loop each) running for the whole
measurement, a controlled stand-in for "other programs on the same cores": with --load 2 on a
2-core machine each core has one competitor, and the question is whether the UI makes training
lose more to them than --no-ui does. The headless and UI runs alternate, so slow drift in what
else the machine runs lands on both.

Both runs start alike, each in a new session (a tmux pane), and so does each busy process: Linux
schedules sessions fairly against each other before threads within them (sched_autogroup), so a
run that shared its session with the load would get a fraction of the CPU the other gets. An
earlier version ran the headless run from this script's own session and the UI one in tmux; with
other programs about, that alone moved the "UI cost" anywhere from -60% to +77%.

    python benchmarks/ui_cost.py --train data/tiny_shakespeare_train.bin            # d6, B=8, T=64, 50 steps
    python benchmarks/ui_cost.py --train data/shakespeare_train.bin --load 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def step_times(run_dir: Path, skip: int) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step_ms"] for r in records if r["type"] == "train"][skip:]


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's main thread (its task id is the process id)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="data/tiny_shakespeare_train.bin")
    p.add_argument("--model", default="d6")
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("-t", "--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    p.add_argument("--size", default="200x50", help="terminal size for the UI run")
    p.add_argument("--repeats", type=int, default=3, help="alternate headless/UI runs this many times")
    p.add_argument("--load", type=int, default=0, help="busy processes running meanwhile (e.g. one per core)")
    args = p.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is needed", file=sys.stderr)
        return 2
    # each in a session of its own, as programs run from other terminals are (see in_pane)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(args.load)]
    try:
        return measure(args)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()


def in_pane(args, session: str, argv: list[str], done: Path) -> int:
    """Start `tui-llm ARGV` in a tmux pane of its own (both runs alike: a new session each, so the
    kernel's per-session scheduling, autogroup, treats them the same); returns the pane's shell pid."""
    width, height = args.size.split("x")
    cmd = " ".join(["cd", shlex.quote(os.getcwd()), "&&", "env", f"PYTHONPATH={shlex.quote(os.getcwd())}",
                    sys.executable, "-m", "tui_llm", *map(shlex.quote, argv)])
    subprocess.run(["tmux", "-L", "ui_cost", "new-session", "-d", "-s", session, "-x", width, "-y", height,
                    f"{cmd} > /dev/null; touch {done}" if "--no-ui" in argv else f"{cmd}; touch {done}"], check=True)
    return int(subprocess.run(["tmux", "-L", "ui_cost", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                              capture_output=True, text=True, check=True).stdout.split()[0])


def measure(args) -> int:
    common = [args.train, "--model", args.model, "-b", str(args.batch_size), "-t", str(args.seq_len),
              "--steps", str(args.steps), "--val-every", "0", "--sample-every", "0", "--save-every", "0"]
    tmp = Path(tempfile.mkdtemp(prefix="ui_cost_"))
    headless, ui, ui_cpu_share, ratios = [], [], [], []
    for rep in range(args.repeats):
        run = tmp / f"headless{rep}"
        done = tmp / f"headless{rep}.done"
        in_pane(args, f"ui_cost_h{rep}", [*common, "--no-ui", "--out-dir", str(run)], done)
        while not done.exists():
            time.sleep(0.5)
        pair = statistics.median(step_times(run, args.skip))
        headless += step_times(run, args.skip)

        run = tmp / f"ui{rep}"
        done = tmp / f"ui{rep}.done"
        session = f"ui_cost_{rep}"
        shell = in_pane(args, session, [*common, "--out-dir", str(run)], done)
        start = None  # (wall, UI thread CPU) when the timed steps begin
        while True:  # quit once finished: the app stays open until 'q'
            time.sleep(0.2)
            records = train_records(run)
            if start is None and sum(r["type"] == "train" for r in records) >= args.skip:
                pid = int(subprocess.run(["pgrep", "-P", str(shell)], capture_output=True, text=True).stdout.split()[0])
                start = (time.monotonic(), main_thread_cpu_seconds(pid))
            if records and records[-1]["type"] == "finished":
                if start is not None:
                    ui_cpu_share.append((main_thread_cpu_seconds(pid) - start[1]) / (time.monotonic() - start[0]))
                subprocess.run(["tmux", "-L", "ui_cost", "send-keys", "-t", session, "q"])
                break
        while not done.exists():
            time.sleep(0.5)
        ui += step_times(run, args.skip)
        ratios.append(statistics.median(step_times(run, args.skip)) / pair)
        print(f"pair {rep + 1}: --no-ui {pair:.1f} ms, UI {pair * ratios[-1]:.1f} ms ({100 * (ratios[-1] - 1):+.1f}%)",
              flush=True)

    h, u = statistics.median(headless), statistics.median(ui)
    print(f"{args.model} B={args.batch_size} T={args.seq_len}, {args.steps} steps x {args.repeats}, UI at {args.size}, "
          f"{args.load} busy processes")
    print(f"median of the pairs' cost: {100 * (statistics.median(ratios) - 1):+.1f}%")
    print(f"median step  --no-ui {h:.1f} ms   UI {u:.1f} ms   UI cost {100 * (u / h - 1):+.1f}%")
    print(f"mean step    --no-ui {statistics.mean(headless):.1f} ms   UI {statistics.mean(ui):.1f} ms   "
          f"UI cost {100 * (statistics.mean(ui) / statistics.mean(headless) - 1):+.1f}%")
    if ui_cpu_share:
        print(f"UI thread CPU while training: {100 * statistics.mean(ui_cpu_share):.1f}% of one core "
              f"(runs: {', '.join(f'{100 * c:.1f}%' for c in ui_cpu_share)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
