"""Commands sent to a running trainer, applied between its steps.

    control = Control()
    control.send(Pause())                   # any thread
    control.serve(handler)                  # the training thread, between steps

`serve` applies pause/resume/stop itself and hands sample, chat, save and set requests to the trainer's
`handler`. While paused it keeps serving (a paused run still samples, saves and stops) and
returns only when resumed or stopped. The real trainer and the UI tests' fake trainer share
this loop, so they cannot drift apart.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from tui_llm.engine import events as ev


class Control:
    def __init__(self) -> None:
        self._queue: queue.Queue[ev.Command] = queue.Queue()
        self.paused = False
        self.stop: ev.Stop | None = None        # the Stop applied (the loop ends at this boundary)
        self.stop_sent: ev.Stop | None = None   # the first Stop sent, before it is applied (compiling checks it)

    def send(self, command: ev.Command) -> None:
        """Thread-safe: queue a command for the trainer's next step boundary."""
        if isinstance(command, ev.Stop) and self.stop_sent is None:
            self.stop_sent = command
        self._queue.put(command)

    def pending(self) -> list[ev.Command]:
        """Take every queued command without waiting (used to share them across MPI ranks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def pause(self, step: int, emit: Callable[[ev.Event], None]) -> None:
        if not self.paused:
            self.paused = True
            emit(ev.Paused(step=step))

    def serve(self, handler: Callable[[ev.Command], None], step: Callable[[], int],
              emit: Callable[[ev.Event], None], poll: Callable[[bool], list[ev.Command]] | None = None) -> None:
        """Apply queued commands; while paused, wait here until resumed or stopped.

        handler(cmd) runs SampleNow, ChatNow, SaveNow and SetSetting; step() is the steps-done count for events;
        poll() (default: this queue) returns the commands to apply now, with a short wait while
        paused; an MPI run passes one that agrees on them across ranks.
        """
        commands = poll or self.poll
        while True:
            for cmd in commands(self.paused):
                self.apply(cmd, handler, step, emit)
            if self.stop is not None or not self.paused:
                return

    def poll(self, waiting: bool) -> list[ev.Command]:
        """The commands queued now; while `waiting` (paused), up to ~0.1 s for the first."""
        if waiting:
            try:
                return [self._queue.get(timeout=0.1)] + self.pending()
            except queue.Empty:
                return []
        return self.pending()

    def apply(self, cmd: ev.Command, handler, step, emit) -> None:
        if isinstance(cmd, ev.Pause):
            self.pause(step(), emit)
        elif isinstance(cmd, ev.Resume) and self.paused and self.stop is None:
            self.paused = False
            emit(ev.Resumed(step=step()))
        elif isinstance(cmd, ev.Stop):
            if self.stop is None:
                self.stop = cmd
            self.paused = False
        elif isinstance(cmd, (ev.SampleNow, ev.ChatNow, ev.SaveNow, ev.SetSetting)) and self.stop is None:
            handler(cmd)
