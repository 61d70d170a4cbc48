"""Following a run from its files (engine/run/watcher.py), with records written by the test."""

import json
import threading
import time

import pytest

from tui_llm.engine import events as ev
from tui_llm.engine.run.run_dir import RunDirError
from tui_llm.engine.run.watcher import RemoteTrainer, RunWatcher


def start(step=0):
    return ev.RunStarted(run_dir="x", model_name="d2", run_config={}, model_config={}, num_params=1, memory_bytes=16,
                         train_file="t", train_tokens=10, val_file=None, val_tokens=0, batches_per_epoch=1,
                         tokens_per_step=32, world_size=1, step=step, steps=100, elapsed_s=0.0)


def train(step, step_ms=10.0):
    return ev.TrainStep(step=step, loss=5.0 - step / 10, fwd_ms=1, bwd_ms=1, opt_ms=1, step_ms=step_ms, tok_per_s=1,
                        lr=1e-3, grad_norm=1, epoch=0, tokens=32 * step, elapsed_s=step / 100)


def finished(step):
    return ev.Finished(step=step, reason=ev.FinishReason.COMPLETED, checkpoint=None)


def line(event):
    return (json.dumps(event.to_json()) + "\n").encode()


def write(run_dir, *events, raw=b""):
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b"".join(map(line, events)) + raw)


class Looking(RunWatcher):
    """A RunWatcher that notes when each of its looks at metrics.jsonl (`_poll_file`) and each
    staleness check began, once it is done: a test waits until the watcher has looked, never
    for a fixed time."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.polls: list[float] = []
        self.stale_checks: list[float] = []

    def _poll_file(self):
        began = time.monotonic()
        super()._poll_file()
        self.polls.append(began)

    def _check_stale(self):
        began = time.monotonic()
        super()._check_stale()
        self.stale_checks.append(began)


def looked_since(calls: list[float], moment: float) -> bool:
    return any(began > moment for began in calls)


class Following:
    """A watcher's run() in a thread, collecting its events."""

    def __init__(self, watcher):
        self.watcher, self.events = watcher, []
        self.thread = threading.Thread(target=lambda: setattr(self, "result", watcher.run(self.events.append)))
        self.thread.start()

    def wait_for(self, predicate, what, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: {self.events}")

    def kinds(self):
        return [e.kind for e in self.events]

    def join(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive()



def test_a_finished_run_is_read_only_history(tmp_path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    write(run_dir, start(), train(1), ev.Paused(step=1), ev.Resumed(step=1), train(2),
          ev.CheckpointSaved(step=2, path="ckpt", seconds=0.1, reason=ev.SaveReason.FINAL), finished(2))
    watcher = RemoteTrainer(run_dir)
    events = []
    assert watcher.run(events.append) == ev.RunState.FINISHED  # returns at once: nothing more can come
    assert [e.kind for e in events] == ["start", "train", "paused", "resumed", "train", "checkpoint", "finished"]
    assert events[1] == train(1)
    watcher.send(ev.Pause())
    assert "nothing to send" in events[-1].text and events[-1].level == ev.Level.WARNING


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        RunWatcher(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunWatcher(tmp_path)


def test_live_lines_a_torn_line_and_the_states(locked):
    write(locked.path, start(), train(1))
    f = Following(Looking(locked.path, interval=0.05))
    try:
        f.wait_for(lambda: f.kinds() == ["start", "train"], "the history")
        assert f.watcher.state == ev.RunState.RUNNING and f.watcher.live
        whole = line(train(2))
        written = time.monotonic()
        write(locked.path, raw=whole[:20])  # half a record: not read yet
        f.wait_for(lambda: looked_since(f.watcher.polls, written), "a look at the file with the torn line")
        assert f.kinds() == ["start", "train"]
        write(locked.path, raw=whole[20:])
        f.wait_for(lambda: len(f.events) == 3, "the completed line")
        assert f.events[2] == train(2)
        write(locked.path, raw=b"{not json\n")  # a bad line is skipped
        write(locked.path, ev.Paused(step=2))
        f.wait_for(lambda: f.watcher.state == ev.RunState.PAUSED, "paused")
        write(locked.path, ev.Resumed(step=2))
        f.wait_for(lambda: f.watcher.state == ev.RunState.RUNNING, "resumed")
        write(locked.path, finished(2))
        f.wait_for(lambda: f.watcher.state == ev.RunState.FINISHED, "finished")
        assert f.thread.is_alive()  # until the process lets go of the run directory
        locked.close()
        f.join()
        assert f.kinds() == ["start", "train", "train", "paused", "resumed", "finished"]
    finally:
        f.watcher.stop()


def test_a_history_cut_back_by_a_resume(locked):
    write(locked.path, start(), train(1), train(2), train(3))
    f = Following(RunWatcher(locked.path, interval=0.05))
    try:
        f.wait_for(lambda: len(f.events) == 4, "the history")
        data = (locked.path / "metrics.jsonl").read_bytes()
        keep = len(line(start()) + line(train(1)))
        (locked.path / "metrics.jsonl").write_bytes(data[:keep])  # resumed from step 1 ...
        write(locked.path, start(step=1), train(2, step_ms=11.0), train(3, step_ms=11.0), train(4))  # ... longer than before
        f.wait_for(lambda: any(e.kind == "train" and e.step == 4 for e in f.events), "the new records")
        notice = [e for e in f.events if e.kind == "notice"]
        assert len(notice) == 1 and "cut back" in notice[0].text
        after = f.events[f.events.index(notice[0]) + 1:]
        assert after == [start(step=1), train(2, step_ms=11.0), train(3, step_ms=11.0), train(4)]
    finally:
        f.watcher.stop()
        f.join()
    assert f.result == ev.RunState.RUNNING  # detached; the run goes on


def test_a_quiet_run_is_stale_and_a_killed_one_finished(locked):
    write(locked.path, start(), train(1, step_ms=20.0))
    f = Following(Looking(locked.path, interval=0.05, stale_after=0.5))
    try:
        f.wait_for(lambda: f.watcher.state == ev.RunState.STALE, "stale")
        assert "may be stuck" in f.events[-1].text
        write(locked.path, train(2))
        f.wait_for(lambda: f.watcher.state == ev.RunState.RUNNING, "running again")
        assert "again" in f.events[-2].text and f.events[-1] == train(2)
        write(locked.path, ev.Paused(step=2))
        f.wait_for(lambda: f.watcher.state == ev.RunState.PAUSED, "paused")
        quiet_enough = time.monotonic() + 0.5 + 0.1  # stale_after has passed since the last record
        f.wait_for(lambda: looked_since(f.watcher.stale_checks, quiet_enough), "a staleness check after stale_after")
        assert f.watcher.state == ev.RunState.PAUSED  # paused runs are quiet on purpose
        assert f.events[-1] == ev.Paused(step=2)  # and no "may be stuck" notice
        locked.close()  # the process is gone without a finished record (kill -9)
        f.join()
        assert f.events[-1].kind == "finished" and f.events[-1].reason == ev.FinishReason.INTERRUPTED
        assert "killed" in f.events[-2].text
    finally:
        f.watcher.stop()


def test_history_holds_the_segments_before_the_last_resume(locked):
    write(locked.path, start(), train(1), train(2), start(step=2), train(3))
    watcher = RunWatcher(locked.path, interval=0.05)
    records = watcher.history()
    assert [r["type"] for r in records] == ["start", "train", "train"]
    f = Following(watcher)
    try:
        f.wait_for(lambda: len(f.events) == 2, "the last segment")
        assert f.events == [start(step=2), train(3)]
    finally:
        watcher.stop()
        f.join()


class FakeSocket:
    def __init__(self, sent):
        self.sent = sent

    def sendall(self, data):
        self.sent.append(json.loads(data))


class FakeClient:
    def __init__(self, sent, replies):
        self.sent, self.replies = sent, replies
        self.sock = FakeSocket(sent)

    def send(self, command):
        self.sent.append(command)
        return self.replies.pop(0) if self.replies else {"ok": True}

    def close(self):
        pass


def test_commands_go_to_the_control_channel_and_stop_only_detaches(locked):
    write(locked.path, start(), train(1))
    sent, replies = [], [{"ok": True}, {"ok": False, "error": "top_k must be zero or more"}]
    watcher = RunWatcher(locked.path, interval=0.05, connect=lambda path: FakeClient(sent, replies))
    f = Following(watcher)
    try:
        f.wait_for(lambda: len(f.events) == 2, "the history")
        watcher.send(ev.Pause())
        watcher.send(ev.SetSetting(name="top_k", value=-1))
        f.wait_for(lambda: any(e.kind == "notice" for e in f.events), "the refusal")
        assert "top_k must be zero or more" in f.events[-1].text
        watcher.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED))  # the app closing: only detach
        f.join()
        assert sent == [ev.Pause(), ev.SetSetting(name="top_k", value=-1)]
        watcher.send(ev.Stop(save=True))  # the app's "save and quit": a checkpoint, sent before leaving
        assert sent[-1] == {"command": "save"}
        assert locked.is_locked()  # nobody stopped the run
    finally:
        watcher.stop()
