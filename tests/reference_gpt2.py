"""A deliberately plain float64 GPT-2 in numpy, written separately from the engine.

It shares no code with tui_llm.engine (only the parameter names and shapes, which are the
llm.c file format): whole-matrix attention with an explicit mask, log-softmax cross-entropy,
and a hand-derived backward. Finite differences check this reference; the reference checks
the engine.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5


def layernorm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * rstd
    return xhat * w + b, (xhat, rstd)


def layernorm_back(dy, cache, w):
    xhat, rstd = cache
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, dy.shape[-1]).sum(0), dy.reshape(-1, dy.shape[-1]).sum(0)


def gelu(x):
    s = np.sqrt(2.0 / np.pi)
    return 0.5 * x * (1.0 + np.tanh(s * (x + 0.044715 * x ** 3)))


def gelu_back(dy, x):
    s = np.sqrt(2.0 / np.pi)
    u = s * (x + 0.044715 * x ** 3)
    th = np.tanh(u)
    return dy * (0.5 * (1 + th) + 0.5 * x * (1 - th ** 2) * s * (1 + 3 * 0.044715 * x ** 2))


def forward_backward(P: dict, tokens, targets, n_head: int, vocab_size: int, weights=None, doc_starts=None):
    """P: dict of float64 arrays in llm.c shapes. Returns (logits (B,T,Vp), loss, grads dict).

    weights (B, T): the loss is sum(weights * losses) instead of their mean (a masked loss).
    doc_starts (B, T): where each position's document starts; the attention mask is written out:
    query i sees key j when doc_starts[b, i] <= j <= i, and positions restart at each document."""
    B, T = tokens.shape
    Vp, C = P["wte"].shape
    L = P["qkvw"].shape[0]
    hs = C // n_head
    starts = np.zeros((B, T), int) if doc_starts is None else np.asarray(doc_starts)
    j = np.arange(T)
    mask = (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= starts[:, :, None])  # (B, T query, T key)
    mask = mask[:, None]  # (B, 1, T, T): every head
    positions = j[None, :] - starts
    caches = []

    x = P["wte"][tokens] + P["wpe"][positions]
    for l in range(L):
        h1, ln1c = layernorm(x, P["ln1w"][l], P["ln1b"][l])
        qkv = h1 @ P["qkvw"][l].T + P["qkvb"][l]
        q, k, v = np.split(qkv, 3, axis=-1)
        q = q.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        scores = np.where(mask, scores, -np.inf)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x2 = x + y @ P["attprojw"][l].T + P["attprojb"][l]
        h2, ln2c = layernorm(x2, P["ln2w"][l], P["ln2b"][l])
        f = h2 @ P["fcw"][l].T + P["fcb"][l]
        g = gelu(f)
        x3 = x2 + g @ P["fcprojw"][l].T + P["fcprojb"][l]
        caches.append((x, h1, ln1c, q, k, v, att, y, x2, h2, ln2c, f, g))
        x = x3
    hf, lnfc = layernorm(x, P["lnfw"], P["lnfb"])
    logits = hf @ P["wte"].T

    real = logits[..., :vocab_size]
    logz = np.log(np.exp(real - real.max(-1, keepdims=True)).sum(-1)) + real.max(-1)
    picked = np.take_along_axis(real, targets[..., None], -1)[..., 0]
    losses = logz - picked
    loss = float(losses.mean()) if weights is None else float((losses * weights).sum())

    # backward
    G = {k: np.zeros_like(v) for k, v in P.items()}
    probs = np.exp(real - logz[..., None])
    dreal = probs.copy()
    np.put_along_axis(dreal, targets[..., None], np.take_along_axis(dreal, targets[..., None], -1) - 1, -1)
    dlogits = np.zeros_like(logits)
    dlogits[..., :vocab_size] = dreal / (B * T) if weights is None else dreal * np.asarray(weights)[..., None]
    G["wte"] += dlogits.reshape(-1, Vp).T @ hf.reshape(-1, C)
    dhf = dlogits @ P["wte"]
    dx, G["lnfw"], G["lnfb"] = layernorm_back(dhf, lnfc, P["lnfw"])
    for l in reversed(range(L)):
        x, h1, ln1c, q, k, v, att, y, x2, h2, ln2c, f, g = caches[l]
        # MLP
        G["fcprojw"][l] = dx.reshape(-1, C).T @ g.reshape(-1, 4 * C)
        G["fcprojb"][l] = dx.reshape(-1, C).sum(0)
        df = gelu_back(dx @ P["fcprojw"][l], f)
        G["fcw"][l] = df.reshape(-1, 4 * C).T @ h2.reshape(-1, C)
        G["fcb"][l] = df.reshape(-1, 4 * C).sum(0)
        dh2 = df @ P["fcw"][l]
        dx2_ln, G["ln2w"][l], G["ln2b"][l] = layernorm_back(dh2, ln2c, P["ln2w"][l])
        dx2 = dx + dx2_ln
        # attention
        G["attprojw"][l] = dx2.reshape(-1, C).T @ y.reshape(-1, C)
        G["attprojb"][l] = dx2.reshape(-1, C).sum(0)
        dy = (dx2 @ P["attprojw"][l]).reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
        datt = dy @ v.transpose(0, 1, 3, 2)
        dv = att.transpose(0, 1, 3, 2) @ dy
        dscores = att * (datt - (att * datt).sum(-1, keepdims=True)) / np.sqrt(hs)
        dq = dscores @ k
        dk = dscores.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([d.transpose(0, 2, 1, 3).reshape(B, T, C) for d in (dq, dk, dv)], -1)
        G["qkvw"][l] = dqkv.reshape(-1, 3 * C).T @ h1.reshape(-1, C)
        G["qkvb"][l] = dqkv.reshape(-1, 3 * C).sum(0)
        dh1 = dqkv @ P["qkvw"][l]
        dx_ln, G["ln1w"][l], G["ln1b"][l] = layernorm_back(dh1, ln1c, P["ln1w"][l])
        dx = dx2 + dx_ln
    np.add.at(G["wte"], tokens.reshape(-1), dx.reshape(-1, C))
    np.add.at(G["wpe"], positions.reshape(-1), dx.reshape(-1, C))
    return logits, loss, G


def loss_only(P: dict, tokens, targets, n_head: int, vocab_size: int) -> float:
    return forward_backward(P, tokens, targets, n_head, vocab_size)[1]
