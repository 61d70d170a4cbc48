"""Writing safely (atomic files and directories, stale temp cleanup, export destinations) and the
smaller readers' paths: F16/BF16 Hugging Face weights, metadata field checks."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from tui_llm.engine import formats as ck
from tui_llm.engine.formats import CheckpointError, atomic_files, atomic_write, remove_stale_temp_files, require
from tui_llm.engine.formats.atomic import atomic_write_together, temp_name
from tui_llm.engine.formats.safetensors import read_header
from tui_llm.engine.models.gpt2_config import GPTConfig, num_parameters
from tui_llm.engine.run.export import check_export_destination

CFG = GPTConfig(max_seq_len=8, vocab_size=50, num_layers=1, num_heads=2, channels=8)


def flat_params(seed=0):
    flat = np.random.default_rng(seed).standard_normal(num_parameters(CFG)).astype(np.float32)
    flat[CFG.vocab_size * CFG.channels:CFG.padded_vocab_size * CFG.channels] = 0
    return flat


# ---------------------------------------------------------------------------------------
# atomic_files and stale temporaries


def test_atomic_files_appear_together_and_keep_other_files(tmp_path):
    out = tmp_path / "model"
    with atomic_files(out) as tmp:
        with atomic_write(tmp / "a.txt", "w") as f:
            f.write("one")
        assert not out.exists()  # nothing visible until the body is done
    assert sorted(os.listdir(out)) == ["a.txt"]
    (out / "tokenizer.json").write_text("{}")
    with atomic_files(out) as tmp, atomic_write(tmp / "a.txt", "w") as f:
        f.write("two")
    assert (out / "a.txt").read_text() == "two" and (out / "tokenizer.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary or parked directory left


def test_atomic_files_failure_keeps_the_previous_directory(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "a.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_files(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "a.txt").read_text() == "good"
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_write_together_side_by_side_files_appear_together_or_not_at_all(tmp_path, monkeypatch):
    model, modelfile = tmp_path / "m.gguf", tmp_path / "m.Modelfile"
    (tmp_path / "other.txt").write_text("a user's file")
    with atomic_write_together([modelfile, model]) as (mf, f):
        mf.write(b"FROM ./m.gguf\n")
        f.write(b"GGUF one")
        assert not model.exists() and not modelfile.exists()  # nothing visible until the body is done
    assert (model.read_bytes(), modelfile.read_bytes()) == (b"GGUF one", b"FROM ./m.gguf\n")

    with pytest.raises(OSError), atomic_write_together([modelfile, model]) as (mf, f):  # the body fails
        mf.write(b"new")
        raise OSError(28, "No space left on device")
    assert (model.read_bytes(), modelfile.read_bytes()) == (b"GGUF one", b"FROM ./m.gguf\n")
    assert sorted(os.listdir(tmp_path)) == ["m.Modelfile", "m.gguf", "other.txt"]

    renames = []  # the order: every temporary written first, the Modelfile renamed, the model last
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(os.path.basename(b)), real_replace(a, b)))
    with atomic_write_together([modelfile, model]) as (mf, f):
        mf.write(b"two")
        f.write(b"GGUF two")
    assert renames == ["m.Modelfile", "m.gguf"] and model.read_bytes() == b"GGUF two"

    def fail_on_the_model(a, b):  # the commit point fails: the model stays as it was, no temporary is left
        if str(b).endswith(".gguf"):
            raise OSError(5, "Input/output error")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", fail_on_the_model)
    with pytest.raises(OSError), atomic_write_together([modelfile, model]) as (mf, f):
        mf.write(b"three")
        f.write(b"GGUF three")
    assert model.read_bytes() == b"GGUF two"
    assert sorted(os.listdir(tmp_path)) == ["m.Modelfile", "m.gguf", "other.txt"]
    with pytest.raises(ValueError), atomic_write_together([model, model]):
        pass


def test_atomic_files_without_replace_keeps_what_another_process_made(tmp_path):
    out = tmp_path / "gguf-0123"
    with atomic_files(out, replace=False) as tmp:
        with atomic_write(tmp / "tokenizer.json", "w") as f:
            f.write("first")
        out.mkdir()  # another process (an MPI rank) finished the same directory meanwhile
        (out / "tokenizer.json").write_text("theirs")
    assert (out / "tokenizer.json").read_text() == "theirs" and os.listdir(tmp_path) == ["gguf-0123"]
    with atomic_files(out, replace=False) as tmp, atomic_write(tmp / "tokenizer.json", "w") as f:
        f.write("again")
    assert (out / "tokenizer.json").read_text() == "theirs" and os.listdir(tmp_path) == ["gguf-0123"]


def test_atomic_files_without_replace_loses_the_race_to_rename_quietly(tmp_path, monkeypatch):
    from tui_llm.engine.formats import atomic

    out = tmp_path / "gguf-0123"
    real_fsync_dir = atomic.fsync_dir

    calls = []

    def other_process_renames_first(directory):  # between our last check and our rename
        calls.append(directory)
        if len(calls) == 2:  # 1: atomic_write's of the file, 2: atomic_files' of the directory, before the rename
            out.mkdir()
            (out / "tokenizer.json").write_text("theirs")
        real_fsync_dir(directory)

    monkeypatch.setattr(atomic, "fsync_dir", other_process_renames_first)
    with atomic_files(out, replace=False) as tmp, atomic_write(tmp / "tokenizer.json", "w") as f:
        f.write("ours")
    assert (out / "tokenizer.json").read_text() == "theirs" and os.listdir(tmp_path) == ["gguf-0123"]


def test_remove_stale_temp_files_removes_only_ours(tmp_path):
    kept = ["ckpt_00000010.safetensors", ".hidden", "x.tmp", ".x.1234.tmp", ".a.nothex!.tui-llm-tmp"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    stale_file = temp_name(tmp_path / "ckpt_00000020.safetensors")
    stale_file.write_bytes(b"half a checkpoint")
    stale_dir = temp_name(tmp_path / "hf")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    parked = temp_name(tmp_path / "export", ".tui-llm-old")  # a swap interrupted between its two renames
    parked.mkdir()
    (parked / "config.json").write_text("{}")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_file.name, stale_dir.name])
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["export"])
    assert (tmp_path / "export" / "config.json").read_text() == "{}"


def test_interrupted_atomic_write_leaves_a_recognisable_temp(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "f.bin") as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []  # cleaned up when the process lives on
    # a killed process cannot clean up: what it would leave is exactly what the sweep removes
    temp_name(tmp_path / "f.bin").write_bytes(b"x")
    assert len(remove_stale_temp_files(tmp_path)) == 1 and os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Writers: one-line errors, all-or-nothing, nothing non-finite


def test_unwritable_destinations_are_one_line_errors(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for write in (lambda: ck.write_llmc(blocker / "m.bin", CFG, flat_params()),
                  lambda: ck.write_hf(blocker / "hf", CFG, flat_params()),
                  lambda: ck.save_training_checkpoint(blocker / "c.safetensors", {"params": flat_params()}, {})):
        with pytest.raises(CheckpointError, match="cannot write") as info:
            write()
        assert "\n" not in str(info.value)


def test_writers_never_replace_a_device_or_pipe(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(CheckpointError, match="not a regular file"):
            ck.write_llmc(target, CFG, flat_params())
    assert os.listdir(tmp_path) == ["pipe"]


def test_write_hf_is_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    ck.write_hf(out, CFG, flat_params(1))
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def full_disk(f, arr):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ck.safetensors, "write_array", full_disk)
    with pytest.raises(CheckpointError, match="No space"):
        ck.write_hf(out, CFG, flat_params(2))
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["hf"]


def test_nothing_non_finite_is_written(tmp_path):
    bad = flat_params()
    bad[-1] = np.inf
    with pytest.raises(CheckpointError, match="lnfb"):
        ck.write_llmc(tmp_path / "m.bin", CFG, bad)
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.write_hf(tmp_path / "hf", CFG, bad)
    with pytest.raises(CheckpointError, match="adam_v"):
        ck.save_training_checkpoint(tmp_path / "c.safetensors", {"params": flat_params(), "adam_v": bad}, {})
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.save_training_checkpoint(tmp_path / "c.safetensors", {"params": flat_params()}, {"loss": float("nan")})
    big = flat_params()
    big[0] = 3.4e38  # finite in fp32, inf in bf16
    with pytest.raises(CheckpointError, match="bfloat16"):
        ck.write_llmc(tmp_path / "m5.bin", CFG, big, version=5)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# check_export_destination


def test_export_destination_rules(tmp_path):
    src = tmp_path / "model.bin"
    ck.write_llmc(src, CFG, flat_params())
    check = check_export_destination
    assert check(src, tmp_path / "new.bin", "llmc") == tmp_path / "new.bin"
    assert check(src, tmp_path / "deep" / "er" / "new.bin", "llmc")  # parents are created
    assert check(src, tmp_path / "hf_out", "hf")

    refusals = {"the export's own source": (src, src, "llmc", True),
                "already exists": (src, tmp_path / "other.bin", "llmc", False),
                "is a directory": (src, tmp_path / "run", "llmc", True),
                "not a regular file or directory": (src, "/dev/null", "llmc", True),
                "run directory": (src, tmp_path / "run", "hf", True),
                "already holds a model": (src, tmp_path / "hf", "hf", False),
                "is a file; a Hugging Face": (src, tmp_path / "other.bin", "hf", True),
                "not a writable directory": (src, tmp_path / "other.bin" / "x.bin", "llmc", True)}
    (tmp_path / "other.bin").write_bytes(b"old")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    ck.write_hf(tmp_path / "hf", CFG, flat_params())
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refusals["a device, pipe"] = (src, fifo, "llmc", True)
    hf_src = tmp_path / "hf" / "model.safetensors"
    refusals["own source"] = (hf_src, tmp_path / "hf", "hf", True)  # the directory holding the source
    for words, (source, dest, kind, force) in refusals.items():
        with pytest.raises(CheckpointError, match=words) as info:
            check(source, dest, kind, force=force)
        assert "\n" not in str(info.value)
    assert check(src, tmp_path / "other.bin", "llmc", force=True)
    assert check(src, tmp_path / "hf", "hf", force=True)


def test_run_directory_detected_by_its_config_alone(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"run_config": {}, "model_config": {}}))
    with pytest.raises(CheckpointError, match="run directory"):
        check_export_destination(tmp_path / "x.bin", tmp_path / "run", "hf", force=True)


# ---------------------------------------------------------------------------------------
# Hugging Face weights in half precision


def test_hf_f16_and_bf16_weights(tmp_path):
    flat = flat_params()
    ck.write_hf(tmp_path / "f32", CFG, flat)
    _, f32 = ck.read_hf(tmp_path / "f32")
    path = tmp_path / "f32" / "model.safetensors"
    with open(path, "rb") as f:
        entries, _, data_start = read_header(f, path)
    data = path.read_bytes()
    tensors = {name: np.frombuffer(data, "<f4", count=(e.end - e.start) // 4, offset=data_start + e.start)
               .reshape(e.shape) for name, e in entries.items()}

    half = tmp_path / "f16"
    half.mkdir()
    (half / "config.json").write_bytes((tmp_path / "f32" / "config.json").read_bytes())
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, half / "model.safetensors")
    _, loaded = ck.read_hf(half)
    assert np.array_equal(loaded, f32.astype(np.float16).astype(np.float32))

    # BF16 (no numpy dtype): the file written by hand, header and all
    bf = tmp_path / "bf16"
    bf.mkdir()
    (bf / "config.json").write_bytes((tmp_path / "f32" / "config.json").read_bytes())
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        bits = ck.fp32_to_bf16_bits(t).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(bits)]}
        offset += len(bits)
        blobs.append(bits)
    raw = json.dumps(header).encode()
    (bf / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    _, loaded = ck.read_hf(bf)
    expect = (ck.fp32_to_bf16_bits(f32).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(loaded, expect)


# ---------------------------------------------------------------------------------------
# require: the trainer's metadata field checks


def test_require_checks_types_and_ranges():
    meta = {"step": 12, "lr": 1, "flag": True, "loader": {"position": 3}, "nan": float("nan")}
    assert require(meta, "step", int, min=0) == 12
    assert require(meta, "lr", float) == 1.0 and isinstance(require(meta, "lr", float), float)
    assert require(meta, "loader", dict) == {"position": 3}
    assert require(meta, "flag", bool) is True
    for key, kind, kwargs, words in (("missing", int, {}, "'missing' is missing"),
                                     ("flag", int, {}, "'flag' must be int"),
                                     ("step", str, {}, "'step' must be str"),
                                     ("step", int, {"max": 10}, "outside"),
                                     ("step", int, {"min": 13}, "outside"),
                                     ("nan", float, {}, "finite")):
        with pytest.raises(CheckpointError, match=words):
            require(meta, key, kind, path="ckpt", **kwargs)
