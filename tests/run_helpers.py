"""Subprocesses for the tests, and a real tiny headless run for the control-channel and watch tests.

Every process a test starts goes through `Process` (or `run`, which waits for one): its output is
collected by threads as it comes, every wait has a deadline (60 s unless a test asks for less),
and a process that is still running at the deadline is killed, with its process group, and the
test fails with what it printed. A test waits for a line, a file or a reply (`wait_for`,
`wait_until`), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tui_llm.engine.data.tokens import write_tokens

TIMEOUT_S = 60  # the longest any one wait of a test may take
TINY = ["--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy"]
TAIL = 40  # lines of each stream shown when a wait fails


def wait_until(predicate, what: str, timeout: float = TIMEOUT_S, seen=lambda: "", interval: float = 0.05):
    """Poll `predicate` until it returns something true (returned); after `timeout` s fail with
    `what` and `seen()`: what there was to see instead."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{seen()}")
        time.sleep(interval)


def python_env(**extra) -> dict:
    """This environment, unbuffered, with this checkout first on the path (the tree under test)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, **extra)


class Process:
    """A subprocess whose stdout and stderr lines are collected as they come (`lines`, `err_lines`).

    `on_line(line)` runs in the reader thread for each stdout line as soon as it arrives (to
    signal the process at an exact step). Use as a context manager: on the way out a process still
    running is killed with its process group (mpiexec's ranks, a shell's children).
    """

    def __init__(self, cmd, *, env=None, cwd=None, on_line=None, stdin=subprocess.DEVNULL):
        self.cmd = [str(c) for c in cmd]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                                     text=True, cwd=cwd, env=python_env() if env is None else env,
                                     start_new_session=True)  # its own group: killed with its children
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines, on_line), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines, None), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into, on_line):
        for line in stream:
            line = line.rstrip("\n")
            if on_line is not None:
                on_line(line)
            with self._changed:
                into.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)

    def output(self) -> str:
        """What the process printed, for a failure message (the last lines of each stream)."""
        return (f"$ {shlex.join(self.cmd)}\n--- stdout (last {TAIL} lines):\n" + "\n".join(self.lines[-TAIL:])
                + f"\n--- stderr (last {TAIL} lines):\n" + "\n".join(self.err_lines[-TAIL:]))

    def wait_for(self, predicate, what: str, timeout: float = TIMEOUT_S):
        """Wait until `predicate()` holds (checked on every new line and every 0.1 s); fail with
        the output if the process exits first or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.proc.poll() is not None:
                self._join_readers()
                result = predicate()  # the last lines may have said it
                if result:
                    return result
                raise AssertionError(f"the process exited ({self.proc.returncode}) before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (killed)\n{self.output()}")
            with self._changed:
                self._changed.wait(0.1)

    def wait(self, timeout: float = TIMEOUT_S, expect: int | None = None) -> int:
        """Wait for the exit (killing the process after `timeout` s) and for its last output;
        with `expect`, fail with the output unless that is the exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout:g} s (killed)\n{self.output()}") from None
        self._join_readers()
        if expect is not None:
            assert self.proc.returncode == expect, f"exit status {self.proc.returncode}, expected {expect}\n{self.output()}"
        return self.proc.returncode

    def send_signal(self, signum: int) -> None:
        """To the process itself (mpiexec forwards SIGINT and SIGTERM to its ranks)."""
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """Kill the process and whatever of its group is left (mpiexec's ranks, a shell's children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(TIMEOUT_S)
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)  # a grandchild may still hold the pipe: never wait for it long

    def completed(self) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(self.cmd, self.proc.returncode, "".join(f"{line}\n" for line in self.lines),
                                           "".join(f"{line}\n" for line in self.err_lines))

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def run(cmd, timeout: float = TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    """Run `cmd` to its end (at most `timeout` s: then it is killed and the test fails with its
    output); its stdout and stderr come back as text."""
    with Process(cmd, **kw) as process:
        process.wait(timeout)
        return process.completed()


def run_cli(*args, timeout: float = TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    """`python -m tui_llm ARGS` (this checkout's), as `run`."""
    return run([sys.executable, "-m", "tui_llm", *map(str, args)], timeout=timeout, **kw)


def make_data(directory: Path) -> Path:
    """Token files with a repeating sentence; returns the training file."""
    tokens = np.tile(np.random.default_rng(0).integers(0, 50257, 37), 60)
    write_tokens(directory / "tiny_train.bin", tokens[:1800])
    write_tokens(directory / "tiny_val.bin", tokens[1800:])
    return directory / "tiny_train.bin"


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def no_steps_while_paused(records: list[dict]) -> list[str]:
    """The record types between each `paused` record and the next `resumed` one (asserted to hold
    no `train` record: the run's own history proves it stood still, with no clock involved)."""
    between, inside = [], False
    for record in records:
        if record["type"] == "paused":
            inside = True
        elif record["type"] == "resumed":
            inside = False
        elif inside:
            between.append(record["type"])
    assert "train" not in between, between
    return between


class HeadlessRun(Process):
    """`tui-llm TRAIN_FILE --no-ui` with the tiny model, its stdout lines collected."""

    def __init__(self, train_file, run_dir, *extra, **kw):
        self.run_dir = Path(run_dir)
        super().__init__([sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--out-dir", str(run_dir),
                          *map(str, extra)], **kw)

    def steps_printed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("step "))
