"""The UI process and its terminal: signals, and a terminal that goes away.

SIGTERM, SIGHUP (terminal closed, ssh dropped, tmux window killed) and SIGINT stop a UI run the
way they stop a headless one: the trainer finishes its step and saves, then the app exits with
128 + the signal's number. The handlers run on the main thread, between two bytecodes of
whatever it was doing; they only queue the Stop (thread-safe) and hand a message to the app's
event loop (`call_soon_threadsafe`). A second signal is only acknowledged; a third aborts.

After SIGHUP the terminal is gone: reading it fails with EIO, writing it too. `HangupSafeDriver`
turns both into nothing (instead of Textual's "panic" from its input thread, or a writer thread
that dies and leaves the app blocked on a full queue), and `detach_from_terminal` points the
process's standard streams at /dev/null and stops the input thread, so the save completes and the
exit summary's prints do not raise. (Not a pipe that never has data for stdin: a read that
select() allowed on the terminal just before would then block forever, and the app's exit with it.)
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import threading
import weakref
from collections.abc import Callable

from textual.drivers.linux_driver import LinuxDriver

from tui_llm.signals import StopSignals

RESET = "\x1b[<u\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l\x1b[?1004l\x1b[?7h\x1b[?1049l\x1b[?25h"
"""Leave Textual's modes: keyboard protocol, mouse, paste, focus events, line wrap, alt screen, cursor."""


UI_NICENESS = 10
"""The niceness of the UI's own threads once training runs (training's threads keep theirs)."""

UI_THREADS = ("textual-input", "textual-output")
"""Textual's threads besides the main one: the terminal's keys and its output."""


def yield_to_training() -> None:
    """Give the UI's threads (the main one, Textual's input and output threads) a lower priority
    than training's, so that on busy cores the UI waits for training rather than training for the
    UI. With other programs on the cores, each wake of the UI (a repaint, a key check ten times a
    second) took a core from a training thread, which then waited behind those programs: the UI
    cost 5-6% of the step under two busy processes while using 1% of a core (BENCHMARKS.md). The
    UI needs little CPU and still gets it, a little later. Call it from training's thread, once it
    runs (threads inherit their creator's niceness: threads the UI starts later run at this one too).
    Linux only (a thread's own niceness); elsewhere nothing changes. Raising one's niceness is
    always allowed; a failure leaves things as they were."""
    if sys.platform != "linux":
        return
    ui = [threading.main_thread()] + [t for t in threading.enumerate() if t.name in UI_THREADS]
    for thread in ui:
        if thread.native_id is None:
            continue
        try:
            now = os.getpriority(os.PRIO_PROCESS, thread.native_id)
            os.setpriority(os.PRIO_PROCESS, thread.native_id, max(now, UI_NICENESS))
        except OSError:
            pass


class HangupProofFile:
    """A text stream whose writes are dropped once the terminal behind it has gone (EIO)."""

    def __init__(self, file) -> None:
        self._file = file
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._file.write(text)
            except OSError:  # EIO after a hangup, EPIPE, ...
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._file.flush()
            except OSError:
                self.gone = True

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return self._file.isatty()


class HangupSafeDriver(LinuxDriver):
    """Textual's Linux driver, minus the crash when the terminal hangs up."""

    live: weakref.WeakSet[HangupSafeDriver] = weakref.WeakSet()
    """The drivers of this process (`detach_from_terminal` stops their input threads)."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._file = HangupProofFile(self._file)
        HangupSafeDriver.live.add(self)

    def _run_input_thread(self) -> None:
        try:
            self.run_input_thread()
        except OSError:  # the terminal hung up: no more keys; SIGHUP stops the run
            pass
        except BaseException:  # as Textual's driver: the app shows the traceback
            import rich.traceback

            self._app.call_later(self._app.panic, rich.traceback.Traceback())


def detach_from_terminal() -> None:
    """After a hangup: the standard streams to /dev/null (writes vanish, reads see end-of-file, so
    nothing blocks on a terminal that is gone), and the drivers' input threads told to stop
    (reading end-of-file over and over would spin)."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass
    for driver in list(HangupSafeDriver.live):
        driver.exit_event.set()


class SignalHandlers(StopSignals):
    """Install in `run_app`: tui_llm.signals' policy while the app runs, for a terminal.

    `stop()` is called on the first signal (queues the trainer's Stop); `tell(signum, count)` on
    every signal, from the handler (it must only hand over to the event loop); after SIGHUP the
    process lets go of the terminal; the third signal restores the terminal and exits at once with
    `abort_message`.
    """

    def __init__(self, stop: Callable[[], None], tell: Callable[[int, int], None],
                 abort_message: Callable[[], str]) -> None:
        super().__init__(tell=self._tell_after_hangup, abort=self.abort)
        self.bind(stop)
        self._tell_app, self._abort_message = tell, abort_message
        try:
            self._tty_attrs = termios.tcgetattr(sys.__stdin__.fileno())
        except (termios.error, AttributeError, ValueError, OSError):
            self._tty_attrs = None

    def _tell_after_hangup(self, signum: int, count: int) -> None:
        if signum == signal.SIGHUP:
            detach_from_terminal()
        self._tell_app(signum, count)

    def abort(self) -> None:
        """Give the terminal back as it was and exit now (the trainer thread cannot be stopped)."""
        if self._tty_attrs is not None:
            try:
                termios.tcsetattr(sys.__stdin__.fileno(), termios.TCSANOW, self._tty_attrs)
            except (termios.error, OSError):
                pass
        try:
            os.write(2, (RESET + "\n" + self._abort_message() + "\n").encode())
        except OSError:
            pass
        os._exit(self.exit_code or 130)
