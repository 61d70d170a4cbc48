"""What the terminal UI costs the training loop: the same run with and without the UI.

Runs `tui-llm --no-ui` and then `tui-llm` inside a tmux terminal (200x50) on the same data,
model and seed, and compares the step times each wrote to its metrics.jsonl (median over the
steps after the first few). Needs tmux.

    python benchmarks/ui_cost.py --train data/tiny_shakespeare_train.bin            # d6, B=8, T=64, 50 steps
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="data/tiny_shakespeare_train.bin")
    p.add_argument("--model", default="d6")
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("-t", "--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    p.add_argument("--size", default="200x50", help="terminal size for the UI run")
    p.add_argument("--repeats", type=int, default=2, help="alternate headless/UI runs this many times")
    args = p.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is needed", file=sys.stderr)
        return 2
    common = [args.train, "--model", args.model, "-b", str(args.batch_size), "-t", str(args.seq_len),
              "--steps", str(args.steps), "--val-every", "0", "--sample-every", "0", "--save-every", "0"]
    width, height = args.size.split("x")
    tmp = Path(tempfile.mkdtemp(prefix="ui_cost_"))
    headless, ui = [], []
    for rep in range(args.repeats):
        run = tmp / f"headless{rep}"
        subprocess.run([sys.executable, "-m", "tui_llm", *common, "--no-ui", "--out-dir", str(run)],
                       check=True, stdout=subprocess.DEVNULL)
        headless += step_times(run, args.skip)

        run = tmp / f"ui{rep}"
        done = tmp / f"ui{rep}.done"
        cmd = " ".join([sys.executable, "-m", "tui_llm", *common, "--out-dir", str(run)])
        session = f"ui_cost_{rep}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", width, "-y", height,
                        f"{cmd}; touch {done}"], check=True)
        # quit once finished: 'q' after the run reports finished (the app stays open until then)
        while True:
            time.sleep(1)
            lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
            if lines and json.loads(lines[-1])["type"] == "finished":
                subprocess.run(["tmux", "send-keys", "-t", session, "q"])
                break
        while not done.exists():
            time.sleep(0.5)
        ui += step_times(run, args.skip)

    h, u = statistics.median(headless), statistics.median(ui)
    print(f"{args.model} B={args.batch_size} T={args.seq_len}, {args.steps} steps x {args.repeats}, UI at {args.size}")
    print(f"median step  --no-ui {h:.1f} ms   UI {u:.1f} ms   UI cost {100 * (u / h - 1):+.1f}%")
    print(f"mean step    --no-ui {statistics.mean(headless):.1f} ms   UI {statistics.mean(ui):.1f} ms   "
          f"UI cost {100 * (statistics.mean(ui) / statistics.mean(headless) - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
