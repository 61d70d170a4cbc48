"""The whole GPT-2 forward/backward against the float64 reference and finite differences."""

import numpy as np
import pytest

from tests import reference_gpt2 as ref
from tests.accumulation_check import assert_accumulate_adds
from tui_llm.engine.kernels import blas
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import PARAM_NAMES, GPTConfig, num_parameters, param_shapes, preset_config
from tui_llm.engine.training.optim import AdamW, AdamWConfig, learning_rate

# tiny config from the engine issue: vocab 97 padded to 128
CFG = GPTConfig(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=32)


def make_batch(seed=0, B=2, T=8, V=97):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, V, (B, T)).astype(np.int32), rng.integers(0, V, (B, T)).astype(np.int32))


def reference_params(model):
    """float64 copies; biases and LayerNorms are randomised too so their gradients are exercised."""
    rng = np.random.default_rng(7)
    P = {}
    for name, view in model.params.items():
        if name in ("ln1b", "ln2b", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
            view[:] = rng.standard_normal(view.shape) * 0.1
        if name in ("ln1w", "ln2w", "lnfw"):
            view[:] = 1 + rng.standard_normal(view.shape) * 0.1
        P[name] = view.astype(np.float64)
    return P


def test_param_layout_matches_llmc():
    d12 = preset_config("d12")
    assert d12.padded_vocab_size == 50304
    assert num_parameters(d12) == 124_475_904
    assert [n for n, _ in param_shapes(d12)] == list(PARAM_NAMES)
    assert CFG.padded_vocab_size == 128


def test_reference_gradients_match_finite_differences():
    model = GPT.random_init(CFG, seed=3)
    P = reference_params(model)
    x, y = make_batch()
    _, _, G = ref.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size)
    rng = np.random.default_rng(0)
    h = 1e-5
    for name in PARAM_NAMES:
        flat = P[name].reshape(-1)
        for idx in rng.choice(flat.size, 3, replace=False):
            if name == "wte":
                idx = int(x[0, 0]) * CFG.channels + idx % CFG.channels  # a row that is used
            old = flat[idx]
            flat[idx] = old + h
            lp = ref.loss_only(P, x, y, CFG.num_heads, CFG.vocab_size)
            flat[idx] = old - h
            lm = ref.loss_only(P, x, y, CFG.num_heads, CFG.vocab_size)
            flat[idx] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - G[name].reshape(-1)[idx]) < 1e-6 + 1e-4 * abs(fd), name


def test_engine_matches_float64_reference():
    model = GPT.random_init(CFG, seed=3)
    P = reference_params(model)
    x, y = make_batch()
    logits_ref, loss_ref, G = ref.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size)

    model.forward(x)  # logits are kept by a forward without training=True
    logits = model.acts.logits.reshape(2, 8, -1)
    assert np.max(np.abs(logits - logits_ref)) / np.max(np.abs(logits_ref)) < 1e-4
    assert not logits[..., CFG.vocab_size:].any()  # padded wte rows are zero

    loss = model.forward(x, y, training=True)
    assert abs(loss - loss_ref) / loss_ref < 1e-4
    model.backward()
    for name in PARAM_NAMES:
        ours, expected = model.grads.views[name], G[name]
        err = np.max(np.abs(ours - expected)) / np.max(np.abs(expected))
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
    assert not model.grads.wte[CFG.vocab_size:].any()  # padded rows get no gradient


def test_engine_gradient_matches_directional_finite_difference():
    """Float32 engine: d/de loss(p + e*d) at 0 equals grad . d for a random direction d."""
    model = GPT.random_init(CFG, seed=5)
    x, y = make_batch(1)
    model.forward(x, y, training=True)
    model.backward()
    grad = model.grads.flat.astype(np.float64).copy()
    rng = np.random.default_rng(2)
    # mostly along the gradient (so the derivative is large against float32 noise), plus noise
    noise = rng.standard_normal(grad.size)
    direction = grad / np.linalg.norm(grad) + 0.5 * noise / np.linalg.norm(noise)
    direction[model.params.offsets["wte"][0] + CFG.vocab_size * CFG.channels:
              model.params.offsets["wte"][1]] = 0  # keep padded rows at zero
    direction /= np.linalg.norm(direction)
    p0 = model.params.flat.copy()
    eps = 1e-2
    model.params.flat[:] = p0 + eps * direction
    lp = model.forward(x, y)
    model.params.flat[:] = p0 - eps * direction
    lm = model.forward(x, y)
    model.params.flat[:] = p0
    fd = (lp - lm) / (2 * eps)
    assert abs(fd) > 0.1
    assert abs(fd - grad @ direction) < 1e-2 * abs(fd)


def test_backward_needs_training_forward_and_grads_do_not_leak_between_steps():
    model = GPT.random_init(CFG, seed=1)
    with pytest.raises(RuntimeError):
        model.backward()
    x, y = make_batch(2)
    model.forward(x, y, training=True)
    model.backward()
    first = model.grads.flat.copy()
    model.forward(x, y, training=True)
    model.backward()
    assert np.array_equal(first, model.grads.flat)  # replaced, not accumulated across steps


def test_sequence_longer_than_model_is_refused():
    model = GPT.random_init(CFG)
    x = np.zeros((1, CFG.max_seq_len + 1), np.int32)
    with pytest.raises(ValueError, match="exceeds"):
        model.forward(x)


def train_losses(seed, steps=10, wd=0.0):
    model = GPT.random_init(CFG, seed=seed)
    opt = AdamW(model, AdamWConfig(lr=1e-2, weight_decay=wd))
    x, y = make_batch(4)
    losses = []
    for _ in range(steps):
        losses.append(model.forward(x, y, training=True))
        model.backward()
        opt.update(1e-2)
    return losses, model


def test_adamw_drives_loss_down_and_is_deterministic():
    losses, model = train_losses(seed=11)
    assert losses[-1] < losses[0] - 1.0
    assert all(b < a for a, b in zip(losses, losses[1:]))
    again, _ = train_losses(seed=11)
    assert losses == again
    assert not model.params.wte[CFG.vocab_size:].any()  # padded rows stay exactly zero


def test_weight_decay_only_touches_matrices():
    model = GPT.random_init(CFG, seed=2)
    opt = AdamW(model, AdamWConfig(lr=0.1, weight_decay=0.5))
    before = {k: v.copy() for k, v in model.params.items()}
    model.grads = None
    model.allocate_grads()  # all-zero gradients: only decay can move a parameter
    opt.update(0.1)
    for name, view in model.params.items():
        moved = not np.array_equal(view, before[name])
        if name in ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"):
            assert moved, name
            np.testing.assert_allclose(view, before[name] * (1 - 0.1 * 0.5), rtol=1e-6)
        else:
            assert not moved, name


def test_gradient_clipping_scales_the_update():
    model = GPT.random_init(CFG, seed=2)
    x, y = make_batch(3)
    model.forward(x, y, training=True)
    model.backward()
    opt = AdamW(model, AdamWConfig(grad_clip=1e-3))
    norm = opt.grad_norm()
    assert norm == pytest.approx(np.linalg.norm(model.grads.flat.astype(np.float64)), rel=1e-6)
    assert opt.update(1e-3) == pytest.approx(norm)
    # first Adam step: m_hat = g*s, v_hat = (g*s)^2 -> the update is lr*sign(g) for any scale s
    assert opt.m[np.argmax(np.abs(model.grads.flat))] == pytest.approx(
        0.1 * np.max(np.abs(model.grads.flat)) * 1e-3 / norm
        * np.sign(model.grads.flat[np.argmax(np.abs(model.grads.flat))]), rel=1e-5)


def test_learning_rate_schedules():
    assert learning_rate(5, 1e-3, 100) == 1e-3
    assert learning_rate(0, 1e-3, 100, "cosine", warmup=10) == pytest.approx(1e-4)
    assert learning_rate(9, 1e-3, 100, "cosine", warmup=10) == pytest.approx(1e-3)
    assert learning_rate(10, 1e-3, 100, "cosine", warmup=10) == pytest.approx(1e-3)
    assert learning_rate(100, 1e-3, 100, "cosine", warmup=10, final_fraction=0.1) == pytest.approx(1e-4)
    mid = learning_rate(55, 1e-3, 100, "cosine", warmup=10, final_fraction=0.0)
    assert mid == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        learning_rate(0, 1e-3, 10, "linear-ish")


@pytest.mark.parametrize("in_blas", [True, False])
def test_backward_accumulate_adds_a_second_batch_to_the_gradients(in_blas, monkeypatch):
    """backward(accumulate=True) adds to every gradient what backward() would have written,
    the output head included (through the scratch in vocabulary blocks: Vp is several times 4C here)."""
    if not in_blas:  # the scratch-buffer path, as with a BLAS whose sgemm cannot be called
        monkeypatch.setattr(blas, "matmul_add", None)
    cfg = GPTConfig(max_seq_len=16, vocab_size=300, num_layers=2, num_heads=2, channels=16)
    model = GPT.random_init(cfg, seed=4)
    for name, view in model.params.items():  # biases and LayerNorm weights away from 0/1
        if name.endswith("b") or name.startswith("ln"):
            view[:] += 0.1 * np.random.default_rng(len(name)).standard_normal(view.shape).astype(np.float32)
    assert_accumulate_adds(model, [make_batch(seed, V=300) for seed in (1, 2)])


def test_adamw_shards_update_exactly_as_the_whole():
    """ZeRO-1's building block: AdamW over two slices of the parameters (cut inside a matrix, so a
    weight-decayed range is split) gives the same weights, m and v as one AdamW over all of them."""
    x, y = make_batch()
    whole = GPT.random_init(CFG, seed=6)
    whole.forward(x, y, training=True)
    whole.backward()
    n = whole.num_parameters
    cut = sum(whole.params.offsets["qkvw"]) // 2  # the middle of the qkv matrices
    config = AdamWConfig(lr=1e-2, weight_decay=0.1, grad_clip=0.5)
    parts = [GPT(CFG, whole.params.flat.copy()) for _ in range(2)]
    full_opt = AdamW(whole, config)
    part_opts = [AdamW(parts[0], config, shard=(0, cut)), AdamW(parts[1], config, shard=(cut, n))]
    for _ in range(3):
        norm = full_opt.update(1e-2)
        for _model, opt in zip(parts, part_opts):
            opt.update(1e-2, norm, grads=whole.grads.flat[opt.start:opt.end])
    assert np.array_equal(parts[0].params.flat[:cut], whole.params.flat[:cut])
    assert np.array_equal(parts[1].params.flat[cut:], whole.params.flat[cut:])
    assert np.array_equal(np.concatenate([part_opts[0].m, part_opts[1].m]), full_opt.m)
    assert np.array_equal(np.concatenate([part_opts[0].v, part_opts[1].v]), full_opt.v)
    assert len(part_opts[0].decay_starts) + len(part_opts[1].decay_starts) == len(full_opt.decay_starts) + 1
    restored = AdamW(GPT(CFG, whole.params.flat.copy()), config, shard=(cut, n))
    restored.load_state(full_opt.m, full_opt.v)  # a checkpoint's whole state: the shard keeps its slice
    assert np.array_equal(restored.m, full_opt.m[cut:]) and np.array_equal(restored.v, full_opt.v[cut:])
