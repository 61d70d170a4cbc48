"""LoRA adapters, a frozen (fp32 or bf16) base and activation recompute, at the model level:
against float64 references (tests/reference_lora.py, and the model references through the merged
weight W + s B A), finite differences, and bit-for-bit against the plain path."""

import math

import numpy as np
import pytest

from tests import reference_gpt2 as ref_gpt2
from tests import reference_llama as ref_llama
from tests import reference_lora as ref
from tests.test_llama import CONFIGS, make_batch, random_model, rel_err
from tui_llm.engine.kernels.bf16 import fingerprint, narrow_to_bf16
from tui_llm.engine.kernels.lora import dropout_apply, dropout_key
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.lora import (
    ALL_LINEAR,
    LoraConfig,
    LoraError,
    num_parameters,
    peft_tensor_map,
    resolve_targets,
    sites,
)

GPT_CFG = GPTConfig(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=32)
LLAMA_CASES = ["mha-tied", "gqa-untied", "gqa-bias", "qwen3-qk-norm"]


def lora_config(model, rank=4, alpha=8.0, targets=ALL_LINEAR, **kw):
    return LoraConfig(rank=rank, alpha=alpha, targets=resolve_targets(targets, model.config), **kw)


def randomise_adapters(model, seed=5, std=0.3):
    """Nonzero A and B everywhere (PEFT's init has B = 0, which hides every dA)."""
    rng = np.random.default_rng(seed)
    model.lora.params.flat[:] = std * rng.standard_normal(model.lora.params.flat.size)


def merged_weights(model):
    """{matrix name: float64 (L, out, in)}: the base matrices with every adapter merged into its rows."""
    s, out = model.lora.lora.scale, {}
    for name in model.LAYER_MATRICES:
        out[name] = model.params.views[name].astype(np.float64)
    for site in sites(model.config):
        if site.module not in model.lora.lora.targets:
            continue
        A = model.lora.params.views[site.module + ".lora_A"].astype(np.float64)
        B = model.lora.params.views[site.module + ".lora_B"].astype(np.float64)
        for l in range(model.config.num_layers):
            rows = slice(*site.rows)
            out[site.matrix][l, rows] = ref.merged(out[site.matrix][l, rows], A[l], B[l], s)
    return out


def expected_adapter_grads(model, G_merged):
    """{tensor name: float64}: dA = s Bᵀ G, dB = s G Aᵀ from each merged matrix's gradient G."""
    s, out = model.lora.lora.scale, {}
    for site in sites(model.config):
        if site.module not in model.lora.lora.targets:
            continue
        A = model.lora.params.views[site.module + ".lora_A"].astype(np.float64)
        B = model.lora.params.views[site.module + ".lora_B"].astype(np.float64)
        G = G_merged[site.matrix][:, site.rows[0]:site.rows[1]]            # (L, out, in)
        out[site.module + ".lora_A"] = s * np.einsum("lor,loi->lri", B, G)
        out[site.module + ".lora_B"] = s * np.einsum("loi,lri->lor", G, A)
    return out


# ---------------------------------------------------------------------------------------
# the reference LoRA layer itself

@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_reference_lora_layer_matches_finite_differences(dropout):
    rng = np.random.default_rng(0)
    N, n_in, n_out, r, s = 5, 7, 6, 3, 1.7
    x, W = rng.standard_normal((N, n_in)), rng.standard_normal((n_out, n_in))
    A, B = rng.standard_normal((r, n_in)), rng.standard_normal((n_out, r))
    mask = None if dropout == 0 else (rng.random((N, n_in)) >= dropout) / (1 - dropout)
    dy = rng.standard_normal((N, n_out))

    def loss():
        return float((ref.forward(x, W, A, B, s, mask) * dy).sum())

    dx, dA, dB = ref.backward(dy, x, W, A, B, s, mask)
    h = 1e-6
    for arr, grad in ((x, dx), (A, dA), (B, dB)):
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            up = loss()
            arr[idx] = old - h
            down = loss()
            arr[idx] = old
            assert abs((up - down) / (2 * h) - grad[idx]) < 1e-6 * (1 + abs(grad[idx]))
    # the merged weight gives the same output without dropout
    if mask is None:
        assert np.allclose(ref.forward(x, W, A, B, s), x @ ref.merged(W, A, B, s).T)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_one_site_with_dropout_matches_the_reference(use_rslora):
    """The engine's adapters at one product (q_proj of a fused q/k/v), dropout on, against the
    float64 layer with the engine's own mask (rebuilt from the same key)."""
    cfg = CONFIGS["gqa-untied"]
    model = random_model(cfg)
    lora = model.attach_lora(lora_config(model, targets="q_proj,v_proj", dropout=0.25, use_rslora=use_rslora))
    randomise_adapters(model)
    assert lora.scale == pytest.approx(8.0 / (2.0 if use_rslora else 4.0))
    rng = np.random.default_rng(1)
    N, C, W = 6, cfg.channels, cfg.qkv_dim
    x = rng.standard_normal((N, C)).astype(np.float32)
    base = rng.standard_normal((W, C)).astype(np.float32)
    out = x @ base.T
    kept = {"qkvw": np.empty((N, 2 * 4), np.float32)}   # u of q_proj and v_proj side by side
    lora.forward(out, x, "qkvw", 1, kept, key=1234)
    dout = rng.standard_normal((N, W)).astype(np.float32)
    dx = dout @ base
    lora.backward(dx, dout, x, "qkvw", 1, kept, 1234, accumulate=False)

    want_y, want_dx = x.astype(np.float64) @ base.T, dout.astype(np.float64) @ base
    for index, site in enumerate(sites(cfg)):
        if site.module not in lora.lora.targets:
            continue
        mask = np.empty_like(x)
        dropout_apply(mask, np.ones_like(x), 0.25, np.uint64(dropout_key(1234, 1, index)))
        assert 0.1 < (mask == 0).mean() < 0.5
        A = lora.params.views[site.module + ".lora_A"][1].astype(np.float64)
        B = lora.params.views[site.module + ".lora_B"][1].astype(np.float64)
        rows = slice(*site.rows)
        want_y[:, rows] += lora.lora.scale * (x * mask) @ A.T @ B.T
        _, dA, dB = ref.backward(dout[:, rows].astype(np.float64), x.astype(np.float64), base[rows], A, B,
                                 lora.lora.scale, mask.astype(np.float64))
        want_dx += lora.lora.scale * ((dout[:, rows] @ B @ A) * mask)
        assert rel_err(lora.grads.views[site.module + ".lora_A"][1], dA) < 1e-5
        assert rel_err(lora.grads.views[site.module + ".lora_B"][1], dB) < 1e-5
    assert rel_err(out, want_y) < 1e-5
    assert rel_err(dx, want_dx) < 1e-5


# ---------------------------------------------------------------------------------------
# whole models against the float64 references, through the merged weights

@pytest.mark.parametrize("name", LLAMA_CASES)
def test_llama_with_adapters_matches_reference(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    model.attach_lora(lora_config(model))
    randomise_adapters(model)
    x, y = make_batch()
    P = ref_llama.from_engine(model.params, cfg)
    merged = merged_weights(model)
    QD, KVD, F = cfg.q_dim, cfg.kv_dim, cfg.ffn_channels
    for l in range(cfg.num_layers):
        n = ref_llama.layer_names(l)
        qkv = merged["qkvw"][l]
        P[n["q"]], P[n["k"]], P[n["v"]] = qkv[:QD], qkv[QD:QD + KVD], qkv[QD + KVD:]
        P[n["o"]], P[n["down"]] = merged["attprojw"][l], merged["fcprojw"][l]
        P[n["gate"]], P[n["up"]] = merged["fcw"][l, :F], merged["fcw"][l, F:]
    logits_ref, loss_ref, G = ref_llama.forward_backward(P, ref_llama.ref_config(cfg), x, y)

    model.forward(x)
    assert rel_err(model.acts.logits.reshape(2, 8, -1)[..., :cfg.vocab_size], logits_ref) < 1e-4
    loss = model.forward(x, y, training=True)
    assert abs(loss - loss_ref) / loss_ref < 1e-4
    model.backward()
    assert model.grads is None  # the base gets no gradient buffer
    G_merged = {"qkvw": np.stack([np.concatenate([G[ref_llama.layer_names(l)[k]] for k in "qkv"]) for l in range(2)]),
                "attprojw": np.stack([G[ref_llama.layer_names(l)["o"]] for l in range(2)]),
                "fcw": np.stack([np.concatenate([G[ref_llama.layer_names(l)[k]] for k in ("gate", "up")])
                                 for l in range(2)]),
                "fcprojw": np.stack([G[ref_llama.layer_names(l)["down"]] for l in range(2)])}
    for key, expected in expected_adapter_grads(model, G_merged).items():
        assert rel_err(model.lora.grads.views[key], expected) < 1e-4, key


@pytest.mark.parametrize("targets", [ALL_LINEAR, "c_proj", "c_attn,mlp.c_fc"])
def test_gpt2_with_adapters_matches_reference(targets):
    model = GPT.random_init(GPT_CFG, seed=3)
    rng = np.random.default_rng(7)
    for name in ("ln1b", "ln2b", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        model.params.views[name][:] = 0.1 * rng.standard_normal(model.params.views[name].shape)
    model.attach_lora(lora_config(model, rank=3, alpha=5.0, targets=targets))
    randomise_adapters(model)
    P = {name: view.astype(np.float64) for name, view in model.params.items()}
    P.update(merged_weights(model))
    x, y = make_batch()
    logits_ref, loss_ref, G = ref_gpt2.forward_backward(P, x, y, GPT_CFG.num_heads, GPT_CFG.vocab_size)
    model.forward(x)
    assert rel_err(model.acts.logits.reshape(2, 8, -1), logits_ref) < 1e-4
    loss = model.forward(x, y, training=True)
    assert abs(loss - loss_ref) / loss_ref < 1e-4
    model.backward()
    expected = expected_adapter_grads(model, G)
    assert set(expected) == {f"{m}.lora_{x}" for m, _, _ in model.lora.params.modules() for x in "AB"}
    for key, want in expected.items():
        assert rel_err(model.lora.grads.views[key], want) < 1e-4, key


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_step_zero_is_the_base_model_and_sampling_includes_adapters(arch):
    model = GPT.random_init(GPT_CFG, seed=3) if arch == "gpt2" else random_model(CONFIGS["qwen3-qk-norm"])
    x, y = make_batch()
    base_loss = model.forward(x, y)
    base_logits = model.acts.logits.copy()
    model.attach_lora(lora_config(model, dropout=0.1))
    assert model.forward(x, y) == base_loss                     # PEFT's init: B = 0
    assert np.array_equal(model.acts.logits, base_logits)
    assert model.forward(x, y, training=True) == base_loss      # dropout only scales x Aᵀ, times B = 0
    randomise_adapters(model)
    model.forward(x)
    cache = model.new_kv_cache()
    last = model.extend(cache, x[0, :5], 0)
    last = model.extend(cache, x[0, 5:], 5).copy()
    assert rel_err(last, model.acts.logits[7]) < 1e-5            # extend() runs the adapters too
    assert rel_err(last, base_logits[7]) > 1e-3


def test_init_is_peft_kaiming_uniform_and_layout_maps_to_peft_keys():
    model = random_model(CONFIGS["gqa-untied"])
    lora = model.attach_lora(lora_config(model, rank=8), seed=1)
    cfg = model.config
    assert lora.num_parameters == num_parameters(cfg, lora.lora)
    A = lora.params.views["self_attn.q_proj.lora_A"]
    assert A.shape == (cfg.num_layers, 8, cfg.channels)
    assert np.shares_memory(A, lora.params.views["qkvw.lora_A"])       # q's rows of the stacked q/k/v A
    assert [name for name, _ in lora.params.items()][:5] == ["qkvw.lora_A", "self_attn.q_proj.lora_B",
                                                             "self_attn.k_proj.lora_B", "self_attn.v_proj.lora_B",
                                                             "attprojw.lora_A"]
    assert np.abs(A).max() <= 1 / math.sqrt(cfg.channels) and np.abs(A).max() > 0.9 / math.sqrt(cfg.channels)
    assert not any(lora.params.views[k].any() for k in lora.params.views if k.endswith("lora_B"))
    keys = dict(peft_tensor_map(lora.params))
    assert keys["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (cfg.kv_dim, 8)
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (8, cfg.ffn_channels)
    gpt = GPT(GPT_CFG)
    gl = gpt.attach_lora(lora_config(gpt, rank=2))
    keys = dict(peft_tensor_map(gl.params))
    assert keys["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (96, 2)
    assert keys["base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"].shape == (2, 128)


def test_targets_follow_peft_names():
    llama, gpt = CONFIGS["mha-tied"], GPT_CFG
    assert resolve_targets("v_proj, q_proj", llama) == ("self_attn.q_proj", "self_attn.v_proj")
    assert resolve_targets("c_proj", gpt) == ("attn.c_proj", "mlp.c_proj")
    assert resolve_targets("attn.c_proj", gpt) == ("attn.c_proj",)
    assert len(resolve_targets(ALL_LINEAR, llama)) == 7
    with pytest.raises(LoraError, match=r"no 'c_attn'.*q_proj"):
        resolve_targets("q_proj,c_attn", llama)
    with pytest.raises(LoraError, match="lora_rank"):
        LoraConfig(rank=0, alpha=1.0, targets=("attn.c_attn",))
    with pytest.raises(LoraError, match="lora_alpha"):
        LoraConfig(rank=2, alpha=float("nan"), targets=("attn.c_attn",))


# ---------------------------------------------------------------------------------------
# recompute: the same numbers, bit for bit

def _two_micro_batches(model, x, y):
    losses = [model.forward(x, y, training=True)]
    model.backward()
    losses.append(model.forward(y, x, training=True))
    model.backward(accumulate=True)
    return losses, model.allocate_grads().flat.copy()


@pytest.mark.parametrize("case", ["gpt2", "gpt2-lora", "qwen3-qk-norm", "gqa-bias-lora-dropout"])
def test_recompute_is_bit_identical(case):
    x, y = make_batch(B=2, T=8)
    results = []
    for recompute in (False, True):
        if case.startswith("gpt2"):
            model = GPT.random_init(GPT_CFG, seed=3)
        else:
            model = random_model(CONFIGS[case.removesuffix("-lora-dropout")])
        model.recompute = recompute
        if "lora" in case:
            model.attach_lora(lora_config(model, dropout=0.2 if "dropout" in case else 0.0))
            randomise_adapters(model)
            model.lora.step_key = 77
        results.append(_two_micro_batches(model, x, y))
        if recompute:
            assert model.acts.ln1.shape[0] == 1 and model.acts.residual3.shape[0] == model.config.num_layers
    (losses, grads), (losses_r, grads_r) = results
    assert losses == losses_r
    assert np.array_equal(grads, grads_r)


# ---------------------------------------------------------------------------------------
# a bf16 base

def test_bf16_base_matches_fp32_base_within_bf16_rounding():
    """The same (bf16-representable) weights stored as fp32 or as bf16 bits: the same numbers
    up to float32 rounding of the order the products add in; and a base rounded to bf16 moves
    the loss by what bf16's 2^-9 relative rounding explains."""
    cfg = CONFIGS["gqa-untied"]
    fp32 = random_model(cfg)
    bits = np.empty(fp32.params.flat.size, np.uint16)
    narrow_to_bf16(bits, fp32.params.flat)
    exact = Llama(cfg, (bits.astype(np.uint32) << 16).view(np.float32))   # fp32 holding bf16 values
    bf16 = Llama(cfg, bits)
    assert bf16.base_dtype == "bf16" and fingerprint(bf16.params.flat) == fingerprint(exact.params.flat)
    x, y = make_batch()
    for model in (exact, bf16, fp32):
        model.attach_lora(lora_config(model))
        randomise_adapters(model)
    losses = [m.forward(x, y, training=True) for m in (exact, bf16, fp32)]
    for m in (exact, bf16):
        m.backward()
    assert abs(losses[0] - losses[1]) < 1e-6 * losses[0]
    assert rel_err(bf16.lora.grads.flat, exact.lora.grads.flat.astype(np.float64)) < 1e-5
    assert abs(losses[2] - losses[1]) < 2 ** -8 * losses[2]
    with pytest.raises(ValueError, match="frozen"):
        Llama(cfg, bits).allocate_grads()
