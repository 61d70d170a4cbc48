"""Checkpoint formats: llm.c model files, Hugging Face GPT-2, and our training checkpoint."""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tui_llm.engine import formats as ck
from tui_llm.engine.formats import CheckpointError
from tui_llm.engine.hf_cache import find_hf_cached
from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors, num_parameters, preset_config

CFG = GPTConfig(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=32)  # Vp = 128
V, VP, C, L = 97, 128, 32, 2


def random_flat(cfg=CFG, seed=0, zero_padding=True):
    flat = np.random.default_rng(seed).standard_normal(num_parameters(cfg)).astype(np.float32)
    if zero_padding:
        flat[cfg.vocab_size * cfg.channels:cfg.padded_vocab_size * cfg.channels] = 0
    return flat


def header_ints(path):
    return np.fromfile(path, dtype="<i4", count=256)


def expected_header(version, slot7):
    h = np.zeros(256, dtype="<i4")
    h[:8] = [20240326, version, 16, V, L, 2, C, slot7]
    return h.tobytes()


# ---------------------------------------------------------------------------------------
# llm.c model files


def test_d12_file_sizes_match_llmc():
    d12 = preset_config("d12")
    assert num_parameters(d12) == 124_475_904
    assert ck.llmc_file_nbytes(d12, 3) == 497_904_640
    assert ck.llmc_file_nbytes(d12, 5) == 248_952_832
    assert ck.llmc_file_nbytes(d12, 1) == 497_760_256


def test_v3_round_trip_is_exact_and_byte_for_byte(tmp_path):
    flat = random_flat()
    path = tmp_path / "model.bin"
    ck.write_llmc(path, CFG, flat)
    data = path.read_bytes()
    assert len(data) == ck.llmc_file_nbytes(CFG, 3) == 1024 + 4 * num_parameters(CFG)
    assert data[:1024] == expected_header(3, VP)
    assert data[1024:] == flat.astype("<f4").tobytes()  # the 16 tensors back to back, llm.c order
    cfg, loaded = ck.read_llmc(path)
    assert cfg == CFG
    assert loaded.dtype == np.float32 and loaded.flags.c_contiguous
    assert np.array_equal(loaded, flat)


def test_v1_drops_padding_on_write_and_zero_pads_on_read(tmp_path):
    flat = random_flat(zero_padding=False)  # padded rows hold garbage: v1 must not store them
    path = tmp_path / "model_v1.bin"
    ck.write_llmc(path, CFG, flat, version=1)
    data = path.read_bytes()
    assert data[:1024] == expected_header(1, 0)
    assert data[1024:] == flat[:V * C].tobytes() + flat[VP * C:].tobytes()
    assert len(data) == ck.llmc_file_nbytes(CFG, 1)
    cfg, loaded = ck.read_llmc(path)
    assert cfg == CFG and cfg.padded_vocab_size == VP
    p, q = ParamTensors(cfg, loaded), ParamTensors(CFG, flat)
    assert np.all(p.wte[V:] == 0)
    assert np.array_equal(p.wte[:V], q.wte[:V])
    assert np.array_equal(loaded[VP * C:], flat[VP * C:])


def bf16_reference(x):
    """Independent round-to-nearest-even: compare the real distances to the two bf16 neighbours."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    bits = np.where(finite, x, 0).view(np.uint32)
    low = (bits >> 16).astype(np.int64)  # truncation toward zero
    high = low + 1                       # next bf16 away from zero
    def value(b):
        v = (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        # Rounding up past the largest bf16 lands on inf; as a distance target it sits at 2**128.
        return np.where(np.isinf(v), np.sign(v) * 2.0 ** 128, v)
    xd = np.where(finite, x, 0).astype(np.float64)
    d_low, d_high = np.abs(xd - value(low)), np.abs(value(high) - xd)
    pick_high = (d_high < d_low) | ((d_high == d_low) & (low % 2 == 1))
    out = np.where(pick_high, high, low).astype(np.uint16)
    out[np.isinf(x)] = np.where(x[np.isinf(x)] > 0, 0x7F80, 0xFF80)
    out[np.isnan(x)] = 0x7FC0
    return out


def test_bf16_rounding_matches_reference():
    special = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF,   # ties to even, just above/below
                        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF,               # overflow to +-inf, largest finite
                        0x00000001, 0x00018000, 0x80008000,               # subnormals, -0 tie
                        0x7F800000, 0xFF800000, 0x00000000, 0x80000000], dtype=np.uint32).view(np.float32)
    rng = np.random.default_rng(1)
    spread = rng.standard_normal(100_000) * 10.0 ** rng.integers(-40, 38, 100_000)  # subnormals to 1e37
    x = np.concatenate([special, spread.astype(np.float32)])
    assert np.array_equal(ck.fp32_to_bf16_bits(x), bf16_reference(x))
    assert ck.fp32_to_bf16_bits(np.float32([1.0, np.pi, -2.0]))[:].tolist() == [0x3F80, 0x4049, 0xC000]
    assert ck.fp32_to_bf16_bits(np.float32([np.nan]))[0] == 0x7FC0


def test_v5_bf16_round_trip(tmp_path):
    flat = random_flat()
    path = tmp_path / "model_bf16.bin"
    ck.write_llmc(path, CFG, flat, version=5)
    data = path.read_bytes()
    assert data[:1024] == expected_header(5, VP)
    assert len(data) == ck.llmc_file_nbytes(CFG, 5) == 1024 + 2 * num_parameters(CFG)
    reference = bf16_reference(flat)
    assert data[1024:] == reference.astype("<u2").tobytes()
    cfg, loaded = ck.read_llmc(path)
    assert cfg == CFG
    assert np.array_equal(loaded, (reference.astype(np.uint32) << 16).view(np.float32))
    assert np.max(np.abs(loaded - flat) / (np.abs(flat) + 1e-30)) <= 2.0 ** -8  # bf16 keeps 8 significant bits


def test_v5_write_in_several_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(ck.llmc, "CHUNK", 1000)  # the buffer holds ~30k values: exercise chunk edges
    flat = random_flat()
    ck.write_llmc(tmp_path / "m.bin", CFG, flat, version=5)
    _, loaded = ck.read_llmc(tmp_path / "m.bin")
    assert np.array_equal(loaded, (bf16_reference(flat).astype(np.uint32) << 16).view(np.float32))


def corrupt(tmp_path, version=3, slots=None, cut=0, append=b"", poke=None):
    """A valid tiny model file, then damaged: header slots changed, bytes cut or appended, a float poked."""
    path = tmp_path / "bad.bin"
    ck.write_llmc(path, CFG, random_flat(), version=version)
    data = bytearray(path.read_bytes())
    for slot, value in (slots or {}).items():
        data[4 * slot:4 * slot + 4] = int(value).to_bytes(4, "little", signed=True)
    if poke is not None:
        data[1024 + 4 * poke[0]:1024 + 4 * poke[0] + 4] = np.float32(poke[1]).tobytes()
    data = data[:len(data) - cut] + append
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage, words", [
    (dict(slots={0: 20240327}), "magic"),
    (dict(slots={0: 12345}), "magic"),
    (dict(slots={1: 2}), "version 2"),
    (dict(slots={1: 4}), "version 4"),
    (dict(slots={1: 7}), "version 7"),
    (dict(cut=1), "truncated"),
    (dict(cut=ck.llmc_file_nbytes(CFG) - 100), "truncated"),
    (dict(append=b"\0"), "trailing"),
    (dict(poke=(5, np.nan)), "wte"),
    (dict(poke=(num_parameters(CFG) - 1, np.inf)), "lnfb"),
    (dict(slots={7: 64}), "padded vocab 64 < vocab 97"),
    (dict(version=5, slots={7: 0}), "padded vocab 0 < vocab 97"),
    (dict(slots={5: 3}), "divisible"),      # C=32 heads=3
    (dict(slots={4: 0}), "num_layers"),
    (dict(slots={2: 17}), "implies exactly"),  # header disagrees with the data size
])
def test_bad_llmc_files_raise_naming_the_file(tmp_path, damage, words):
    path = corrupt(tmp_path, **damage)
    with pytest.raises(CheckpointError) as info:
        ck.read_llmc(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ") and "\n" not in message
    assert words in message


def test_missing_llmc_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        ck.read_llmc(tmp_path / "nope.bin")


def test_write_llmc_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ck.write_llmc(tmp_path / "m.bin", CFG, random_flat(), version=4)
    with pytest.raises(ValueError):
        ck.write_llmc(tmp_path / "m.bin", CFG, random_flat()[:-1])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Hugging Face GPT-2


def hf_names(prefix="transformer."):
    names = {f"{prefix}wte.weight": (V, C), f"{prefix}wpe.weight": (16, C),
             f"{prefix}ln_f.weight": (C,), f"{prefix}ln_f.bias": (C,)}
    for l in range(L):
        h = f"{prefix}h.{l}."
        names.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
                      h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
                      h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                      h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
                      h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)})
    return names


def test_hf_export_names_shapes_and_config(tmp_path):
    flat = random_flat()
    ck.write_hf(tmp_path / "out", CFG, flat)
    tensors = load_file(tmp_path / "out" / "model.safetensors")  # the official parser accepts our writer
    assert {k: v.shape for k, v in tensors.items()} == hf_names()
    assert all(v.dtype == np.float32 for v in tensors.values())
    with safe_open(tmp_path / "out" / "model.safetensors", framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
    p = ParamTensors(CFG, flat)
    assert np.array_equal(tensors["transformer.h.1.attn.c_attn.weight"], p.qkvw[1].T)
    assert np.array_equal(tensors["transformer.h.0.mlp.c_proj.weight"], p.fcprojw[0].T)
    assert np.array_equal(tensors["transformer.wte.weight"], p.wte[:V])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["n_positions"], config["n_ctx"], config["n_embd"], config["n_head"], config["n_layer"],
            config["vocab_size"]) == (16, 16, C, 2, L, V)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["tie_word_embeddings"] is True
    assert ck.hf_config_dict(preset_config("d12"))["eos_token_id"] == 50256
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no temp files


def test_hf_export_import_is_identity(tmp_path):
    flat = random_flat()
    ck.write_hf(tmp_path / "out", CFG, flat)
    cfg, loaded = ck.read_hf(tmp_path / "out")
    assert cfg == CFG
    assert loaded.tobytes() == flat.tobytes()
    # Also through the weights file path and the generic entry point.
    assert ck.read_hf(tmp_path / "out" / "model.safetensors")[1].tobytes() == flat.tobytes()
    assert ck.load_model_weights(tmp_path / "out")[1].tobytes() == flat.tobytes()


def test_hf_export_drops_padded_rows(tmp_path):
    flat = random_flat(zero_padding=False)
    ck.write_hf(tmp_path / "out", CFG, flat)
    _, loaded = ck.read_hf(tmp_path / "out")
    assert np.all(loaded[V * C:VP * C] == 0)
    assert np.array_equal(loaded[:V * C], flat[:V * C]) and np.array_equal(loaded[VP * C:], flat[VP * C:])


def write_hand_made_hf(directory, prefix="", extra=None, drop=None, config=None):
    """A GPT-2 checkpoint laid out as the hub stores it, with distinct known values in every tensor."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors, start = {}, 0
    for name, shape in hf_names(prefix).items():
        size = int(np.prod(shape))
        tensors[name] = (np.arange(start, start + size, dtype=np.float32) / 1000).reshape(shape)
        start += size
    for l in range(L):  # the causal-mask buffers old checkpoints carry
        tensors[f"{prefix}h.{l}.attn.bias"] = np.ones((1, 1, 16, 16), dtype=np.float32)
        tensors[f"{prefix}h.{l}.attn.masked_bias"] = np.float32([-1e4])
    tensors["lm_head.weight"] = tensors[f"{prefix}wte.weight"].copy()  # tied
    tensors.update(extra or {})
    for name in drop or []:
        del tensors[name]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    hf_config = {"model_type": "gpt2", "n_positions": 16, "n_ctx": 16, "vocab_size": V, "n_layer": L,
                 "n_head": 2, "n_embd": C, "activation_function": "gelu_new", **(config or {})}
    (directory / "config.json").write_text(json.dumps(hf_config))
    return tensors


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_hf_import_transposes_conv1d(tmp_path, prefix):
    tensors = write_hand_made_hf(tmp_path / "gpt2", prefix)
    cfg, flat = ck.read_hf(tmp_path / "gpt2")
    assert cfg == CFG
    p = ParamTensors(cfg, flat)
    hf = {k.removeprefix(prefix): v for k, v in tensors.items()}
    c_attn = hf["h.1.attn.c_attn.weight"]  # (in=C, out=3C): output j reads input i at [i, j]
    assert p.qkvw.shape == (L, 3 * C, C)
    assert p.qkvw[1][70, 5] == c_attn[5, 70]
    assert np.array_equal(p.qkvw[1], c_attn.T)
    assert np.array_equal(p.attprojw[0], hf["h.0.attn.c_proj.weight"].T)
    assert np.array_equal(p.fcw[1], hf["h.1.mlp.c_fc.weight"].T)
    assert p.fcprojw[0].shape == (C, 4 * C)
    assert np.array_equal(p.fcprojw[0], hf["h.0.mlp.c_proj.weight"].T)
    assert np.array_equal(p.qkvb[1], hf["h.1.attn.c_attn.bias"])
    assert np.array_equal(p.ln2w[0], hf["h.0.ln_2.weight"])
    assert np.array_equal(p.wte[:V], hf["wte.weight"]) and np.all(p.wte[V:] == 0)
    assert np.array_equal(p.wpe, hf["wpe.weight"]) and np.array_equal(p.lnfb, hf["ln_f.bias"])


@pytest.mark.parametrize("kwargs, words", [
    (dict(extra={"lm_head.weight": np.zeros((V, C), np.float32)}), "untied"),
    (dict(drop=["h.1.mlp.c_fc.bias"]), "missing"),
    (dict(extra={"score.weight": np.zeros((2, C), np.float32)}), "unexpected"),
    (dict(extra={"h.0.attn.c_attn.weight": np.zeros((3 * C, C), np.float32)}), "shape"),
    (dict(extra={"ln_f.bias": np.full(C, np.nan, np.float32)}), "lnfb"),
    (dict(config={"model_type": "llama"}), "model_type"),
    (dict(config={"n_head": 3}), "divisible"),
    (dict(config={"n_embd": 30}), "wte.weight has shape"),
])
def test_bad_hf_checkpoints(tmp_path, kwargs, words):
    write_hand_made_hf(tmp_path / "m", **kwargs)
    with pytest.raises(CheckpointError, match=words) as info:
        ck.read_hf(tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value)


def test_hf_model_name_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as info:
        ck.load_model_weights("gpt2")
    assert "not in the local Hugging Face cache" in str(info.value) and "no network" in str(info.value)
    assert find_hf_cached("gpt2") is None

    repo = tmp_path / "hf" / "hub" / "models--openai-community--gpt2"
    write_hand_made_hf(repo / "snapshots" / "old", config={"n_layer": 99})  # stale, not refs/main
    write_hand_made_hf(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert find_hf_cached("gpt2") == repo / "snapshots" / "abc123"
    cfg, flat, description = ck.load_model_weights("gpt2")
    assert cfg == CFG and "cache" in description


# ---------------------------------------------------------------------------------------
# Training checkpoints


def training_state():
    arrays = {"params": random_flat(seed=1), "adam_m": random_flat(seed=2), "adam_v": random_flat(seed=3) ** 2,
              "loader_perm": np.random.default_rng(4).permutation(1000).astype(np.int64),
              "rng_key": np.arange(4, dtype=np.uint32), "empty": np.zeros((0, 3), np.float32),
              "grid": np.arange(12, dtype=np.float64).reshape(3, 4)}
    meta = {"step": 41, "model_config": CFG.to_dict(), "loader": {"position": 1234, "epoch": 2},
            "rng": {"numpy": [1, 2, 3]}, "run": {"lr": 3e-4, "name": "tiny ü"},
            "metrics": [{"step": 40, "loss": 3.25}]}
    return arrays, meta


def test_training_checkpoint_round_trip(tmp_path):
    arrays, meta = training_state()
    path = tmp_path / "ckpt.safetensors"
    ck.save_training_checkpoint(path, arrays, meta)
    loaded, loaded_meta = ck.load_training_checkpoint(path)
    assert loaded_meta == meta
    assert list(loaded) == list(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape
        assert loaded[name].tobytes() == arr.tobytes()
        assert loaded[name].flags.writeable and loaded[name].flags.c_contiguous
    with safe_open(path, framework="numpy") as f:  # a valid safetensors file for other tools too
        assert f.metadata()["format"] == "tui-llm-training"
        assert np.array_equal(f.get_tensor("adam_m"), arrays["adam_m"])
    only, _ = ck.load_training_checkpoint(path, names=["params"])
    assert list(only) == ["params"]
    with pytest.raises(CheckpointError, match="missing arrays: nope"):
        ck.load_training_checkpoint(path, names=["params", "nope"])


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    arrays, meta = training_state()
    path = tmp_path / "ckpt.safetensors"
    ck.save_training_checkpoint(path, arrays, meta)
    before = path.read_bytes()

    real_write, calls = ck.safetensors.write_array, []
    def failing_write(f, arr):  # write a couple of arrays, then "run out of disk"
        calls.append(arr.shape)
        if len(calls) == 3:
            real_write(f, arr[: arr.size // 2])
            raise OSError(28, "No space left on device")
        real_write(f, arr)
    monkeypatch.setattr(ck.safetensors, "write_array", failing_write)
    newer = {k: v + 1 if v.dtype.kind == "f" else v for k, v in arrays.items()}
    with pytest.raises(CheckpointError, match="No space"):
        ck.save_training_checkpoint(path, newer, {**meta, "step": 42})
    assert len(calls) == 3
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # no temp file left behind

    monkeypatch.setattr(ck.safetensors, "write_array", real_write)
    with pytest.raises(TypeError):  # meta that is not JSON-able fails before any file is touched
        ck.save_training_checkpoint(path, arrays, {"step": object()})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.safetensors"]
    assert ck.load_training_checkpoint(path)[1]["step"] == 41


def test_atomic_write_small_files(tmp_path):
    path = tmp_path / "state.json"
    with ck.atomic_write(path, "w") as f:
        f.write('{"a": 1}')
    with pytest.raises(RuntimeError), ck.atomic_write(path, "w") as f:
        f.write('{"a": 2, "half')
        raise RuntimeError("crash")
    assert path.read_text() == '{"a": 1}' and os.listdir(tmp_path) == ["state.json"]
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def damaged_training_file(tmp_path, change):
    arrays, meta = training_state()
    path = tmp_path / "t.safetensors"
    ck.save_training_checkpoint(path, arrays, meta)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    path.write_bytes(bytes(change(data, n, header)))
    return path


def rewrite_header(data, header):
    raw = json.dumps(header).encode()
    old = int.from_bytes(data[:8], "little")
    return len(raw).to_bytes(8, "little") + raw + data[8 + old:]


def poke_nan(data, n, header):
    start = 8 + n + header["adam_v"]["data_offsets"][0] + 4 * 7
    data[start:start + 4] = np.float32(np.nan).tobytes()
    return data


@pytest.mark.parametrize("change, words", [
    (lambda d, n, h: d[:-1], "truncated"),
    (lambda d, n, h: d[:8 + n + 100], "truncated"),
    (lambda d, n, h: d[:5], "truncated"),
    (lambda d, n, h: d + b"x", "trailing"),
    (lambda d, n, h: d[:8] + b"[" + d[9:], "header JSON"),
    (lambda d, n, h: (10 ** 12).to_bytes(8, "little") + d[8:], "header length"),
    (poke_nan, "adam_v"),
    (lambda d, n, h: rewrite_header(d, {**h, "params": {**h["params"], "shape": [5]}}), "params"),
    (lambda d, n, h: rewrite_header(d, {**h, "params": {**h["params"], "dtype": "BF16"}}), "params"),
    (lambda d, n, h: rewrite_header(d, {**h, "__metadata__": {"format": "pt"}}), "not a tui-llm training"),
    (lambda d, n, h: rewrite_header(d, {**h, "__metadata__": {**h["__metadata__"], "meta": "{"}}), "metadata"),
])
def test_bad_training_checkpoints(tmp_path, change, words):
    path = damaged_training_file(tmp_path, change)
    with pytest.raises(CheckpointError, match=words) as info:
        ck.load_training_checkpoint(path)
    assert str(info.value).startswith(str(path) + ": ")


# ---------------------------------------------------------------------------------------
# Detection and the generic loader


def test_detect_and_load_any_kind(tmp_path):
    flat = random_flat()
    ck.write_llmc(tmp_path / "model.bin", CFG, flat)
    ck.write_llmc(tmp_path / "model_bf16.bin", CFG, flat, version=5)
    ck.write_hf(tmp_path / "hf", CFG, flat)
    ck.save_training_checkpoint(tmp_path / "run.safetensors", {"params": flat, "m": flat * 0},
                                {"step": 7, "model_config": CFG.to_dict()})
    expected = {"model.bin": "llmc", "model_bf16.bin": "llmc", "hf": "hf",
                "hf/model.safetensors": "hf", "run.safetensors": "training"}
    for name, kind in expected.items():
        assert ck.detect_checkpoint_kind(tmp_path / name) == kind
        cfg, loaded, description = ck.load_model_weights(tmp_path / name)
        assert cfg == CFG and str(tmp_path / name) in description
        if name != "model_bf16.bin":
            assert loaded.tobytes() == flat.tobytes()
    assert "step 7" in ck.load_model_weights(tmp_path / "run.safetensors")[2]


def test_detect_rejects_other_files(tmp_path):
    state = tmp_path / "state_00000010_00000.bin"
    state.write_bytes(np.array([20240527, 1] + [0] * 254, dtype="<i4").tobytes())
    with pytest.raises(CheckpointError, match="optimizer state"):
        ck.detect_checkpoint_kind(state)
    (tmp_path / "notes.txt").write_text("hello world, not a model")
    with pytest.raises(CheckpointError, match="unrecognised"):
        ck.load_model_weights(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a Hugging Face model"):
        ck.detect_checkpoint_kind(tmp_path / "empty")
    ck.save_training_checkpoint(tmp_path / "nocfg.safetensors", {"params": random_flat()}, {"step": 1})
    with pytest.raises(CheckpointError, match="model config"):
        ck.load_model_weights(tmp_path / "nocfg.safetensors")
