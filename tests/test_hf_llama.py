"""Hugging Face Llama-family directories built with numpy in HF's layout -> loaded -> the float64
reference's loss; write_hf_llama -> reload identical; every unsupported config -> one line."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import reference_llama as ref
from tui_llm.engine.formats import CheckpointError
from tui_llm.engine.formats.hf_llama import config_from_hf, hf_model_type, read_hf_llama, write_hf_llama
from tui_llm.engine.models.llama import Llama

V, C, L, F, MAX_POS = 50, 16, 2, 24, 16
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def to_bf16_bits(x):
    """float -> bfloat16 bits, round to nearest even (what torch does)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def stored(x, dtype):
    """(safetensors dtype code, raw array, the float64 values the file holds)."""
    if dtype == "BF16":
        bits = to_bf16_bits(x)
        return "BF16", bits, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    arr = x.astype({"F32": np.float32, "F16": np.float16}[dtype])
    return dtype, arr, arr.astype(np.float64)


def write_safetensors(path, tensors):
    """A minimal safetensors writer (independent of the engine's): {name: (code, array)}."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, (code, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def hf_config(model_type="llama", H=4, KV=2, head_dim=None, tied=True, spelling="4.x", theta=100.0, scaling=None,
              **extra):
    d = {"model_type": model_type, "vocab_size": V, "hidden_size": C, "intermediate_size": F,
         "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV, "rms_norm_eps": 1e-5,
         "max_position_embeddings": MAX_POS, "tie_word_embeddings": tied, "hidden_act": "silu",
         "bos_token_id": 1, "eos_token_id": [2, 3]}
    if head_dim:
        d["head_dim"] = head_dim
    if spelling == "4.x":
        d.update(rope_theta=theta, rope_scaling=scaling)
    else:
        d["rope_parameters"] = {"rope_theta": theta, **(scaling or {"rope_type": "default"})}
    d.update(extra)
    return d


def make_hf_dir(tmp_path, hf, dtype="F32", shards=1, seed=0):
    """Random HF-named weights for config dict hf written to tmp_path; returns the float64 values stored."""
    H, KV = hf["num_attention_heads"], hf["num_key_value_heads"]
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    scaling = None if not scaling or scaling.get("rope_type") == "default" else scaling
    cfg = dict(num_heads=H, num_kv_heads=KV, head_dim=hf.get("head_dim") or C // H, eps=hf["rms_norm_eps"],
               theta=hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"], rope_scaling=scaling,
               vocab_size=V, tied=hf["tie_word_embeddings"], bias=hf["model_type"] == "qwen2",
               qk_norm=hf["model_type"] == "qwen3")
    P = ref.random_params(cfg, L, C, F, np.random.default_rng(seed))
    tensors, P_stored = {}, {}
    for name, val in P.items():
        code, raw, back = stored(val, dtype)
        tensors[name], P_stored[name] = (code, raw), back
    names = list(tensors)
    if shards == 1:
        write_safetensors(tmp_path / "model.safetensors", tensors)
    else:
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(tmp_path / fname, {n: tensors[n] for n in part})
            weight_map.update(dict.fromkeys(part, fname))
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf))
    return P_stored, cfg


VARIANTS = {
    "llama-4x-tied-f32-mha": (dict(KV=4), "F32", 1),
    "llama-5x-llama3-untied-bf16-sharded": (dict(spelling="5.x", scaling=LLAMA3, tied=False), "BF16", 3),
    "qwen2-bias-f16-gqa": (dict(model_type="qwen2", KV=1, use_sliding_window=False, sliding_window=4), "F16", 1),
    "mistral-headdim-linear-4x": (dict(model_type="mistral", head_dim=6, sliding_window=None,
                                       scaling={"type": "linear", "factor": 2.0}), "BF16", 2),
    "qwen3-qk-norm-headdim-5x": (dict(model_type="qwen3", head_dim=8, spelling="5.x", attention_bias=False,
                                      use_sliding_window=False, sliding_window=None, tied=False), "BF16", 1),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_load_matches_float64_reference(tmp_path, name):
    kwargs, dtype, shards = VARIANTS[name]
    hf = hf_config(**kwargs)
    P, rcfg = make_hf_dir(tmp_path, hf, dtype, shards)
    cfg, flat = read_hf_llama(tmp_path)
    assert (cfg.vocab_size, cfg.channels, cfg.num_layers, cfg.ffn_channels) == (V, C, L, F)
    assert cfg.num_kv_heads == rcfg["num_kv_heads"] and cfg.head_dim == rcfg["head_dim"]
    assert cfg.tied_embeddings == rcfg["tied"] and cfg.qkv_bias == rcfg["bias"] and cfg.qk_norm == rcfg["qk_norm"]
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.max_seq_len) == (1, 2, MAX_POS)
    model = Llama(cfg, flat)
    x, y = (np.random.default_rng(4).integers(0, V, (2, 8)).astype(np.int32) for _ in range(2))
    _, loss_ref, _ = ref.forward_backward(P, rcfg, x, y)
    loss = model.forward(x, y)
    assert abs(loss - loss_ref) / loss_ref < 1e-5
    assert not model.params.wte[V:].any()


def test_write_then_read_is_identical_and_hf_shaped(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    make_hf_dir(src, hf_config(model_type="qwen2", spelling="5.x", scaling=LLAMA3, tied=False), "BF16", 2)
    (src / "tokenizer.json").write_text('{"fake": true}')
    (src / "tokenizer_config.json").write_text('{"bos_token": null}')
    cfg, flat = read_hf_llama(src)
    write_hf_llama(out, cfg, flat, tokenizer_dir=src)
    cfg2, flat2 = read_hf_llama(out)
    assert cfg2 == cfg and np.array_equal(flat2, flat)
    assert (out / "tokenizer.json").read_text() == '{"fake": true}' and (out / "tokenizer_config.json").is_file()
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "qwen2" and written["architectures"] == ["Qwen2ForCausalLM"]
    assert written["rope_scaling"]["rope_type"] == "llama3" and written["num_key_value_heads"] == 2
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.embed_tokens.weight"].shape == (V, C) and "lm_head.weight" in tensors
    assert tensors["model.layers.1.self_attn.k_proj.bias"].shape == (8,)
    # qwen3: its q/k norms are written and read back, under its own model type
    src3 = tmp_path / "src3"
    src3.mkdir()
    make_hf_dir(src3, hf_config(model_type="qwen3", head_dim=8, attention_bias=False), "F32", 1)
    cfg4, flat4 = read_hf_llama(src3)
    write_hf_llama(tmp_path / "qwen3_out", cfg4, flat4)
    cfg5, flat5 = read_hf_llama(tmp_path / "qwen3_out")
    assert cfg5 == cfg4 and cfg4.qk_norm and np.array_equal(flat5, flat4)
    written = json.loads((tmp_path / "qwen3_out" / "config.json").read_text())
    assert written["model_type"] == "qwen3" and written["architectures"] == ["Qwen3ForCausalLM"]
    assert load_file(tmp_path / "qwen3_out" / "model.safetensors")["model.layers.0.self_attn.k_norm.weight"].shape == (8,)
    # tied llama: no lm_head written
    cfg3, flat3 = read_hf_llama(make_tied(tmp_path / "tied"))
    write_hf_llama(tmp_path / "tied_out", cfg3, flat3)
    assert "lm_head.weight" not in load_file(tmp_path / "tied_out" / "model.safetensors")
    assert json.loads((tmp_path / "tied_out" / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        write_hf_llama(tmp_path / "x", cfg3, flat3, tokenizer_dir=tmp_path)


def make_tied(d):
    d.mkdir()
    make_hf_dir(d, hf_config())
    return d


@pytest.mark.parametrize("change,message", [
    (dict(model_type="gpt_neox"), "model_type 'gpt_neox' is not supported"),
    (dict(model_type="gemma"), "model_type 'gemma' is not supported"),
    (dict(model_type="qwen3", attention_bias=True), "attention_bias"),
    (dict(num_local_experts=8), "mixture-of-experts"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic' is not supported"),
    (dict(rope_scaling=None, rope_parameters={"rope_theta": 1e4, "rope_type": "yarn", "factor": 4}), "'yarn'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(model_type="mistral", sliding_window=4), "sliding_window 4 is shorter than the 16 positions"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=8), "sliding_window 8"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(rope_parameters={"rope_theta": 1e4, "rope_type": "default", "partial_rotary_factor": 0.25}),
     "partial_rotary_factor 0.25"),
    (dict(hidden_size=None), "'hidden_size'"),
    (dict(num_key_value_heads=3), "multiple of key/value heads"),
    (dict(num_key_value_heads="2"), "num_kv_heads must be a positive integer"),
    (dict(rms_norm_eps="tiny"), "rms_norm_eps must be a number"),
    (dict(rope_theta="big"), "bad RoPE settings"),
    (dict(rope_scaling=["linear"]), "rope_scaling must be a dict"),
])
def test_unsupported_configs_are_refused_in_one_line(tmp_path, change, message):
    make_hf_dir(tmp_path, hf_config())
    hf = {**hf_config(), **change}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=message) as e:
        read_hf_llama(tmp_path)
    assert "\n" not in str(e.value)


def test_sliding_window_at_least_the_sequence_is_accepted():
    hf = hf_config(model_type="mistral", sliding_window=8)
    assert config_from_hf(hf, max_seq_len=8).max_seq_len == 8
    with pytest.raises(CheckpointError, match="exceeds max_position_embeddings"):
        config_from_hf(hf_config(), max_seq_len=32)


def corrupt(tmp_path, how):
    P, _ = make_hf_dir(tmp_path, hf_config(tied=False))
    tensors = {n: ("F32", v.astype(np.float32)) for n, v in P.items()}
    if how == "missing":
        del tensors["model.layers.1.mlp.up_proj.weight"]
    elif how == "no-head":
        del tensors["lm_head.weight"]
    elif how == "shape":
        tensors["model.layers.0.self_attn.k_proj.weight"] = ("F32", np.zeros((4, C), np.float32))
    elif how == "extra":
        tensors["model.layers.0.self_attn.q_norm.weight"] = ("F32", np.ones(4, np.float32))
    elif how == "nan":
        tensors["model.norm.weight"][1][3] = np.nan
    elif how == "dtype":
        tensors["model.norm.weight"] = ("I8", np.ones(C, np.int8))
    write_safetensors(tmp_path / "model.safetensors", tensors)


@pytest.mark.parametrize("how,message", [
    ("missing", "1 tensors missing, e.g. model.layers.1.mlp.up_proj.weight"),
    ("no-head", r"missing \(tie_word_embeddings is false\)"),
    ("shape", r"k_proj.weight has shape \(4, 16\), config.json implies \(8, 16\)"),
    ("extra", "unexpected tensors for llama, e.g. model.layers.0.self_attn.q_norm.weight"),
    ("nan", "model.norm.weight has NaN"),
    ("dtype", "dtype I8"),
])
def test_bad_tensors_are_refused_in_one_line(tmp_path, how, message):
    corrupt(tmp_path, how)
    with pytest.raises(CheckpointError, match=message) as e:
        read_hf_llama(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_files_are_refused(tmp_path):
    assert hf_model_type(tmp_path) is None
    with pytest.raises(CheckpointError, match="no such directory"):
        read_hf_llama(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        read_hf_llama(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    assert hf_model_type(tmp_path) == "llama"
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert hf_model_type(tmp_path / "pytorch_model.bin") == "llama"
    with pytest.raises(CheckpointError, match="found pytorch_model.bin: only safetensors"):
        read_hf_llama(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard model-1.safetensors is missing"):
        read_hf_llama(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_hf_llama(tmp_path)


def test_tied_head_copy_unprefixed_names_and_inv_freq_are_accepted(tmp_path):
    P, rcfg = make_hf_dir(tmp_path, hf_config())
    tensors = {n.removeprefix("model."): ("F32", v.astype(np.float32)) for n, v in P.items()}
    tensors["lm_head.weight"] = tensors["embed_tokens.weight"]          # a tied head stored anyway
    tensors["layers.0.self_attn.rotary_emb.inv_freq"] = ("F32", np.ones(2, np.float32))
    write_safetensors(tmp_path / "model.safetensors", tensors)
    cfg, flat = read_hf_llama(tmp_path)
    x = np.arange(16, dtype=np.int32).reshape(2, 8)
    assert abs(Llama(cfg, flat).forward(x, x) - ref.forward_backward(P, rcfg, x, x)[1]) < 1e-4
    tensors["lm_head.weight"] = ("F32", tensors["embed_tokens.weight"][1] * 2)
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from embed_tokens"):
        read_hf_llama(tmp_path)


def test_a_frozen_base_keeps_bf16_bits(tmp_path):
    """dtype="bf16": BF16 tensors are copied bit for bit (no float32 copy), others rounded to
    nearest even; peek_hf_llama tells a BF16 directory from its headers alone."""
    from tui_llm.engine.formats.hf_llama import peek_hf_llama

    bf16_dir, f32_dir = tmp_path / "bf16", tmp_path / "f32"
    bf16_dir.mkdir()
    f32_dir.mkdir()
    make_hf_dir(bf16_dir, hf_config(), "BF16", shards=2)
    make_hf_dir(f32_dir, hf_config(), "F32")
    assert peek_hf_llama(bf16_dir)[1] is True and peek_hf_llama(f32_dir)[1] is False
    cfg, wide = read_hf_llama(bf16_dir)
    _, bits = read_hf_llama(bf16_dir, dtype="bf16")
    assert bits.dtype == np.uint16 and bits.nbytes * 2 == wide.nbytes
    assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), wide)   # the file's bits exactly
    _, f32 = read_hf_llama(f32_dir)
    _, rounded = read_hf_llama(f32_dir, dtype="bf16")
    assert np.array_equal(rounded, to_bf16_bits(f32))
    x, y = (np.random.default_rng(4).integers(0, V, (2, 8)).astype(np.int32) for _ in range(2))
    assert abs(Llama(cfg, bits).forward(x, y) - Llama(cfg, wide).forward(x, y)) < 1e-6
