"""LoRA export and reuse (issue 17 item 5): PEFT adapter directories written and read back, merged
exports, continuing a PEFT adapter, sampling with one, and every bad adapter refused in one line.

The check against the real PEFT library is benchmarks/peft_roundtrip.py (a throwaway venv)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

import tui_llm
from tests.run_helpers import run as run_command
from tui_llm.engine.api import load_model
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import CheckpointError, write_hf
from tui_llm.engine.formats.hf_llama import write_hf_llama
from tui_llm.engine.formats.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_peft, write_peft
from tui_llm.engine.formats.safetensors import read_header, write_safetensors
from tui_llm.engine.kernels.bf16 import fingerprint
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama, LlamaConfig
from tui_llm.engine.models.lora import LoraConfig, merge_into, peft_tensor_map, resolve_targets

GPT2 = GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=64)
LLAMA = LlamaConfig(vocab_size=400, max_seq_len=32, num_layers=2, num_heads=4, num_kv_heads=2, channels=64,
                    ffn_channels=96)
QWEN2 = LlamaConfig(vocab_size=400, max_seq_len=32, num_layers=2, num_heads=4, num_kv_heads=2, channels=64,
                    ffn_channels=96, qkv_bias=True)


def base_model(config, seed=3):
    return Llama.random_init(config, seed=seed) if isinstance(config, LlamaConfig) else GPT.random_init(config, seed)


def adapted_model(config, targets="all-linear", rank=4, alpha=8.0, use_rslora=False, seed=3):
    """A base model with adapters whose B is not zero (so the adapters change the logits)."""
    model = base_model(config, seed)
    lora = LoraConfig(rank=rank, alpha=alpha, targets=resolve_targets(targets, config), use_rslora=use_rslora)
    model.attach_lora(lora, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for _, _, B in model.lora.params.modules():
        B[...] = rng.normal(0, 0.05, B.shape)
    return model


def logits(model, tokens):
    model.forward(tokens)
    return model.acts.logits[:, :model.config.vocab_size].copy()


def tokens_for(config, seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (2, 16)).astype(np.int32)


# ---------------------------------------------------------------------------------------
# The files: PEFT's keys, shapes and config, and our bytes in them

def test_peft_directory_has_peft_keys_shapes_config_and_our_bytes(tmp_path):
    model = adapted_model(LLAMA)
    write_peft(tmp_path / "a", model.lora.params, "/models/base", {"fingerprint": "0123456789abcdef", "dtype": "fp32"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.0
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert config["fan_in_fan_out"] is False and config["use_rslora"] is False and config["bias"] == "none"
    assert config["base_model_name_or_path"] == "/models/base"
    path = tmp_path / "a" / ADAPTER_WEIGHTS
    with open(path, "rb") as f:
        entries, metadata, data_start = read_header(f, path)
    assert metadata == {"format": "pt", "tui_llm_base_fingerprint": "0123456789abcdef", "tui_llm_base_dtype": "fp32"}
    assert len(entries) == 2 * 7 * 2
    q_a = entries["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    k_b = entries["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    down_a = entries["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
    assert (q_a.dtype, q_a.shape) == ("F32", (4, 64))                   # (r, in)
    assert k_b.shape == (LLAMA.kv_dim, 4) and down_a.shape == (4, 96)  # (out, r), (r, F)
    raw = path.read_bytes()
    views = model.lora.params.views
    assert raw[data_start + q_a.start:data_start + q_a.end] == views["self_attn.q_proj.lora_A"][0].astype("<f4").tobytes()
    assert raw[data_start + k_b.start:data_start + k_b.end] == views["self_attn.k_proj.lora_B"][1].astype("<f4").tobytes()


def test_gpt2_adapter_uses_hf_gpt2_module_names_and_fan_in_fan_out(tmp_path):
    model = adapted_model(GPT2, targets="c_attn,attn.c_proj")
    write_peft(tmp_path / "a", model.lora.params, None)
    config = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert config["fan_in_fan_out"] is True and config["base_model_name_or_path"] is None
    assert config["target_modules"] == ["c_attn", "attn.c_proj"]       # c_proj alone would select mlp.c_proj too
    path = tmp_path / "a" / ADAPTER_WEIGHTS
    with open(path, "rb") as f:
        entries, _, _ = read_header(f, path)
    assert entries["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 64)
    assert entries["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (3 * 64, 4)  # fused q/k/v
    assert entries["base_model.model.transformer.h.1.attn.c_proj.lora_B.weight"].shape == (64, 4)
    assert not any(".mlp." in key for key in entries)


@pytest.mark.parametrize("config", [GPT2, LLAMA, QWEN2], ids=["gpt2", "llama-gqa", "qwen2"])
def test_peft_round_trip_gives_identical_adapters_and_logits(tmp_path, config):
    model = adapted_model(config, use_rslora=config is QWEN2, alpha=6.0)
    write_peft(tmp_path / "a", model.lora.params, None)
    lora, flat, _ = read_peft(tmp_path / "a", config)
    assert lora == model.lora.lora
    assert np.array_equal(flat, model.lora.params.flat)
    again = base_model(config)
    again.attach_lora(lora, flat=flat)
    tokens = tokens_for(config)
    assert np.array_equal(logits(again, tokens), logits(model, tokens))


@pytest.mark.parametrize("config", [GPT2, LLAMA, QWEN2], ids=["gpt2", "llama-gqa", "qwen2"])
def test_merged_weights_give_the_adapted_models_logits(tmp_path, config):
    model = adapted_model(config)
    tokens = tokens_for(config)
    expected = logits(model, tokens)
    merged = base_model(config)
    merge_into(merged.params, model.lora.params)
    assert np.abs(logits(merged, tokens) - expected).max() < 1e-5
    assert np.abs(logits(base_model(config), tokens) - expected).max() > 1e-3   # the adapters do matter
    # and through the Hugging Face files, read back as a plain model
    writer = write_hf_llama if isinstance(config, LlamaConfig) else write_hf
    writer(tmp_path / "m", config, merged.params.flat)
    plain = load_model(tmp_path / "m")
    assert plain.lora is None
    assert np.abs(logits(plain, tokens) - expected).max() < 1e-5


# ---------------------------------------------------------------------------------------
# Bad adapters: one CheckpointError line each

def refused(directory, config, *words):
    with pytest.raises(CheckpointError) as e:
        read_peft(directory, config)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def edit_config(directory, **changes):
    path = directory / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_adapters_that_do_not_fit_the_base_are_refused_in_one_line(tmp_path):
    write_peft(tmp_path / "llama", adapted_model(LLAMA).lora.params, None)
    refused(tmp_path / "llama", GPT2, "Llama-family", "GPT-2")                       # another architecture
    wider = LlamaConfig(vocab_size=400, max_seq_len=32, num_layers=2, num_heads=4, num_kv_heads=2, channels=128,
                        ffn_channels=96)
    refused(tmp_path / "llama", wider, "shape", "another model size")
    deeper = LlamaConfig(vocab_size=400, max_seq_len=32, num_layers=3, num_heads=4, num_kv_heads=2, channels=64,
                         ffn_channels=96)
    refused(tmp_path / "llama", deeper, "layer 2", "only some layers")
    edit_config(tmp_path / "llama", r=8)
    refused(tmp_path / "llama", LLAMA, "r=8", "4 rows")                             # config vs tensors
    for change, words in [({"r": 4, "lora_alpha": float("nan")}, ("lora_alpha",)),
                          ({"lora_alpha": -1}, ("lora_alpha",)), ({"lora_alpha": 8, "peft_type": "IA3"}, ("LORA",)),
                          ({"peft_type": "LORA", "use_dora": True}, ("use_dora",)),
                          ({"use_dora": False, "rank_pattern": {"q_proj": 2}}, ("rank_pattern",)),
                          ({"rank_pattern": {}, "bias": "all"}, ("bias",)),
                          ({"bias": "none", "target_modules": ["q_proj"]}, ("k_proj", "target_modules")),
                          ({"target_modules": "all-linear", "r": "4"}, ("r must be",))]:
        edit_config(tmp_path / "llama", **change)
        refused(tmp_path / "llama", LLAMA, *words)
    (tmp_path / "llama" / ADAPTER_CONFIG).write_text("{not json")
    refused(tmp_path / "llama", LLAMA, "bad JSON")


def test_target_modules_as_peft_writes_them_for_gpt2_every_full_path(tmp_path):
    """PEFT saves GPT-2's all-linear as every module's full path (c_proj alone is ambiguous)."""
    write_peft(tmp_path / "a", adapted_model(GPT2, targets="c_attn").lora.params, None)
    edit_config(tmp_path / "a", target_modules=["transformer.h.1.attn.c_attn", "transformer.h.0.attn.c_attn",
                                                "transformer.h.0.mlp.c_fc"])
    lora, _, _ = read_peft(tmp_path / "a", GPT2)
    assert lora.targets == ("attn.c_attn",)
    edit_config(tmp_path / "a", target_modules=["transformer.h.0.attn.c_attn"])
    refused(tmp_path / "a", GPT2, "attn.c_attn", "target_modules")


def test_an_adapter_with_non_finite_values_is_refused(tmp_path):
    model = adapted_model(GPT2)
    write_peft(tmp_path / "a", model.lora.params, None)
    path = tmp_path / "a" / ADAPTER_WEIGHTS
    raw = bytearray(path.read_bytes())
    raw[-4:] = np.array([np.inf], "<f4").tobytes()
    path.write_bytes(bytes(raw))
    refused(tmp_path / "a", GPT2, "non-finite")


def test_fuzzed_adapter_files_are_read_or_refused_in_one_line(tmp_path):
    """Seeded byte flips, truncations and insertions in either file: read_peft reads it (a flip in
    the data that stays finite) or raises CheckpointError with one line; nothing else escapes."""
    model = adapted_model(LLAMA)
    write_peft(tmp_path / "good", model.lora.params, "base")
    files = {name: (tmp_path / "good" / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    rng = np.random.default_rng(2024)
    outcomes = {"read": 0, "refused": 0}
    for case in range(150):
        name = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)[case % 2]
        raw = bytearray(files[name])
        kind = rng.integers(3)
        if kind == 0:                                                    # flip bytes (header-heavy)
            for _ in range(rng.integers(1, 4)):
                limit = len(raw) if rng.random() < 0.3 else min(len(raw), 400)
                raw[rng.integers(limit)] = rng.integers(256)
        elif kind == 1:                                                  # truncate
            raw = raw[:rng.integers(len(raw))]
        else:                                                            # insert junk
            at = rng.integers(len(raw))
            raw[at:at] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
        d = tmp_path / f"case{case}"
        d.mkdir()
        for other, data in files.items():
            (d / other).write_bytes(bytes(raw) if other == name else data)
        try:
            read_peft(d, LLAMA)
            outcomes["read"] += 1
        except CheckpointError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50, outcomes


# ---------------------------------------------------------------------------------------
# The commands, on a LoRA run over a tiny Hugging Face GPT-2

def cli(*args):
    return run_command([sys.executable, "-m", "tui_llm", *map(str, args)])


def one_line_refusal(result, *words):
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    """(work dir, a 2-step LoRA run over a tiny HF GPT-2 dir `base`, its adapter exported to `peft`)."""
    d = tmp_path_factory.mktemp("lora_export")
    tokens = np.tile(np.random.default_rng(5).integers(0, 50257, 41), 80)
    write_tokens(d / "s_train.bin", tokens[:2800])
    write_tokens(d / "s_val.bin", tokens[2800:])
    write_hf(d / "base", GPT2, base_model(GPT2).params.flat)
    config = tui_llm.RunConfig(train_file=str(d / "s_train.bin"), out_dir=str(d / "run"), init_from=str(d / "base"),
                               batch_size=2, seq_len=16, steps=2, lr=3e-2, threads=1, val_every=0, sample_every=0,
                               save_every=0, lora_rank=4, lora_targets="c_attn,mlp.c_proj")
    tui_llm.Trainer(config).run(lambda e: None)
    result = cli("export", "--init-from", d / "run", d / "peft", "--to", "peft")
    assert result.returncode == 0, result.stderr
    return d


def test_exported_adapter_gives_the_runs_logits_and_names_its_base(gpt2_run):
    d = gpt2_run
    config = json.loads((d / "peft" / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(d / "base") and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"]
    run, adapter = load_model(d / "run"), load_model(d / "peft")
    tokens = tokens_for(GPT2)
    assert np.array_equal(logits(adapter, tokens), logits(run, tokens))
    assert adapter.lora.lora == run.lora.lora


@pytest.mark.slow
def test_merged_hf_and_llmc_exports_give_the_runs_logits(gpt2_run):
    d = gpt2_run
    for to, out in (("hf", d / "merged"), ("llmc", d / "merged.bin")):
        result = cli("export", "--init-from", d / "run", out, "--to", to)
        assert result.returncode == 0, result.stderr
    tokens = tokens_for(GPT2)
    expected = logits(load_model(d / "run"), tokens)
    for out in (d / "merged", d / "merged.bin"):
        plain = load_model(out)
        assert plain.lora is None and np.abs(logits(plain, tokens) - expected).max() < 1e-5


def test_training_continues_from_a_peft_adapter_on_its_base(gpt2_run, tmp_path):
    d = gpt2_run
    shutil.copytree(d / "peft", tmp_path / "adapter")
    config = tui_llm.RunConfig(train_file=str(d / "s_train.bin"), out_dir=str(tmp_path / "more"),
                               init_from=str(tmp_path / "adapter"), batch_size=2, seq_len=16, steps=1, threads=1,
                               val_every=0, sample_every=0, save_every=0)
    trainer = tui_llm.Trainer(config)
    run = load_model(d / "run")
    assert np.array_equal(trainer.model.lora.params.flat, run.lora.params.flat)
    assert np.array_equal(trainer.model.params.flat, run.params.flat)              # the base it names
    c = trainer.config
    assert c.base == str(d / "base") and c.lora_rank == 4 and c.lora_targets == "attn.c_attn,mlp.c_proj"
    trainer.run(lambda e: None)
    resumed = load_model(tmp_path / "more")                                        # its checkpoint: base recorded
    assert resumed.lora.lora == run.lora.lora
    assert not np.array_equal(resumed.lora.params.flat, run.lora.params.flat)     # it trained on
    shutil.rmtree(tmp_path / "adapter")                  # a resume needs the base it recorded, not the adapter
    again = tui_llm.Trainer.resume(tmp_path / "more", steps=2)
    assert again.step == 1 and np.array_equal(again.model.lora.params.flat, resumed.lora.params.flat)
    again.run(lambda e: None)
    assert again.step == 2


def test_adapters_stored_as_f16_or_bf16_are_widened_exactly(tmp_path):
    model = adapted_model(GPT2, targets="c_fc")
    write_peft(tmp_path / "a", model.lora.params, None)
    path = tmp_path / "a" / ADAPTER_WEIGHTS
    tensors = peft_tensor_map(model.lora.params)
    with open(path, "wb") as f:   # as PEFT saves a float16 model's adapter
        write_safetensors(f, [(key, view.astype(np.float16)) for key, view in tensors], {"format": "pt"})
    _, flat, _ = read_peft(tmp_path / "a", GPT2)
    assert np.array_equal(flat, model.lora.params.flat.astype(np.float16).astype(np.float32))


@pytest.mark.slow
def test_sample_with_an_adapter_equals_sample_with_the_run(gpt2_run):
    d = gpt2_run
    args = ("--prompt", "Hello", "--sample-len", "6", "--temperature", "0", "--threads", "1")
    from_run, from_adapter = cli("sample", "--init-from", d / "run", *args), cli("sample", "--init-from", d / "peft", *args)
    assert from_run.returncode == 0 and from_adapter.returncode == 0, from_adapter.stderr
    text = lambda r: r.stdout.split("\n", 1)[1]  # noqa: E731 (after the header line, which names the source)
    assert text(from_run) == text(from_adapter)


@pytest.mark.slow
def test_bad_adapter_commands_say_one_line_exit_2_and_write_nothing(gpt2_run, tmp_path):
    d = gpt2_run
    out = tmp_path / "out"
    # a base that is not here (offline): the adapter names it, or --base does
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        (moved / name).write_bytes((d / "peft" / name).read_bytes())
    edit_config(moved, base_model_name_or_path="nobody/no-such-model")
    one_line_refusal(cli("export", "--init-from", moved, out, "--to", "hf"), "no-such-model", "--base")
    one_line_refusal(cli("sample", "--init-from", moved, "--base", tmp_path / "nothing"), "nothing")
    edit_config(moved, base_model_name_or_path=None)
    one_line_refusal(cli("export", "--init-from", moved, out, "--to", "hf"), "names no base model", "--base")
    # the right base given with --base works; a different base (its fingerprint) is refused unless named with --base
    result = cli("export", "--init-from", moved, "--base", d / "base", tmp_path / "ok", "--to", "peft")
    assert result.returncode == 0, result.stderr
    other = tmp_path / "other_base"
    write_hf(other, GPT2, base_model(GPT2, seed=9).params.flat)
    edit_config(moved, base_model_name_or_path=str(other))
    one_line_refusal(cli("export", "--init-from", moved, out, "--to", "hf"), "fingerprint")
    one_line_refusal(cli("--init-from", moved, d / "s_train.bin", "--no-ui", "--steps", "1", "--out-dir", out),
                     "fingerprint")
    # an adapter for another architecture, shapes that do not match, a damaged file
    llama = tmp_path / "llama_base"
    write_hf_llama(llama, LLAMA, base_model(LLAMA).params.flat)
    one_line_refusal(cli("export", "--init-from", d / "peft", "--base", llama, out, "--to", "hf"), "GPT-2")
    wide = tmp_path / "wide_base"
    write_hf(wide, GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=128), base_model(
        GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=128)).params.flat)
    one_line_refusal(cli("export", "--init-from", d / "peft", "--base", wide, out, "--to", "hf"), "shape")
    (moved / ADAPTER_WEIGHTS).write_bytes((moved / ADAPTER_WEIGHTS).read_bytes()[:-7])
    edit_config(moved, base_model_name_or_path=str(d / "base"))
    one_line_refusal(cli("export", "--init-from", moved, out, "--to", "hf"), "truncated")
    one_line_refusal(cli("--init-from", moved, d / "s_train.bin", "--no-ui", "--steps", "1", "--out-dir", out),
                     "truncated")
    # --to peft of a whole model, --base without an adapter
    one_line_refusal(cli("export", "--init-from", d / "base", out, "--to", "peft"), "whole model")
    one_line_refusal(cli("export", "--init-from", d / "base", "--base", d / "base", out, "--to", "hf"), "--base")
    assert not out.exists()


@pytest.mark.slow
def test_lora_llama_to_llmc_is_refused_and_writes_nothing(tmp_path):
    model = adapted_model(LLAMA)
    write_hf_llama(tmp_path / "base", LLAMA, base_model(LLAMA).params.flat)
    write_peft(tmp_path / "peft", model.lora.params, str(tmp_path / "base"),
               {"fingerprint": fingerprint(base_model(LLAMA).params.flat), "dtype": "fp32"})
    for to in ("llmc", "llmc-bf16"):
        one_line_refusal(cli("export", "--init-from", tmp_path / "peft", tmp_path / "x.bin", "--to", to), "--to hf")
    assert not (tmp_path / "x.bin").exists()
    # and the Llama adapter merges: --to hf gives the adapted model's logits
    result = cli("export", "--init-from", tmp_path / "peft", tmp_path / "merged", "--to", "hf")
    assert result.returncode == 0, result.stderr
    tokens = tokens_for(LLAMA)
    assert np.abs(logits(load_model(tmp_path / "merged"), tokens) - logits(model, tokens)).max() < 1e-5


@pytest.mark.slow
def test_export_into_an_existing_adapter_needs_force(gpt2_run, tmp_path):
    d = gpt2_run
    target = tmp_path / "again"
    assert cli("export", "--init-from", d / "run", target, "--to", "peft").returncode == 0
    one_line_refusal(cli("export", "--init-from", d / "run", target, "--to", "peft"), "--force")
    assert cli("export", "--init-from", d / "run", target, "--to", "peft", "--force").returncode == 0


# ---------------------------------------------------------------------------------------
# llama.cpp's LoRA GGUF: base GGUF + adapter GGUF = the merged model's GGUF

@pytest.mark.slow
@pytest.mark.parametrize("config", [GPT2, LLAMA, QWEN2], ids=["gpt2", "llama-gqa", "qwen2"])
def test_gguf_adapter_on_the_base_gguf_is_the_merged_gguf(tmp_path, config):
    from gguf import GGUFReader

    from tests.test_hf_tokenizer import train as train_tokenizer
    from tui_llm.engine.formats.gguf import write_gguf
    from tui_llm.engine.formats.gguf_lora import write_gguf_lora
    from tui_llm.engine.tokenizers.hf import HFTokenizer

    model = adapted_model(config, use_rslora=config is QWEN2)
    merged = base_model(config)
    merge_into(merged.params, model.lora.params)
    tokenizer = None
    if isinstance(config, LlamaConfig):   # a 400-token BPE trained here
        train_tokenizer(tmp_path / "tok", tokenizer_config={"bos_token": "<s>", "eos_token": "<|endoftext|>"})
        tokenizer = HFTokenizer.from_dir(tmp_path / "tok")
    write_gguf(tmp_path / "base.gguf", config, base_model(config).params.flat, tokenizer)
    write_gguf(tmp_path / "merged.gguf", config, merged.params.flat, tokenizer)
    write_gguf_lora(tmp_path / "lora.gguf", model.lora.params)

    def tensors(path):
        reader = GGUFReader(path)
        return reader, {t.name: (np.array(t.data, np.float32), tuple(int(n) for n in t.shape)) for t in reader.tensors}

    reader, lora = tensors(tmp_path / "lora.gguf")
    fields = {f.name: f.contents() for f in reader.fields.values()}
    arch = "gpt2" if config is GPT2 else "qwen2" if config is QWEN2 else "llama"
    assert fields["general.architecture"] == arch and fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    r, scale = model.lora.lora.rank, model.lora.lora.scale
    assert fields["adapter.lora.alpha"] == pytest.approx(scale * r)              # llama.cpp scales by alpha / r
    _, base = tensors(tmp_path / "base.gguf")
    _, want = tensors(tmp_path / "merged.gguf")
    first = "blk.0.attn_qkv.weight" if config is GPT2 else "blk.0.attn_q.weight"
    assert lora[first + ".lora_a"][1] == (base[first][1][0], r)                  # GGUF dims: a (in, r)
    assert lora[first + ".lora_b"][1] == (r, base[first][1][1])                  #            b (r, out)
    adapted = {name.removesuffix(".lora_a") for name in lora if name.endswith(".lora_a")}
    assert len(adapted) == config.num_layers * len(model.lora.lora.targets)
    for name in adapted:
        a, b = lora[name + ".lora_a"][0], lora[name + ".lora_b"][0]
        got = base[name][0] + np.float32(scale) * (b @ a)
        assert np.abs(got - want[name][0]).max() < 1e-5, name


@pytest.mark.slow
def test_gguf_lora_export_of_a_run_and_of_its_peft_adapter(gpt2_run, tmp_path):
    from gguf import GGUFReader

    d = gpt2_run
    for source, out in ((d / "run", tmp_path / "run.gguf"), (d / "peft", tmp_path / "peft.gguf")):
        result = cli("export", "--init-from", source, out, "--to", "gguf-lora")
        assert result.returncode == 0, result.stderr
    run = load_model(d / "run")
    views = run.lora.params.views
    for out in (tmp_path / "run.gguf", tmp_path / "peft.gguf"):
        reader = GGUFReader(out)
        fields = {f.name: f.contents() for f in reader.fields.values()}
        assert fields["general.type"] == "adapter" and fields["adapter.lora.alpha"] == pytest.approx(8.0)
        tensors = {t.name: np.array(t.data) for t in reader.tensors}
        assert sorted(tensors) == sorted(f"blk.{layer}.{name}.weight.lora_{ab}" for layer in range(2)
                                         for name in ("attn_qkv", "ffn_down") for ab in "ab")
        assert np.array_equal(tensors["blk.1.attn_qkv.weight.lora_a"], views["attn.c_attn.lora_A"][1])
        assert np.array_equal(tensors["blk.0.ffn_down.weight.lora_b"], views["mlp.c_proj.lora_B"][0])
    one_line_refusal(cli("export", "--init-from", d / "base", tmp_path / "x.gguf", "--to", "gguf-lora"), "whole model")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_gguf_export_of_a_lora_run_is_the_merged_model(gpt2_run, tmp_path):
    d = gpt2_run
    result = cli("export", "--init-from", d / "run", tmp_path / "m.gguf", "--to", "gguf", "--outtype", "f32")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.Modelfile").is_file()
    tokens = tokens_for(GPT2)
    plain, run = load_model(tmp_path / "m.gguf"), load_model(d / "run")
    assert plain.lora is None and np.abs(logits(plain, tokens) - logits(run, tokens)).max() < 1e-5
