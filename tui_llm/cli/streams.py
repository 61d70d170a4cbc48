"""Standard output and error as a courtesy: a stream that dies never stops the command.

`tui-llm --no-ui ... | tee log`, then Ctrl-C: the terminal sends SIGINT to the whole pipeline,
`tee` exits first, and the run's next line meets a closed pipe (EPIPE). The same happens to a
terminal that hung up (EIO) or a redirect onto a full disk (ENOSPC). The run must still finish
its step, save and exit with its status, so while a command runs, sys.stdout and sys.stderr are
wrapped: the first write that fails is said once on the other stream (if that one still works),
the dead stream's file descriptor is pointed at /dev/null (so nothing later, not even the
interpreter's last flush, fails on it again) and its writes are dropped from then on.
"""

from __future__ import annotations

import contextlib
import os
import sys


class CourtesyStream:
    """A text stream whose failures are said once and then ignored."""

    def __init__(self, stream, name: str) -> None:
        self._stream = stream
        self.name = name
        self.dead: str | None = None     # why it stopped working
        self.other: CourtesyStream | None = None

    def write(self, text: str) -> int:
        if self.dead is None:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as e:  # ValueError: a closed file
                self._died(e)
        return len(text)

    def flush(self) -> None:
        if self.dead is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as e:
                self._died(e)

    def _died(self, error: Exception) -> None:
        self.dead = (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())  # the interpreter's final flush must not fail on it either
            os.close(null)
        if self.other is not None:
            self.other.write(f"warning: {self.name} failed ({self.dead}); going on without it\n")
            self.other.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def courtesy_streams():
    """sys.stdout and sys.stderr wrapped while the block runs (then put back as they were)."""
    saved = sys.stdout, sys.stderr
    if saved[0] is None or saved[1] is None:  # pythonw, a daemon with no streams: nothing to wrap
        yield
        return
    out, err = CourtesyStream(saved[0], "standard output"), CourtesyStream(saved[1], "standard error")
    out.other, err.other = err, out
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        if sys.stdout is out:
            sys.stdout = saved[0]
        if sys.stderr is err:
            sys.stderr = saved[1]
        with contextlib.suppress(OSError, ValueError):
            out.flush()
