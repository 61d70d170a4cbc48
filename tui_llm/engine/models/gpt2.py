"""GPT-2 as llm.c defines it: forward and backward over one flat parameter buffer.

    x = wte[tokens] + wpe[positions]
    for each layer:  x = x + attproj(attention(ln1(x)))
                     x = x + fcproj(gelu(fc(ln2(x))))
    logits = ln_f(x) @ wte.T          (tied lm-head, all Vp columns)
    loss = mean cross-entropy over the real vocabulary V

Matrix products go through numpy's BLAS (np.matmul, always with a preallocated `out=`;
transposes are views, which numpy hands to BLAS as flags, not copies). Training attention is
attention.py's (its products through BLAS too); everything else is a numba kernel from
kernels.py. All activation buffers are allocated once per (B, T) and reused, so a training step
allocates nothing large.

The two halves of a layer (_attention_block, _mlp_block) are written once and used by both the
training forward (all T positions, causal attention over them) and extend() (new positions
attending to a key/value cache of the earlier ones), which is what the sampler runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import gpt2 as GK
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
from tui_llm.engine.models.gpt2_config import MATRIX_PARAMS, GPTConfig, ParamTensors, init_params


class BlockBuffers:
    """The buffers one layer writes. Training: layer l's slices of Activations (with recompute, the
    one layer's worth every layer reuses); extend: the cache's scratch rows, the residual stream
    updated in place (residual2 and residual3 are its x). 2-D buffers are (N rows, features)."""

    def __init__(self, ln1, ln1_mean, ln1_rstd, qkv, att_lse, atty, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu,
                 residual3, proj, lora_u=None, key=None, att_probs=None):
        self.ln1, self.ln1_mean, self.ln1_rstd, self.qkv = ln1, ln1_mean, ln1_rstd, qkv
        self.att_lse, self.atty = att_lse, atty  # att_lse (B, NH, T): attention rows' log-sum-exp
        self.residual2, self.ln2, self.ln2_mean, self.ln2_rstd = residual2, ln2, ln2_mean, ln2_rstd
        self.fch, self.fch_gelu, self.residual3, self.proj = fch, fch_gelu, residual3, proj
        self.lora_u = lora_u    # LoRA: {base matrix: (N, k r)} kept for the backward (None: not kept)
        self.key = key          # LoRA dropout masks' key (None: no dropout)
        self.att_probs = att_probs  # rows of one block: the attention probabilities (B, H, T, T), or None


class Activations:
    """Every buffer the forward pass keeps for the backward pass, for one (B, T).

    Per-layer buffers are stacked over L; 2-D buffers are (N = B*T rows, features). recompute:
    the per-layer buffers are one layer's, reused by every layer, and only each layer's output
    (residual3, the next layer's input) is kept over L; the backward runs a layer again first.
    """

    def __init__(self, cfg: GPTConfig, B: int, T: int, recompute: bool = False, lora_u: dict | None = None):
        self.B, self.T, self.recompute = B, T, recompute
        for name, shape in self.shapes(cfg, B, T, recompute).items():
            setattr(self, name, np.empty(shape, np.float32))
        kept = 1 if recompute else cfg.num_layers
        self.lora_u = {m: np.empty((kept,) + tuple(shape[1:]), np.float32) for m, shape in (lora_u or {}).items()}
        self.key: int | None = None  # the last training forward's dropout key
        NH = cfg.num_heads
        self.att_scratch = AttentionScratch(B, T, NH, NH, cfg.channels // NH)  # one block of scores, any layer

    if TYPE_CHECKING:  # the buffers are attributes named as in shapes()
        def __getattr__(self, name: str) -> np.ndarray: ...

    @staticmethod
    def shapes(cfg: GPTConfig, B: int, T: int, recompute: bool = False) -> dict[str, tuple[int, ...]]:
        L, C, NH, Vp = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.padded_vocab_size
        N = B * T
        Lb = 1 if recompute else L
        return {
            "encoded": (N, C),                 # wte[tokens] + wpe
            "ln1": (Lb, N, C), "ln1_mean": (Lb, N), "ln1_rstd": (Lb, N),
            "qkv": (Lb, N, 3 * C),
            "att_lse": (Lb, B, NH, T),         # attention rows' log-sum-exp (the probabilities, rebuilt)
            "att_probs": (Lb, B, NH, T, T) if keeps_probabilities(T) else (Lb, 0),  # or kept, short rows
            "atty": (Lb, N, C),                # attention output (heads side by side)
            "residual2": (Lb, N, C),           # after the attention block
            "ln2": (Lb, N, C), "ln2_mean": (Lb, N), "ln2_rstd": (Lb, N),
            "fch": (Lb, N, 4 * C),             # fc pre-activation (bias included)
            "fch_gelu": (Lb, N, 4 * C),
            "residual3": (L, N, C),            # after the MLP block: the next layer's input (always kept)
            "lnf": (N, C), "lnf_mean": (N,), "lnf_rstd": (N,),
            "logits": (N, Vp),                 # becomes dlogits in a training forward
            "losses": (N,),
            "proj_out": (N, C),                # scratch: a projection before its residual add
            # backward scratch
            "dresidual": (N, C), "d_c": (N, C), "d_3c": (N, 3 * C), "d_4c": (N, 4 * C),
        }

    @classmethod
    def nbytes_for(cls, cfg: GPTConfig, B: int, T: int, recompute: bool = False, lora_u: dict | None = None) -> int:
        kept = 1 if recompute else cfg.num_layers
        arrays = sum(math.prod(shape) for shape in cls.shapes(cfg, B, T, recompute).values())
        NH = cfg.num_heads
        return 4 * (arrays + sum(kept * math.prod(shape[1:]) for shape in (lora_u or {}).values())) + \
            AttentionScratch.nbytes_for(B, T, NH, NH, cfg.channels // NH)

    def layer(self, l: int) -> BlockBuffers:
        i = 0 if self.recompute else l
        return BlockBuffers(self.ln1[i], self.ln1_mean[i], self.ln1_rstd[i], self.qkv[i], self.att_lse[i], self.atty[i],
                            self.residual2[i], self.ln2[i], self.ln2_mean[i], self.ln2_rstd[i], self.fch[i],
                            self.fch_gelu[i], self.residual3[l], self.proj_out,
                            {m: u[i] for m, u in self.lora_u.items()}, self.key,
                            self.att_probs[i] if self.att_probs.size else None)

    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)] + list(self.lora_u.values())
        return self.att_scratch.nbytes() + sum(a.nbytes for a in arrays)


class GPT(Model):
    MATRIX_PARAMS = MATRIX_PARAMS

    def __init__(self, config: GPTConfig, params: np.ndarray | None = None, *, recompute: bool = False):
        super().__init__(config, params, recompute=recompute)
        self.no_grad = np.empty(0, np.float32)  # a norm's weight gradient that a frozen base does not want

    @staticmethod
    def make_params(config: GPTConfig, params: np.ndarray | None = None) -> ParamTensors:
        return ParamTensors(config, params)

    def make_activations(self, B: int, T: int) -> Activations:
        lora_u = self.lora.u_shapes(self.config.num_layers, B * T) if self.lora is not None else None
        check_fits_memory(Activations.nbytes_for(self.config, B, T, self.recompute, lora_u),
                          f"batch {B} x {T}'s activations")
        return Activations(self.config, B, T, self.recompute, lora_u)

    # -----------------------------------------------------------------------------------
    @classmethod
    def random_init(cls, config: GPTConfig, seed: int = 42) -> GPT:
        """GPT-2's init (config.init_params: N(0, 0.02) weights, residual projections
        0.02/sqrt(2L), biases 0, LN 1/0, padded wte rows 0) from numpy's default generator.
        torch_init.llmc_random_init is the same recipe drawn as PyTorch draws it."""
        rng = np.random.default_rng(seed)

        def normal(view, std):
            rng.standard_normal(out=view, dtype=np.float32)
            view *= np.float32(std)

        return cls(config, init_params(config, normal))

    # -----------------------------------------------------------------------------------
    def _encode(self, out: np.ndarray, tokens: np.ndarray, positions: np.ndarray) -> None:
        """out (B*T, C) = wte[tokens] + wpe[positions], tokens and positions (B, T) int32."""
        B, T = tokens.shape
        if not self.w.bf16:
            GK.encoder_forward(out.reshape(B, T, -1), tokens, positions, self.params.wte, self.params.wpe)
            return
        self.w.gather(out, "wte", tokens.reshape(-1))
        out += self.w("wpe")[positions.reshape(-1)]

    def _attend_training(self, b: BlockBuffers, B: int, T: int):
        """Causal attention over the T positions of each sequence (or document); b.att_lse keeps
        each row's log-sum-exp, from which the backward rebuilds the probabilities (or, for rows
        of one block, b.att_probs keeps them)."""
        C, NH = self.config.channels, self.config.num_heads
        scratch, doc_starts = self.acts.att_scratch, self.doc_starts

        def attend(out, qkv):
            attention_forward(out.reshape(B, T, C), b.att_lse, qkv.reshape(B, T, 3 * C), NH, NH, scratch, doc_starts,
                              b.att_probs)
        return attend

    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None, training: bool = False,
                doc_starts: np.ndarray | None = None):
        """inputs, targets: (B, T) int32 token ids. Returns the mean loss (or None without targets).

        With training=True the logits buffer is turned into dlogits on the way (fused softmax,
        cross-entropy and its gradient), ready for backward(); acts.logits then no longer holds
        logits. doc_starts (B, T) int32, for rows that pack several documents: where each
        position's document starts (attention.check_doc_starts). Each document then attends only
        to itself and its positions start at 0, as if it ran alone.
        """
        cfg = self.config
        B, T = inputs.shape
        L, V = cfg.num_layers, cfg.vocab_size
        N = B * T
        a = self._ensure_buffers(B, T)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        self.inputs = inputs
        a.key = self.lora.step_key if training and self.lora is not None and self.lora.lora.dropout > 0 else None
        self.doc_starts = None if doc_starts is None else check_doc_starts(doc_starts, B, T)
        self.positions = doc_positions(self.doc_starts, B, T)

        self._encode(a.encoded, inputs, self.positions)
        residual = a.encoded
        for l in range(L):
            b = a.layer(l)
            self._layer(l, residual, b, self._attend_training(b, B, T))
            residual = a.residual3[l]
        GK.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, residual, self.w("lnfw"), self.w("lnfb"))
        self.w.head_forward(a.logits, a.lnf, "wte")  # (N, Vp)

        self.trained_forward = False
        if targets is None:
            self.targets = None
            return None
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        self.targets = targets
        K.softmax_crossentropy(a.logits, a.losses, targets.reshape(N), V, np.float32(1.0 / N), training)
        self.trained_forward = training
        return float(a.losses.sum(dtype=np.float32) / N)

    # -----------------------------------------------------------------------------------
    # One layer, in two residual halves. Rows are positions (N of them); `attend(atty, qkv)`
    # writes the attention output (N, C) from the (N, 3C) queries, keys and values.

    def _layer(self, l: int, x: np.ndarray, b: BlockBuffers, attend, rerun: bool = False) -> None:
        """b.residual3 = layer l of x: the attention half, then the MLP half. rerun: the backward's
        recompute, which stops at what the backward reads (gelu(fc)): the projection's output is
        the next layer's input, kept from the forward."""
        self._attention_block(l, x, b, attend)
        self._mlp_block(l, b, rerun)

    def _attention_block(self, l: int, x: np.ndarray, b: BlockBuffers, attend) -> None:
        """b.residual2 = x + attproj(attend(qkv(ln1(x))))."""
        w = self.w
        GK.layernorm_forward(b.ln1, b.ln1_mean, b.ln1_rstd, x, w("ln1w", l), w("ln1b", l))
        self._linear(b.qkv, b.ln1, "qkvw", l, b.lora_u, b.key)
        K.add_bias(b.qkv, w("qkvb", l))
        attend(b.atty, b.qkv)
        self._linear(b.proj, b.atty, "attprojw", l, b.lora_u, b.key)
        GK.residual_bias_forward(b.residual2, x, b.proj, w("attprojb", l))

    def _mlp_block(self, l: int, b: BlockBuffers, rerun: bool = False) -> None:
        """b.residual3 = b.residual2 + fcproj(gelu(fc(ln2(b.residual2))))."""
        w = self.w
        GK.layernorm_forward(b.ln2, b.ln2_mean, b.ln2_rstd, b.residual2, w("ln2w", l), w("ln2b", l))
        self._linear(b.fch, b.ln2, "fcw", l, b.lora_u, b.key)  # pre-activation, bias added by the next kernel
        GK.bias_gelu_forward(b.fch_gelu, b.fch, w("fcb", l))
        if rerun:
            self._rerun_linear(b.fch_gelu, "fcprojw", l, b.lora_u, b.key)
            return
        self._linear(b.proj, b.fch_gelu, "fcprojw", l, b.lora_u, b.key)
        GK.residual_bias_forward(b.residual3, b.residual2, b.proj, w("fcprojb", l))

    # -----------------------------------------------------------------------------------
    # Generation: positions t0.. appended to a key/value cache

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config)

    def extend(self, cache: KVCache, tokens: np.ndarray, t0: int) -> np.ndarray:
        """Run tokens (n,) at positions t0..t0+n-1 (adapters included), storing their keys and values
        in `cache` (positions before t0 must already be there); return the last position's logits (Vp,).

        The returned array is the cache's buffer: the next extend() overwrites it.
        """
        cfg = self.config
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n, C, NH = tokens.size, cfg.channels, cfg.num_heads
        if n == 0 or t0 < 0 or t0 + n > cfg.max_seq_len:
            raise ValueError(f"positions {t0}..{t0 + n - 1} are outside the model's 0..{cfg.max_seq_len - 1}")
        if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in 0..{cfg.vocab_size - 1}")
        x, b = cache.scratch(n)                       # x (n, C): the residual stream, updated in place
        self._encode(x, tokens.reshape(1, n), np.arange(t0, t0 + n, dtype=np.int32).reshape(1, n))
        for l in range(cfg.num_layers):
            keys, values = cache.k[l], cache.v[l]    # (maxT, C)

            def attend(out, qkv):  # the new queries attend to every cached position up to their own
                keys[t0:t0 + n] = qkv[:, C:2 * C]
                values[t0:t0 + n] = qkv[:, 2 * C:]
                K.attention_cached(out, qkv, keys, values, t0, NH, NH)

            self._layer(l, x, b, attend)
        last = slice(n - 1, n)
        GK.layernorm_forward(b.ln1[last], b.ln1_mean[last], b.ln1_rstd[last], x[last], self.w("lnfw"), self.w("lnfb"))
        self.w.head_forward(cache.logits, b.ln1[last], "wte")
        return cache.logits[0]

    # -----------------------------------------------------------------------------------
    def backward(self, accumulate: bool = False) -> None:
        """Every gradient of what trains, for the last training forward: written into the gradient
        buffer, or added to it with accumulate=True (the next micro-batch of an accumulated step).

        Weight gradients are written by BLAS (out=) and bias/LayerNorm gradients by the
        kernels, so each step's gradients replace the previous ones: no separate zeroing pass
        over the 16 tensors. The residual stream's gradient (dresidual) accumulates down the
        layers exactly as llm.c's `+=` kernels do. A frozen base (LoRA) gets input gradients only.
        """
        if not self.trained_forward or self.inputs is None:
            raise RuntimeError("backward() needs a forward(inputs, targets, training=True) first")
        cfg, w, a = self.config, self.w, self.acts
        g = self.allocate_grads() if self.lora is None else None     # the base's gradients, if it trains
        B, T = self.inputs.shape
        C, NH, L = cfg.channels, cfg.num_heads, cfg.num_layers
        dlogits = a.logits                      # (N, Vp), padded columns are zero
        dres = a.dresidual
        acc = accumulate
        if g is not None and acc and self.grad_scratch is None and needs_scratch():  # one layer's largest (4C x C)
            self.grad_scratch = np.empty(4 * C * C, np.float32)
        scratch = self.grad_scratch

        def grad(name, l=None):  # a norm's gradient buffer, or nothing for a frozen base
            return self.no_grad if g is None else (g.views[name] if l is None else g.views[name][l])

        # lm-head (tied with wte) and final LayerNorm
        if g is not None:
            head_grad(g.wte, dlogits, a.lnf, scratch, acc)    # (Vp, C); the encoder adds its part below
        w.head_backward(a.d_c, dlogits, "wte")               # d lnf
        dres[:] = 0.0
        last = a.residual3[L - 1] if L > 0 else a.encoded
        GK.layernorm_backward(dres, grad("lnfw"), grad("lnfb"), a.d_c, last, a.lnf_mean, a.lnf_rstd, w("lnfw"), acc)

        for l in reversed(range(L)):
            b = a.layer(l)
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            if a.recompute:  # this layer's buffers again, bit for bit as the forward made them
                self._layer(l, residual, b, self._attend_training(b, B, T), rerun=True)
            # MLP block
            self._linear_backward(a.d_4c, dres, b.fch_gelu, "fcprojw", l, acc, b.lora_u, b.key)  # d gelu output
            if g is not None:
                K.column_sum(g.fcprojb[l], dres, acc)
            GK.gelu_backward_inplace(a.d_4c, b.fch)       # d fc output
            self._linear_backward(a.d_c, a.d_4c, b.ln2, "fcw", l, acc, b.lora_u, b.key)        # d ln2 output
            if g is not None:
                K.column_sum(g.fcb[l], a.d_4c, acc)
            GK.layernorm_backward(dres, grad("ln2w", l), grad("ln2b", l), a.d_c, b.residual2,
                                  b.ln2_mean, b.ln2_rstd, w("ln2w", l), acc)
            # attention block
            self._linear_backward(a.d_c, dres, b.atty, "attprojw", l, acc, b.lora_u, b.key)    # d attention output
            if g is not None:
                K.column_sum(g.attprojb[l], dres, acc)
            attention_backward(a.d_3c.reshape(B, T, 3 * C), a.d_c.reshape(B, T, C), b.atty.reshape(B, T, C),
                               b.att_lse, b.qkv.reshape(B, T, 3 * C), NH, NH, a.att_scratch, self.doc_starts,
                               b.att_probs)
            needs_dx = g is not None or l > 0   # a frozen embedding wants no gradient below layer 0
            self._linear_backward(a.d_c if needs_dx else None, a.d_3c, b.ln1, "qkvw", l, acc, b.lora_u, b.key)
            if g is not None:
                K.column_sum(g.qkvb[l], a.d_3c, acc)
            if needs_dx:
                GK.layernorm_backward(dres, grad("ln1w", l), grad("ln1b", l), a.d_c, residual,
                                      b.ln1_mean, b.ln1_rstd, w("ln1w", l), acc)

        if g is not None:
            if not acc:
                g.wpe[:] = 0.0
            GK.encoder_backward(g.wte, g.wpe, dres.reshape(B, T, C), self.inputs, self.positions)
        self.trained_forward = False


class KVCache:
    """Keys and values of every position seen so far (per layer), plus extend()'s scratch rows."""

    def __init__(self, cfg: GPTConfig):
        L, C, maxT = cfg.num_layers, cfg.channels, cfg.max_seq_len
        self.config = cfg
        self.k = np.zeros((L, maxT, C), np.float32)
        self.v = np.zeros((L, maxT, C), np.float32)
        self.logits = np.empty((1, cfg.padded_vocab_size), np.float32)
        self._rows = 0
        self._scratch: dict[str, np.ndarray] = {}

    def scratch(self, n: int) -> tuple[np.ndarray, BlockBuffers]:
        """The residual stream x (n, C) and a layer's buffers over n rows (grown when a longer
        extend comes; shorter ones use the first rows)."""
        if n > self._rows:
            C = self.config.channels
            widths = {"x": C, "ln": C, "qkv": 3 * C, "atty": C, "proj": C, "fch": 4 * C, "fch_gelu": 4 * C}
            self._scratch = {name: np.empty((n, w), np.float32) for name, w in widths.items()}
            self._scratch["mean"] = np.empty(n, np.float32)
            self._scratch["rstd"] = np.empty(n, np.float32)
            self._rows = n
        s = {name: buf[:n] for name, buf in self._scratch.items()}
        x = s["x"]
        return x, BlockBuffers(s["ln"], s["mean"], s["rstd"], s["qkv"], None, s["atty"], x, s["ln"], s["mean"],
                               s["rstd"], s["fch"], s["fch_gelu"], x, s["proj"])
