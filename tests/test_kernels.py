"""Each numba kernel against an independent float64 numpy computation on small random shapes.

Tolerances: relative error = max|ours - ref| / max(|ref|) over the tensor; float32 kernels
with float32 accumulation over at most a few hundred terms stay well under 1e-5, so the
thresholds below (1e-5 unless stated) leave room for rounding but not for a wrong formula.
"""


import numpy as np
import pytest

from tests import reference_gpt2 as ref
from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import gpt2 as GK
from tui_llm.engine.kernels import optimizer

RTOL = 1e-5


def rel_err(ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(ours - expected)) / max(np.max(np.abs(expected)), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def test_fast_tanh_is_accurate_to_float32_rounding():
    x = np.linspace(-12, 12, 200001).astype(np.float32)
    out = np.empty_like(x)
    GK.tanh_array(out, x)
    assert np.max(np.abs(out.astype(np.float64) - np.tanh(x.astype(np.float64)))) < 1e-6
    assert np.all(np.abs(out) <= 1.0)


def test_encoder_forward_backward(rng):
    B, T, C, Vp = 2, 5, 8, 16
    wte, wpe = f32(rng.standard_normal((Vp, C))), f32(rng.standard_normal((7, C)))
    tokens = rng.integers(0, 12, (B, T)).astype(np.int32)
    tokens[0, 0] = tokens[1, 3] = 4  # a repeated token must accumulate
    positions = np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], np.int32)  # row 1 packs two documents
    out = np.empty((B, T, C), np.float32)
    GK.encoder_forward(out, tokens, positions, wte, wpe)
    assert rel_err(out, wte.astype(np.float64)[tokens] + wpe[positions]) < RTOL
    dout = f32(rng.standard_normal((B, T, C)))
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    GK.encoder_backward(dwte, dwpe, dout, tokens, positions)
    exp_wte, exp_wpe = np.zeros((Vp, C)), np.zeros((7, C))
    np.add.at(exp_wte, tokens.reshape(-1), dout.reshape(-1, C).astype(np.float64))
    np.add.at(exp_wpe, positions.reshape(-1), dout.reshape(-1, C).astype(np.float64))
    assert rel_err(dwte, exp_wte) < RTOL
    assert rel_err(dwpe, exp_wpe) < RTOL
    assert not dwpe[T:].any()


def test_layernorm_forward_backward(rng):
    N, C = 13, 48
    x = f32(rng.standard_normal((N, C)) * 3 + 1)
    w, b = f32(rng.standard_normal(C)), f32(rng.standard_normal(C))
    out, mean, rstd = np.empty_like(x), np.empty(N, np.float32), np.empty(N, np.float32)
    GK.layernorm_forward(out, mean, rstd, x, w, b)
    exp, cache = ref.layernorm(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    assert rel_err(out, exp) < RTOL
    assert rel_err(mean, x.astype(np.float64).mean(1)) < RTOL
    assert rel_err(rstd, cache[1][:, 0]) < RTOL

    dout = f32(rng.standard_normal((N, C)))
    dx0 = f32(rng.standard_normal((N, C)))  # dx accumulates into what is there
    dx, dw, db = dx0.copy(), np.full(C, 7, np.float32), np.full(C, 7, np.float32)
    GK.layernorm_backward(dx, dw, db, dout, x, mean, rstd, w, False)
    edx, edw, edb = ref.layernorm_back(dout.astype(np.float64), cache, w.astype(np.float64))
    assert rel_err(dx - dx0, edx) < 1e-4
    assert rel_err(dw, edw) < RTOL
    assert rel_err(db, edb) < RTOL
    # accumulate=True adds the parameter gradients to what is there (dx adds as always)
    GK.layernorm_backward(dx, dw, db, dout, x, mean, rstd, w, True)
    assert rel_err(dw, 2 * edw) < RTOL and rel_err(db, 2 * edb) < RTOL
    assert rel_err(dx - dx0, 2 * edx) < 1e-4


def test_bias_residual_and_column_sum(rng):
    N, C = 9, 20
    out = f32(rng.standard_normal((N, C)))
    bias = f32(rng.standard_normal(C))
    expected = out.astype(np.float64) + bias
    K.add_bias(out, bias)
    assert rel_err(out, expected) < RTOL

    res, proj = f32(rng.standard_normal((N, C))), f32(rng.standard_normal((N, C)))
    out2 = np.empty_like(res)
    GK.residual_bias_forward(out2, res, proj, bias)
    assert rel_err(out2, res.astype(np.float64) + proj + bias) < RTOL

    colsum = np.full(C, 3, np.float32)
    K.column_sum(colsum, res, False)
    assert rel_err(colsum, res.astype(np.float64).sum(0)) < RTOL
    K.column_sum(colsum, proj, True)
    assert rel_err(colsum, res.astype(np.float64).sum(0) + proj.sum(0)) < RTOL


def test_gelu_forward_backward(rng):
    N, C = 7, 64
    x0 = f32(rng.standard_normal((N, C)) * 4)
    bias = f32(rng.standard_normal(C))
    x, out = x0.copy(), np.empty_like(x0)
    GK.bias_gelu_forward(out, x, bias)
    pre = x0.astype(np.float64) + bias
    assert rel_err(x, pre) < RTOL
    assert rel_err(out, ref.gelu(pre)) < RTOL
    dout = f32(rng.standard_normal((N, C)))
    d = dout.copy()
    GK.gelu_backward_inplace(d, x)
    assert rel_err(d, ref.gelu_back(dout.astype(np.float64), x.astype(np.float64))) < RTOL
    # and the analytic derivative matches finite differences of the float64 formula
    h = 1e-6
    fd = (ref.gelu(pre + h) - ref.gelu(pre - h)) / (2 * h)
    assert rel_err(ref.gelu_back(np.ones_like(pre), pre), fd) < 1e-6


def test_softmax_crossentropy_loss_and_gradient(rng):
    N, V, Vp = 6, 50, 64
    logits = f32(rng.standard_normal((N, Vp)) * 5)
    logits[:, V:] = 123.0  # padded columns must not take part
    targets = rng.integers(0, V, N).astype(np.int32)
    real = logits[:, :V].astype(np.float64)
    logz = np.log(np.exp(real - real.max(1, keepdims=True)).sum(1)) + real.max(1)
    expected_losses = logz - real[np.arange(N), targets]

    losses = np.empty(N, np.float32)
    kept = logits.copy()
    K.softmax_crossentropy(kept, losses, targets, V, np.float32(1.0 / N), False)
    assert rel_err(losses, expected_losses) < RTOL
    assert np.array_equal(kept, logits)  # without want_grad the logits are untouched

    K.softmax_crossentropy(logits, losses, targets, V, np.float32(1.0 / N), True)
    grad = np.exp(real - logz[:, None])
    grad[np.arange(N), targets] -= 1
    assert rel_err(logits[:, :V], grad / N) < RTOL
    assert not logits[:, V:].any()

    probs = np.empty_like(logits)
    src = f32(rng.standard_normal((N, Vp)))
    K.softmax_rows(probs, src, V, np.float32(1 / 0.7))
    e = np.exp(src[:, :V].astype(np.float64) / 0.7)
    assert rel_err(probs[:, :V], e / e.sum(1, keepdims=True)) < RTOL
    assert not probs[:, V:].any()


def test_sum_of_squares_and_adamw(rng):
    n = 200_003  # several chunks and a ragged tail
    g = f32(rng.standard_normal(n))
    assert abs(optimizer.sum_of_squares(g) - float((g.astype(np.float64) ** 2).sum())) < 1e-4 * n

    p0 = f32(rng.standard_normal(n))
    m0, v0 = f32(rng.standard_normal(n) * 0.1), f32(rng.random(n) * 0.1)
    starts, ends = np.array([10, 150_000], np.int64), np.array([70_000, 180_000], np.int64)
    p, m, v = p0.copy(), m0.copy(), v0.copy()
    lr, b1, b2, eps, wd, t, scale = 1e-3, 0.9, 0.999, 1e-8, 0.1, 3, 0.5
    optimizer.adamw_update(p, g, m, v, starts, ends, lr, b1, b2, eps, wd, t, scale)

    gg = g.astype(np.float64) * scale
    em = b1 * m0 + (1 - b1) * gg
    ev = b2 * v0 + (1 - b2) * gg ** 2
    decay = np.zeros(n)
    for s, e in zip(starts, ends):
        decay[s:e] = wd
    ep = p0 - lr * ((em / (1 - b1 ** t)) / (np.sqrt(ev / (1 - b2 ** t)) + eps) + decay * p0)
    assert rel_err(m, em) < RTOL
    assert rel_err(v, ev) < RTOL
    assert np.max(np.abs(p - ep)) < 1e-6


def test_fast_exp_is_accurate():
    x = np.concatenate([np.linspace(-90, 0, 100_003), [-1e30, -88.0, -87.0, 0.0]]).astype(np.float32)
    out = np.empty_like(x)
    K.exp_array(out, x, np.float32(0.0))
    expected = np.exp(x.astype(np.float64))
    normal = expected > 1e-37  # float32 normal range; below it we flush towards 0
    assert np.max(np.abs(out[normal] - expected[normal]) / expected[normal]) < 1e-6
    assert np.all(out[~normal] < 1e-37) and np.all(out >= 0)
    out2 = np.empty(3, np.float32)
    K.exp_array(out2, np.array([1.0, 2.0, 3.0], np.float32), np.float32(3.0))  # shifted
    np.testing.assert_allclose(out2, np.exp([-2.0, -1.0, 0.0]), rtol=1e-6)


def test_row_max_is_the_maximum_of_any_length():
    """row_max (the attention softmax's, in MAX_LANES running maxima) over every length around the
    lane count, the maximum anywhere: the lanes, the tail, the first element."""
    rng = np.random.default_rng(3)
    lanes = np.empty(K.MAX_LANES, np.float32)
    for n in range(1, 3 * K.MAX_LANES + 3):
        x = (-np.abs(rng.standard_normal(n)) * 50 - 1).astype(np.float32)  # all below 7.5
        for where in {0, n // 2, n - 1}:
            y = x.copy()
            y[where] = np.float32(7.5)
            assert K.row_max(y, lanes) == np.float32(7.5), (n, where)
        assert K.row_max(x, lanes) == x.max(), n
