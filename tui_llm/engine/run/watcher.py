"""Follow a run from its files: what `tui-llm watch` shows, with the App's trainer protocol.

    watcher = RunWatcher("runs/x")
    records = watcher.history()        # earlier segments (before the last resume), for a bulk load
    watcher.run(emit)                  # replays the rest as events, then follows metrics.jsonl live
    watcher.send(Pause())              # to the run's control channel (engine/channel.py)
    watcher.send(Stop())               # detaches: run() returns, the run goes on
    watcher.stop()                     # the same, from any thread

metrics.jsonl is polled a few times a second (its size, plus the last line read: a resume cuts
the file back and rewrites it). Only whole lines are read; a torn last line waits for its end.
The run's state comes from the records and the run directory's lock: `running` (locked),
`paused` (the last of paused/resumed), `finished` (a finished record or, for a run killed without
one, no lock), `stale` (locked, running, and no record for `stale_after` seconds or five step
times, whichever is longer). Nothing here writes to the run directory or stops the run.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import ChannelError, ControlClient, command_to_json
from tui_llm.engine.run.run_dir import LOCK, RunDir, RunDirError, is_run_dir


class RunWatcher:
    def __init__(self, run_dir, *, interval: float = 0.3, stale_after: float = 30.0,
                 connect: Callable[[Path], ControlClient] = ControlClient.connect) -> None:
        path = Path(run_dir)
        if not path.is_dir():
            raise RunDirError(f"{run_dir}: no such run directory")
        if not is_run_dir(path) and not (path / LOCK).exists():
            raise RunDirError(f"{run_dir}: not a run directory (no config.json, metrics.jsonl or checkpoint)")
        self.run_dir = RunDir(path)
        self.run_dir.metrics.check()  # a FIFO or a device would block or never end: refused here
        self.interval, self.stale_after = interval, stale_after
        self.state = ev.RunState.STARTING
        self.step = 0
        self._connect = connect
        self._offset = 0                 # metrics.jsonl bytes read (whole lines only)
        self._ends: list[int] = []       # end offset of each line read ...
        self._crcs: list[int] = []       # ... and its CRC, to find what a cut-back kept
        self._last_record_at = time.monotonic()
        self._step_s = 0.0
        self._finished_seen = False
        self._emit: Callable[[ev.Event], None] = lambda event: None
        self._detach = threading.Event()
        self._outbox: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None

    # -- the trainer protocol ------------------------------------------------------------

    def history(self) -> list[dict]:
        """The records before the run's last `start` (earlier segments of a resumed run); run()
        then replays from that start on, so the App's state comes from real events."""
        lines = list(self.run_dir.metrics.lines(0))
        records = [self.run_dir.metrics.parse(line) for _, line in lines]
        starts = [i for i, r in enumerate(records) if r is not None and r.get("type") == "start"]
        if not starts:
            return []
        self._remember(lines[:starts[-1]])
        self._offset = self._ends[-1] if self._ends else 0
        return [r for r in records[:starts[-1]] if r is not None]

    def run(self, emit: Callable[[ev.Event], None], on_error: str = "stop") -> ev.RunState:
        """Replay, then follow until detached or the run has finished; returns the last state."""
        self._emit = emit
        self._last_record_at = time.monotonic()
        while True:
            self._poll_file()
            locked = self.run_dir.is_locked()
            if not locked:
                self._poll_file()  # what the run wrote before it let go
                if not self._finished_seen and self.state != ev.RunState.FINISHED:
                    self._gone()
                return self.state
            self._check_stale()
            if self._detach.wait(self.interval):
                return self.state

    def send(self, command: ev.Command) -> None:
        """Deliver a command to the run (in the background: a reply waits for the run's next step
        boundary). Stop detaches this watcher and never stops the run; the App's "save and quit"
        (Stop(save=True) because the user quit) asks the run for a checkpoint on the way out."""
        if isinstance(command, ev.Stop):
            if command.save and command.reason == ev.FinishReason.STOPPED and self.live:
                self._post(ev.SaveNow())
            self.stop()
            return
        if not self.live:
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                                 text=f"the run is {self.state}: nothing to send (this is its history)"))
            return
        self._queue(command)

    def stop(self) -> None:
        """Stop watching (thread-safe); the run goes on."""
        self._detach.set()

    @property
    def live(self) -> bool:
        return self.state not in (ev.RunState.FINISHED, ev.RunState.ERROR) and self.run_dir.is_locked()

    # -- following the file ------------------------------------------------------------

    def _poll_file(self) -> None:
        log = self.run_dir.metrics
        if self._cut_back():
            kept = 0
            for i, (end, line) in enumerate(log.lines(0, self._offset)):
                if i >= len(self._ends) or self._ends[i] != end or self._crcs[i] != _crc(line):
                    break
                kept = i + 1
            del self._ends[kept:], self._crcs[kept:]
            self._offset = self._ends[-1] if self._ends else 0
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                                 text="the run's history was cut back (resumed from an earlier checkpoint)"))
        lines = list(log.lines(self._offset))
        if not lines:
            return
        self._remember(lines)
        self._offset = lines[-1][0]
        for _, line in lines:
            record = log.parse(line)
            event = ev.event_from_json(record) if record is not None else None
            if event is not None:
                self._update(event)
                self._emit(event)

    def _cut_back(self) -> bool:
        """The file is shorter than what was read, or its last line read is no longer there."""
        if not self._ends:
            return False
        if self.run_dir.metrics.file_size() < self._offset:
            return True
        start = self._ends[-2] if len(self._ends) > 1 else 0
        last = list(self.run_dir.metrics.lines(start, self._offset))
        return len(last) != 1 or last[0][0] != self._offset or _crc(last[0][1]) != self._crcs[-1]

    def _remember(self, lines: list[tuple[int, bytes | None]]) -> None:
        for end, line in lines:
            self._ends.append(end)
            self._crcs.append(_crc(line))

    # -- state ---------------------------------------------------------------------------

    def _update(self, event: ev.Event) -> None:
        self._last_record_at = time.monotonic()
        self.step = getattr(event, "step", self.step)
        match event:
            case ev.RunStarted():
                self.state, self._finished_seen = ev.RunState.RUNNING, False
            case ev.TrainStep():
                self._step_s = event.step_ms / 1e3
                if self.state == ev.RunState.STALE:
                    self.state = ev.RunState.RUNNING
                    self._emit(ev.Notice(step=self.step, text="the run is sending events again"))
            case ev.Paused():
                self.state = ev.RunState.PAUSED
            case ev.Resumed():
                self.state = ev.RunState.RUNNING
            case ev.Finished():
                self.state, self._finished_seen = ev.RunState.FINISHED, True

    def _check_stale(self) -> None:
        if self.state != ev.RunState.RUNNING:
            return
        quiet = time.monotonic() - self._last_record_at
        limit = max(self.stale_after, 5 * self._step_s)
        if quiet > limit:
            self.state = ev.RunState.STALE
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                                 text=f"no event for {quiet:.0f} s: the run may be stuck"))

    def _gone(self) -> None:
        """No lock and no finished record: the process ended without one (kill -9, power cut)."""
        self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                             text="the run is not training and its history has no finished record (killed?)"))
        checkpoint = self.run_dir.latest_checkpoint()
        self.state = ev.RunState.FINISHED
        self._emit(ev.Finished(step=self.step, reason=ev.FinishReason.INTERRUPTED,
                               checkpoint=str(checkpoint) if checkpoint else None))

    # -- commands ------------------------------------------------------------------------

    def _post(self, command: ev.Command) -> None:
        """Send without waiting for the reply (the watcher is leaving; the run reads it at its next step)."""
        try:
            client = self._connect(self.run_dir.path)
            client.sock.sendall((json.dumps(command_to_json(command)) + "\n").encode())
            client.close()
        except (ChannelError, OSError) as e:
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING, text=f"could not ask the run to save: {e}"))

    def _queue(self, command: ev.Command) -> None:
        self._outbox.put(command)
        if self._sender is None:
            self._sender = threading.Thread(target=self._deliver, name="watch-sender", daemon=True)
            self._sender.start()

    def _deliver(self) -> None:
        client = None
        while True:
            command = self._outbox.get()
            try:
                client = client or self._connect(self.run_dir.path)
                reply = client.send(command)
            except ChannelError as e:
                if client is not None:
                    client.close()
                client = None
                reply = {"ok": False, "error": str(e)}
            if not reply.get("ok"):
                self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                                     text=f"the run refused {type(command).__name__}: {reply.get('error')}"))


def _crc(line: bytes | None) -> int:
    return zlib.crc32(line or b"")


RemoteTrainer = RunWatcher
"""The same class, by the name of what it stands in for: a trainer in another process."""
