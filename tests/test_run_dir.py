"""The run directory: creation rules, pruning, history kept once, locking, temp files, CSV."""

import json
import time

import numpy as np
import pytest

from tui_llm.engine.formats import save_training_checkpoint
from tui_llm.engine.run.metrics_log import MetricsLog
from tui_llm.engine.run.run_dir import RunDir, RunDirError, checkpoint_name


def test_a_fresh_run_refuses_a_directory_with_a_run_in_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')
    with pytest.raises(RunDirError, match="not empty.*--resume"):
        RunDir(run).create()
    assert (run / "metrics.jsonl").read_text() == '{"type": "train", "step": 1}\n'  # nothing deleted
    RunDir(tmp_path / "empty").create()  # new or empty is fine
    (tmp_path / "empty2").mkdir()
    RunDir(tmp_path / "empty2").create()


def test_pruning_goes_by_step_number_and_never_removes_the_newest_or_kept(tmp_path):
    d = RunDir(tmp_path)
    for step in (5, 40, 300, 1000, 12000):  # names sort differently from numbers if not zero-padded alike
        (tmp_path / checkpoint_name(step)).write_bytes(b"x")
    (tmp_path / "ckpt_123456789.safetensors").write_bytes(b"x")  # 9 digits: a very long run
    d.keep(tmp_path / checkpoint_name(40))
    removed = d.prune(2, protect=tmp_path / checkpoint_name(300))
    left = [s for s, _ in d.checkpoints()]
    assert left == [40, 300, 12000, 123456789]
    assert {p.name for p in removed} == {checkpoint_name(5), checkpoint_name(1000)}
    assert d.prune(0) == []  # 0 keeps all


def test_lock_refuses_a_second_trainer_and_temp_files_are_cleaned(tmp_path):
    (tmp_path / ".ckpt_00000004.safetensors.0a1b2c3d.tui-llm-tmp").write_bytes(b"half a save")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    first = RunDir(tmp_path)
    first.lock()
    assert not (tmp_path / ".ckpt_00000004.safetensors.0a1b2c3d.tui-llm-tmp").exists()
    assert (tmp_path / "notes.tmp").exists()
    assert first.is_locked()
    with pytest.raises(RunDirError, match="another process"):
        RunDir(tmp_path).lock()
    first.close()
    assert not RunDir(tmp_path).is_locked()
    RunDir(tmp_path).lock()


def test_history_is_cut_back_to_the_checkpoint_and_a_torn_line_is_never_read(tmp_path):
    d = RunDir(tmp_path)
    d.metrics.open(0)
    for step in range(1, 4):
        d.metrics.append({"type": "train", "step": step, "loss": 1.0})
    mark = d.metrics.size()
    d.metrics.append({"type": "checkpoint", "step": 3, "path": str(tmp_path / checkpoint_name(3))})
    d.metrics.append({"type": "sample", "step": 3, "text": "kept? no: after the checkpoint"})
    d.metrics.append({"type": "train", "step": 4, "loss": 1.0})
    d.close()
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"type": "train", "st')  # a crash in the middle of a write
    assert [r["step"] for r in MetricsLog(tmp_path / "metrics.jsonl").read()] == [1, 2, 3, 3, 3, 4]
    end = d.metrics.history_end(mark, tmp_path / checkpoint_name(3))
    d.metrics.open(end)
    d.close()
    records = MetricsLog(tmp_path / "metrics.jsonl").read()
    assert [r["type"] for r in records] == ["train", "train", "train", "checkpoint"]


def test_checkpoint_size_does_not_grow_with_the_history(tmp_path):
    """A checkpoint stores where the history stood, never the history: same header at step 10
    and after 100,000 recorded steps."""
    d = RunDir(tmp_path)
    d.metrics.open(0)
    arrays = {"params": np.ones(1000, np.float32)}

    def save(step):
        meta = {"step": step, "history_bytes": d.metrics.size()}
        path = tmp_path / checkpoint_name(step)
        t0 = time.perf_counter()
        save_training_checkpoint(path, arrays, meta)
        header = int.from_bytes(path.read_bytes()[:8], "little")
        return header, time.perf_counter() - t0

    for step in range(1, 11):
        d.metrics.append({"type": "train", "step": step, "loss": 2.5, "lr": 1e-4, "grad_norm": 1.0})
    small, _ = save(10)
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b"".join(json.dumps({"type": "train", "step": s, "loss": 2.5}).encode() + b"\n"
                         for s in range(11, 100_011)))
    big, _ = save(100_010)
    assert abs(big - small) < 16  # only the digits of two numbers differ


def test_csv_export_has_one_row_per_step(tmp_path):
    d = RunDir(tmp_path)
    d.metrics.open(0)
    d.metrics.append({"type": "val", "step": 0, "loss": 3.0})
    d.metrics.append({"type": "train", "step": 1, "loss": 2.0, "lr": 0.1})
    d.metrics.append({"type": "sample", "step": 1, "text": "x"})
    out = d.export_csv()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("step,loss,val_loss")
    assert lines[1].startswith("0,,3.0") and lines[2].startswith("1,2.0,,0.1")
