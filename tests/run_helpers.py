"""A real tiny headless run in a subprocess, for the control-channel and watch tests."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tui_llm.engine.data.tokens import write_tokens

TINY = ["--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy"]


def make_data(directory: Path) -> Path:
    """Token files with a repeating sentence; returns the training file."""
    tokens = np.tile(np.random.default_rng(0).integers(0, 50257, 37), 60)
    write_tokens(directory / "tiny_train.bin", tokens[:1800])
    write_tokens(directory / "tiny_val.bin", tokens[1800:])
    return directory / "tiny_train.bin"


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


class HeadlessRun:
    """`tui-llm --no-ui` in a subprocess; its stdout lines are collected by a thread."""

    def __init__(self, train_file, run_dir, *extra):
        self.run_dir = Path(run_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--out-dir", str(run_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def steps_printed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("step "))

    def wait_for(self, predicate, what, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(f"the run exited ({self.proc.returncode}) before {what}: "
                                     f"{self.proc.stderr.read()}\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.lines[-20:]))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
