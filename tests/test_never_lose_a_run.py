"""Issue 20, "never lose a run": a lost history, a dead end before the first checkpoint, signals at
start-up, a closed pipe, reads that never end, and the messages a new user meets. Every case is
a real `tui-llm` process: its exit status, one line for bad input, no traceback, nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.run_helpers import TINY, HeadlessRun, make_data, read_metrics
from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import SOCKET, ControlClient
from tui_llm.engine.run.metrics_log import MetricsLog

pytestmark = pytest.mark.slow
WAIT = 60  # seconds any one wait may take before the test fails, showing what it saw
QUICK = ["--val-every", "0", "--sample-every", "0"]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def tui(*args, cwd=None, stdout=subprocess.PIPE, timeout=WAIT):
    return subprocess.run([sys.executable, "-m", "tui_llm", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=cwd, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def one_line_error(r, code=2) -> str:
    """The process failed with `code` and said why in one line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def checkpoints(run_dir) -> list[str]:
    return sorted(p.name for p in Path(run_dir).glob("ckpt_*.safetensors"))


@pytest.fixture(scope="module")
def saved_run(train_file, tmp_path_factory):
    """A run of 4 steps with checkpoints at 2 and 4 (copied by each test that damages it)."""
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    r = tui(train_file, "--no-ui", *TINY, "--init-style", "numpy", "--steps", "4", "--save-every", "2", *QUICK,
            "--out-dir", run_dir)
    assert r.returncode == 0, r.stderr
    return run_dir


def copy_of(run_dir, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


# -- item 2: the history is a record, the checkpoint is the run ------------------------------

@pytest.mark.parametrize("damage", ["lost", "truncated", "garbage"])
def test_a_lost_or_damaged_history_does_not_stop_a_resume(saved_run, tmp_path, damage):
    run = copy_of(saved_run, tmp_path)
    metrics = run / "metrics.jsonl"
    data = metrics.read_bytes()
    if damage == "lost":
        metrics.unlink()
    elif damage == "truncated":
        metrics.write_bytes(data[: len(data) // 3])
    else:  # bytes that are no record, in the middle of the history
        metrics.write_bytes(data[:100] + b"\x00\xff[[[[{\n" + b"[" * 50_000 + b"\n" + data[100:200])
    r = tui("--resume", run, "--no-ui", "--steps", "6")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warning = [line for line in r.stdout.splitlines() if line.startswith("warning: metrics.jsonl ")]
    assert len(warning) == 1 and "continues from ckpt_00000004.safetensors at step 4" in warning[0], r.stdout
    assert checkpoints(run)[-1] == "ckpt_00000006.safetensors"
    steps = [m["step"] for m in MetricsLog(run / "metrics.jsonl").read() if m.get("type") == "train"]
    assert steps[-2:] == [5, 6]  # the run went on from its checkpoint
    again = tui("--resume", run, "--no-ui", "--steps", "7")  # and the history it wrote resumes cleanly
    assert again.returncode == 0 and "warning: metrics.jsonl" not in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json"])
def test_a_directory_in_place_of_a_run_file_is_one_line_and_status_2(saved_run, tmp_path, name):
    run = copy_of(saved_run, tmp_path)
    (run / name).unlink()
    (run / name).mkdir()
    line = one_line_error(tui("--resume", run, "--no-ui", "--steps", "6"))
    assert f"{run / name}: a directory" in line
    assert checkpoints(run) == checkpoints(saved_run)  # nothing was touched


# -- item 7: reads that never end ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_watch_and_resume_refuse_a_history_that_is_not_a_regular_file(saved_run, tmp_path, kind):
    run = copy_of(saved_run, tmp_path)
    (run / "metrics.jsonl").unlink()
    if kind == "fifo":
        os.mkfifo(run / "metrics.jsonl")
    else:
        (run / "metrics.jsonl").symlink_to("/dev/zero")
    for args in (["watch", run, "--no-ui"], ["--resume", run, "--no-ui", "--steps", "6"]):
        line = one_line_error(tui(*args))  # within WAIT: never blocked on the FIFO nor reading /dev/zero
        assert "metrics.jsonl" in line and ("FIFO" in line or "not a regular file" in line), line


# -- item 3: dead before the first checkpoint ---------------------------------------------------------

def kill_9_after_steps(train_file, run_dir, steps, *args):
    """Start a headless run that saves nothing, pause it at a step boundary after `steps` steps
    (through its control channel), then kill -9 it: what a crash before the first checkpoint leaves."""
    run = HeadlessRun(train_file, run_dir, "--steps", "1000", "--save-every", "0", *QUICK, *args)
    try:
        run.wait_for(lambda: (run_dir / SOCKET).exists() and run.steps_printed() >= steps, "steps", timeout=WAIT)
        with ControlClient.connect(run_dir) as client:
            assert client.send(ev.Pause())["ok"]
        run.wait_for(lambda: any(line.startswith("paused at step") for line in run.lines), "the pause", timeout=WAIT)
        run.proc.kill()
        run.proc.wait(WAIT)
    finally:
        run.close()
    left = sorted(p.name for p in run_dir.iterdir())
    assert not checkpoints(run_dir) and "metrics.jsonl" in left and ".lock" in left, left


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_the_same_command(train_file, tmp_path):
    run_dir = tmp_path / "run"
    kill_9_after_steps(train_file, run_dir, 2)
    same = tui(train_file, "--no-ui", *TINY, "--steps", "3", "--save-every", "0", *QUICK, "--out-dir", run_dir)
    assert same.returncode == 0, same.stderr
    assert "stopped before its first checkpoint" in same.stdout and "starting it again from step 0" in same.stdout
    assert [m["step"] for m in read_metrics(run_dir) if m["type"] == "train"] == [1, 2, 3]
    assert checkpoints(run_dir) == ["ckpt_00000003.safetensors"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_from_step_0(train_file, tmp_path):
    run_dir = tmp_path / "run"
    kill_9_after_steps(train_file, run_dir, 2, "--lr", "2e-3")
    r = tui("--resume", run_dir, "--no-ui", "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert "starting it again from step 0" in r.stdout and "resuming at step" not in r.stdout
    assert [m["step"] for m in read_metrics(run_dir) if m["type"] == "train"] == [1, 2, 3]
    assert read_metrics(run_dir)[0]["run_config"]["lr"] == 2e-3  # its own configuration, from config.json


def test_a_directory_with_anything_else_in_it_is_never_taken_over(train_file, tmp_path):
    run_dir = tmp_path / "run"
    kill_9_after_steps(train_file, run_dir, 1)
    (run_dir / "notes.txt").write_text("mine")
    line = one_line_error(tui(train_file, "--no-ui", *TINY, "--steps", "2", "--out-dir", run_dir))
    assert "not empty" in line
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "metrics.jsonl").exists()


# -- item 4: signals at start-up ------------------------------------------------------------------

def handles(pid: int, signum: int) -> bool:
    """Whether process `pid` has installed a handler for `signum` (Linux /proc: SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)


def wait_until(predicate, what, proc=None):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigterm_while_the_model_loads_exits_143_with_nothing_saved(train_file, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--steps", "5",
                             "--out-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: handles(proc.pid, signal.SIGTERM), "the signal handlers", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err
    if "step 1/" not in out:  # the usual case: stopped before it trained anything
        assert "SIGTERM" in err and not checkpoints(run_dir), err


def test_sigterm_while_compiling_exits_143_and_saves_nothing_of_nothing(train_file, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--steps", "1000",
                             "--out-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("compiling kernels"), proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err
    trained = [line for line in out.splitlines() if line.startswith("step ")]
    if trained:  # the kernels were cached: it may have trained a step before the signal came
        assert checkpoints(run_dir) == [f"ckpt_{len(trained):08d}.safetensors"], (out, err)
    else:  # nothing trained: nothing saved, and no run directory left behind
        assert not run_dir.exists() and "nothing was saved" in err, err


# -- item 8: a closed pipe or a full disk under a redirect ---------------------------------------------

def test_a_run_piped_into_a_process_that_exits_saves_on_sigint_and_exits_130(train_file, tmp_path):
    """`tui-llm --no-ui ... | head -n 3`, then Ctrl-C after head has gone: the run finishes its
    step, saves, exits 130 and says once on stderr that its output went away."""
    run_dir = tmp_path / "run"
    tui_proc = subprocess.Popen([sys.executable, "-m", "tui_llm", str(train_file), "--no-ui", *TINY, "--steps", "100000",
                                 "--save-every", "0", *QUICK, "--out-dir", str(run_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = subprocess.Popen(["head", "-n", "3"], stdin=tui_proc.stdout, stdout=subprocess.DEVNULL)
    tui_proc.stdout.close()  # head alone reads the pipe now
    try:
        head.wait(WAIT)
        wait_until(lambda: sum(m["type"] == "train" for m in read_metrics(run_dir)) >= 5,
                   "steps trained after head exited", tui_proc)  # it printed (and failed to) meanwhile
        tui_proc.send_signal(signal.SIGINT)
        err = tui_proc.communicate(timeout=WAIT)[1]
    finally:
        tui_proc.kill()
    assert tui_proc.returncode == 130, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert err.count("standard output failed (Broken pipe)") == 1, err
    steps = [m["step"] for m in read_metrics(run_dir) if m["type"] == "train"]
    assert checkpoints(run_dir) == [f"ckpt_{steps[-1]:08d}.safetensors"]  # nothing lost
    assert "continue with: tui-llm --resume" in err


def test_standard_output_on_a_full_disk_never_stops_the_run(train_file, tmp_path):
    with open("/dev/full", "w") as full:
        r = tui(train_file, "--no-ui", *TINY, "--steps", "3", *QUICK, "--out-dir", tmp_path / "run", stdout=full)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("standard output failed (No space left on device)") == 1, r.stderr
    assert checkpoints(tmp_path / "run") == ["ckpt_00000003.safetensors"]


# -- items 5, 6, 11: one line that says the limit; a new user's commands ----------------------------

def test_numbers_beyond_the_limit_and_devices_get_one_line_that_names_the_limit(train_file, tmp_path):
    line = one_line_error(tui(train_file, "--no-ui", "--steps", "9" * 40, "--out-dir", tmp_path / "r"))
    assert "--steps must be less than 2**62" in line and "9" * 30 not in line
    line = one_line_error(tui("prepare", "/dev/zero", "--out-dir", tmp_path))
    assert "/dev/zero: not a regular file" in line


def test_a_prompt_beyond_a_small_models_vocabulary_is_one_line(tmp_path):
    from tui_llm.engine.formats import write_llmc
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig

    cfg = GPTConfig(num_layers=1, num_heads=2, channels=32, max_seq_len=16, vocab_size=300)
    write_llmc(tmp_path / "small.bin", cfg, GPT.random_init(cfg, seed=1).params.flat)
    line = one_line_error(tui("sample", "--init-from", tmp_path / "small.bin", "--prompt", "ROMEO: hello"))
    assert "outside this model's vocabulary of 300" in line


def test_steps_0_saves_nothing_and_continue_with_keeps_how_the_run_ran(train_file, tmp_path):
    r = tui(train_file, "--no-ui", *TINY, "--steps", "0", "--out-dir", tmp_path / "zero")
    assert r.returncode == 0, r.stderr
    assert "nothing was saved (--steps 0 trains nothing)" in r.stderr and not (tmp_path / "zero").exists()
    r = tui(train_file, "--no-ui", *TINY, "--steps", "2", *QUICK, "--out-dir", tmp_path / "two")
    assert f"continue with: tui-llm --resume {tmp_path / 'two'} --no-ui --steps 4" in r.stderr, r.stderr


def test_a_tiny_corpus_trains_with_what_validation_it_can(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)  # ~240 tokens
    r = tui("prepare", text, "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    r = tui(tmp_path / "tiny_train.bin", "--no-ui", "--model", "d2", "--max-seq-len", "64", "-b", "1", "-t", "64",
            "--steps", "1", "--threads", "1", "--out-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "no validation: tiny_val.bin holds" in r.stdout, r.stdout
    big = tmp_path / "small.txt"
    big.write_text("To be, or not to be, that is the question.\n" * 100)  # ~1,200 tokens: 10% would be 120
    r = tui("prepare", big, "--out-dir", tmp_path)
    assert r.returncode == 0 and "val gets 257" in r.stdout, r.stdout + r.stderr
    r = tui(tmp_path / "small_train.bin", "--no-ui", "--model", "d2", "--steps", "1", "--threads", "1",
            "--out-dir", tmp_path / "run2")  # the default batch of 4x64
    assert r.returncode == 0 and "val loss" in r.stdout, r.stdout + r.stderr


def test_a_run_from_loaded_weights_is_named_after_them(train_file, tmp_path):
    from tui_llm.engine.formats import write_llmc
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig

    cfg = GPTConfig(num_layers=1, num_heads=2, channels=32, max_seq_len=32)
    write_llmc(tmp_path / "my model.bin", cfg, GPT.random_init(cfg, seed=1).params.flat)
    r = tui(train_file, "--no-ui", "--init-from", tmp_path / "my model.bin", "-b", "2", "-t", "16", "--threads", "1",
            "--steps", "1", *QUICK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-my_model"), run_dir.name


def test_an_unchanged_live_setting_records_no_change(train_file, tmp_path):
    run_dir = tmp_path / "run"
    run = HeadlessRun(train_file, run_dir, "--steps", "100000", "--save-every", "0", *QUICK)
    try:
        run.wait_for(lambda: (run_dir / SOCKET).exists() and run.steps_printed() >= 1, "the run", timeout=WAIT)
        with ControlClient.connect(run_dir) as client:
            assert client.request({"command": "set", "name": "lr_scale", "value": 1})["ok"]
            assert client.request({"command": "set", "name": "top_k", "value": 5})["ok"]
            reply = client.request({"command": "set", "name": "save_every", "value": 1e308})
            assert not reply["ok"] and "less than 2**62" in reply["error"] and len(reply["error"]) < 200, reply
            run.wait_for(lambda: any(line.startswith("setting top_k") for line in run.lines), "top_k", timeout=WAIT)
            assert client.send(ev.Stop())["ok"]
        run.proc.wait(WAIT)
    finally:
        run.close()
    records = read_metrics(run_dir)
    assert [(m["name"], m["value"]) for m in records if m["type"] == "setting"] == [("top_k", 5)]
    assert any(m["type"] == "notice" and "lr_scale is already 1" in m["text"] for m in records)


# -- the terminal UI in a pseudo-terminal -------------------------------------------------------------

class Pty:
    """A command on a pseudo-terminal of the given size; what it draws is collected (escapes and all)."""

    def __init__(self, args, cols=120, rows=40):
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-m", "tui_llm", *map(str, args)], stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True, env=dict(os.environ, TERM="xterm-256color"))
        os.close(slave)
        self.master, self.seen = master, bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.seen += data

    def text(self) -> str:
        return self.seen.decode("utf-8", "replace")

    def wait_for(self, needle: str, what: str):
        wait_until(lambda: needle in self.text(), what)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.ui
def test_ui_sigterm_while_compiling_and_ctrl_c_while_training(train_file, tmp_path):
    run_dir = tmp_path / "run"
    term = Pty([train_file, *TINY, "--steps", "100000", "--save-every", "0", *QUICK, "--out-dir", run_dir])
    try:
        term.wait_for("Compiling", "the compile screen")
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(WAIT) == 143, term.text()[-2000:]
    finally:
        term.close()
    if not any(m["type"] == "train" for m in read_metrics(run_dir)):
        assert not checkpoints(run_dir)

    run_dir = tmp_path / "run2"
    term = Pty([train_file, *TINY, "--steps", "100000", "--save-every", "0", *QUICK, "--out-dir", run_dir])
    try:
        wait_until(lambda: sum(m["type"] == "train" for m in read_metrics(run_dir)) >= 2, "two steps", term.proc)
        os.write(term.master, b"\x03")  # ctrl+c: a key in the UI's raw terminal, handled like SIGINT
        assert term.proc.wait(WAIT) == 130, term.text()[-2000:]
    finally:
        term.close()
    steps = [m["step"] for m in read_metrics(run_dir) if m["type"] == "train"]
    assert checkpoints(run_dir) == [f"ckpt_{steps[-1]:08d}.safetensors"]


@pytest.mark.ui
def test_ui_in_a_terminal_too_small_says_how_large_to_make_it(train_file, tmp_path):
    run_dir = tmp_path / "run"
    term = Pty([train_file, *TINY, "--steps", "100000", "--save-every", "0", *QUICK, "--out-dir", run_dir],
               cols=50, rows=14)
    try:
        term.wait_for("make the terminal at least 60x18", "the size message")
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(WAIT) == 143
    finally:
        term.close()


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec is not installed (pip install mpich)")
def test_an_mpi_run_prints_once_and_continues_with_the_mpiexec_command_on_any_number_of_processes(train_file,
                                                                                                  tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "tui_llm", str(train_file),
                        "--no-ui", *TINY, "--steps", "2", *QUICK, "--out-dir", str(run_dir)], capture_output=True,
                       text=True, timeout=WAIT * 2, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("compiling kernels") == 1 and r.stdout.count("model: ") == 1, r.stdout  # rank 0 alone
    assert "32 tokens per step" not in r.stdout and "2x16 x 2 processes per epoch" in r.stdout, r.stdout
    assert f"continue with: mpiexec -n 2 tui-llm --resume {run_dir} --no-ui --steps 4" in r.stderr, r.stderr
    one = tui("--resume", run_dir, "--no-ui", "--steps", "3")  # one process: the recorded total batch
    assert one.returncode == 0 and "resuming at step 2" in one.stdout, one.stdout + one.stderr
    assert "(2 micro-batches)" in one.stdout
