"""A Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) over one flat parameter buffer.

    x = wte[tokens]                                  (no position table)
    for each layer:
        a = rmsnorm(x, ln1w)
        q, k, v = split(a @ qkvw.T (+ qkvb))         one product for all three; KV <= H heads
        q, k = rmsnorm(q, qnormw), rmsnorm(k, knormw) per head, Qwen3 only (qk_norm)
        q, k = rope(q, pos), rope(k, pos)            half-split rotation, as transformers
        x = x + attention(q, k, v) @ attprojw.T      query head h reads key/value head h // (H/KV)
        m = rmsnorm(x, ln2w)
        gate, up = split(m @ fcw.T)                  one product for both
        x = x + (silu(gate) * up) @ fcprojw.T
    logits = rmsnorm(x, lnfw) @ W.T                  W = wte (tied) or lm_head
    loss = mean cross-entropy over the real vocabulary V

Same API as model.GPT (forward/backward/decay_ranges/random_init, `params`, `grads`), plus a key/value
cache path: `new_kv_cache()` and `extend(cache, tokens, t0)`. The block is written once
(`_block`) and runs both the training forward (keys/values read from this step's buffer) and
`extend` (keys/values appended to the cache). Products go through numpy's BLAS with `out=`;
training attention is attention.py's (shared with GPT-2); everything else is a numba kernel
from llama_kernels.py.
"""

from __future__ import annotations

import numpy as np

from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import llama as LK
from tui_llm.engine.kernels.attention import (
    AttentionScratch,
    attention_backward,
    attention_forward,
    check_doc_starts,
    doc_positions,
)
from tui_llm.engine.kernels.grad_accumulation import head_grad, matmul_grad, needs_scratch
from tui_llm.engine.machine import check_fits_memory
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.llama_config import (
    MATRIX_PARAMS,
    LlamaConfig,
    LlamaConfigError,
    LlamaParams,
    num_parameters,
    rope_tables,
)

__all__ = ["Llama", "LlamaConfig", "LlamaConfigError", "KVCache", "training_memory_bytes"]


class BlockBuffers:
    """The buffers one block writes. Training: layer l's slices of Activations (kept for the
    backward). extend: the cache's scratch, the same for every layer, residuals updated in place."""

    def __init__(self, ln1, ln1_rstd, qkv, att_lse, atty, residual2, ln2, ln2_rstd, fch, fch_act, residual3, proj,
                 qk_norm=None):
        self.ln1, self.ln1_rstd, self.qkv, self.att_lse, self.atty = ln1, ln1_rstd, qkv, att_lse, atty
        self.residual2, self.ln2, self.ln2_rstd = residual2, ln2, ln2_rstd
        self.fch, self.fch_act, self.residual3, self.proj = fch, fch_act, residual3, proj
        # Qwen3: (q before its norm (N, H, hd), its rstd (N, H), k before (N, KV, hd), its rstd (N, KV))
        self.qk_norm = qk_norm


class Activations:
    """Every buffer the forward keeps for the backward, for one (B, T). Per-layer buffers are
    stacked over L; 2-D buffers are (N = B*T rows, features)."""

    def __init__(self, cfg: LlamaConfig, B: int, T: int):
        L, C, H, F, Vp = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.ffn_channels, cfg.padded_vocab_size
        N, W, QD = B * T, cfg.qkv_dim, cfg.q_dim
        f32 = np.float32
        self.B, self.T = B, T
        self.encoded = np.empty((N, C), f32)            # wte[tokens]
        self.ln1 = np.empty((L, N, C), f32)
        self.ln1_rstd = np.empty((L, N), f32)
        self.qkv = np.empty((L, N, W), f32)             # q and k after RoPE, v
        self.att_lse = np.empty((L, B, H, T), f32)      # attention rows' log-sum-exp (the probabilities, rebuilt)
        self.atty = np.empty((L, N, QD), f32)           # attention output, heads side by side
        self.residual2 = np.empty((L, N, C), f32)       # after the attention block
        self.ln2 = np.empty((L, N, C), f32)
        self.ln2_rstd = np.empty((L, N), f32)
        self.fch = np.empty((L, N, 2 * F), f32)         # [gate | up] pre-activation
        self.fch_act = np.empty((L, N, F), f32)         # silu(gate) * up
        self.residual3 = np.empty((L, N, C), f32)       # after the MLP block
        self.lnf = np.empty((N, C), f32)
        self.lnf_rstd = np.empty(N, f32)
        self.logits = np.empty((N, Vp), f32)            # becomes dlogits in a training forward
        self.losses = np.empty(N, f32)
        self.proj = np.empty((N, C), f32)               # scratch: a projection before its residual add
        # backward scratch
        self.dresidual = np.empty((N, C), f32)
        self.d_c = np.empty((N, C), f32)
        self.d_q = np.empty((N, QD), f32)
        self.d_qkv = np.empty((N, W), f32)
        self.d_f = np.empty((N, F), f32)
        self.d_2f = np.empty((N, 2 * F), f32)
        self.att_scratch = AttentionScratch(B, T, H, cfg.num_kv_heads, cfg.head_dim)  # one block of scores
        self.qk_norm = qk_norm_buffers(cfg, N, L) if cfg.qk_norm else None    # Qwen3: q, k before their norm

    @staticmethod
    def nbytes_for(cfg: LlamaConfig, B: int, T: int) -> int:
        L, C, H, F, N = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.ffn_channels, B * T
        per_layer = N * (4 * C + 2 + cfg.qkv_dim + cfg.q_dim + 3 * F) + B * H * T
        rest = N * (C * 5 + 2 + cfg.padded_vocab_size + cfg.q_dim + cfg.qkv_dim + 3 * F)
        if cfg.qk_norm:
            per_layer += N * (cfg.q_dim + cfg.kv_dim + H + cfg.num_kv_heads)
        return 4 * (L * per_layer + rest) + AttentionScratch.nbytes_for(B, T, H, cfg.num_kv_heads, cfg.head_dim)

    def layer(self, l: int) -> BlockBuffers:
        return BlockBuffers(self.ln1[l], self.ln1_rstd[l], self.qkv[l], self.att_lse[l], self.atty[l],
                            self.residual2[l], self.ln2[l], self.ln2_rstd[l], self.fch[l], self.fch_act[l],
                            self.residual3[l], self.proj, self.qk_norm and tuple(buf[l] for buf in self.qk_norm))

    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)] + list(self.qk_norm or ())
        return sum(a.nbytes for a in arrays) + self.att_scratch.nbytes()


def qk_norm_buffers(cfg: LlamaConfig, n: int, layers: int) -> tuple[np.ndarray, ...]:
    """Qwen3's q/k norm keeps, per layer: q before the norm (n, H, hd), its rstd (n, H), k before (n, KV, hd), its rstd."""
    H, KV, hd, f32 = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, np.float32
    return (np.empty((layers, n, H, hd), f32), np.empty((layers, n, H), f32),
            np.empty((layers, n, KV, hd), f32), np.empty((layers, n, KV), f32))


def training_memory_bytes(cfg: LlamaConfig, B: int, T: int) -> int:
    """What training at (B, T) allocates: weights, gradients, AdamW m and v (4 x 4 bytes per
    parameter) and the activations. check_fits_memory(training_memory_bytes(...), ...) refuses early."""
    return 16 * num_parameters(cfg) + Activations.nbytes_for(cfg, B, T)


class KVCache:
    """Keys and values (after RoPE) of every position run so far, plus extend()'s scratch rows."""

    def __init__(self, cfg: LlamaConfig, max_tokens: int):
        self.max_tokens = max_tokens
        self.k = np.zeros((cfg.num_layers, max_tokens, cfg.kv_dim), np.float32)
        self.v = np.zeros((cfg.num_layers, max_tokens, cfg.kv_dim), np.float32)
        self.logits = np.empty((1, cfg.padded_vocab_size), np.float32)
        self.config = cfg
        self.rows = 0

    def scratch(self, n: int) -> tuple[np.ndarray, BlockBuffers]:
        """The residual stream x (n, C) and a block's buffers over n rows (grown on demand)."""
        if n > self.rows:
            cfg, f32 = self.config, np.float32
            C, F = cfg.channels, cfg.ffn_channels
            self._x = np.empty((n, C), f32)
            self._b = [np.empty((n, C), f32), np.empty(n, f32), np.empty((n, cfg.qkv_dim), f32),
                       np.empty((n, cfg.q_dim), f32), np.empty((n, C), f32), np.empty(n, f32),
                       np.empty((n, 2 * F), f32), np.empty((n, F), f32), np.empty((n, C), f32)]
            self._qk_norm = qk_norm_buffers(cfg, n, 1) if cfg.qk_norm else None
            self.rows = n
        ln, rstd, qkv, atty, ln2, rstd2, fch, fch_act, proj = (buf[:n] for buf in self._b)
        x = self._x[:n]
        qk_norm = self._qk_norm and tuple(buf[0, :n] for buf in self._qk_norm)
        return x, BlockBuffers(ln, rstd, qkv, None, atty, x, ln2, rstd2, fch, fch_act, x, proj, qk_norm)


class Llama(Model):
    MATRIX_PARAMS = MATRIX_PARAMS

    def __init__(self, config: LlamaConfig, params: np.ndarray | None = None):
        super().__init__(config, params)
        self.rope_cos, self.rope_sin = rope_tables(config, config.max_seq_len)  # (maxT, hd/2)
        self.eps = np.float32(config.rms_norm_eps)

    @staticmethod
    def make_params(config: LlamaConfig, params: np.ndarray | None = None) -> LlamaParams:
        return LlamaParams(config, params)

    def make_activations(self, B: int, T: int) -> Activations:
        check_fits_memory(Activations.nbytes_for(self.config, B, T), f"batch {B} x {T}'s activations")
        return Activations(self.config, B, T)

    # -----------------------------------------------------------------------------------
    @classmethod
    def random_init(cls, config: LlamaConfig, seed: int = 42) -> Llama:
        """transformers' Llama init: every matrix N(0, 0.02), biases 0, RMSNorm weights 1.

        Only the V real rows of wte (and lm_head) are drawn; padded rows stay exactly zero.
        """
        model = cls(config)
        p = model.params
        rng = np.random.default_rng(seed)

        def normal(view):
            rng.standard_normal(out=view, dtype=np.float32)
            view *= np.float32(0.02)

        normal(p.wte[:config.vocab_size])
        for layer in range(config.num_layers):
            for name in ("qkvw", "attprojw", "fcw", "fcprojw"):
                normal(p.views[name][layer])
        if not config.tied_embeddings:
            normal(p.lm_head[:config.vocab_size])
        p.ln1w[:] = 1.0
        p.ln2w[:] = 1.0
        p.lnfw[:] = 1.0
        if config.qk_norm:
            p.qnormw[:] = 1.0
            p.knormw[:] = 1.0
        return model

    def head(self) -> np.ndarray:
        """The output matrix (Vp, C): wte when tied."""
        return self.params.wte if self.config.tied_embeddings else self.params.lm_head

    def _block(self, l: int, residual: np.ndarray, b: BlockBuffers, B: int, T: int, positions: np.ndarray,
               cache: KVCache | None, t0: int = 0, scratch: AttentionScratch | None = None) -> None:
        """Layer l on rows (B*T, C) at positions (B, T) (RoPE's); writes b.residual3.

        Without a cache the keys/values are this call's own (causal over its T positions, or over
        each document of self.doc_starts); with one, they are appended at t0 (the rows are
        positions t0..t0+T-1) and the queries attend to cache positions 0..t0+t.
        """
        cfg, p = self.config, self.params
        H, KV, QD, KVD = cfg.num_heads, cfg.num_kv_heads, cfg.q_dim, cfg.kv_dim
        # attention: residual2 = residual + attproj(attention(rope(qkv(rmsnorm(residual)))))
        LK.rmsnorm_forward(b.ln1, b.ln1_rstd, residual, p.ln1w[l], self.eps)
        np.matmul(b.ln1, p.qkvw[l].T, out=b.qkv)                                  # (N, (H+2KV) hd)
        if cfg.qkv_bias:
            K.add_bias(b.qkv, p.qkvb[l])
        if cfg.qk_norm:  # Qwen3: every q head and every k head RMS-normed (weights per layer), then RoPE
            q_pre, q_rstd, k_pre, k_rstd = b.qk_norm
            hd = cfg.head_dim
            LK.head_rmsnorm_forward(b.qkv[:, :QD].reshape(-1, H, hd), q_pre, q_rstd, p.qnormw[l], self.eps)
            LK.head_rmsnorm_forward(b.qkv[:, QD:QD + KVD].reshape(-1, KV, hd), k_pre, k_rstd, p.knormw[l], self.eps)
        LK.rope_rotate(b.qkv.reshape(B, T, -1), self.rope_cos, self.rope_sin, H + KV, positions, 1.0)
        if cache is None:
            assert scratch is not None  # the training forward passes its attention scratch
            attention_forward(b.atty.reshape(B, T, QD), b.att_lse, b.qkv.reshape(B, T, -1), H, KV, scratch,
                              self.doc_starts)
        else:
            cache.k[l, t0:t0 + T] = b.qkv[:, QD:QD + KVD]
            cache.v[l, t0:t0 + T] = b.qkv[:, QD + KVD:]
            K.attention_cached(b.atty, b.qkv, cache.k[l], cache.v[l], t0, H, KV)
        np.matmul(b.atty, p.attprojw[l].T, out=b.proj)                             # (N, C)
        np.add(residual, b.proj, out=b.residual2)
        # MLP: residual3 = residual2 + fcproj(silu(gate) * up), [gate | up] = fc(rmsnorm(residual2))
        LK.rmsnorm_forward(b.ln2, b.ln2_rstd, b.residual2, p.ln2w[l], self.eps)
        np.matmul(b.ln2, p.fcw[l].T, out=b.fch)                                    # (N, 2F)
        LK.swiglu_forward(b.fch_act, b.fch)                                     # (N, F)
        np.matmul(b.fch_act, p.fcprojw[l].T, out=b.proj)                           # (N, C)
        np.add(b.residual2, b.proj, out=b.residual3)

    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None, training: bool = False,
                doc_starts: np.ndarray | None = None):
        """inputs, targets: (B, T) int32 token ids. Returns the mean loss (or None without targets).

        With training=True the logits buffer becomes dlogits (fused softmax/cross-entropy/gradient),
        ready for backward(); acts.logits then no longer holds logits. doc_starts (B, T) int32, for
        rows that pack several documents: where each position's document starts
        (attention.check_doc_starts). Each document then attends only to itself and its RoPE
        positions start at 0, as if it ran alone.
        """
        cfg, p = self.config, self.params
        B, T = inputs.shape
        N = B * T
        a = self._ensure_buffers(B, T)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        self.inputs = inputs
        self.doc_starts = None if doc_starts is None else check_doc_starts(doc_starts, B, T)
        self.positions = doc_positions(self.doc_starts, B, T)

        np.take(p.wte, inputs.reshape(N), axis=0, out=a.encoded)               # (N, C)
        residual = a.encoded
        for l in range(cfg.num_layers):
            self._block(l, residual, a.layer(l), B, T, self.positions, None, scratch=a.att_scratch)
            residual = a.residual3[l]
        LK.rmsnorm_forward(a.lnf, a.lnf_rstd, residual, p.lnfw, self.eps)
        np.matmul(a.lnf, self.head().T, out=a.logits)                              # (N, Vp)

        self.trained_forward = False
        if targets is None:
            self.targets = None
            return None
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        self.targets = targets
        K.softmax_crossentropy(a.logits, a.losses, targets.reshape(N), cfg.vocab_size, np.float32(1.0 / N),
                               training)
        self.trained_forward = training
        return float(a.losses.sum(dtype=np.float32) / N)

    # -----------------------------------------------------------------------------------
    def backward(self, accumulate: bool = False) -> None:
        """Every parameter gradient for the last training forward: written into self.grads, or
        added to them with accumulate=True (the next micro-batch of an accumulated step). The
        residual stream's gradient accumulates down the layers."""
        if not self.trained_forward or self.inputs is None:
            raise RuntimeError("backward() needs a forward(inputs, targets, training=True) first")
        cfg, p, a = self.config, self.params, self.acts
        g = self.allocate_grads()
        B, T = self.inputs.shape
        H, KV, L = cfg.num_heads, cfg.num_kv_heads, cfg.num_layers
        dlogits, dres = a.logits, a.dresidual    # (N, Vp) with zero padded columns; (N, C)
        acc = accumulate
        if acc and self.grad_scratch is None and needs_scratch():  # one layer's largest weight gradient
            C, W, F = cfg.channels, cfg.qkv_dim, cfg.ffn_channels
            self.grad_scratch = np.empty(max(W, 2 * F, cfg.q_dim) * C, np.float32)
        scratch = self.grad_scratch

        # output head and final RMSNorm
        if cfg.tied_embeddings:
            head_grad(g.wte, dlogits, a.lnf, scratch, acc)      # (Vp, C); the embedding adds its part below
        else:
            head_grad(g.lm_head, dlogits, a.lnf, scratch, acc)
            if not acc:
                g.wte[:] = 0.0
        np.matmul(dlogits, self.head(), out=a.d_c)  # d lnf
        dres[:] = 0.0
        last = a.residual3[L - 1] if L > 0 else a.encoded
        LK.rmsnorm_backward(dres, g.lnfw, a.d_c, last, a.lnf_rstd, p.lnfw, acc)

        for l in reversed(range(L)):
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            # MLP block
            matmul_grad(g.fcprojw[l], dres.T, a.fch_act[l], scratch, acc)     # (C, F)
            np.matmul(dres, p.fcprojw[l], out=a.d_f)              # d swiglu output (N, F)
            LK.swiglu_backward(a.d_2f, a.d_f, a.fch[l])        # d [gate | up] (N, 2F)
            matmul_grad(g.fcw[l], a.d_2f.T, a.ln2[l], scratch, acc)           # (2F, C)
            np.matmul(a.d_2f, p.fcw[l], out=a.d_c)                # d ln2 output
            LK.rmsnorm_backward(dres, g.ln2w[l], a.d_c, a.residual2[l], a.ln2_rstd[l], p.ln2w[l], acc)
            # attention block
            matmul_grad(g.attprojw[l], dres.T, a.atty[l], scratch, acc)       # (C, H hd)
            np.matmul(dres, p.attprojw[l], out=a.d_q)             # d attention output (N, H hd)
            attention_backward(a.d_qkv.reshape(B, T, -1), a.d_q.reshape(B, T, -1), a.atty[l].reshape(B, T, -1),
                               a.att_lse[l], a.qkv[l].reshape(B, T, -1), H, KV, a.att_scratch, self.doc_starts)
            LK.rope_rotate(a.d_qkv.reshape(B, T, -1), self.rope_cos, self.rope_sin, H + KV, self.positions, -1.0)
            if cfg.qk_norm:
                QD, KVD, hd = cfg.q_dim, cfg.kv_dim, cfg.head_dim
                q_pre, q_rstd, k_pre, k_rstd = (buf[l] for buf in a.qk_norm)
                LK.head_rmsnorm_backward(a.d_qkv[:, :QD].reshape(-1, H, hd), g.qnormw[l], q_pre, q_rstd, p.qnormw[l],
                                         acc)
                LK.head_rmsnorm_backward(a.d_qkv[:, QD:QD + KVD].reshape(-1, KV, hd), g.knormw[l], k_pre, k_rstd,
                                         p.knormw[l], acc)
            if cfg.qkv_bias:
                K.column_sum(g.qkvb[l], a.d_qkv, acc)
            matmul_grad(g.qkvw[l], a.d_qkv.T, a.ln1[l], scratch, acc)         # ((H+2KV) hd, C)
            np.matmul(a.d_qkv, p.qkvw[l], out=a.d_c)              # d ln1 output
            LK.rmsnorm_backward(dres, g.ln1w[l], a.d_c, residual, a.ln1_rstd[l], p.ln1w[l], acc)

        LK.embedding_backward(g.wte, dres, self.inputs.reshape(-1))
        self.trained_forward = False

    # -----------------------------------------------------------------------------------
    def new_kv_cache(self, max_tokens: int | None = None) -> KVCache:
        """A cache for up to max_tokens positions (default: the model's max_seq_len)."""
        cfg = self.config
        max_tokens = cfg.max_seq_len if max_tokens is None else min(max_tokens, cfg.max_seq_len)
        check_fits_memory(8 * cfg.num_layers * max_tokens * cfg.kv_dim, f"a {max_tokens}-position KV cache")
        return KVCache(cfg, max_tokens)

    def extend(self, cache: KVCache, tokens: np.ndarray, t0: int) -> np.ndarray:
        """Run tokens (n,) at positions t0..t0+n-1 through the model, appending their keys and
        values to the cache (which must hold positions 0..t0-1). Returns the last position's
        logits (Vp,), a view that the next call overwrites."""
        cfg, p = self.config, self.params
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = tokens.shape[0]
        if n == 0 or t0 < 0 or t0 + n > cache.max_tokens:
            raise ValueError(f"extend: positions {t0}..{t0 + n - 1} do not fit a {cache.max_tokens}-position cache")
        x, b = cache.scratch(n)
        np.take(p.wte, tokens, axis=0, out=x)
        positions = np.arange(t0, t0 + n, dtype=np.int32).reshape(1, n)
        for l in range(cfg.num_layers):
            self._block(l, x, b, 1, n, positions, cache, t0)
        LK.rmsnorm_forward(b.ln1[n - 1:n], b.ln1_rstd[:1], x[n - 1:n], p.lnfw, self.eps)
        np.matmul(b.ln1[n - 1:n], self.head().T, out=cache.logits)
        return cache.logits[0]
