"""`tui-llm watch`: follow and steer a run another process trains."""

import os
import signal
import subprocess
import sys

import pytest

from tests.run_helpers import HeadlessRun, make_data, read_metrics
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import SOCKET, ControlClient


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


class Watch(HeadlessRun):
    """`tui-llm watch --no-ui` in a subprocess."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "tui_llm", "watch", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines = []
        import threading
        threading.Thread(target=self._read, daemon=True).start()


def test_watch_no_ui_follows_a_live_headless_run_and_leaves_it_running(train_file, tmp_path):
    run_dir = tmp_path / "run"
    run = HeadlessRun(train_file, run_dir, "--steps", "100000", "--val-every", "5", "--sample-every", "0",
                      "--save-every", "0")
    watch = None
    try:
        run.wait_for(lambda: (run_dir / SOCKET).exists() and run.steps_printed() >= 3, "the run")
        watch = Watch(run_dir, "--no-ui")
        target = run.steps_printed() + 5  # written after the watcher started
        watch.wait_for(lambda: watch.steps_printed() >= target, "live steps in the watcher")
        assert watch.lines[0].startswith("model: d2 | 2 layers")
        printed = [line for line in run.lines if not line.startswith("compiling")]  # never recorded
        assert printed[:4] == watch.lines[:4]  # model, parameters, data and run lines
        steps = [line for line in watch.lines if line.startswith("step ")][:target]
        assert steps == [line for line in run.lines if line.startswith("step ")][:target]  # the same lines
        assert "val loss" in "\n".join(watch.lines)
        with ControlClient.connect(run_dir) as client:
            assert client.send(ev.Pause())["ok"]
            watch.wait_for(lambda: any(line.startswith("paused at step") for line in watch.lines), "the pause")
            watch.proc.send_signal(signal.SIGINT)  # the watcher leaves ...
            watch.proc.wait(timeout=30)
            assert watch.proc.returncode == 0
            assert "the run goes on" in watch.proc.stderr.read()
            assert run.proc.poll() is None  # ... the run does not
            assert client.send(ev.Stop())["ok"]
        run.proc.wait(timeout=60)
        assert run.proc.returncode == 0

        done = subprocess.run([sys.executable, "-m", "tui_llm", "watch", str(run_dir), "--no-ui"], capture_output=True,
                              text=True, timeout=60)  # a finished run: its history, and back at once
        assert done.returncode == 0, done.stderr
        out = done.stdout.splitlines()
        assert out[0].startswith("model: d2") and out[-1].startswith("finished at step") and "(stopped)" in out[-1]
        assert sum(line.startswith("step ") for line in out) == sum(m["type"] == "train" for m in read_metrics(run_dir))
    finally:
        run.close()
        if watch is not None:
            watch.close()


def test_watch_bad_input_is_one_line_and_status_2(tmp_path):
    for args, says in [([str(tmp_path / "nope")], "no such run directory"), ([str(tmp_path)], "not a run directory"),
                       ([], "the following arguments are required"),
                       ([str(tmp_path), "--stale-after", "0"], "--stale-after must be")]:
        if says == "--stale-after must be":
            (tmp_path / "metrics.jsonl").write_text("")
        r = subprocess.run([sys.executable, "-m", "tui_llm", "watch", *args, "--no-ui"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
        assert says in r.stderr
