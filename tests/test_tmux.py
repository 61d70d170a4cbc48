"""The real terminal UI inside tmux: start `tui-llm`, press keys, read the screen.

Skipped where tmux is not installed (.ci/run installs it).
"""

import json
import re
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from tui_llm.engine.data import write_tokens

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tmuxdata")
    tokens = np.tile(np.random.default_rng(1).integers(0, 50257, 41), 50)
    write_tokens(d / "tiny_train.bin", tokens[:1700])
    write_tokens(d / "tiny_val.bin", tokens[1700:])
    return d / "tiny_train.bin"


class Terminal:
    def __init__(self, width, height, command):
        self.name = f"tui-llm-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        command], check=True)

    def screen(self) -> str:
        r = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return r.stdout

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def press(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, predicate, what, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def command(train_file, run_dir, steps, sample_every=0):
    args = [sys.executable, "-m", "tui_llm", str(train_file), "--model", "d2", "-b", "2", "-t", "16",
            "--max-seq-len", "32", "--threads", "1", "--steps", str(steps), "--val-every", "5",
            "--sample-every", str(sample_every), "--sample-len", "8", "--save-every", "0", "--init-style", "numpy",
            "--out-dir", str(run_dir)]
    # keep the window open after exit so the test can read the exit status
    return " ".join(f"'{a}'" for a in args) + f"; echo EXIT=$? > '{run_dir}.exit'; sleep 60"


def test_dashboard_80x24_keys_pause_sample_save_quit(train_file, tmp_path):
    run = tmp_path / "run"
    term = Terminal(80, 24, command(train_file, run, 100000))
    try:
        screen = term.wait_for(lambda s: "RUNNING" in s and "step " in s, "the run to start")
        for panel in ("loss", "step time", "samples", "log", "Pause", "Sample", "Save", "Quit"):
            assert panel in screen, panel
        assert "d2" in screen  # model in the status bar

        term.press("p")
        term.wait_for(lambda s: "PAUSED" in s, "pause")
        def shown_step(screen):
            line = [line for line in screen.splitlines() if "PAUSED" in line or "RUNNING" in line][0]
            return line.split("step ")[1].split("/")[0]

        paused_at = shown_step(term.screen())
        time.sleep(1.5)
        assert shown_step(term.screen()) == paused_at  # no steps while paused

        term.press("s")
        term.wait_for(lambda s: "step" in s.split("samples")[-1] and "sample" in s, "a sample")
        term.press("c")
        term.wait_for(lambda s: "saved" in s, "the checkpoint log line")
        assert list(run.glob("ckpt_*.safetensors"))

        term.press("p")
        term.wait_for(lambda s: "RUNNING" in s, "resume")
        term.press("q")
        term.wait_for(lambda s: "Save and quit" in s, "the quit dialog")
        term.press("s")
        term.wait_for(lambda s: (run.parent / "run.exit").exists(), "exit", timeout=60)
        assert (run.parent / "run.exit").read_text().strip() == "EXIT=0"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        final = [m for m in metrics if m["type"] == "checkpoint"][-1]
        steps = [m for m in metrics if m["type"] == "train"]
        assert final["step"] == len(steps)  # saved at the step it stopped at
        assert metrics[-1]["type"] == "finished"
    finally:
        term.close()


def test_dashboard_200x50_shows_curves_timings_and_samples(train_file, tmp_path):
    run = tmp_path / "big"
    term = Terminal(200, 50, command(train_file, run, 30, sample_every=10))
    try:
        screen = term.wait_for(lambda s: "FINISHED" in s, "the run to finish", timeout=180)
        assert "step 30/30" in screen
        for text in ("fwd", "bwd", "opt", "tok/s", "train", "val"):
            assert text in screen, text
        assert re.search(r"^│step (10|20|29)\b", screen, re.M)  # a sample entry, at the panel's left edge
        term.press("q")
        term.wait_for(lambda s: (run.parent / "big.exit").exists(), "exit", timeout=60)
        assert (run.parent / "big.exit").read_text().strip() == "EXIT=0"
    finally:
        term.close()
