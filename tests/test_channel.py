"""The control channel: a Unix socket in the run directory that steers a running trainer."""

import json
import os
import shutil
import socket
import statistics
import sys
import time

import numpy as np
import pytest

from tests.run_helpers import HeadlessRun, Process, make_data, no_steps_while_paused, read_metrics, run_cli
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import ADDRESS, SOCKET, ChannelError, ControlClient, ControlServer, peer_allowed, peer_uid
from tui_llm.engine.training.run_config import ConfigError, RunConfig, live_setting


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def serve(tmp_path):
    received = []
    server = ControlServer(tmp_path, received.append, lambda name, value: live_setting(RunConfig(), name, value))
    server.start()
    return server, received


def ask(server, client, message):
    """One request, served by polling as the trainer does between steps."""
    client.sock.sendall(message if isinstance(message, bytes) else (json.dumps(message) + "\n").encode())
    for _ in range(200):
        server.poll()
        client.sock.settimeout(0.01)
        try:
            data = client.sock.recv(65536)
        except TimeoutError:
            continue
        client._buf += data
        if b"\n" in client._buf:
            line, client._buf = client._buf.split(b"\n", 1)
            return json.loads(line)
    raise AssertionError("no reply")


def test_only_the_same_user_may_connect():
    me = os.geteuid()
    assert peer_allowed(me)
    assert not peer_allowed(me + 1)
    assert not peer_allowed(0, own_uid=1000) and peer_allowed(1000, own_uid=1000)
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert peer_uid(a) == me  # SO_PEERCRED of a real connection
    finally:
        a.close()
        b.close()


def test_requests_become_commands_and_bad_ones_one_line_errors(tmp_path):
    server, received = serve(tmp_path)
    try:
        assert (tmp_path / SOCKET).is_socket()
        assert (tmp_path / SOCKET).stat().st_mode & 0o077 == 0  # only the owner
        client = ControlClient.connect(tmp_path)
        assert ask(server, client, {"command": "pause"}) == {"ok": True}
        assert ask(server, client, {"command": "sample", "prompt": "ROMEO:"}) == {"ok": True}
        assert ask(server, client, {"command": "set", "name": "top_k", "value": 40.0}) == {"ok": True}
        assert ask(server, client, {"command": "ping"}) == {"ok": True}
        chat = {"command": "chat", "messages": [{"role": "user", "content": "Hi", "extra": 1}]}
        assert ask(server, client, chat) == {"ok": True}
        assert received == [ev.Pause(), ev.SampleNow(prompt="ROMEO:"), ev.SetSetting(name="top_k", value=40),
                            ev.ChatNow(messages=({"role": "user", "content": "Hi"},))]
        for bad, says in [({"command": "set", "name": "lr_scale", "value": -1}, "lr_scale must be"),
                          ({"command": "set", "name": "lr", "value": 1.0}, "not a live setting"),
                          ({"command": "set", "name": "top_k", "value": 2.5}, "top_k must be a whole number"),
                          ({"command": "fly"}, "unknown command"), ([1, 2], "JSON object"),
                          ({"command": "stop", "save": "yes"}, "save must be"),
                          ({"command": "chat", "messages": [{"role": "user"}]}, "messages must be"),
                          ({"command": "chat", "messages": "Hi"}, "messages must be")]:
            reply = ask(server, client, bad)
            assert reply["ok"] is False and says in reply["error"] and "\n" not in reply["error"], reply
        assert ask(server, client, b"not json\n")["ok"] is False
        assert ask(server, client, {"command": "resume"}) == {"ok": True}  # the connection still works
        assert len(received) == 5
    finally:
        server.close()
    assert not (tmp_path / SOCKET).exists()


def test_two_clients_at_once_and_a_client_that_disconnects(tmp_path):
    server, received = serve(tmp_path)
    try:
        one, two = ControlClient.connect(tmp_path), ControlClient.connect(tmp_path)
        gone = ControlClient.connect(tmp_path)
        gone.sock.sendall(b'{"command": "pa')  # half a request, then gone
        gone.close()
        quitter = ControlClient.connect(tmp_path)
        quitter.sock.sendall(b'{"command": "save"}\n')
        quitter.close()  # never reads its reply
        flood = ControlClient.connect(tmp_path)
        reply = ask(server, flood, b"x" * 70_000)  # a line without end: refused, and that client dropped
        assert reply["ok"] is False and "longer than" in reply["error"]
        assert ask(server, one, {"command": "pause"}) == {"ok": True}
        assert ask(server, two, {"command": "resume"}) == {"ok": True}
        assert ask(server, one, {"command": "ping"}) == {"ok": True}
        assert sorted(map(repr, received)) == ["Pause()", "Resume()", "SaveNow()"]
        assert len(server._clients) == 2
    finally:
        server.close()


def test_a_run_directory_too_long_for_a_socket_address_uses_a_private_one(tmp_path):
    long_dir = tmp_path / ("x" * 60) / ("y" * 60)
    long_dir.mkdir(parents=True)
    server, received = serve(long_dir)
    try:
        recorded = (long_dir / ADDRESS).read_text().strip()
        assert recorded == str(server.path) and len(recorded) < 108
        assert os.stat(os.path.dirname(recorded)).st_mode & 0o077 == 0
        client = ControlClient.connect(long_dir)
        assert ask(server, client, {"command": "save"}) == {"ok": True}
    finally:
        server.close()
    assert not (long_dir / ADDRESS).exists() and not os.path.exists(recorded)
    with pytest.raises(ChannelError, match="no trainer is serving"):
        ControlClient.connect(long_dir)


def test_idle_poll_costs_microseconds(tmp_path):
    """What the trainer pays per step when nobody sends anything (reported in the issue)."""
    server, _ = serve(tmp_path)
    try:
        def per_call(n=20000):
            t0 = time.perf_counter()
            for _ in range(n):
                server.poll()
            return (time.perf_counter() - t0) / n

        idle = statistics.median(per_call() for _ in range(5))
        clients = [ControlClient.connect(tmp_path) for _ in range(3)]
        server.poll()
        connected = statistics.median(per_call() for _ in range(5))
        print(f"\nidle poll: {idle * 1e6:.2f} us; with 3 idle clients connected: {connected * 1e6:.2f} us")
        assert idle < 100e-6 and connected < 100e-6  # a tiny d2 step takes ~5 ms, a d6 step ~500 ms
        for c in clients:
            c.close()
    finally:
        server.close()


def test_live_setting_is_checked_like_the_run_config():
    c = RunConfig()
    assert live_setting(c, "lr_scale", 0.5) == 0.5 and c.lr_scale == 1.0  # the config is not changed
    assert live_setting(c, "sample_every", 0) == 0
    with pytest.raises(ConfigError, match="temperature"):
        live_setting(c, "temperature", float("nan"))
    with pytest.raises(ConfigError, match="sample_len must be positive"):
        live_setting(c, "sample_len", 0)


@pytest.mark.slow
def test_steer_a_real_headless_run(train_file, tmp_path):
    run_dir = tmp_path / "run"
    run = HeadlessRun(train_file, run_dir, "--steps", "100000", "--lr", "1e-3", "--val-every", "0",
                      "--sample-every", "0", "--sample-len", "4", "--save-every", "0")
    try:
        run.wait_for(lambda: run.steps_printed() >= 2 and (run_dir / SOCKET).exists(), "the first steps")
        one, two = ControlClient.connect(run_dir), ControlClient.connect(run_dir)
        assert one.send(ev.Pause()) == {"ok": True}
        run.wait_for(lambda: any(line.startswith("paused at step") for line in run.lines), "the pause")
        printed = run.steps_printed()

        # while paused it still answers, samples, saves and takes settings (and trains no step:
        # checked on the records between `paused` and `resumed` below)
        assert two.send(ev.SampleNow(prompt="hi")) == {"ok": True}
        run.wait_for(lambda: any(m["type"] == "sample" for m in read_metrics(run_dir)), "a sample record")
        assert [m["prompt"] for m in read_metrics(run_dir) if m["type"] == "sample"] == ["hi"]
        assert two.send(ev.ChatNow(messages=({"role": "user", "content": "hi"},))) == {"ok": True}
        run.wait_for(lambda: any(m["type"] == "chat" for m in read_metrics(run_dir)), "a chat record")
        chat, = [m for m in read_metrics(run_dir) if m["type"] == "chat"]
        assert chat["text"] == "" and "no chat template" in chat["message"]  # GPT-2 without --chat-template
        assert any(line.startswith("chat reply at step") and "no reply" in line for line in run.lines)
        assert one.send(ev.SaveNow()) == {"ok": True}
        run.wait_for(lambda: list(run_dir.glob("ckpt_*.safetensors")), "a checkpoint")
        assert two.send(ev.SetSetting(name="lr_scale", value=0.5)) == {"ok": True}
        assert two.request({"command": "set", "name": "lr_scale", "value": 0})["ok"] is True
        bad = one.request({"command": "set", "name": "top_k", "value": -3})
        assert bad["ok"] is False and "top_k must be zero or more" in bad["error"]
        two.close()  # a client leaving changes nothing
        assert one.request({"command": "set", "name": "lr_scale", "value": 0.5})["ok"] is True
        assert one.send(ev.Resume()) == {"ok": True}
        run.wait_for(lambda: run.steps_printed() >= printed + 3, "steps after resuming")
        assert one.send(ev.Stop()) == {"ok": True}
        run.wait(expect=0)
    finally:
        run.close()
    metrics = read_metrics(run_dir)
    assert no_steps_while_paused(metrics) == ["sample", "chat", "checkpoint", "setting", "setting", "setting"]
    settings = [(m["name"], m["value"], m["step"]) for m in metrics if m["type"] == "setting"]
    assert settings == [("lr_scale", 0.5, printed), ("lr_scale", 0, printed), ("lr_scale", 0.5, printed)]
    assert f"setting lr_scale = 0.5 (step {printed})" in run.lines
    train = [m for m in metrics if m["type"] == "train"]
    assert {m["lr"] for m in train if m["step"] <= printed} == {1e-3}
    assert {m["lr"] for m in train if m["step"] > printed} == {5e-4}  # used from the next step on
    assert metrics[-1]["type"] == "finished" and metrics[-1]["reason"] == "stopped"
    assert not (run_dir / SOCKET).exists()  # removed when the run ended


@pytest.mark.slow
def test_a_live_lr_change_is_kept_by_the_checkpoint_and_resume(train_file, tmp_path):
    """Set lr_scale through the socket, save, stop, --resume: the same losses as one uninterrupted
    run whose lr changed at the same step (in this process, whose kernels may be compiled afresh
    where the runs' processes load them from numba's cache: the bits agree either way, see
    tests/test_kernel_cache.py)."""
    run_dir = tmp_path / "live"
    common = ["--lr", "3e-3", "--val-every", "0", "--sample-every", "0", "--save-every", "0"]
    run = HeadlessRun(train_file, run_dir, "--steps", "100000", *common)
    try:
        run.wait_for(lambda: (run_dir / SOCKET).exists(), "the control channel")
        with ControlClient.connect(run_dir) as client:
            assert client.send(ev.Pause())["ok"]
            run.wait_for(lambda: any(m["type"] == "paused" for m in read_metrics(run_dir)), "the pause")
            assert client.send(ev.SetSetting(name="lr_scale", value=0.25))["ok"]
            assert client.send(ev.SaveNow())["ok"]
            assert client.send(ev.Stop(save=False))["ok"]
        run.wait(expect=0)
    finally:
        run.close()
    changed_at = [m for m in read_metrics(run_dir) if m["type"] == "paused"][0]["step"]
    steps = changed_at + 6
    resumed = run_cli("--resume", run_dir, "--no-ui", "--steps", steps)
    assert resumed.returncode == 0, resumed.stderr
    train = {m["step"]: (m["loss"], m["lr"]) for m in read_metrics(run_dir) if m["type"] == "train"}
    assert sorted(train) == list(range(1, steps + 1))
    assert {lr for step, (_, lr) in train.items() if step > changed_at} == {3e-3 * 0.25}

    straight = train_changing_lr_scale(train_file, tmp_path / "straight", batch_size=2, steps=steps, changed_at=changed_at)
    assert straight == train  # bit-identical


def train_changing_lr_scale(train_file, out_dir, batch_size: int, steps: int, changed_at: int) -> dict:
    """{step: (loss, lr)} of an in-process run whose lr_scale becomes 0.25 after step changed_at."""
    from tui_llm.engine.training.trainer import Trainer

    trainer = Trainer(RunConfig(train_file=str(train_file), model="d2", batch_size=batch_size, seq_len=16,
                                max_seq_len=32, threads=1, init_style="numpy", steps=steps, lr=3e-3, val_every=0,
                                sample_every=0, save_every=0, out_dir=str(out_dir)))
    losses = {}

    def emit(event):
        if isinstance(event, ev.TrainStep):
            losses[event.step] = (event.loss, event.lr)
            if event.step == changed_at:
                trainer.send(ev.SetSetting(name="lr_scale", value=0.25))

    trainer.run(emit)
    return losses


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec is not installed (pip install mpich)")
def test_under_mpi_every_rank_applies_a_setting_at_the_same_step(train_file, tmp_path):
    """Rank 0 serves the socket; the command reaches every rank at one step boundary (else rank 1's
    weights would drift from rank 0's and the losses from one process's)."""
    run_dir = tmp_path / "mpi"
    args = ["--no-ui", "--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1",
            "--init-style", "numpy", "--lr", "3e-3", "--val-every", "0", "--sample-every", "0", "--save-every", "0"]
    with Process([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "tui_llm", str(train_file), *args,
                  "--steps", "100000", "--out-dir", str(run_dir)]) as proc:
        proc.wait_for(lambda: (run_dir / SOCKET).exists(), "the control channel")
        with ControlClient.connect(run_dir) as client:
            assert client.send(ev.Pause())["ok"]
            proc.wait_for(lambda: any(m["type"] == "paused" for m in read_metrics(run_dir)), "the paused record")
            assert client.send(ev.SetSetting(name="lr_scale", value=0.25))["ok"]
            assert client.send(ev.Resume())["ok"]
            changed_at = [m for m in read_metrics(run_dir) if m["type"] == "paused"][0]["step"]
            proc.wait_for(lambda: sum(m["type"] == "train" for m in read_metrics(run_dir)) >= changed_at + 5,
                          "5 steps after the change")
            assert client.send(ev.Stop(save=False))["ok"]
        proc.wait(expect=0)
    two = {m["step"]: (m["loss"], m["lr"]) for m in read_metrics(run_dir) if m["type"] == "train"}

    one = train_changing_lr_scale(train_file, tmp_path / "one", batch_size=4, steps=max(two), changed_at=changed_at)
    assert sorted(one) == sorted(two)
    assert [lr for _, lr in two.values()] == [lr for _, lr in one.values()]
    np.testing.assert_allclose([loss for loss, _ in two.values()], [loss for loss, _ in one.values()], rtol=0, atol=1e-5)
