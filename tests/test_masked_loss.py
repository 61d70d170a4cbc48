"""The masked loss of packed chat rows: the weighted cross-entropy kernel, and a whole GPT-2 and Llama
forward/backward with loss weights and per-document attention against float64 references that write the
mask and the documents out explicitly (rows whose documents end mid-row), plus finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference_gpt2 as ref
from tests.test_model import reference_params
from tui_llm.engine.data.packed import DOC_START, LOSS, PAD, row_batch
from tui_llm.engine.kernels import common as K
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import PARAM_NAMES, GPTConfig
from tui_llm.engine.models.llama import Llama, LlamaConfig

CFG = GPTConfig(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=32)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def packed_rows(T=12, seed=0):
    """Two packed rows: documents that end mid-row, a prompt part that does not count, padding."""
    rng = np.random.default_rng(seed)
    flags = np.zeros((2, T), np.uint8)
    # row 0: a document of 5 (last 2 count), one of 4 (last 3 count), 3 of padding
    flags[0, 0] = DOC_START
    flags[0, 3:5] = LOSS
    flags[0, 5] = DOC_START
    flags[0, 7:9] = LOSS
    flags[0, 9] = DOC_START | PAD
    flags[0, 10:] = PAD
    # row 1: a document of 7 (last 4 count), one of 5 running to the row's end (last 2 count)
    flags[1, 0] = DOC_START
    flags[1, 3:7] = LOSS
    flags[1, 7] = DOC_START
    flags[1, 10:] = LOSS
    tokens = rng.integers(1, 97, (2, T))
    tokens[flags & PAD != 0] = 0
    x, y, weight, _, pos = row_batch(tokens.reshape(-1), flags.reshape(-1), [0, 1], T)
    return x, y, weight, (np.arange(T) - pos).astype(np.int32)


def test_weighted_crossentropy_kernel():
    rng = np.random.default_rng(0)
    N, V, Vp = 7, 50, 64
    logits = rng.standard_normal((N, Vp)).astype(np.float32) * 4
    logits[:, V:] = 99.0
    targets = rng.integers(0, V, N).astype(np.int32)
    w = np.array([0, 0.5, 0, 2.0, 1.0, 0, 0.25], np.float32)
    real = logits[:, :V].astype(np.float64)
    logz = np.log(np.exp(real - real.max(1, keepdims=True)).sum(1)) + real.max(1)
    expected = logz - real[np.arange(N), targets]
    losses = np.empty(N, np.float32)
    K.softmax_crossentropy_weighted(logits, losses, targets, V, w, True)
    counted = w != 0
    assert rel_err(losses[counted], expected[counted]) < 1e-5
    assert not losses[~counted].any()  # an uncounted row costs nothing
    grad = np.exp(real - logz[:, None])
    grad[np.arange(N), targets] -= 1
    assert rel_err(logits[:, :V], grad * w[:, None]) < 1e-5
    assert not logits[:, V:].any() and not logits[~counted].any()


def test_gpt2_masked_loss_and_gradient_match_the_float64_reference():
    model = GPT.random_init(CFG, seed=3)
    P = reference_params(model)
    x, y, weight, starts = packed_rows()
    w = weight / weight.sum()  # the mean over the counted tokens
    _, loss_ref, G = ref.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size, weights=w, doc_starts=starts)
    loss = model.forward(x, y, training=True, doc_starts=starts, loss_weights=w)
    assert abs(loss - loss_ref) < 1e-5 * loss_ref
    model.backward()
    for name in PARAM_NAMES:
        assert rel_err(model.grads.views[name], G[name]) < 2e-4, name
    # the reference's gradient is the derivative of its masked loss (finite differences)
    rng = np.random.default_rng(1)
    h = 1e-5
    for name in ("wte", "wpe", "qkvw", "fcprojw", "lnfb"):
        flat = P[name].reshape(-1)
        for idx in rng.choice(flat.size, 2, replace=False):
            if name == "wte":
                idx = int(x[1, 8]) * CFG.channels + idx % CFG.channels
            if name == "wpe":
                idx = 2 * CFG.channels + idx % CFG.channels  # a position every document has
            old = flat[idx]
            flat[idx] = old + h
            lp = ref.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size, weights=w, doc_starts=starts)[1]
            flat[idx] = old - h
            lm = ref.forward_backward(P, x, y, CFG.num_heads, CFG.vocab_size, weights=w, doc_starts=starts)[1]
            flat[idx] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - G[name].reshape(-1)[idx]) < 1e-6 + 1e-4 * abs(fd), name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_masked_loss_is_each_documents_counted_tokens_run_alone(arch):
    """The masked loss of a packed batch equals the float64 sum of per-token losses of each document
    run alone, over the counted tokens only, divided by their number; uncounted tokens change nothing."""
    if arch == "gpt2":
        model = GPT.random_init(CFG, seed=3)
    else:
        model = Llama.random_init(LlamaConfig(vocab_size=97, max_seq_len=16, num_layers=2, num_heads=4, num_kv_heads=2,
                                              channels=32, ffn_channels=48, rope_theta=100.0), 3)
    x, y, weight, starts = packed_rows()
    count = weight.sum()
    loss = model.forward(x, y, training=False, doc_starts=starts, loss_weights=weight / count)
    total = 0.0
    for b in range(2):
        bounds = list(np.flatnonzero(np.diff(starts[b]))+ 1) + [x.shape[1]]
        for s0, s1 in zip([0] + bounds[:-1], bounds):
            model.forward(x[b:b + 1, s0:s1], y[b:b + 1, s0:s1], loss_weights=np.ones((1, s1 - s0), np.float32))
            total += float(np.dot(model.acts.losses.astype(np.float64), weight[b, s0:s1]))
    assert abs(loss - total / count) < 1e-5 * loss
    # change every uncounted target: nothing changes
    y2 = np.where(weight == 0, (y + 1) % 97, y)
    assert model.forward(x, y2, doc_starts=starts, loss_weights=weight / count) == pytest.approx(loss, rel=1e-6)
