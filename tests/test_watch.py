"""`tui-llm watch`: follow and steer a run another process trains."""

import signal
import sys

import pytest

from tests.run_helpers import HeadlessRun, Process, make_data, read_metrics, run_cli
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import SOCKET, ControlClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


class Watch(Process):
    """`tui-llm watch --no-ui` in a subprocess."""

    def __init__(self, *args):
        super().__init__([sys.executable, "-m", "tui_llm", "watch", *args])

    def steps_printed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("step "))


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
            watch.send_signal(signal.SIGINT)  # the watcher leaves ...
            watch.wait(expect=0)
            assert "the run goes on" in watch.stderr
            assert run.returncode is None  # ... the run does not
            assert client.send(ev.Stop())["ok"]
        run.wait(expect=0)

        done = run_cli("watch", run_dir, "--no-ui")  # a finished run: its history, and back at once
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
        r = run_cli("watch", *args, "--no-ui")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
        assert says in r.stderr
