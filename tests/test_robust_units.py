"""Issue 20's rules in-process (the subprocess cases are in test_never_lose_a_run.py): what a run
directory may be started over, the messages at a limit, a resume on another number of processes,
and output streams that die."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from tui_llm.cli.streams import CourtesyStream
from tui_llm.engine.data.loader import TrainLoader
from tui_llm.engine.data.loader_state import BatchMismatch, check_loader_state
from tui_llm.engine.data.tokens import DataError
from tui_llm.engine.run.run_dir import RunDir, RunDirError
from tui_llm.engine.training.run_config import ConfigError, RunConfig, live_setting


def dead_run(path, *, config=True, records=b'{"type": "start", "step": 0}\n{"type": "train", "step": 1}\n'):
    """What a run killed before its first checkpoint leaves."""
    path.mkdir()
    (path / ".lock").touch()
    if config:
        (path / "config.json").write_text('{"run_config": {"steps": 5}}')
    (path / "metrics.jsonl").write_bytes(records)
    (path / ".ckpt_00000001.safetensors.0123abcd.tui-llm-tmp").write_bytes(b"half")
    return path


def test_a_fresh_run_starts_over_what_a_run_without_checkpoints_left(tmp_path):
    run = RunDir(dead_run(tmp_path / "run"))
    note = run.create()
    assert "stopped before its first checkpoint (1 steps recorded, none saved)" in note
    run.lock()  # create() took the lock already; a second lock() is a no-op
    assert sorted(p.name for p in run.path.iterdir()) == [".lock"]
    run.close()


@pytest.mark.parametrize("extra", ["ckpt_00000001.safetensors", "keep.json", "notes.txt", "sub/"])
def test_anything_else_in_the_directory_is_refused_and_left_alone(tmp_path, extra):
    path = dead_run(tmp_path / "run")
    (path / extra.rstrip("/")).mkdir() if extra.endswith("/") else (path / extra).write_text("x")
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(RunDirError, match="not empty"):
        RunDir(path).create()
    assert sorted(p.name for p in path.iterdir()) == before


def test_a_config_or_history_not_of_ours_is_never_taken_over(tmp_path):
    path = dead_run(tmp_path / "a")
    (path / "config.json").write_text('{"model_type": "gpt2"}')  # a Hugging Face config, say
    with pytest.raises(RunDirError):
        RunDir(path).create()
    path = dead_run(tmp_path / "b", config=False, records=b'{"step": 1, "loss": 2.0}\n')
    with pytest.raises(RunDirError):
        RunDir(path).create()


def test_a_directory_a_live_process_holds_is_refused(tmp_path):
    holder = RunDir(dead_run(tmp_path / "run"))
    holder.lock()
    try:
        with pytest.raises(RunDirError, match="another process"):
            RunDir(holder.path).create()
    finally:
        holder.close()
    assert (holder.path / "metrics.jsonl").exists()


def test_run_files_that_are_not_regular_files_are_named(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    (run.path / "config.json").mkdir()
    with pytest.raises(RunDirError, match=r"config.json: a directory; .* must be a regular file"):
        run.check_files()
    os.rmdir(run.path / "config.json")
    os.mkfifo(run.path / "metrics.jsonl")
    with pytest.raises(RunDirError, match="metrics.jsonl: not a regular file"):
        run.check_files()


def test_numbers_at_the_limit_say_the_limit_not_their_digits():
    for value in (2**62, 10**308, 10**30_000):
        with pytest.raises(ConfigError) as e:
            RunConfig(steps=value).validate()
        assert "less than 2**62" in str(e.value) and len(str(e.value)) < 120
    with pytest.raises(ConfigError, match="zero or more, got -1"):
        RunConfig(steps=-1).validate()
    with pytest.raises(ConfigError, match="less than 2"):
        live_setting(RunConfig(), "save_every", 1e308)


def loader(B, world_size=1, rank=0, accum=1):
    tokens = np.arange(4000, dtype=np.int32) % 50000
    return TrainLoader(tokens, B, 16, grad_accum=accum, rank=rank, world_size=world_size)


def test_a_resume_with_another_total_batch_says_what_differs():
    two_ranks = loader(2, world_size=2).state_dict()  # 4 rows a step
    with pytest.raises(BatchMismatch) as e:
        check_loader_state(two_ranks, loader(2))
    assert e.value.rows == 4 and "4 rows of 16 tokens; this launch makes 2" in str(e.value)
    assert check_loader_state(two_ranks, loader(2, accum=2))  # the same rows: fine
    other = dict(two_ranks, num_samples=3)
    with pytest.raises(DataError, match="num_samples 3 in the checkpoint"):
        check_loader_state(other, loader(2, world_size=2))


def test_total_batch_size_0_of_an_older_checkpoint_may_be_given_on_resume():
    saved = RunConfig(total_batch_size=0, batch_size=2, seq_len=16)
    assert saved.resumed_with({"total_batch_size": 128, "steps": 9}).total_batch_size == 128
    with pytest.raises(ConfigError, match="total_batch_size cannot change"):
        RunConfig(total_batch_size=64).resumed_with({"total_batch_size": 128})


class Broken(io.StringIO):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def write(self, text):
        raise self.error

    def fileno(self):
        raise OSError("no descriptor")


def test_a_dead_stream_is_said_once_on_the_other_and_never_raises():
    out = CourtesyStream(Broken(BrokenPipeError(32, "Broken pipe")), "standard output")
    err_buffer = io.StringIO()
    err = CourtesyStream(err_buffer, "standard error")
    out.other, err.other = err, out
    for _ in range(3):
        print("step", file=out, flush=True)
    assert err_buffer.getvalue() == "warning: standard output failed (Broken pipe); going on without it\n"
    dead_err = CourtesyStream(Broken(OSError(5, "Input/output error")), "standard error")
    dead_err.other = CourtesyStream(Broken(OSError(28, "No space left on device")), "standard output")
    print("x", file=dead_err)  # both gone: nothing to say it on, and still no exception


def test_sample_result_full_text_is_prompt_and_continuation():
    from tui_llm.engine.training.sampler import SampleResult

    r = SampleResult("ROMEO:", [1], [2], " Hi")
    assert (r.text, r.full_text) == (" Hi", "ROMEO: Hi")
