"""The control channel: steer a running trainer from another process (`tui-llm watch`, scripts).

    RUN_DIR/control.sock   a Unix stream socket, made by rank 0 when the run starts, removed when it ends
    RUN_DIR/control.addr   only when RUN_DIR/control.sock is too long for a socket address (107 bytes)
                           or its file system has no sockets: the socket's path in a private
                           directory (mode 0700) under /tmp

Protocol: newline-delimited JSON; each request line gets one reply line.

    {"command": "pause"}   {"command": "resume"}   {"command": "save"}   {"command": "ping"}
    {"command": "sample", "prompt": "ROMEO:"}      (prompt optional: the run's --prompt)
    {"command": "chat", "messages": [{"role": "user", "content": "Hi"}]}   (the reply: a "chat" event)
    {"command": "stop"}                            (saves first; "save": false does not)
    {"command": "set", "name": "lr_scale", "value": 0.5}      (run_config.LIVE_SETTINGS)
    -> {"ok": true}   or   {"ok": false, "error": "one line"}

"ok" means accepted and queued in the trainer's Control: it is applied at the next step boundary
(under MPI by every rank at the same one), and the events in metrics.jsonl say when. Only
processes of the user running the trainer may connect (SO_PEERCRED); others are closed unanswered.
The trainer calls `ControlServer.poll()` between steps and, while paused, ten times a second: one
select() with a zero timeout when nothing happens. A client that disconnects, sends garbage or
stops reading never affects the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tui_llm.engine import events as ev
from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.jsonline import BadLine, parse_object
from tui_llm.engine.run.run_dir import CONTROL_ADDRESS, CONTROL_SOCKET

SOCKET, ADDRESS = CONTROL_SOCKET, CONTROL_ADDRESS
MAX_PATH = 107          # sun_path is 108 bytes with its terminating NUL
MAX_LINE = 64 * 1024    # a longer request line closes that client
MAX_CLIENTS = 64


class ChannelError(TuiLlmError):
    """The channel cannot be reached or answered with an error (one line for the user)."""


def peer_allowed(uid: int, own_uid: int | None = None) -> bool:
    """Only the user who runs the trainer may steer it."""
    return uid == (os.geteuid() if own_uid is None else own_uid)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def socket_path(run_dir) -> Path:
    """Where a run directory's trainer listens (its control.addr names it when it is not inside)."""
    run_dir = Path(run_dir)
    try:
        return Path((run_dir / ADDRESS).read_text(encoding="utf-8").strip())
    except OSError:
        return run_dir / SOCKET


# ---------------------------------------------------------------------------------------
# requests <-> commands

def command_to_json(command: ev.Command) -> dict:
    match command:
        case ev.Pause():
            return {"command": "pause"}
        case ev.Resume():
            return {"command": "resume"}
        case ev.SampleNow(prompt=prompt):
            return {"command": "sample", "prompt": prompt}
        case ev.ChatNow(messages=messages):
            return {"command": "chat", "messages": list(messages)}
        case ev.SaveNow():
            return {"command": "save"}
        case ev.Stop(save=save):
            return {"command": "stop", "save": save}
        case ev.SetSetting(name=name, value=value):
            return {"command": "set", "name": name, "value": value}
    raise ValueError(f"no request for {command!r}")


def command_from_json(request, check_setting: Callable[[str, object], object]) -> ev.Command | None:
    """The command a request asks for (None: ping); ValueError with one line otherwise."""
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ValueError('a request is a JSON object with a "command"')
    name = request["command"]
    simple = {"pause": ev.Pause, "resume": ev.Resume, "save": ev.SaveNow}
    if name in simple:
        return simple[name]()
    if name == "ping":
        return None
    if name == "sample":
        prompt = request.get("prompt", "")
        if not isinstance(prompt, str):
            raise ValueError("sample: prompt must be text")
        return ev.SampleNow(prompt=prompt)
    if name == "chat":
        messages = request.get("messages", [])
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError('chat: messages must be a list of {"role": text, "content": text}')
        return ev.ChatNow(messages=tuple({"role": m["role"], "content": m["content"]} for m in messages))
    if name == "stop":
        save = request.get("save", True)
        if not isinstance(save, bool):
            raise ValueError("stop: save must be true or false")
        return ev.Stop(save=save, reason=ev.FinishReason.STOPPED)
    if name == "set":
        setting, value = request.get("name"), request.get("value")
        if not isinstance(setting, str) or "value" not in request:
            raise ValueError('set: needs "name" and "value"')
        checked = check_setting(setting, value)
        if not isinstance(checked, (int, float)) or isinstance(checked, bool):
            raise ValueError(f"set: {setting} takes a number")
        return ev.SetSetting(name=setting, value=checked)
    raise ValueError(f"unknown command {name!r} (pause, resume, sample, save, stop, set, ping)")


# ---------------------------------------------------------------------------------------
# the trainer's side

class ControlServer:
    """Rank 0's listening socket; `poll()` between steps hands accepted commands to `submit`.

    check_setting(name, value) returns the value to set or raises (ConfigError, ValueError):
    its message is the client's error line.
    """

    def __init__(self, run_dir, submit: Callable[[ev.Command], None],
                 check_setting: Callable[[str, object], object]) -> None:
        self.run_dir = Path(run_dir)
        self.submit, self.check_setting = submit, check_setting
        self.path: Path | None = None
        self._private_dir: Path | None = None
        self._listener: socket.socket | None = None
        self._clients: dict[socket.socket, bytearray] = {}
        self._watched: list[socket.socket] = []

    def start(self) -> Path:
        """Listen (the caller holds the run directory's lock, so a leftover socket is stale)."""
        self._remove_files()
        path = self.run_dir / SOCKET
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                if len(os.fsencode(str(path))) > MAX_PATH:
                    raise OSError("the run directory's path is too long for a socket address")
                _bind(listener, path)
            except OSError:  # too long, or a file system without sockets: a private directory (mode 0700)
                self._private_dir = Path(tempfile.mkdtemp(prefix="tui-llm-", dir="/tmp"))
                path = self._private_dir / SOCKET
                _bind(listener, path)
            listener.listen(socket.SOMAXCONN)  # clients wait here until the next step boundary accepts them
            listener.setblocking(False)
            if self._private_dir is not None:
                with atomic_write(self.run_dir / ADDRESS, "w") as f:
                    f.write(str(path) + "\n")
        except BaseException:
            listener.close()
            self._remove_files()
            raise
        self._listener, self.path = listener, path
        self._watched = [listener]
        return path

    def poll(self) -> None:
        """Accept clients and answer their complete request lines; never waits."""
        if not self._watched:
            return
        try:
            ready, _, _ = select.select(self._watched, (), (), 0)
        except (OSError, ValueError):
            return
        for sock in ready:
            if sock is self._listener:
                self._accept()
            else:
                self._read(sock)

    def _accept(self) -> None:
        assert self._listener is not None  # poll() watches it only while it is open
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                allowed = peer_allowed(peer_uid(conn)) and len(self._clients) < MAX_CLIENTS
            except OSError:
                allowed = False
            if not allowed:
                conn.close()
                continue
            conn.setblocking(False)
            self._clients[conn] = bytearray()
            self._watched.append(conn)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self._clients[conn]
        buf += data
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            if not self._reply(conn, self._answer(line)):
                return
        if len(buf) > MAX_LINE:
            self._reply(conn, {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"})
            self._drop(conn)

    def _answer(self, line: bytes) -> dict:
        """The reply to one request line. Nothing a client sends escapes as an exception: the run
        must go on whatever arrives (bad bytes, deep or huge JSON, wrong types, unknown commands)."""
        try:
            command = command_from_json(parse_object(line, MAX_LINE), self.check_setting)
        except (ValueError, TypeError, OverflowError) as e:  # BadLine, ConfigError and our own are ValueErrors
            return {"ok": False, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        except Exception as e:  # a check that failed in a way nobody foresaw: still only this request's error
            return {"ok": False, "error": f"cannot apply this request ({type(e).__name__})"}
        if command is not None:
            self.submit(command)
        return {"ok": True}

    def _reply(self, conn: socket.socket, reply: dict) -> bool:
        try:
            # a short line: fits the socket buffer; MSG_NOSIGNAL: a client gone never raises SIGPIPE here
            conn.send((json.dumps(reply) + "\n").encode(), socket.MSG_NOSIGNAL)
            return True
        except OSError:  # gone, or not reading its replies: drop it, never wait for it
            self._drop(conn)
            return False

    def _drop(self, conn: socket.socket) -> None:
        self._clients.pop(conn, None)
        with contextlib.suppress(ValueError):
            self._watched.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close every connection and remove the socket (and its private directory)."""
        for conn in list(self._clients):
            self._drop(conn)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._watched = []
        self._remove_files()

    def _remove_files(self) -> None:
        addr = self.run_dir / ADDRESS
        with contextlib.suppress(OSError):
            recorded = Path(addr.read_text(encoding="utf-8").strip())
            if recorded.parent.name.startswith("tui-llm-") and recorded.parent.parent == Path("/tmp"):
                shutil.rmtree(recorded.parent, ignore_errors=True)
        for p in (self.run_dir / SOCKET, addr):
            with contextlib.suppress(OSError):
                p.unlink()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


def _bind(listener: socket.socket, path: Path) -> None:
    old_umask = os.umask(0o177)  # the socket file is born 0600
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------------------------------
# the other side

class ControlClient:
    """A connection to a running trainer's control channel.

        with ControlClient.connect("runs/x") as client:
            client.send(Pause())                 # {"ok": true}
            client.request({"command": "set", "name": "lr_scale", "value": 0.5})
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    @classmethod
    def connect(cls, run_dir, timeout: float = 10.0) -> ControlClient:
        path = socket_path(run_dir)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.connect(str(path))
                return cls(sock)
            except BlockingIOError:  # the trainer's backlog is full until its next step boundary
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                error: OSError = TimeoutError("the trainer accepts no connection")
            except OSError as e:
                error = e
            sock.close()
            raise ChannelError(f"{run_dir}: no trainer is serving commands here ({error.strerror or error})") from None

    def request(self, message: dict) -> dict:
        """Send one request and wait for its reply (ChannelError if the trainer is gone)."""
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode())
            while b"\n" not in self._buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ChannelError("the trainer closed the control channel")
                self._buf += data
        except OSError as e:
            raise ChannelError(f"the control channel failed: {e.strerror or e}") from None
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return parse_object(line, MAX_LINE)
        except BadLine:
            raise ChannelError("the trainer sent an unreadable reply") from None

    def send(self, command: ev.Command) -> dict:
        return self.request(command_to_json(command))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
