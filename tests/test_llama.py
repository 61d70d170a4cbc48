"""The Llama engine (forward, backward, KV cache, config) against the float64 reference."""

import dataclasses

import numpy as np
import pytest

from tests import reference_llama as ref
from tests.accumulation_check import assert_accumulate_adds
from tui_llm.engine.kernels import blas
from tui_llm.engine.machine import NotEnoughMemory
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.llama_config import LlamaConfig, LlamaConfigError, num_parameters, param_shapes
from tui_llm.engine.training.optim import AdamW, AdamWConfig

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
BASE = dict(vocab_size=97, max_seq_len=16, num_layers=2, num_heads=4, channels=32, ffn_channels=48,
            rope_theta=100.0)
CONFIGS = {
    "mha-tied": LlamaConfig(**BASE),
    "gqa-untied": LlamaConfig(**BASE, num_kv_heads=2, tied_embeddings=False),
    "gqa-bias": LlamaConfig(**BASE, num_kv_heads=1, qkv_bias=True),
    "llama3-rope": LlamaConfig(**BASE, num_kv_heads=2, rope_scaling=LLAMA3),
    "linear-rope-headdim": LlamaConfig(**BASE, num_kv_heads=2, head_dim=6, rope_scaling={"type": "linear", "factor": 2}),
    "qwen3-qk-norm": LlamaConfig(**BASE, num_kv_heads=2, head_dim=12, qk_norm=True, tied_embeddings=False),
}


def make_batch(seed=0, B=2, T=8, V=97):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)).astype(np.int32), rng.integers(0, V, (B, T)).astype(np.int32)


def random_model(cfg, seed=3, std=0.2):
    """Every parameter random (norm weights around 1), padded vocabulary rows zero."""
    model = Llama.random_init(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, view in model.params.items():
        if name in ("ln1w", "ln2w", "lnfw", "qnormw", "knormw"):
            view[:] = 1 + 0.1 * rng.standard_normal(view.shape)
        elif name in ("wte", "lm_head"):
            view[:cfg.vocab_size] = std * rng.standard_normal((cfg.vocab_size, cfg.channels))
        else:
            view[:] = std * rng.standard_normal(view.shape)
    return model


def rel_err(ours, expected):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_reference_gradients_match_finite_differences(qk_norm):
    cfg = dict(num_heads=4, num_kv_heads=2, head_dim=6, eps=1e-5, theta=100.0, rope_scaling=LLAMA3,
               vocab_size=23, tied=False, bias=True, qk_norm=qk_norm)
    rng = np.random.default_rng(0)
    P = ref.random_params(cfg, L=2, C=12, F=10, rng=rng)
    x, y = make_batch(1, B=2, T=6, V=23)
    _, _, G = ref.forward_backward(P, cfg, x, y)
    h = 1e-5
    for name, val in P.items():
        flat = val.reshape(-1)
        for idx in rng.choice(flat.size, 3, replace=False):
            if name == "model.embed_tokens.weight":
                idx = int(x[0, 1]) * 12 + idx % 12  # a row that is used
            old = flat[idx]
            flat[idx] = old + h
            lp = ref.forward_backward(P, cfg, x, y)[1]
            flat[idx] = old - h
            lm = ref.forward_backward(P, cfg, x, y)[1]
            flat[idx] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - G[name].reshape(-1)[idx]) < 1e-7 + 1e-5 * abs(fd), name


@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_matches_float64_reference(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    P = ref.from_engine(model.params, cfg)
    x, y = make_batch()
    logits_ref, loss_ref, G = ref.forward_backward(P, ref.ref_config(cfg), x, y)

    model.forward(x)  # logits are kept by a forward without training=True
    logits = model.acts.logits.reshape(2, 8, -1)
    assert rel_err(logits[..., :cfg.vocab_size], logits_ref) < 1e-4
    assert not logits[..., cfg.vocab_size:].any()  # padded head rows are zero

    loss = model.forward(x, y, training=True)
    assert abs(loss - loss_ref) / loss_ref < 1e-4
    model.backward()
    G_engine = ref.from_engine(model.grads, cfg)
    for key, expected in G.items():
        assert rel_err(G_engine[key], expected) < 1e-4, key
    assert not model.grads.wte[cfg.vocab_size:].any()
    # a second step overwrites the gradients rather than adding to them
    model.forward(x, y, training=True)
    model.backward()
    assert rel_err(ref.from_engine(model.grads, cfg)["model.norm.weight"], G["model.norm.weight"]) < 1e-4


def test_adamw_steps_reduce_the_loss():
    cfg = CONFIGS["gqa-bias"]
    model = Llama.random_init(cfg, seed=1)
    model.allocate_grads()
    opt = AdamW(model, AdamWConfig(lr=3e-3, weight_decay=0.1))
    x, y = make_batch(5)
    losses = []
    for _ in range(8):
        losses.append(model.forward(x, y, training=True))
        model.backward()
        opt.update(3e-3)
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("name", ["mha-tied", "gqa-bias", "gqa-untied", "llama3-rope", "qwen3-qk-norm"])
def test_kv_cache_extend_matches_full_forward(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    tokens = make_batch(9, B=1, T=12)[0][0]
    model.forward(tokens[None, :])
    full = model.acts.logits.copy()
    cache = model.new_kv_cache()
    out = model.extend(cache, tokens[:5], 0)            # a prompt in one go
    assert rel_err(out, full[4]) < 1e-5
    for t in range(5, 12):                              # then one token at a time
        out = model.extend(cache, tokens[t:t + 1], t)
        assert rel_err(out, full[t]) < 1e-5, t
    out = model.extend(cache, tokens[8:12], 8)          # re-running positions overwrites the cache rows
    assert rel_err(out, full[11]) < 1e-5
    with pytest.raises(ValueError, match="do not fit"):
        model.extend(cache, tokens[:5], 14)


def test_layout_decay_and_init():
    cfg = CONFIGS["gqa-bias"]
    names = [n for n, _ in param_shapes(cfg)]
    assert names == ["wte", "ln1w", "qkvw", "qkvb", "attprojw", "ln2w", "fcw", "fcprojw", "lnfw"]
    assert dict(param_shapes(cfg))["qkvw"] == (2, (4 + 2 * 1) * 8, 32)
    model = Llama.random_init(CONFIGS["gqa-untied"], seed=0)
    assert model.params.flat.size == num_parameters(model.config)
    assert not model.params.wte[97:].any() and not model.params.lm_head[97:].any()
    starts, ends = model.decay_ranges()
    decayed = {n for n, (s, e) in model.params.offsets.items() if any(s == a and e == b for a, b in zip(starts, ends))}
    assert decayed == {"wte", "qkvw", "attprojw", "fcw", "fcprojw", "lm_head"}


def test_smollm2_shape_counts():
    cfg = LlamaConfig(vocab_size=49152, max_seq_len=2048, num_layers=30, num_heads=9, num_kv_heads=3,
                      channels=576, ffn_channels=1536)
    assert cfg.padded_vocab_size == 49152 and cfg.head_dim == 64
    assert num_parameters(cfg) == 134_515_008  # SmolLM2-135M's published count
    assert cfg.summary() == ("llama | 30 layers, 9 heads / 3 KV, 576 channels, SwiGLU 1536, max 2048 positions, "
                             "vocab 49152 (padded 49152), tied head")


def test_config_round_trip_and_errors():
    cfg = CONFIGS["llama3-rope"]
    d = cfg.to_dict()
    assert d["arch"] == "llama" and d["rope_scaling"]["rope_type"] == "llama3"
    assert LlamaConfig.from_dict(d) == cfg
    bad = [
        (dict(num_kv_heads=3), "multiple of key/value heads"),
        (dict(head_dim=7), "even"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4}), "yarn"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8}), "low_freq_factor"),
        (dict(channels=30, head_dim=0), "divisible"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(eos_token_id=500), "outside the vocabulary"),
    ]
    for change, message in bad:
        with pytest.raises(LlamaConfigError, match=message):
            dataclasses.replace(cfg, **change)
    with pytest.raises(NotEnoughMemory, match="GiB"):  # refused before the weights are allocated
        dataclasses.replace(cfg, num_layers=10_000, channels=8192, num_heads=64, ffn_channels=32768)
    with pytest.raises(LlamaConfigError, match="unknown Llama config fields: colour"):
        LlamaConfig.from_dict({**d, "colour": 1})
    with pytest.raises(LlamaConfigError, match="arch 'gpt2'"):
        LlamaConfig.from_dict({**d, "arch": "gpt2"})
    with pytest.raises(ValueError, match="exceeds"):
        Llama(cfg).forward(np.zeros((1, 17), np.int32))


def test_activation_size_is_known_before_allocating():
    from tui_llm.engine.models.llama import Activations, training_memory_bytes
    for cfg in CONFIGS.values():
        assert Activations(cfg, 3, 5).nbytes() == Activations.nbytes_for(cfg, 3, 5)
    model = Llama.random_init(CONFIGS["gqa-untied"])
    model.forward(*make_batch(), training=True)
    model.backward()
    opt = AdamW(model)
    used = model.params.flat.nbytes + model.grads.flat.nbytes + opt.m.nbytes + opt.v.nbytes + model.acts.nbytes()
    assert training_memory_bytes(model.config, 2, 8) == used


def test_arch_dispatch_rebuilds_either_model():
    from tui_llm.engine.models.build import build_model, config_from_dict
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig
    cfg = CONFIGS["gqa-untied"]
    model = random_model(cfg)
    again = build_model(config_from_dict(cfg.to_dict()), model.params.flat.copy())
    assert isinstance(again, Llama) and again.config == cfg
    x, y = make_batch()
    assert again.forward(x, y) == model.forward(x, y)
    gpt_cfg = GPTConfig(max_seq_len=16, vocab_size=97, num_layers=1, num_heads=2, channels=16)
    assert isinstance(build_model(config_from_dict(gpt_cfg.to_dict())), GPT)
    with pytest.raises(ValueError, match="unknown model architecture 'mamba'"):
        config_from_dict({"arch": "mamba"})


@pytest.mark.parametrize("name", ["mha-tied", "gqa-untied", "gqa-bias", "qwen3-qk-norm"])
def test_backward_replaces_gradients_so_micro_batches_can_be_summed(name):
    """backward() without accumulate (micro-batch 0 of an accumulated step) must overwrite every
    gradient, never add to old ones: two half batches in two buffers average to the whole batch's."""
    from tui_llm.engine.models.llama_config import LlamaParams

    cfg = CONFIGS[name]
    model = random_model(cfg)
    x, y = make_batch(B=4)
    model.forward(x, y, training=True)
    model.backward()
    whole = model.grads.flat.copy()
    total, scratch = LlamaParams(cfg), model.grads
    for _ in range(2):  # twice: stale values in either buffer would show
        model.grads = total
        model.forward(x[:2], y[:2], training=True)
        model.backward()
        model.grads = scratch
        model.forward(x[2:], y[2:], training=True)
        model.backward()
        mean = (total.flat + scratch.flat) / 2
        np.testing.assert_allclose(mean, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["mha-tied", "gqa-untied", "gqa-bias", "qwen3-qk-norm"])
@pytest.mark.parametrize("in_blas", [True, False])
def test_backward_accumulate_adds_a_second_batch_to_the_gradients(name, in_blas, monkeypatch):
    """backward(accumulate=True) adds to every gradient what backward() would have written
    (through the scratch, the output head in vocabulary blocks: more than one here)."""
    if not in_blas:  # the scratch-buffer path, as with a BLAS whose sgemm cannot be called
        monkeypatch.setattr(blas, "matmul_add", None)
    assert_accumulate_adds(random_model(CONFIGS[name]), [make_batch(seed) for seed in (1, 2)])
