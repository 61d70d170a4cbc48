"""Fuzzing what a run reads from outside, against the real thing (issue 20, "how it is checked"):

* the control channel of a LIVE headless run, over byte strings, deep and huge JSON, wrong
  types, unknown commands and floods: every reply is `{"ok": true}` or an error, and the run
  trains on, then stops and saves when asked;
* metrics.jsonl lines (seeded: garbage bytes, deep and huge JSON, records of every type with
  fields of the wrong type, non-objects) read by `--resume`, `watch --no-ui` and the readers
  in-process (hypothesis): no traceback, no exception, the run resumes from its checkpoint.

The cases come from seeded generators, so a failure is reproducible from its seed.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_cases import FIELDS, ODD_VALUES, control_cases, metrics_lines
from tests.run_helpers import TINY, HeadlessRun, make_data, read_metrics
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import SOCKET, ControlClient, socket_path
from tui_llm.engine.run.metrics_log import MetricsLog

WAIT = 60


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


# -- the control channel of a live run ------------------------------------------------------------

def read_replies(sock: socket.socket, count: int) -> list[dict]:
    """`count` reply lines (fewer if the trainer closed this connection)."""
    data = b""
    deadline = time.monotonic() + WAIT
    while data.count(b"\n") < count and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:  # the trainer dropped this client (a line too long): closed, no reply
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.split(b"\n")[:count] if line]


def is_reply(reply) -> bool:
    return reply == {"ok": True} or (isinstance(reply, dict) and reply.get("ok") is False
                                      and isinstance(reply.get("error"), str) and "\n" not in reply["error"])


@pytest.mark.slow
def test_fuzz_the_control_channel_of_a_live_run(train_file, tmp_path):
    run_dir = tmp_path / "run"
    run = HeadlessRun(train_file, run_dir, "--steps", "100000", "--val-every", "0", "--sample-every", "0",
                      "--save-every", "0")
    rng = random.Random(20)
    outcomes = {"ok": 0, "error": 0, "closed": 0}
    try:
        run.wait_for(lambda: (run_dir / SOCKET).exists() and run.steps_printed() >= 1, "the run", timeout=WAIT)
        steps_before = run.steps_printed()
        for case in control_cases(rng, 300):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(WAIT)
                sock.connect(str(socket_path(run_dir)))
                sock.sendall(case)
                if not case.endswith(b"\n"):
                    sock.shutdown(socket.SHUT_WR)  # the trainer sees the end of this client: no reply is due
                    continue
                replies = read_replies(sock, case.count(b"\n"))
                if not replies:
                    outcomes["closed"] += 1
                for reply in replies:
                    assert is_reply(reply), (case[:200], reply)
                    outcomes["ok" if reply["ok"] else "error"] += 1
        # a flood: 2,000 requests on one connection without reading, then every reply
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(socket_path(run_dir)))
            sock.sendall(b'{"command": "ping"}\n' * 2_000)
            flood = read_replies(sock, 2_000)
            assert flood and all(r == {"ok": True} for r in flood), flood[:3]
        # 40 clients at once, each sending half a line and going away
        clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(40)]
        for c in clients:
            c.connect(str(socket_path(run_dir)))
            c.sendall(b'{"command": "pi')
        for c in clients:
            c.close()
        run.wait_for(lambda: run.steps_printed() >= steps_before + 3, "steps after the fuzzing", timeout=WAIT)
        assert run.proc.poll() is None  # still training
        with ControlClient.connect(run_dir, timeout=WAIT) as client:  # waits while the backlog is full
            assert client.request({"command": "stop"}) == {"ok": True}
        run.proc.wait(WAIT)
        err = run.proc.stderr.read()
    finally:
        run.close()
    assert run.proc.returncode == 0, err
    assert "Traceback" not in err
    assert outcomes["error"] > 200 and outcomes["ok"] > 10, outcomes
    steps = [m["step"] for m in read_metrics(run_dir) if m["type"] == "train"]
    assert (run_dir / f"ckpt_{steps[-1]:08d}.safetensors").exists()  # stopped and saved, nothing lost
    print(f"control channel fuzz: {outcomes}")


# -- metrics.jsonl lines ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(train_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    r = subprocess.run([sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--steps", "4",
                        "--save-every", "2", "--val-every", "2", "--sample-every", "2", "--out-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_history_lines_never_stop_watch_or_resume(finished_run, tmp_path, seed):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    rng = random.Random(seed)
    good = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    bad = [line + b"\n" for line in metrics_lines(rng, 150)]
    rng.shuffle(bad)
    mixed = []
    for line in good:  # bad lines among the good ones, before and after the checkpoints' offsets
        mixed += [line] + [bad.pop() for _ in range(rng.randrange(0, 12)) if bad]
    (run_dir / "metrics.jsonl").write_bytes(b"".join(mixed + bad) + b"torn last line {")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    watch = subprocess.run([sys.executable, "-m", "tui_llm", "watch", str(run_dir), "--no-ui"], capture_output=True,
                           text=True, timeout=WAIT, env=env)
    assert watch.returncode == 0 and "Traceback" not in watch.stderr, watch.stderr
    assert "step 4/4" in watch.stdout and "\x1b" not in watch.stdout
    resume = subprocess.run([sys.executable, "-m", "tui_llm", "--resume", str(run_dir), "--no-ui", "--steps", "6"],
                            capture_output=True, text=True, timeout=WAIT, env=env)
    assert resume.returncode == 0 and "Traceback" not in resume.stderr, resume.stderr
    assert "resuming at step 4" in resume.stdout
    assert (run_dir / "ckpt_00000006.safetensors").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                  max_size=4), max_leaves=20)
    .map(lambda v: json.dumps(v).encode()),
    st.builds(lambda kind, values: json.dumps({"type": kind, **values}).encode(), st.sampled_from(sorted(FIELDS)),
              st.dictionaries(st.sampled_from(sorted({f for fs in FIELDS.values() for f in fs})),
                              st.sampled_from([v for v in ODD_VALUES if v == v and v not in (float("inf"),)]),
                              max_size=8))), max_size=30))
def test_every_reader_of_metrics_lines_takes_any_line(tmp_path, lines):
    """MetricsLog (resume, watch, overlays), event_from_json and the headless printer, in-process."""
    import io

    from tui_llm.cli.headless import HeadlessPrinter

    path = Path(tmp_path) / "metrics.jsonl"
    path.write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
    log = MetricsLog(path)
    records = log.read()
    assert len(records) + log.bad_lines == len(lines)
    printer = HeadlessPrinter(out=io.StringIO())
    for record in records:
        event = ev.event_from_json(record)
        if event is not None and not isinstance(event, ev.Error):
            printer(event)
    log.history_end(0)
    log.history_end_at_step(3)
