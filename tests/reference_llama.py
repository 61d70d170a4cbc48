"""A deliberately plain float64 Llama in numpy, written separately from the engine.

Parameters are a dict keyed by Hugging Face's tensor names (separate q/k/v and gate/up matrices,
(out, in) shapes, embedding with the real vocabulary V rows), so the same reference checks the
engine (tests/test_llama.py, through `from_engine`) and the HF loader (tests/test_hf_llama.py,
which writes these dicts to safetensors). It shares no code with tui_llm.engine: RoPE follows
transformers (cos/sin over the full head, rotate_half; llama3 scaling as its
`_compute_llama3_parameters` writes it), attention repeats the key/value heads with np.repeat,
and the backward is derived by hand. Finite differences check this reference.
"""

from __future__ import annotations

import math

import numpy as np


def layer_names(i: int) -> dict[str, str]:
    pre = f"model.layers.{i}."
    return {"ln1": pre + "input_layernorm.weight", "ln2": pre + "post_attention_layernorm.weight",
            "q": pre + "self_attn.q_proj.weight", "k": pre + "self_attn.k_proj.weight",
            "v": pre + "self_attn.v_proj.weight", "o": pre + "self_attn.o_proj.weight",
            "bq": pre + "self_attn.q_proj.bias", "bk": pre + "self_attn.k_proj.bias",
            "bv": pre + "self_attn.v_proj.bias",
            "qn": pre + "self_attn.q_norm.weight", "kn": pre + "self_attn.k_norm.weight",
            "gate": pre + "mlp.gate_proj.weight", "up": pre + "mlp.up_proj.weight", "down": pre + "mlp.down_proj.weight"}


def inv_freq(hd: int, theta: float, scaling: dict | None) -> np.ndarray:
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv / scaling["factor"]
    assert kind == "llama3", kind
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, out)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def rotate_half_t(z):  # transpose of rotate_half
    h = z.shape[-1] // 2
    return np.concatenate([z[..., h:], -z[..., :h]], -1)


def rmsnorm(x, w, eps):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * r * w, (x * r, r)


def rmsnorm_back(dy, cache, w):
    xhat, r = cache
    g = dy * w
    dx = r * (g - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, dy.shape[-1]).sum(0)


def forward_backward(P: dict, cfg: dict, tokens, targets):
    """cfg: num_heads, num_kv_heads, head_dim, eps, theta, rope_scaling, vocab_size, tied, bias,
    and optionally qk_norm (Qwen3: RMSNorm of each q and k head, weights (hd,), before RoPE).

    Returns (logits (B, T, rows of the head), loss, grads keyed like P)."""
    B, T = tokens.shape
    H, KV, hd, eps = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"], cfg["eps"]
    rep = H // KV
    L = sum(1 for k in P if k.endswith("input_layernorm.weight"))
    E = P["model.embed_tokens.weight"]
    W_head = E if cfg["tied"] else P["lm_head.weight"]
    ang = np.arange(T)[:, None] * inv_freq(hd, cfg["theta"], cfg["rope_scaling"])[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))  # (T, hd)
    mask = np.tril(np.ones((T, T), bool))

    def heads(a, n):  # (B, T, n*hd) -> (B, n, T, hd)
        return a.reshape(B, T, n, hd).transpose(0, 2, 1, 3)

    def unheads(a):   # (B, n, T, hd) -> (B, T, n*hd)
        return a.transpose(0, 2, 1, 3).reshape(B, T, -1)

    x = E[tokens]
    caches = []
    for i in range(L):
        n = layer_names(i)
        h1, c1 = rmsnorm(x, P[n["ln1"]], eps)
        q, k, v = h1 @ P[n["q"]].T, h1 @ P[n["k"]].T, h1 @ P[n["v"]].T
        if cfg["bias"]:
            q, k, v = q + P[n["bq"]], k + P[n["bk"]], v + P[n["bv"]]
        q, k, v = heads(q, H), heads(k, KV), heads(v, KV)
        cq = ck = None
        if cfg.get("qk_norm"):
            (q, cq), (k, ck) = rmsnorm(q, P[n["qn"]], eps), rmsnorm(k, P[n["kn"]], eps)
        qr, kr = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        krr, vr = np.repeat(kr, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.where(mask, qr @ krr.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
        att = np.exp(s - s.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = unheads(att @ vr)
        x2 = x + y @ P[n["o"]].T
        h2, c2 = rmsnorm(x2, P[n["ln2"]], eps)
        gt, up = h2 @ P[n["gate"]].T, h2 @ P[n["up"]].T
        sg = 1.0 / (1.0 + np.exp(-gt))
        act = gt * sg * up
        caches.append((x, h1, c1, qr, krr, vr, att, y, x2, h2, c2, gt, up, sg, act, cq, ck))
        x = x2 + act @ P[n["down"]].T
    hf, cf = rmsnorm(x, P["model.norm.weight"], eps)
    logits = hf @ W_head.T

    V = cfg["vocab_size"]
    real = logits[..., :V]
    mx = real.max(-1, keepdims=True)
    logz = np.log(np.exp(real - mx).sum(-1)) + mx[..., 0]
    picked = np.take_along_axis(real, targets[..., None], -1)[..., 0]
    loss = float((logz - picked).mean())

    # backward
    G = {name: np.zeros_like(val) for name, val in P.items()}
    dlogits = np.zeros_like(logits)
    dlogits[..., :V] = np.exp(real - logz[..., None])
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
    dlogits /= B * T
    C = E.shape[1]
    head_name = "model.embed_tokens.weight" if cfg["tied"] else "lm_head.weight"
    G[head_name] += dlogits.reshape(-1, W_head.shape[0]).T @ hf.reshape(-1, C)
    dx, G["model.norm.weight"] = rmsnorm_back(dlogits @ W_head, cf, P["model.norm.weight"])

    def wgrad(d, a):  # sum over rows of d^T a
        return d.reshape(-1, d.shape[-1]).T @ a.reshape(-1, a.shape[-1])

    for i in reversed(range(L)):
        n = layer_names(i)
        x, h1, c1, qr, krr, vr, att, y, x2, h2, c2, gt, up, sg, act, cq, ck = caches[i]
        G[n["down"]] = wgrad(dx, act)
        dact = dx @ P[n["down"]]
        dup = dact * gt * sg
        dgt = dact * up * sg * (1 + gt * (1 - sg))
        G[n["gate"]], G[n["up"]] = wgrad(dgt, h2), wgrad(dup, h2)
        dh2 = dgt @ P[n["gate"]] + dup @ P[n["up"]]
        dln2, G[n["ln2"]] = rmsnorm_back(dh2, c2, P[n["ln2"]])
        dx2 = dx + dln2
        G[n["o"]] = wgrad(dx2, y)
        dy = heads(dx2 @ P[n["o"]], H)
        datt = dy @ vr.transpose(0, 1, 3, 2)
        dvr = att.transpose(0, 1, 3, 2) @ dy
        ds = att * (datt - (att * datt).sum(-1, keepdims=True)) / math.sqrt(hd)
        dqr, dkrr = ds @ krr, ds.transpose(0, 1, 3, 2) @ qr
        dkr = dkrr.reshape(B, KV, rep, T, hd).sum(2)
        dv = dvr.reshape(B, KV, rep, T, hd).sum(2)
        dq = dqr * cos + rotate_half_t(dqr * sin)
        dk = dkr * cos + rotate_half_t(dkr * sin)
        if cfg.get("qk_norm"):
            dq, G[n["qn"]] = rmsnorm_back(dq, cq, P[n["qn"]])
            dk, G[n["kn"]] = rmsnorm_back(dk, ck, P[n["kn"]])
        dq, dk, dv = unheads(dq), unheads(dk), unheads(dv)
        G[n["q"]], G[n["k"]], G[n["v"]] = wgrad(dq, h1), wgrad(dk, h1), wgrad(dv, h1)
        if cfg["bias"]:
            G[n["bq"]], G[n["bk"]], G[n["bv"]] = (d.reshape(-1, d.shape[-1]).sum(0) for d in (dq, dk, dv))
        dh1 = dq @ P[n["q"]] + dk @ P[n["k"]] + dv @ P[n["v"]]
        dln1, G[n["ln1"]] = rmsnorm_back(dh1, c1, P[n["ln1"]])
        dx = dx2 + dln1
    np.add.at(G["model.embed_tokens.weight"], tokens.reshape(-1), dx.reshape(-1, C))
    return logits, loss, G


def random_params(cfg: dict, L: int, C: int, F: int, rng, std: float = 0.3) -> dict:
    """HF-named float64 parameters with every entry random (norm weights around 1)."""
    V, H, KV, hd = cfg["vocab_size"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    P = {"model.embed_tokens.weight": rng.standard_normal((V, C)) * std,
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(C)}
    for i in range(L):
        n = layer_names(i)
        P[n["ln1"]] = 1 + 0.1 * rng.standard_normal(C)
        P[n["ln2"]] = 1 + 0.1 * rng.standard_normal(C)
        for key, shape in (("q", (H * hd, C)), ("k", (KV * hd, C)), ("v", (KV * hd, C)), ("o", (C, H * hd)),
                           ("gate", (F, C)), ("up", (F, C)), ("down", (C, F))):
            P[n[key]] = rng.standard_normal(shape) * std
        if cfg["bias"]:
            P[n["bq"]], P[n["bk"]], P[n["bv"]] = (rng.standard_normal(d) * std for d in (H * hd, KV * hd, KV * hd))
        if cfg.get("qk_norm"):
            P[n["qn"]], P[n["kn"]] = 1 + 0.1 * rng.standard_normal(hd), 1 + 0.1 * rng.standard_normal(hd)
    if not cfg["tied"]:
        P["lm_head.weight"] = rng.standard_normal((V, C)) * std
    return P


def from_engine(params, cfg) -> dict:
    """float64 HF-named copies of an engine model's LlamaParams (test-side mapping, by the layout)."""
    V, QD, KVD, F = cfg.vocab_size, cfg.q_dim, cfg.kv_dim, cfg.ffn_channels
    f64 = np.float64
    P = {"model.embed_tokens.weight": params.wte[:V].astype(f64), "model.norm.weight": params.lnfw.astype(f64)}
    for i in range(cfg.num_layers):
        n, qkvw = layer_names(i), params.qkvw[i].astype(f64)
        P[n["ln1"]], P[n["ln2"]] = params.ln1w[i].astype(f64), params.ln2w[i].astype(f64)
        P[n["q"]], P[n["k"]], P[n["v"]] = qkvw[:QD], qkvw[QD:QD + KVD], qkvw[QD + KVD:]
        if cfg.qkv_bias:
            b = params.qkvb[i].astype(f64)
            P[n["bq"]], P[n["bk"]], P[n["bv"]] = b[:QD], b[QD:QD + KVD], b[QD + KVD:]
        if cfg.qk_norm:
            P[n["qn"]], P[n["kn"]] = params.qnormw[i].astype(f64), params.knormw[i].astype(f64)
        P[n["o"]] = params.attprojw[i].astype(f64)
        P[n["gate"]], P[n["up"]] = params.fcw[i, :F].astype(f64), params.fcw[i, F:].astype(f64)
        P[n["down"]] = params.fcprojw[i].astype(f64)
    if not cfg.tied_embeddings:
        P["lm_head.weight"] = params.lm_head[:V].astype(f64)
    return P


def ref_config(cfg) -> dict:
    """The reference's cfg dict for an engine LlamaConfig."""
    return dict(num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, eps=cfg.rms_norm_eps,
                theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, vocab_size=cfg.vocab_size,
                tied=cfg.tied_embeddings, bias=cfg.qkv_bias, qk_norm=cfg.qk_norm)
