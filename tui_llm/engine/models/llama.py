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

import math
from typing import TYPE_CHECKING

import numpy as np

from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import llama as LK
from tui_llm.engine.kernels.attention import (
    AttentionScratch,
    attention_backward,
    attention_forward,
    check_doc_starts,
    doc_positions,
    keeps_probabilities,
)
from tui_llm.engine.kernels.grad_accumulation import head_grad, needs_scratch
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
    backward; with recompute the one block's worth every layer reuses). extend: the cache's
    scratch, the same for every layer, residuals updated in place."""

    def __init__(self, ln1, ln1_rstd, qkv, att_lse, atty, residual2, ln2, ln2_rstd, fch, fch_act, residual3, proj,
                 qk_norm=None, lora_u=None, key=None, att_probs=None):
        self.ln1, self.ln1_rstd, self.qkv, self.att_lse, self.atty = ln1, ln1_rstd, qkv, att_lse, atty
        self.residual2, self.ln2, self.ln2_rstd = residual2, ln2, ln2_rstd
        self.fch, self.fch_act, self.residual3, self.proj = fch, fch_act, residual3, proj
        # Qwen3: (q before its norm (N, H, hd), its rstd (N, H), k before (N, KV, hd), its rstd (N, KV))
        self.qk_norm = qk_norm
        self.lora_u = lora_u    # LoRA: {base matrix: (N, k r)} kept for the backward (None: not kept)
        self.key = key          # LoRA dropout masks' key (None: no dropout)
        self.att_probs = att_probs  # rows of one block: the attention probabilities (B, H, T, T), or None


class Activations:
    """Every buffer the forward keeps for the backward, for one (B, T). Per-layer buffers are
    stacked over L; 2-D buffers are (N = B*T rows, features).

    recompute: the per-layer buffers are one layer's (stacked over 1), reused by every layer;
    only each layer's output (residual3, the next layer's input) is kept over L, and the backward
    runs a layer's forward again before its backward. lora_u: the adapters' kept shapes per module
    (Adapters.u_shapes), or None."""

    def __init__(self, cfg: LlamaConfig, B: int, T: int, recompute: bool = False, lora_u: dict | None = None):
        self.B, self.T, self.recompute = B, T, recompute
        for name, shape in self.shapes(cfg, B, T, recompute).items():
            setattr(self, name, np.empty(shape, np.float32))
        self.qk_norm = (self.q_pre, self.q_rstd, self.k_pre, self.k_rstd) if cfg.qk_norm else None
        kept = 1 if recompute else cfg.num_layers
        self.lora_u = {m: np.empty((kept,) + tuple(shape[1:]), np.float32) for m, shape in (lora_u or {}).items()}
        self.key: int | None = None  # the last training forward's dropout key
        self.att_scratch = AttentionScratch(B, T, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)  # one block of scores

    if TYPE_CHECKING:  # the buffers are attributes named as in shapes()
        def __getattr__(self, name: str) -> np.ndarray: ...

    @staticmethod
    def shapes(cfg: LlamaConfig, B: int, T: int, recompute: bool = False) -> dict[str, tuple[int, ...]]:
        L, C, H, F, Vp = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.ffn_channels, cfg.padded_vocab_size
        N, W, QD, KV, hd = B * T, cfg.qkv_dim, cfg.q_dim, cfg.num_kv_heads, cfg.head_dim
        Lb = 1 if recompute else L       # per-layer buffers kept for every layer, or one layer's
        shapes = {
            "encoded": (N, C),                 # wte[tokens]
            "ln1": (Lb, N, C), "ln1_rstd": (Lb, N),
            "qkv": (Lb, N, W),                 # q and k after RoPE, v
            "att_lse": (Lb, B, H, T),          # attention rows' log-sum-exp (the probabilities, rebuilt)
            "att_probs": (Lb, B, H, T, T) if keeps_probabilities(T) else (Lb, 0),  # or kept, short rows
            "atty": (Lb, N, QD),               # attention output, heads side by side
            "residual2": (Lb, N, C),           # after the attention block
            "ln2": (Lb, N, C), "ln2_rstd": (Lb, N),
            "fch": (Lb, N, 2 * F),             # [gate | up] pre-activation
            "fch_act": (Lb, N, F),             # silu(gate) * up
            "residual3": (L, N, C),            # after the MLP block: the next layer's input (always kept)
            "lnf": (N, C), "lnf_rstd": (N,),
            "logits": (N, Vp),                 # becomes dlogits in a training forward
            "losses": (N,),
            "proj": (N, C),                    # scratch: a projection before its residual add
            # backward scratch
            "dresidual": (N, C), "d_c": (N, C), "d_q": (N, QD), "d_qkv": (N, W), "d_f": (N, F), "d_2f": (N, 2 * F),
        }
        if cfg.qk_norm:                        # Qwen3: q, k before their norm, and their rstd
            shapes.update(q_pre=(Lb, N, H, hd), q_rstd=(Lb, N, H), k_pre=(Lb, N, KV, hd), k_rstd=(Lb, N, KV))
        return shapes

    @classmethod
    def nbytes_for(cls, cfg: LlamaConfig, B: int, T: int, recompute: bool = False, lora_u: dict | None = None) -> int:
        kept = 1 if recompute else cfg.num_layers
        arrays = sum(math.prod(shape) for shape in cls.shapes(cfg, B, T, recompute).values())
        return 4 * (arrays + sum(kept * math.prod(shape[1:]) for shape in (lora_u or {}).values())) + \
            AttentionScratch.nbytes_for(B, T, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def layer(self, l: int) -> BlockBuffers:
        i = 0 if self.recompute else l
        return BlockBuffers(self.ln1[i], self.ln1_rstd[i], self.qkv[i], self.att_lse[i], self.atty[i],
                            self.residual2[i], self.ln2[i], self.ln2_rstd[i], self.fch[i], self.fch_act[i],
                            self.residual3[l], self.proj, self.qk_norm and tuple(buf[i] for buf in self.qk_norm),
                            {m: u[i] for m, u in self.lora_u.items()}, self.key,
                            self.att_probs[i] if self.att_probs.size else None)

    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)] + list(self.lora_u.values())
        return self.att_scratch.nbytes() + sum(a.nbytes for a in arrays)


def qk_norm_buffers(cfg: LlamaConfig, n: int, layers: int) -> tuple[np.ndarray, ...]:
    """Qwen3's q/k norm keeps, per layer: q before the norm (n, H, hd), its rstd (n, H), k before (n, KV, hd), its rstd."""
    H, KV, hd, f32 = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, np.float32
    return (np.empty((layers, n, H, hd), f32), np.empty((layers, n, H), f32),
            np.empty((layers, n, KV, hd), f32), np.empty((layers, n, KV), f32))


def training_memory_bytes(cfg: LlamaConfig, B: int, T: int) -> int:
    """What full fine-tuning at (B, T) allocates: weights, gradients, AdamW m and v (4 x 4 bytes per
    parameter) and the activations (training/memory.py estimates every kind of run)."""
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

    def __init__(self, config: LlamaConfig, params: np.ndarray | None = None, *, recompute: bool = False):
        super().__init__(config, params, recompute=recompute)
        self.rope_cos, self.rope_sin = rope_tables(config, config.max_seq_len)  # (maxT, hd/2)
        self.eps = np.float32(config.rms_norm_eps)
        self.no_grad = np.empty(0, np.float32)  # a norm's weight gradient that a frozen base does not want

    @staticmethod
    def make_params(config: LlamaConfig, params: np.ndarray | None = None) -> LlamaParams:
        return LlamaParams(config, params)

    def make_activations(self, B: int, T: int) -> Activations:
        lora_u = self.lora.u_shapes(self.config.num_layers, B * T) if self.lora is not None else None
        check_fits_memory(Activations.nbytes_for(self.config, B, T, self.recompute, lora_u),
                          f"batch {B} x {T}'s activations")
        return Activations(self.config, B, T, self.recompute, lora_u)

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

    @property
    def head_name(self) -> str:
        """The output matrix (Vp, C): wte when tied."""
        return "wte" if self.config.tied_embeddings else "lm_head"

    def head(self) -> np.ndarray:
        return self.params.views[self.head_name]

    def _block(self, l: int, residual: np.ndarray, b: BlockBuffers, B: int, T: int, positions: np.ndarray,
               cache: KVCache | None, t0: int = 0, rerun: bool = False) -> None:
        """Layer l on rows (B*T, C) at positions (B, T) (RoPE's); writes b.residual3.

        Without a cache the keys/values are this call's own (causal over its T positions, or over
        each document of self.doc_starts); with one, they are appended at t0 (the rows are
        positions t0..t0+T-1) and the queries attend to cache positions 0..t0+t.
        rerun: the backward's recompute, which stops at what the backward reads (silu(gate) * up):
        the down projection's output is the next layer's input, kept from the forward.
        """
        cfg, w = self.config, self.w
        H, KV, QD, KVD = cfg.num_heads, cfg.num_kv_heads, cfg.q_dim, cfg.kv_dim
        # attention: residual2 = residual + attproj(attention(rope(qkv(rmsnorm(residual)))))
        LK.rmsnorm_forward(b.ln1, b.ln1_rstd, residual, w("ln1w", l), self.eps)
        self._linear(b.qkv, b.ln1, "qkvw", l, b.lora_u, b.key)                    # (N, (H+2KV) hd)
        if cfg.qkv_bias:
            K.add_bias(b.qkv, w("qkvb", l))
        if cfg.qk_norm:  # Qwen3: every q head and every k head RMS-normed (weights per layer), then RoPE
            q_pre, q_rstd, k_pre, k_rstd = b.qk_norm
            hd = cfg.head_dim
            LK.head_rmsnorm_forward(b.qkv[:, :QD].reshape(-1, H, hd), q_pre, q_rstd, w("qnormw", l), self.eps)
            LK.head_rmsnorm_forward(b.qkv[:, QD:QD + KVD].reshape(-1, KV, hd), k_pre, k_rstd, w("knormw", l), self.eps)
        LK.rope_rotate(b.qkv.reshape(B, T, -1), self.rope_cos, self.rope_sin, H + KV, positions, 1.0)
        if cache is None:
            attention_forward(b.atty.reshape(B, T, QD), b.att_lse, b.qkv.reshape(B, T, -1), H, KV,
                              self.acts.att_scratch, self.doc_starts, b.att_probs)
        else:
            cache.k[l, t0:t0 + T] = b.qkv[:, QD:QD + KVD]
            cache.v[l, t0:t0 + T] = b.qkv[:, QD + KVD:]
            K.attention_cached(b.atty, b.qkv, cache.k[l], cache.v[l], t0, H, KV)
        self._linear(b.proj, b.atty, "attprojw", l, b.lora_u, b.key)              # (N, C)
        np.add(residual, b.proj, out=b.residual2)
        # MLP: residual3 = residual2 + fcproj(silu(gate) * up), [gate | up] = fc(rmsnorm(residual2))
        LK.rmsnorm_forward(b.ln2, b.ln2_rstd, b.residual2, w("ln2w", l), self.eps)
        self._linear(b.fch, b.ln2, "fcw", l, b.lora_u, b.key)                     # (N, 2F)
        LK.swiglu_forward(b.fch_act, b.fch)                                     # (N, F)
        if rerun:
            self._rerun_linear(b.fch_act, "fcprojw", l, b.lora_u, b.key)
            return
        self._linear(b.proj, b.fch_act, "fcprojw", l, b.lora_u, b.key)            # (N, C)
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
        cfg = self.config
        B, T = inputs.shape
        N = B * T
        a = self._ensure_buffers(B, T)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        self.inputs = inputs
        a.key = self.lora.step_key if training and self.lora is not None and self.lora.lora.dropout > 0 else None
        self.doc_starts = None if doc_starts is None else check_doc_starts(doc_starts, B, T)
        self.positions = doc_positions(self.doc_starts, B, T)

        self.w.gather(a.encoded, "wte", inputs.reshape(N))                      # (N, C)
        residual = a.encoded
        for l in range(cfg.num_layers):
            self._block(l, residual, a.layer(l), B, T, self.positions, None)
            residual = a.residual3[l]
        LK.rmsnorm_forward(a.lnf, a.lnf_rstd, residual, self.w("lnfw"), self.eps)
        self.w.head_forward(a.logits, a.lnf, self.head_name)                      # (N, Vp)

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
        """Every gradient of what trains, for the last training forward: written into the gradient
        buffer, or added to it with accumulate=True (the next micro-batch of an accumulated step).
        The residual stream's gradient accumulates down the layers. A frozen base (LoRA) gets input
        gradients only: no weight, norm or embedding gradient is computed for it."""
        if not self.trained_forward or self.inputs is None:
            raise RuntimeError("backward() needs a forward(inputs, targets, training=True) first")
        cfg, w, a = self.config, self.w, self.acts
        g = self.allocate_grads() if self.lora is None else None     # the base's gradients, if it trains
        B, T = self.inputs.shape
        positions = doc_positions(self.doc_starts, B, T) if self.positions is None else self.positions
        H, KV, L = cfg.num_heads, cfg.num_kv_heads, cfg.num_layers
        dlogits, dres = a.logits, a.dresidual    # (N, Vp) with zero padded columns; (N, C)
        acc = accumulate
        if g is not None and acc and self.grad_scratch is None and needs_scratch():  # one layer's largest weight gradient
            C, W, F = cfg.channels, cfg.qkv_dim, cfg.ffn_channels
            self.grad_scratch = np.empty(max(W, 2 * F, cfg.q_dim) * C, np.float32)
        scratch = self.grad_scratch

        def grad(name, l=None):  # a norm's or bias's gradient buffer, or nothing for a frozen base
            return self.no_grad if g is None else (g.views[name] if l is None else g.views[name][l])

        # output head and final RMSNorm
        if g is not None:
            head_grad(g.views[self.head_name], dlogits, a.lnf, scratch, acc)  # (Vp, C); a tied embedding adds below
            if not cfg.tied_embeddings and not acc:
                g.wte[:] = 0.0
        w.head_backward(a.d_c, dlogits, self.head_name)       # d lnf
        dres[:] = 0.0
        last = a.residual3[L - 1] if L > 0 else a.encoded
        LK.rmsnorm_backward(dres, grad("lnfw"), a.d_c, last, a.lnf_rstd, w("lnfw"), acc)

        for l in reversed(range(L)):
            b = a.layer(l)
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            if a.recompute:  # this layer's buffers again, bit for bit as the forward made them
                self._block(l, residual, b, B, T, positions, None, rerun=True)
            # MLP block
            self._linear_backward(a.d_f, dres, b.fch_act, "fcprojw", l, acc, b.lora_u, b.key)  # d swiglu output
            LK.swiglu_backward(a.d_2f, a.d_f, b.fch)        # d [gate | up] (N, 2F)
            self._linear_backward(a.d_c, a.d_2f, b.ln2, "fcw", l, acc, b.lora_u, b.key)        # d ln2 output
            LK.rmsnorm_backward(dres, grad("ln2w", l), a.d_c, b.residual2, b.ln2_rstd, w("ln2w", l), acc)
            # attention block
            self._linear_backward(a.d_q, dres, b.atty, "attprojw", l, acc, b.lora_u, b.key)   # d attention output
            attention_backward(a.d_qkv.reshape(B, T, -1), a.d_q.reshape(B, T, -1), b.atty.reshape(B, T, -1),
                               b.att_lse, b.qkv.reshape(B, T, -1), H, KV, a.att_scratch, self.doc_starts,
                               b.att_probs)
            LK.rope_rotate(a.d_qkv.reshape(B, T, -1), self.rope_cos, self.rope_sin, H + KV, positions, -1.0)
            if cfg.qk_norm:
                QD, KVD, hd = cfg.q_dim, cfg.kv_dim, cfg.head_dim
                q_pre, q_rstd, k_pre, k_rstd = b.qk_norm
                LK.head_rmsnorm_backward(a.d_qkv[:, :QD].reshape(-1, H, hd), grad("qnormw", l), q_pre, q_rstd,
                                         w("qnormw", l), acc)
                LK.head_rmsnorm_backward(a.d_qkv[:, QD:QD + KVD].reshape(-1, KV, hd), grad("knormw", l), k_pre,
                                         k_rstd, w("knormw", l), acc)
            if cfg.qkv_bias and g is not None:
                K.column_sum(g.qkvb[l], a.d_qkv, acc)
            needs_dx = g is not None or l > 0   # a frozen embedding wants no gradient below layer 0
            self._linear_backward(a.d_c if needs_dx else None, a.d_qkv, b.ln1, "qkvw", l, acc, b.lora_u, b.key)
            if needs_dx:
                LK.rmsnorm_backward(dres, grad("ln1w", l), a.d_c, residual, b.ln1_rstd, w("ln1w", l), acc)

        if g is not None:
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
        """Run tokens (n,) at positions t0..t0+n-1 through the model (adapters included), appending
        their keys and values to the cache (which must hold positions 0..t0-1). Returns the last
        position's logits (Vp,), a view that the next call overwrites."""
        cfg = self.config
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = tokens.shape[0]
        if n == 0 or t0 < 0 or t0 + n > cache.max_tokens:
            raise ValueError(f"extend: positions {t0}..{t0 + n - 1} do not fit a {cache.max_tokens}-position cache")
        x, b = cache.scratch(n)
        self.w.gather(x, "wte", tokens)
        positions = np.arange(t0, t0 + n, dtype=np.int32).reshape(1, n)
        for l in range(cfg.num_layers):
            self._block(l, x, b, 1, n, positions, cache, t0)
        LK.rmsnorm_forward(b.ln1[n - 1:n], b.ln1_rstd[:1], x[n - 1:n], self.w("lnfw"), self.eps)
        self.w.head_forward(cache.logits, b.ln1[n - 1:n], self.head_name)
        return cache.logits[0]
