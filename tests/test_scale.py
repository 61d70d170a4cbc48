"""Gradient accumulation and data-parallel MPI training are the single-process run.

Every MPI case runs `mpiexec -n 2` in a subprocess with a timeout (mpi4py and mpich come with the
`test` extra, so these run in CI).
"""

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import Process
from tests.run_helpers import run as run_command
from tui_llm.engine.data.tokens import write_tokens

pytestmark = pytest.mark.slow

TINY = ["--no-ui", "--model", "d2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy",
        "--lr", "3e-3", "--val-every", "4", "--val-batches", "3", "--sample-every", "0", "--save-every", "0"]
MPIEXEC = shutil.which("mpiexec")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale_data")
    tokens = np.tile(np.random.default_rng(5).integers(0, 50257, 41), 80)
    write_tokens(d / "s_train.bin", tokens[:2800])
    write_tokens(d / "s_val.bin", tokens[2800:])
    return d


def cli(*args, ranks=1, cwd=None):
    cmd = [sys.executable, "-m", "tui_llm", *args]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return run_command(cmd, cwd=cwd)


def records(run, kind):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == kind]


def losses(run):
    return [r["loss"] for r in records(run, "train")], [r["loss"] for r in records(run, "val")]


def test_zero_without_mpi_is_one_line(data, tmp_path):
    r = cli(str(data / "s_train.bin"), *TINY, "--zero", "1", "--steps", "2", "--out-dir", str(tmp_path / "z"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--zero 1 needs an MPI run" in r.stderr
    assert not (tmp_path / "z").exists()


def test_accumulation_equals_the_whole_batch(data, tmp_path):
    whole = cli(str(data / "s_train.bin"), *TINY, "-b", "4", "--steps", "10", "--out-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    accum = cli(str(data / "s_train.bin"), *TINY, "-b", "1", "--total-batch-size", str(4 * 16), "--steps", "10",
                "--out-dir", str(tmp_path / "accum"))
    assert accum.returncode == 0, accum.stderr
    assert "64 tokens per step (4 micro-batches)" in accum.stdout
    (train1, val1), (train2, val2) = losses(tmp_path / "whole"), losses(tmp_path / "accum")
    assert len(train1) == 10 and len(val1) == 4  # 0, 4, 8 and the final weights
    np.testing.assert_allclose(train2, train1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(val2, val1, rtol=0, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_two_ranks_equal_one_process_and_resume_on_any_world_size(data, tmp_path):
    one = cli(str(data / "s_train.bin"), *TINY, "-b", "4", "--steps", "12", "--out-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = cli(str(data / "s_train.bin"), *TINY, "-b", "2", "--steps", "12", "--out-dir", str(tmp_path / "two"), ranks=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("model: d2") == 1  # rank 0 alone prints
    assert "over 2 processes" in two.stdout
    (t1, v1), (t2, v2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    np.testing.assert_allclose(t2, t1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())  # one run directory, written once

    # 2 ranks x B=1 x 2 micro-batches, then resumed on 1 process x B=4 (same total batch)
    part = cli(str(data / "s_train.bin"), *TINY, "-b", "1", "-d", "64", "--steps", "6", "--out-dir",
               str(tmp_path / "mixed"), ranks=2)
    assert part.returncode == 0, part.stderr
    rest = cli("--resume", str(tmp_path / "mixed"), "--no-ui", "-b", "4", "-d", "0", "--steps", "12")
    assert rest.returncode == 2 and "--batch-size" in rest.stderr  # the micro-batch is fixed on resume
    rest = cli("--resume", str(tmp_path / "mixed"), "--no-ui", "--steps", "12")  # 1 process x 4 micro-batches
    assert rest.returncode == 0, rest.stderr
    t3, _ = losses(tmp_path / "mixed")
    np.testing.assert_allclose(t3, t1, rtol=0, atol=1e-5)
    val_one = {r["step"]: r["loss"] for r in records(tmp_path / "one", "val")}
    val_mixed = {r["step"]: r["loss"] for r in records(tmp_path / "mixed", "val")}  # + the final one at 6
    assert set(val_one) <= set(val_mixed)
    np.testing.assert_allclose([val_mixed[k] for k in val_one], list(val_one.values()), rtol=0, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_sharded_data_crosses_shards_and_resumes_on_another_world_size(tmp_path):
    """Shards of ~3 total batches each: 12 steps cross several shard boundaries (and an epoch).
    Stopped at step 5 on 2 ranks and resumed on 1 process, the losses are the uninterrupted ones."""
    tokens = np.tile(np.random.default_rng(6).integers(0, 50257, 41), 20)
    for i in range(4):
        write_tokens(tmp_path / f"sh_train_{i:06d}.bin", tokens[i * 110:(i + 1) * 110])
    write_tokens(tmp_path / "sh_val_000000.bin", tokens[500:700])
    common = [str(tmp_path / "sh_train_*.bin"), *TINY, "-d", "32"]
    one = cli(*common, "-b", "2", "--steps", "12", "--out-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert "(440 tokens, 12 steps of 2x16 per epoch)" in one.stdout  # 4 shards x 3 total batches
    part = cli(*common, "-b", "1", "--steps", "5", "--out-dir", str(tmp_path / "split"), ranks=2)
    assert part.returncode == 0, part.stderr
    from tui_llm.engine.formats import load_training_checkpoint
    _, meta = load_training_checkpoint(tmp_path / "split" / "ckpt_00000005.safetensors", names=[])
    assert meta["loader"]["shard"] >= 1  # stopped past a shard boundary
    rest = cli("--resume", str(tmp_path / "split"), "--no-ui", "--steps", "12")  # 1 process x 2 micro-batches
    assert rest.returncode == 0, rest.stderr
    (t1, _), (t2, _) = losses(tmp_path / "one"), losses(tmp_path / "split")
    assert len(t1) == 12
    np.testing.assert_allclose(t2, t1, rtol=0, atol=1e-5)
    val_one = {r["step"]: r["loss"] for r in records(tmp_path / "one", "val")}
    val_split = {r["step"]: r["loss"] for r in records(tmp_path / "split", "val")}
    np.testing.assert_allclose([val_split[k] for k in val_one], list(val_one.values()), rtol=0, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_sigint_to_mpiexec_saves_and_resumes_with_identical_losses(data, tmp_path):
    common = [str(data / "s_train.bin"), *TINY, "-b", "2", "--steps", "30"]
    straight = cli(*common, "--out-dir", str(tmp_path / "straight"), ranks=2)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "run"
    def on_line(line):
        if line.startswith("step 4/"):
            proc.send_signal(signal.SIGINT)

    with Process([MPIEXEC, "-n", "2", sys.executable, "-m", "tui_llm", *common, "--out-dir", str(run)],
                 on_line=on_line) as proc:
        proc.wait(expect=130)
    saved = records(run, "checkpoint")
    assert saved and saved[-1]["step"] >= 4
    resumed = cli("--resume", str(run), "--no-ui", ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    (t1, v1), (t2, v2) = losses(tmp_path / "straight"), losses(run)
    assert t2 == t1 and v2 == v1  # the same ranks, the same sums: bit-identical


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_zero_1_is_the_same_run_and_its_checkpoints_resume_without_it(data, tmp_path):
    """--zero 1 (AdamW state split between the ranks) trains as one process does, with weight
    decay and clipping on; its checkpoint holds the whole state: resumed on 1 process it goes on
    with the same losses, and it equals the unsharded 2-rank run's checkpoint."""
    from tui_llm.engine.formats import load_training_checkpoint

    common = [str(data / "s_train.bin"), *TINY, "--weight-decay", "0.1", "--grad-clip", "0.5", "--steps", "12"]
    one = cli(*common, "-b", "4", "--out-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    split = ["-b", "1", "-d", "64", "--save-every", "6", "--keep-checkpoints", "0"]  # 2 ranks x 2 micro-batches
    zero = cli(*common, *split, "--zero", "1", "--out-dir", str(tmp_path / "zero"), ranks=2)
    assert zero.returncode == 0, zero.stderr
    plain = cli(*common, *split, "--out-dir", str(tmp_path / "plain"), ranks=2)
    assert plain.returncode == 0, plain.stderr
    assert "over 2 processes (AdamW state split among them: --zero 1)" in zero.stdout
    adamw = [records(run, "start")[0]["memory"]["optimizer"] for run in (tmp_path / "plain", tmp_path / "zero")]
    assert adamw[1] == adamw[0] // 2  # rank 0 holds half of m and v
    (t1, v1), (tz, vz) = losses(tmp_path / "one"), losses(tmp_path / "zero")
    np.testing.assert_allclose(tz, t1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vz, v1, rtol=0, atol=1e-5)
    zero_ckpt = sorted((tmp_path / "zero").glob("*.safetensors"))[0]  # step 6
    (za, zmeta), (pa, _) = load_training_checkpoint(zero_ckpt), load_training_checkpoint(tmp_path / "plain" / zero_ckpt.name)
    assert zmeta["step"] == 6
    for key in ("params", "adam_m", "adam_v"):
        np.testing.assert_allclose(za[key], pa[key], rtol=1e-5, atol=1e-7, err_msg=key)

    # the step-6 checkpoint of the ZeRO run, resumed on one process (4 micro-batches)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(zero_ckpt, resumed_dir / zero_ckpt.name)
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(tmp_path / "zero" / name, resumed_dir / name)
    rest = cli("--resume", str(resumed_dir), "--no-ui")
    assert rest.returncode == 0, rest.stderr
    tr, _ = losses(resumed_dir)
    np.testing.assert_allclose(tr, t1, rtol=0, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_bad_splits_under_mpi_are_one_line(data, tmp_path):
    r = cli(str(data / "s_train.bin"), *TINY, "-b", "2", "-d", "48", "--steps", "2", "--out-dir", str(tmp_path / "x"),
            ranks=2)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--total-batch-size" in lines[0] and "2 processes" in lines[0]
    r = cli(str(data / "s_train.bin"), "--model", "d2", ranks=2)  # the UI under mpiexec
    assert r.returncode == 2 and "mpiexec" in r.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
@pytest.mark.parametrize("zero", ["0", "1"])
def test_weights_are_identical_on_every_rank(data, tmp_path, zero):
    script = Path(__file__).with_name("mpi_train_script.py")
    out = tmp_path / "digests.json"
    r = run_command([MPIEXEC, "-n", "2", sys.executable, script, data / "s_train.bin", out, tmp_path / "run", zero])
    assert r.returncode == 0, r.stderr
    digests = json.loads(out.read_text())
    assert len(digests) == 2 and digests[0] == digests[1]
