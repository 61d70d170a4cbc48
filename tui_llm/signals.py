"""The one signal policy of a training process, headless or in the terminal UI.

SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal) all mean "stop, but keep the run":
    1st signal   the trainer finishes its step, saves a checkpoint and stops
    2nd signal   acknowledged only (the save is still going on)
    3rd signal   abort now; the steps since the last checkpoint are lost
and the process exits with 128 + the first signal's number (130, 143, 129).

The handlers are installed before anything slow happens (imports, loading weights, compiling).
A signal that comes before there is anything to stop (nothing bound yet: the model is loading)
raises StopBeforeStart at once, with nothing to save (`early="raise"`, the CLI's choice), or is
remembered and applied the moment something is bound (`early="remember"`). A handler runs on the
main thread between two bytecodes: it only records the signal, queues the Stop (thread-safe) and
calls `tell`, which must not block.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class StopBeforeStart(KeyboardInterrupt):
    """A stop signal before the run exists (nothing trained, nothing to save); `exit_code` is its status."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = SIGNAL_EXIT[signum]


def stop_before_start() -> dict:
    """Until a command installs its own handlers: a stop signal raises StopBeforeStart (so even one
    that comes while the command is still importing ends with its status and one line, not a
    traceback or death by the signal). Returns the previous handlers, for signal.signal."""

    def handler(signum: int, _frame) -> None:
        raise StopBeforeStart(signum)

    return {s: signal.signal(s, handler) for s in SIGNAL_EXIT}


class StopSignals:
    """Install with `with StopSignals(tell, abort) as signals:`; `signals.bind(stop)` once there
    is something to stop. tell(signum, count) is called on every signal; abort() on the third."""

    def __init__(self, tell: Callable[[int, int], None] = lambda signum, count: None,
                 abort: Callable[[], None] | None = None, early: str = "remember") -> None:
        self.received: list[int] = []
        self._early = early
        self._tell = tell
        self._abort = abort or self.raise_interrupt
        self._stop: Callable[[], None] | None = None
        self._previous: dict = {}

    @property
    def exit_code(self) -> int | None:
        """The exit status the first signal asks for (None: no signal came)."""
        return SIGNAL_EXIT[self.received[0]] if self.received else None

    def bind(self, stop: Callable[[], None] | None) -> None:
        """What the first signal does from now on; a signal that already came does it now."""
        self._stop = stop
        if stop is not None and self.received:
            stop()

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNAL_EXIT}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def deliver(self, signum: int) -> None:
        """Act as if `signum` had arrived (the UI's ctrl+c key is SIGINT)."""
        self._handle(signum, None)

    def _handle(self, signum: int, _frame) -> None:
        self.received.append(signum)
        count = len(self.received)
        if count == 1 and self._stop is None and self._early == "raise":
            raise StopBeforeStart(signum)
        if count == 1 and self._stop is not None:
            self._stop()
        self._tell(signum, count)
        if count >= 3:
            self._abort()

    @staticmethod
    def raise_interrupt() -> None:
        raise KeyboardInterrupt
