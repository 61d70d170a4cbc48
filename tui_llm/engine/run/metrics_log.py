"""metrics.jsonl, a run's history: one JSON object a line, appended as events happen.

This is the one reader and writer of that file (the run directory, resume, `tui-llm watch`,
overlays and the CSV export all go through it), with one rule for what is in it:

  * a line is read only once it is whole (ends with a newline); a torn last line (a crash or a
    full disk in the middle of a write) is not read, and is cut off when the log is next opened
    for appending;
  * a whole line that is not a record (not JSON, nested too deeply, longer than
    MAX_RECORD_BYTES, not an object) is skipped and counted in `bad_lines`, never an exception;
  * only a regular file is read (a FIFO or a device would block or never end), in pieces of
    READ_CHUNK bytes, so no line can make a reader hold more than MAX_RECORD_BYTES of it.

Each record is appended with one write; a short write (disk full) is cut back off, so the file
only ever holds whole records. A checkpoint records how many bytes of the log existed when it was
written (`size()`); resuming from it cuts the log back to there (`open(keep_bytes)`), so the
history and the weights agree. The checkpoint is the run: a log that lost those bytes is
continued from what it still holds, and `open` says what was lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.jsonline import BadLine, parse_object

MAX_RECORD_BYTES = 4 << 20   # a sample of 1,024 tokens with their texts is ~60 kB
READ_CHUNK = 1 << 20


class MetricsLogError(TuiLlmError):
    """metrics.jsonl cannot be used (not a regular file, cannot be opened): one line."""


class MetricsLog:
    def __init__(self, path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.bad_lines = 0   # whole lines skipped by the readers so far

    # -- appending (the process that trains) ------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self, keep_bytes: int = 0) -> str | None:
        """Start appending after the first `keep_bytes` bytes (0: a fresh log). Returns a note when
        the log held less than that (lost or damaged): then it continues after its last whole line."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o666)
        except OSError as e:
            raise MetricsLogError(f"{self.path}: cannot open the run's history ({e.strerror or e})") from None
        note = None
        try:
            _check_regular(fd, self.path)
            size = os.fstat(fd).st_size
            keep = min(keep_bytes, size)
            if keep > 0 and os.pread(fd, 1, keep - 1) != b"\n":  # never continue after half a line
                keep = _last_line_end(fd, keep)
            if keep < keep_bytes:
                note = (f"{self.path.name} held {keep:,} of the {keep_bytes:,} bytes of history the checkpoint "
                        f"recorded (lost or damaged)")
            os.ftruncate(fd, keep)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(fd)
            raise MetricsLogError(f"{self.path}: cannot prepare the run's history ({e.strerror or e})") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return note

    def append(self, record: dict) -> None:
        """One record, written whole or not at all (a partial write is cut back off). OSError if it failed."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = self._fd
        if fd is None:
            raise OSError(errno.EBADF, "the history is not open for appending")
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def size(self) -> int:
        """Bytes of history written (while open for appending)."""
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading (anyone) ----------------------------------------------------------------

    def lines(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes | None]]:
        """(end offset, line) of each whole line from byte `start` up to `stop`; the line is None
        when it is longer than MAX_RECORD_BYTES (skipped without being held). A missing log has none."""
        f = self._open_for_reading()
        if f is None:
            return
        with f:
            f.seek(start)
            pos, held, holding = start, bytearray(), True
            while stop is None or pos < stop:
                data = f.read(READ_CHUNK if stop is None else min(READ_CHUNK, stop - pos))
                if not data:
                    return
                i = 0
                while i < len(data):
                    newline = data.find(b"\n", i)
                    end = len(data) if newline < 0 else newline + 1
                    if holding:
                        held += data[i:end]
                        if len(held) > MAX_RECORD_BYTES + 1:
                            held, holding = bytearray(), False
                    pos += end - i
                    i = end
                    if newline >= 0:
                        yield pos, (bytes(held) if holding else None)
                        held, holding = bytearray(), True

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, dict | None]]:
        """(end offset, record) of each whole line; the record is None for a line that is not one."""
        for end, line in self.lines(start, stop):
            yield end, self.parse(line)

    def parse(self, line: bytes | None) -> dict | None:
        """The record a whole line holds, or None (counted in bad_lines)."""
        try:
            if line is None:
                raise BadLine("too long")
            return parse_object(line, MAX_RECORD_BYTES + 1)
        except BadLine:
            self.bad_lines += 1
            return None

    def read(self, stop: int | None = None) -> list[dict]:
        """Every record (of the first `stop` bytes), in order."""
        return [r for _, r in self.records(0, stop) if r is not None]

    def history_end(self, checkpoint_bytes: int, checkpoint_path: Path | None = None) -> int:
        """Where to cut the log for a resume from a checkpoint that recorded `checkpoint_bytes`:
        there, plus the record of that checkpoint itself (written just after the save)."""
        end = checkpoint_bytes
        for line_end, record in self.records(checkpoint_bytes):
            if record is None:  # not a record: skipped, as every reader skips it
                end = line_end
                continue
            if record.get("type") == "checkpoint" and checkpoint_path is not None \
                    and Path(str(record.get("path"))).name == Path(checkpoint_path).name:
                return line_end
            if record.get("type") not in ("checkpoint", "notice"):
                break
            end = line_end
        return end

    def history_end_at_step(self, step: int) -> int:
        """The cut for a checkpoint from before history offsets were recorded: the records up to
        its step (such old train records count from 0, so one with step >= `step` came after it)."""
        end = 0
        for line_end, record in self.records():
            s = record.get("step") if record is not None else None
            if record is not None and isinstance(s, int) and (s > step or (record.get("type") == "train" and s >= step)):
                break
            end = line_end
        return end

    def ends_a_line_at(self, offset: int) -> bool:
        """Whether the log holds `offset` bytes and a line ends there (as one did when a checkpoint
        recorded that offset): False means the history before it was lost or changed."""
        f = self._open_for_reading()
        if f is None:
            return offset == 0
        with f:
            if offset == 0:
                return True
            f.seek(offset - 1)
            return f.read(1) == b"\n"

    def check(self) -> None:
        """MetricsLogError (one line) unless the log is missing or a readable regular file."""
        f = self._open_for_reading()
        if f is not None:
            f.close()

    def file_size(self) -> int:
        """The log's size on disk now (0 when missing)."""
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def _open_for_reading(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
        except FileNotFoundError:
            return None
        except OSError as e:
            raise MetricsLogError(f"{self.path}: cannot read the run's history ({e.strerror or e})") from None
        try:
            _check_regular(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb", buffering=0)


def _check_regular(fd: int, path: Path) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise MetricsLogError(f"{path}: {kind}; the run's history must be a regular file")


def _last_line_end(fd: int, before: int) -> int:
    """The offset just after the last newline before `before` (0 if none)."""
    pos = before
    while pos > 0:
        start = max(0, pos - READ_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0
