"""The tui-llm command on a tiny model and tiny data: headless runs, resume, sample, export, bad input."""

import json
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import Process, run_cli
from tests.run_helpers import run as run_command
from tui_llm import cli
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import load_model_weights, read_llmc

TINY = ["--model", "d2", "-b", "2", "-t", "16", "--max-seq-len", "32", "--threads", "1"]
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \| loss (\d+\.\d{4}) \| fwd [\d,]+ ms \| bwd [\d,]+ ms \| opt [\d,]+ ms "
                       r"\| [\d,]+ tok/s")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Token files with a learnable pattern (a repeating sentence), small and fast."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    sentence = rng.integers(0, 50257, 37)
    tokens = np.tile(sentence, 60)
    write_tokens(d / "tiny_train.bin", tokens[:1800])
    write_tokens(d / "tiny_val.bin", tokens[1800:])
    return d


def interrupt_at_step(step: int, *args) -> str:
    """Run `tui-llm ARGS` headless, send SIGINT the moment it prints step `step`; asserts exit 130,
    returns stderr."""
    def on_line(line):
        if line.startswith(f"step {step}/"):
            process.send_signal(signal.SIGINT)

    with Process([sys.executable, "-m", "tui_llm", *args], on_line=on_line) as process:
        process.wait(expect=130)
        return process.completed().stderr


def step_losses(stdout):
    return {int(m.group(1)): float(m.group(3)) for m in map(STEP_LINE.match, stdout.splitlines()) if m}


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_headless_run_lines_metrics_and_run_directory(data, tmp_path):
    run = tmp_path / "run"
    r = run_cli(str(data / "tiny_train.bin"), "--no-ui", *TINY, "--steps", "8", "--lr", "3e-3", "--val-every", "4",
                "--sample-every", "4", "--sample-len", "6", "--save-every", "4", "--out-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout
    out = r.stdout
    assert re.search(r"^model: d2 \| 2 layers, 2 heads, 64 channels", out, re.M)
    assert re.search(r"^parameters: [\d,]+ ", out, re.M)
    assert re.search(r"^data: train .*tiny_train.bin \(1,800 tokens, 56 steps of 2x16 per epoch\)", out, re.M)
    printed = step_losses(out)
    assert sorted(printed) == list(range(1, 9))

    metrics = read_metrics(run)
    train = [m for m in metrics if m["type"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 9))
    for m in train:
        assert f"{m['loss']:.4f}" == f"{printed[m['step']]:.4f}"
        assert {"fwd_ms", "bwd_ms", "opt_ms", "step_ms", "tok_per_s", "lr", "grad_norm"} <= m.keys()
    assert train[-1]["loss"] < train[0]["loss"]  # it learns the repeating sentence
    vals = [m for m in metrics if m["type"] == "val"]
    assert [v["step"] for v in vals] == [0, 4, 8]  # cadence, plus the final weights
    for v in vals:
        assert f"val loss {v['loss']:.4f} (step {v['step']})" in out
    samples = [m for m in metrics if m["type"] == "sample"]
    assert [s["step"] for s in samples] == [4, 8] and len(samples[0]["token_ids"]) == 6  # and the final weights
    assert metrics.index(vals[-1]) > metrics.index(train[-1])  # evaluated after the last update
    ckpts = [m for m in metrics if m["type"] == "checkpoint"]
    assert [c["step"] for c in ckpts] == [4, 8]
    assert sorted(p.name for p in run.glob("ckpt_*")) == ["ckpt_00000004.safetensors", "ckpt_00000008.safetensors"]
    config = json.loads((run / "config.json").read_text())
    assert config["run_config"]["batch_size"] == 2 and config["model_config"]["num_layers"] == 2
    assert config["run_config"]["train_file"] == str(data / "tiny_train.bin")  # absolute: resumable from anywhere
    assert metrics[-1]["type"] == "finished" and metrics[-1]["reason"] == "completed"


@pytest.mark.slow
def test_sigint_saves_and_resume_continues_with_identical_losses(data, tmp_path):
    common = [str(data / "tiny_train.bin"), "--no-ui", *TINY, "--steps", "14", "--lr", "3e-3", "--val-every", "5",
              "--sample-every", "0", "--save-every", "0"]
    straight = run_cli(*common, "--out-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    expected = [m["loss"] for m in read_metrics(tmp_path / "straight") if m["type"] == "train"]

    run = tmp_path / "interrupted"
    err = interrupt_at_step(3, *common, "--out-dir", str(run))
    assert "last checkpoint: " in err and "continue with: tui-llm --resume" in err and "Traceback" not in err
    stopped = [m for m in read_metrics(run) if m["type"] == "train"]
    assert 3 <= len(stopped) < 14

    resumed = run_cli("--resume", str(run), "--no-ui", cwd=tmp_path)  # from another directory
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {len(stopped)}" in resumed.stdout
    losses = [m["loss"] for m in read_metrics(run) if m["type"] == "train"]
    assert losses == expected  # bit-identical, not just close
    vals = [(m["step"], m["loss"]) for m in read_metrics(run) if m["type"] == "val"]
    assert vals == [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "straight") if m["type"] == "val"]


def test_sample_and_export_commands(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main([str(data / "tiny_train.bin"), "--no-ui", *TINY, "--steps", "2", "--val-every", "0",
                     "--sample-every", "0", "--out-dir", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--init-from", str(run), "--prompt", "To be", "--sample-len", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "5 tokens" in out and "\nTo be" in out

    cfg, flat, _ = load_model_weights(str(next(run.glob("ckpt_*"))))
    assert cli.main(["export", "--init-from", str(run), str(tmp_path / "model.bin")]) == 0
    cfg2, flat2 = read_llmc(tmp_path / "model.bin")
    assert cfg2 == cfg and np.array_equal(flat2, flat)
    assert cli.main(["export", "--init-from", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    cfg3, flat3, _ = load_model_weights(str(tmp_path / "hf"))
    assert np.array_equal(flat3, flat)

    # continue training from the exported llm.c file
    assert cli.main([str(data / "tiny_train.bin"), "--no-ui", "-b", "2", "-t", "16", "--steps", "1",
                     "--val-every", "0", "--sample-every", "0", "--init-from", str(tmp_path / "model.bin"),
                     "--out-dir", str(tmp_path / "run2")]) == 0
    assert "model: " in capsys.readouterr().out


def bad(capsys, *argv):
    status = cli.main(list(argv))
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_bad_arguments_give_one_line_and_status_2(data, tmp_path, capsys):
    train = str(data / "tiny_train.bin")
    assert "no such file" in bad(capsys, str(tmp_path / "missing.bin"), "--no-ui", *TINY)
    assert "too few for one batch" in bad(capsys, train, "--no-ui", "--model", "d2", "-b", "64", "-t", "32",
                                          "--max-seq-len", "32")
    assert "maximum sequence length" in bad(capsys, train, "--no-ui", "--model", "d2", "-t", "64", "--max-seq-len", "32")
    assert "d7" in bad(capsys, train, "--no-ui", "--model", "d7")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    assert "junk.bin" in bad(capsys, train, "--no-ui", "--init-from", str(junk))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "not a directory" in bad(capsys, train, "--no-ui", *TINY, "--out-dir", str(a_file))
    assert "must be a number" in bad(capsys, train, "--no-ui", *TINY, "--final-lr-fraction", "1e308")
    assert "--weight-decay" in bad(capsys, train, "--no-ui", *TINY, "--weight-decay", "nan")
    assert "--grad-clip" in bad(capsys, train, "--no-ui", *TINY, "--grad-clip", "-1")
    assert "--temperature" in bad(capsys, train, "--no-ui", *TINY, "--temperature", "inf")
    assert "--seed" in bad(capsys, train, "--no-ui", *TINY, "--seed", "-1")
    assert "--total-batch-size" in bad(capsys, train, "--no-ui", *TINY, "--total-batch-size", "48")
    assert "--batch-size" in bad(capsys, train, "--no-ui", *TINY[:2], "-b", "0")
    assert "batch" in bad(capsys, train, "--no-ui", "-b", "two")
    assert "no checkpoint" in bad(capsys, "--resume", str(tmp_path), "--no-ui")
    assert bad(capsys, "sample", "--init-from", str(tmp_path / "nope"))


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("tui-llm ")


def test_a_fresh_run_into_an_existing_run_directory_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = [str(data / "tiny_train.bin"), "--no-ui", *TINY, "--steps", "2", "--val-every", "0", "--sample-every", "0",
            "--out-dir", str(run)]
    assert cli.main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "--resume" in bad(capsys, *args)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing deleted


def test_data_paths_a_new_user_types(data, tmp_path, capsys):
    line = bad(capsys, str(tmp_path / "data" / "tiny_shakespeare_train.bin"), "--no-ui")
    assert "tui-llm prepare tinyshakespeare --from input.txt" in line and "huggingface" not in line.lower()
    text = tmp_path / "my_corpus.txt"
    text.write_text("To be, or not to be.\n")
    assert "tui-llm prepare" in bad(capsys, str(text), "--no-ui")
    # bad arguments are refused before the default data is prepared
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    r = run_cli("--no-ui", "-b", "0", cwd=empty)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--batch-size" in r.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.slow
def test_resume_keeps_every_kind_of_record(data, tmp_path):
    run = tmp_path / "run"
    common = ["--no-ui", *TINY, "--val-every", "2", "--sample-every", "2", "--sample-len", "4", "--save-every", "3"]
    assert run_cli(str(data / "tiny_train.bin"), *common, "--steps", "4", "--out-dir", str(run)).returncode == 0
    first = read_metrics(run)
    kinds = {m["type"] for m in first}
    assert {"start", "train", "val", "sample", "checkpoint", "finished"} <= kinds
    r = run_cli("--resume", str(run), "--no-ui", "--steps", "6")
    assert r.returncode == 0, r.stderr
    after = read_metrics(run)
    cut = max(i for i, m in enumerate(first) if m["type"] == "checkpoint") + 1
    assert after[:cut] == first[:cut]  # the history up to the resumed checkpoint is kept as it was
    assert after[cut]["type"] == "start" and after[cut]["step"] == 4
    assert [m["step"] for m in after if m["type"] == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_kill_9_never_corrupts_a_checkpoint(data, tmp_path):
    """kill -9 at random moments with --save-every 1: every checkpoint left loads, no temp files
    stay after the next open, and --resume continues from the newest (benchmarks/reliability.py
    runs the full campaign)."""
    import random
    import time

    from tui_llm.engine.formats import load_training_checkpoint

    rng = random.Random(7)
    run = tmp_path / "run"
    common = ["--no-ui", *TINY, "--val-every", "0", "--sample-every", "0", "--save-every", "1", "--steps", "40"]
    args = [str(data / "tiny_train.bin"), *common, "--out-dir", str(run)]
    for _attempt in range(3):
        with Process([sys.executable, "-m", "tui_llm", *args]) as proc:
            proc.wait_for(lambda: any(line.startswith("saved checkpoint") for line in proc.lines), "a checkpoint")
            time.sleep(rng.uniform(0.0, 0.5))  # the fault's moment (not a wait for anything): then kill -9
            proc.kill()
        for ckpt in run.glob("ckpt_*.safetensors"):
            load_training_checkpoint(ckpt)
        args = ["--resume", str(run), *common[:1], "--steps", "40"]
    proc = run_cli("--resume", run, "--no-ui", "--steps", "40")
    assert proc.returncode == 0, proc.stderr
    assert not list(run.glob(".*.tui-llm-tmp"))
    steps = [m["step"] for m in read_metrics(run) if m["type"] == "train"]
    assert steps == list(range(1, 41))  # one record per step, no duplicates, no torn line


def _tmpfs(path, size):
    path.mkdir()
    if run_command(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")


@pytest.mark.slow
def test_disk_full_keeps_the_previous_checkpoint_and_exits_non_zero(data, tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "60m")  # room for one d2 checkpoint (~39 MB) but not for a second beside it
    try:
        run = disk / "run"
        r = run_cli(str(data / "tiny_train.bin"), "--no-ui", *TINY, "--steps", "4", "--val-every", "0",
                    "--sample-every", "0", "--save-every", "2", "--keep-checkpoints", "1", "--out-dir", str(run))
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "No space left" in r.stderr
        assert "steps 3..4 were not saved" in r.stderr
        assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt")) == ["ckpt_00000002.safetensors"]
        from tui_llm.engine.formats import load_training_checkpoint
        _, meta = load_training_checkpoint(run / "ckpt_00000002.safetensors")
        assert meta["step"] == 2
        assert not [p for p in run.iterdir() if p.name.endswith(".tui-llm-tmp")]
        records = read_metrics(run)  # every line whole
        assert records[-1]["type"] == "finished" and records[-1]["reason"] == "error"
    finally:
        run_command(["umount", disk])
