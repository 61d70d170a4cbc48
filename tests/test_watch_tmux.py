"""`tui-llm watch` in tmux: a headless run in one terminal, the dashboard watching it in another.

Skipped where tmux is not installed.
"""

import re
import shutil
import sys
from pathlib import Path

import pytest

import tui_llm
from tests.run_helpers import TINY, make_data, no_steps_while_paused, read_metrics, wait_until
from tests.test_tmux import Terminal
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import SOCKET, ControlClient

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.tmux, pytest.mark.ui, pytest.mark.slow]

ROOT = Path(tui_llm.__file__).resolve().parent.parent
BRAILLE = re.compile("[\u2801-\u28ff]")


def shell(*args, log=None, exit_file=None):
    """A command line for tmux: this checkout's code, unbuffered, its status kept after it exits."""
    line = f"env PYTHONPATH='{ROOT}' PYTHONUNBUFFERED=1 '{sys.executable}' -m tui_llm " + " ".join(f"'{a}'" for a in args)
    if log:
        line += f" 2>&1 | tee '{log}'"
    if exit_file:
        line += f"; echo EXIT=$? > '{exit_file}'"
    return line + "; sleep 60"


def steps_in(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("step ")) if log.exists() else 0


def wait(predicate, what, log=None):
    """Wait for `predicate()`; on a timeout show the headless run's last lines."""
    seen = (lambda: "run.log:\n" + "\n".join(log.read_text().splitlines()[-20:])) if log else (lambda: "")
    wait_until(predicate, what, seen=seen, interval=0.2)


def test_watch_a_headless_run_in_another_terminal(tmp_path):
    train_file = make_data(tmp_path)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    trainer = Terminal(100, 30, shell(train_file, "--no-ui", *TINY, "--steps", "100000", "--val-every", "5",
                                      "--sample-every", "0", "--sample-len", "8", "--save-every", "0",
                                      "--out-dir", run_dir, log=log))
    watcher = None
    try:
        wait(lambda: (run_dir / SOCKET).exists() and steps_in(log) > 0, "the headless run", log)
        watcher = Terminal(80, 24, shell("watch", run_dir, exit_file=tmp_path / "watch.exit"))
        screen = watcher.wait_for(lambda s: "RUNNING" in s and "step " in s and BRAILLE.search(s), "the curves")
        for panel in ("loss", "Pause", "Sample", "Save", "Quit"):
            assert panel in screen, panel

        watcher.press("p")
        watcher.wait_for(lambda s: "PAUSED" in s, "the pause")
        wait(lambda: any(line.startswith("paused at step") for line in log.read_text().splitlines()), "paused line")
        paused_at = steps_in(log)

        watcher.press("s")
        wait(lambda: any(m["type"] == "sample" for m in read_metrics(run_dir)), "a sample in metrics.jsonl")
        watcher.wait_for(lambda s: "sample" in s.lower(), "the sample on the dashboard")
        watcher.press("c")
        wait(lambda: list(run_dir.glob("ckpt_*.safetensors")), "a checkpoint")
        watcher.wait_for(lambda s: "saved" in s, "the checkpoint log line")
        assert steps_in(log) == paused_at  # sampled and saved while paused: the headless run printed no step

        watcher.press("p")
        watcher.wait_for(lambda s: "RUNNING" in s, "resumed")
        wait(lambda: steps_in(log) > paused_at + 3, "the headless run training again", log)
        watcher.press("q")
        screen = watcher.wait_for(lambda s: "Just leave" in s or (tmp_path / "watch.exit").exists(),
                                  "the leave dialog or the watcher's exit")
        if "Just leave" in screen:  # unsaved steps: the dialog; leave without asking for a save
            watcher.press("l")
        wait(lambda: (tmp_path / "watch.exit").exists(), "the watcher to exit")
        assert (tmp_path / "watch.exit").read_text().strip() == "EXIT=0"
        going = steps_in(log)
        wait(lambda: steps_in(log) > going + 3, "the run to go on after the watcher left", log)
        assert not any(m["type"] == "finished" for m in read_metrics(run_dir))

        with ControlClient.connect(run_dir) as client:
            assert client.send(ev.Stop())["ok"]
        wait(lambda: read_metrics(run_dir) and read_metrics(run_dir)[-1]["type"] == "finished", "the run to stop", log)
        wait(lambda: not (run_dir / SOCKET).exists(), "the socket to go", log)
        assert no_steps_while_paused(read_metrics(run_dir)) == ["sample", "checkpoint"]

        # (opened before the other sessions close: tmux's server may not be restarted while it exits)
        history = Terminal(80, 24, shell("watch", run_dir, exit_file=tmp_path / "history.exit"))
        try:
            screen = history.wait_for(lambda s: "FINISHED" in s and BRAILLE.search(s), "the finished run's history")
            steps = sum(m["type"] == "train" for m in read_metrics(run_dir))
            assert f"{steps:,}" in screen or str(steps) in screen
            history.press("q")
            wait(lambda: (tmp_path / "history.exit").exists(), "exit")
            assert (tmp_path / "history.exit").read_text().strip() == "EXIT=0"
        finally:
            history.close()
    finally:
        trainer.close()
        if watcher is not None:
            watcher.close()


def test_watch_two_runs_shows_both_in_the_legend_at_80x24(tmp_path):
    from tests.test_follow import finished, start, train, write

    for name, steps in (("alpha", 30), ("beta", 45)):
        (tmp_path / name).mkdir()
        write(tmp_path / name, start(), *[train(s) for s in range(1, steps + 1)], finished(steps))
    watcher = Terminal(80, 24, shell("watch", tmp_path / "alpha", tmp_path / "beta", exit_file=tmp_path / "exit"))
    try:
        screen = watcher.wait_for(lambda s: "FINISHED" in s and BRAILLE.search(s), "the two runs' curves")
        assert "━━ beta" in screen and "━━ alpha (EMA 0.9)" in screen, screen
        assert f"tui-llm watch {tmp_path / 'alpha'}"[:40] in screen
        watcher.press("o")
        watcher.wait_for(lambda s: "━━ beta" not in s and "overlays hidden" in s, "the overlays hidden")
        watcher.press("q")
        wait(lambda: (tmp_path / "exit").exists(), "the watcher to exit")
        assert (tmp_path / "exit").read_text().strip() == "EXIT=0"
    finally:
        watcher.close()
