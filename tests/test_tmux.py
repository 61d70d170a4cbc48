"""The real terminal UI inside tmux: start `tui-llm`, press keys, read the screen.

Skipped where tmux is not installed (.ci/run installs it).
"""

import json
import os
import re
import shlex
import shutil
import signal
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import tui_llm
from tests.run_helpers import TIMEOUT_S, no_steps_while_paused, run_cli, wait_until
from tests.run_helpers import run as run_command
from tui_llm.engine.data.tokens import write_tokens

SOURCE_ROOT = Path(tui_llm.__file__).resolve().parent.parent
"""The tree under test: the tmux server may have been started by someone else, with their environment."""

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.tmux, pytest.mark.ui, pytest.mark.slow]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tmuxdata")
    tokens = np.tile(np.random.default_rng(1).integers(0, 50257, 41), 50)
    write_tokens(d / "tiny_train.bin", tokens[:1700])
    write_tokens(d / "tiny_val.bin", tokens[1700:])
    return d / "tiny_train.bin"


def tmux(*args, check=True) -> str:
    done = run_command(["tmux", *args])
    assert done.returncode == 0 or not check, (args, done.stderr)
    return done.stdout


class Terminal:
    def __init__(self, width, height, command):
        self.name = f"tui-llm-test-{uuid.uuid4().hex[:8]}"
        tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command)

    def screen(self) -> str:
        return tmux("capture-pane", "-p", "-t", self.name, check=False)

    def press(self, *keys):
        tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, predicate, what, timeout=TIMEOUT_S):
        """The screen once `predicate(screen)` holds; after `timeout` s fail showing the screen."""
        def shown():
            text = self.screen()
            return text if predicate(text) else None

        return wait_until(shown, what, timeout, seen=lambda: f"screen:\n{self.screen()}", interval=0.3)

    def pid(self) -> int:
        """The process the pane's inner shell runs (tui-llm; see `command`)."""
        pid = tmux("list-panes", "-t", self.name, "-F", "#{pane_pid}").split()[0]
        for _ in range(2):  # pane shell -> inner shell -> tui-llm
            children = run_command(["pgrep", "-P", pid]).stdout.split()
            assert len(children) == 1, children
            pid = children[0]
        return int(pid)

    def close(self):
        tmux("kill-session", "-t", self.name, check=False)


def tiny_args(train_file, steps, val_every=5, sample_every=0):
    return [str(train_file), "--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1",
            "--steps", str(steps), "--val-every", str(val_every), "--sample-every", str(sample_every),
            "--sample-len", "8", "--save-every", "0", "--init-style", "numpy"]


def command(train_file, run_dir, steps, sample_every=0, val_every=5):
    args = ["env", f"PYTHONPATH={SOURCE_ROOT}", sys.executable, "-m", "tui_llm",
            *tiny_args(train_file, steps, val_every, sample_every), "--out-dir", str(run_dir)]
    # An inner shell records the exit status, even after a hangup: when tmux kills the session,
    # the pane's shell (the session leader) gets SIGHUP and exits, and the kernel then sends
    # SIGHUP to the foreground process group, as when a terminal is closed: tui-llm and the inner
    # shell, which survives it (its trap runs after tui-llm exits; tui-llm gets the default
    # disposition back at exec). The outer shell keeps the window open after a normal exit.
    inner = "trap : HUP; " + shlex.join(args) + f"; echo EXIT=$? > {shlex.quote(str(run_dir) + '.exit')}"
    return f"sh -c {shlex.quote(inner)}; sleep 60"


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

        term.press("s")
        term.wait_for(lambda s: "step" in s.split("samples")[-1] and "sample" in s, "a sample")
        term.press("c")
        screen = term.wait_for(lambda s: "saved" in s, "the checkpoint log line")
        assert list(run.glob("ckpt_*.safetensors"))
        assert shown_step(screen) == paused_at  # sampled and saved while paused: no step since

        term.press("p")
        term.wait_for(lambda s: "RUNNING" in s, "resume")
        term.press("q")
        term.wait_for(lambda s: "Save and quit" in s, "the quit dialog")
        term.press("s")
        term.wait_for(lambda s: (run.parent / "run.exit").exists(), "exit")
        assert (run.parent / "run.exit").read_text().strip() == "EXIT=0"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert no_steps_while_paused(metrics) == ["sample", "checkpoint"]
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
        screen = term.wait_for(lambda s: "FINISHED" in s, "the run to finish")
        assert "step 30/30" in screen
        for text in ("fwd", "bwd", "opt", "tok/s", "train", "val"):
            assert text in screen, text
        # the timings panel repaints only its lines that changed: the terminal shows the last step's
        last = [m for m in read_metrics(run) if m["type"] == "train"][-1]
        lines = (f"step {last['step_ms']:7.1f} ms", f"fwd {last['fwd_ms']:8.1f} ms", f"opt {last['opt_ms']:8.1f} ms")
        term.wait_for(lambda s: all(line in s for line in lines), f"the last step's timings {lines}")
        assert re.search(r"^│step (10|20|29)\b", screen, re.M)  # a sample entry, at the panel's left edge
        term.press("m")  # the chart's other metrics, and other x axes
        term.wait_for(lambda s: "─ lr ─" in s and "━━ lr" in s, "the lr chart")
        term.press("m", "m", "m")
        term.wait_for(lambda s: "─ step ms ─" in s and "━━ fwd" in s and "━━ opt" in s, "the step ms chart")
        term.press("x")
        term.wait_for(lambda s: "x: tokens" in s, "the tokens axis")
        term.press("m")
        term.wait_for(lambda s: "─ loss ─" in s and "━━ val" in s, "back to the loss")
        term.press("q")
        term.wait_for(lambda s: (run.parent / "big.exit").exists(), "exit")
        assert (run.parent / "big.exit").read_text().strip() == "EXIT=0"
    finally:
        term.close()


# -- signals -------------------------------------------------------------------------------

SIGNAL_STEPS = 200


def train_losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if m["type"] == "train"]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted_losses(train_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli(*tiny_args(train_file, SIGNAL_STEPS, val_every=50), "--no-ui", "--out-dir", str(run))
    assert done.returncode == 0, done.stderr
    return train_losses(run)


@pytest.mark.parametrize("how", ["kill-session", "SIGTERM"])
def test_signal_saves_exits_and_resume_continues_exactly(train_file, tmp_path, uninterrupted_losses, how):
    """tmux kill-session hangs up the terminal (SIGHUP: exit 129); kill -TERM exits 143. Either
    way the step in progress finishes, a checkpoint of it is saved, and --resume continues with
    the losses of an uninterrupted run."""
    run = tmp_path / "run"
    term = Terminal(80, 24, command(train_file, run, SIGNAL_STEPS, val_every=50))
    exit_file = run.parent / "run.exit"
    try:
        term.wait_for(lambda s: (run / "metrics.jsonl").exists() and len(train_losses(run)) >= 5,
                      "the first steps")
        if how == "kill-session":
            term.close()
        else:
            os.kill(term.pid(), signal.SIGTERM)
        wait_until(exit_file.exists, f"{exit_file} (tui-llm's exit status)")
        assert exit_file.read_text().strip() == ("EXIT=129" if how == "kill-session" else "EXIT=143")
        if how == "SIGTERM":  # the terminal is given back: the exit summary shows in the shell's screen
            term.wait_for(lambda s: "continue with: tui-llm --resume" in s, "the exit summary", timeout=10)
    finally:
        term.close()
    metrics = read_metrics(run)
    stopped_at = len(train_losses(run))
    assert 5 <= stopped_at < SIGNAL_STEPS
    assert metrics[-1] == {**metrics[-1], "type": "finished", "reason": "interrupted", "step": stopped_at}
    checkpoints = sorted(run.glob("ckpt_*.safetensors"))
    assert [p.name for p in checkpoints] == [f"ckpt_{stopped_at:08d}.safetensors"]  # the current step, saved

    resumed = run_cli("--resume", str(run), "--no-ui", "--steps", str(SIGNAL_STEPS))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_at}" in resumed.stdout
    assert train_losses(run) == uninterrupted_losses  # bit-identical


def test_chat_screen_replies_and_resets(tmp_path):
    """`tui-llm chat` in a real terminal: type a message, the reply appears, /reset clears, /quit exits 0."""
    from tui_llm.engine.formats.llmc import write_llmc
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig

    cfg = GPTConfig(num_layers=1, num_heads=2, channels=32, max_seq_len=128, vocab_size=50257)
    model = tmp_path / "tiny.bin"
    write_llmc(model, cfg, GPT.random_init(cfg, seed=1).params.flat)
    args = ["env", f"PYTHONPATH={SOURCE_ROOT}", sys.executable, "-m", "tui_llm", "chat", str(model),
            "--chat-template", "chatml", "--temperature", "0", "--sample-len", "8", "--threads", "1",
            "--system", "be brief"]
    status = tmp_path / "chat.exit"
    inner = "trap : HUP; " + shlex.join(args) + f"; echo EXIT=$? > {shlex.quote(str(status))}"
    term = Terminal(90, 24, f"sh -c {shlex.quote(inner)}; sleep 60")
    try:
        term.wait_for(lambda s: "system: be brief" in s and "/help" in s, "the chat screen")
        term.press("-l", "hello model")
        term.press("Enter")
        screen = term.wait_for(lambda s: "you: hello model" in s and re.search(r"model: \S", s)
                               and "tok/s" in s, "the reply")
        assert "<|im_end|>" not in screen
        term.press("-l", "/reset")
        term.press("Enter")
        term.wait_for(lambda s: "conversation reset" in s and "hello model" not in s, "the reset")
        term.press("-l", "/quit")
        term.press("Enter")
        term.wait_for(lambda s: status.exists(), "exit")
        assert status.read_text().strip() == "EXIT=0"
    finally:
        term.close()
