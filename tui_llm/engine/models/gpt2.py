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

import numpy as np

from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import gpt2 as GK
from tui_llm.engine.kernels.attention import (
    AttentionScratch,
    attention_backward,
    attention_forward,
    check_doc_starts,
    doc_positions,
)
from tui_llm.engine.kernels.grad_accumulation import head_grad, matmul_grad, needs_scratch
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.gpt2_config import MATRIX_PARAMS, GPTConfig, ParamTensors, init_params


class Activations:
    """Every buffer the forward pass keeps for the backward pass, for one (B, T).

    Per-layer buffers are stacked over L; 2-D buffers are (N = B*T rows, features).
    """

    def __init__(self, cfg: GPTConfig, B: int, T: int):
        L, C, NH, Vp = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.padded_vocab_size
        N = B * T
        f32 = np.float32
        self.B, self.T = B, T
        self.encoded = np.empty((N, C), f32)            # wte[tokens] + wpe
        self.ln1 = np.empty((L, N, C), f32)
        self.ln1_mean = np.empty((L, N), f32)
        self.ln1_rstd = np.empty((L, N), f32)
        self.qkv = np.empty((L, N, 3 * C), f32)
        self.att_lse = np.empty((L, B, NH, T), f32)     # attention rows' log-sum-exp (the probabilities, rebuilt)
        self.atty = np.empty((L, N, C), f32)            # attention output (heads side by side)
        self.residual2 = np.empty((L, N, C), f32)       # after the attention block
        self.ln2 = np.empty((L, N, C), f32)
        self.ln2_mean = np.empty((L, N), f32)
        self.ln2_rstd = np.empty((L, N), f32)
        self.fch = np.empty((L, N, 4 * C), f32)         # fc pre-activation (bias included)
        self.fch_gelu = np.empty((L, N, 4 * C), f32)
        self.residual3 = np.empty((L, N, C), f32)       # after the MLP block
        self.lnf = np.empty((N, C), f32)
        self.lnf_mean = np.empty(N, f32)
        self.lnf_rstd = np.empty(N, f32)
        self.logits = np.empty((N, Vp), f32)            # becomes dlogits in a training forward
        self.losses = np.empty(N, f32)
        self.proj_out = np.empty((N, C), f32)           # scratch: a projection before its residual add
        # backward scratch
        self.dresidual = np.empty((N, C), f32)
        self.d_c = np.empty((N, C), f32)
        self.d_3c = np.empty((N, 3 * C), f32)
        self.d_4c = np.empty((N, 4 * C), f32)
        self.att_scratch = AttentionScratch(B, T, NH, NH, C // NH)  # one block of scores, any layer

    def nbytes(self) -> int:
        return self.att_scratch.nbytes() + sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


class GPT(Model):
    MATRIX_PARAMS = MATRIX_PARAMS

    @staticmethod
    def make_params(config: GPTConfig, params: np.ndarray | None = None) -> ParamTensors:
        return ParamTensors(config, params)

    def make_activations(self, B: int, T: int) -> Activations:
        return Activations(self.config, B, T)

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
    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None, training: bool = False,
                doc_starts: np.ndarray | None = None):
        """inputs, targets: (B, T) int32 token ids. Returns the mean loss (or None without targets).

        With training=True the logits buffer is turned into dlogits on the way (fused softmax,
        cross-entropy and its gradient), ready for backward(); acts.logits then no longer holds
        logits. doc_starts (B, T) int32, for rows that pack several documents: where each
        position's document starts (attention.check_doc_starts). Each document then attends only
        to itself and its positions start at 0, as if it ran alone.
        """
        cfg, p = self.config, self.params
        B, T = inputs.shape
        C, NH, L, V = cfg.channels, cfg.num_heads, cfg.num_layers, cfg.vocab_size
        N = B * T
        a = self._ensure_buffers(B, T)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        self.inputs = inputs
        self.doc_starts = None if doc_starts is None else check_doc_starts(doc_starts, B, T)
        self.positions = doc_positions(self.doc_starts, B, T)

        GK.encoder_forward(a.encoded.reshape(B, T, C), inputs, self.positions, p.wte, p.wpe)
        residual = a.encoded
        for l in range(L):
            lse = a.att_lse[l]  # (B, NH, T), kept for the backward pass

            def attend(out, qkv):  # causal attention over the T positions of each sequence (or document)
                attention_forward(out.reshape(B, T, C), lse, qkv.reshape(B, T, 3 * C), NH, NH, a.att_scratch,
                                  self.doc_starts)

            self._attention_block(l, a.residual2[l], residual, a.ln1[l], a.ln1_mean[l], a.ln1_rstd[l],
                                  a.qkv[l], a.atty[l], a.proj_out, attend)
            self._mlp_block(l, a.residual3[l], a.residual2[l], a.ln2[l], a.ln2_mean[l], a.ln2_rstd[l],
                            a.fch[l], a.fch_gelu[l], a.proj_out)
            residual = a.residual3[l]
        GK.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, residual, p.lnfw, p.lnfb)
        np.matmul(a.lnf, p.wte.T, out=a.logits)  # (N, Vp)

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

    def _attention_block(self, l, out, x, ln, mean, rstd, qkv, atty, proj, attend) -> None:
        """out = x + attproj(attend(qkv(ln1(x)))). x, out, ln, atty, proj: (N, C); qkv: (N, 3C); mean, rstd: (N,)."""
        p = self.params
        GK.layernorm_forward(ln, mean, rstd, x, p.ln1w[l], p.ln1b[l])
        np.matmul(ln, p.qkvw[l].T, out=qkv)
        K.add_bias(qkv, p.qkvb[l])
        attend(atty, qkv)
        np.matmul(atty, p.attprojw[l].T, out=proj)
        GK.residual_bias_forward(out, x, proj, p.attprojb[l])

    def _mlp_block(self, l, out, x, ln, mean, rstd, fch, fch_gelu, proj) -> None:
        """out = x + fcproj(gelu(fc(ln2(x)))). x, out, ln, proj: (N, C); fch, fch_gelu: (N, 4C)."""
        p = self.params
        GK.layernorm_forward(ln, mean, rstd, x, p.ln2w[l], p.ln2b[l])
        np.matmul(ln, p.fcw[l].T, out=fch)          # pre-activation, bias added by the next kernel
        GK.bias_gelu_forward(fch_gelu, fch, p.fcb[l])
        np.matmul(fch_gelu, p.fcprojw[l].T, out=proj)
        GK.residual_bias_forward(out, x, proj, p.fcprojb[l])

    # -----------------------------------------------------------------------------------
    # Generation: positions t0.. appended to a key/value cache

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config)

    def extend(self, cache: KVCache, tokens: np.ndarray, t0: int) -> np.ndarray:
        """Run tokens (n,) at positions t0..t0+n-1, storing their keys and values in `cache`
        (positions before t0 must already be there); return the last position's logits (Vp,).

        The returned array is the cache's buffer: the next extend() overwrites it.
        """
        cfg, p = self.config, self.params
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n, C, NH = tokens.size, cfg.channels, cfg.num_heads
        if n == 0 or t0 < 0 or t0 + n > cfg.max_seq_len:
            raise ValueError(f"positions {t0}..{t0 + n - 1} are outside the model's 0..{cfg.max_seq_len - 1}")
        if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in 0..{cfg.vocab_size - 1}")
        b = cache.scratch(n)
        x = b["x"]                                    # (n, C): the residual stream, updated in place
        np.add(p.wte[tokens], p.wpe[t0:t0 + n], out=x)
        for l in range(cfg.num_layers):
            keys, values = cache.k[l], cache.v[l]    # (maxT, C)

            def attend(out, qkv):  # the new queries attend to every cached position up to their own
                keys[t0:t0 + n] = qkv[:, C:2 * C]
                values[t0:t0 + n] = qkv[:, 2 * C:]
                K.attention_cached(out, qkv, keys, values, t0, NH, NH)

            self._attention_block(l, x, x, b["ln"], b["mean"], b["rstd"], b["qkv"], b["atty"], b["proj"], attend)
            self._mlp_block(l, x, x, b["ln"], b["mean"], b["rstd"], b["fch"], b["fch_gelu"], b["proj"])
        last = slice(n - 1, n)
        GK.layernorm_forward(b["ln"][last], b["mean"][last], b["rstd"][last], x[last], p.lnfw, p.lnfb)
        np.matmul(b["ln"][last], p.wte.T, out=cache.logits)
        return cache.logits[0]

    # -----------------------------------------------------------------------------------
    def backward(self, accumulate: bool = False) -> None:
        """Every parameter gradient for the last training forward: written into self.grads, or
        added to them with accumulate=True (the next micro-batch of an accumulated step).

        Weight gradients are written by BLAS (out=) and bias/LayerNorm gradients by the
        kernels, so each step's gradients replace the previous ones: no separate zeroing pass
        over the 16 tensors. The residual stream's gradient (dresidual) accumulates down the
        layers exactly as llm.c's `+=` kernels do.
        """
        if not self.trained_forward or self.inputs is None:
            raise RuntimeError("backward() needs a forward(inputs, targets, training=True) first")
        cfg, p, a = self.config, self.params, self.acts
        g = self.allocate_grads()
        B, T = self.inputs.shape
        C, NH, L = cfg.channels, cfg.num_heads, cfg.num_layers
        dlogits = a.logits                      # (N, Vp), padded columns are zero
        dres = a.dresidual
        acc = accumulate
        if acc and self.grad_scratch is None and needs_scratch():  # one layer's largest weight gradient (4C x C)
            self.grad_scratch = np.empty(4 * C * C, np.float32)
        scratch = self.grad_scratch

        # lm-head (tied with wte) and final LayerNorm
        head_grad(g.wte, dlogits, a.lnf, scratch, acc)    # (Vp, C); the encoder adds its part below
        np.matmul(dlogits, p.wte, out=a.d_c)                 # d lnf
        dres[:] = 0.0
        last = a.residual3[L - 1] if L > 0 else a.encoded
        GK.layernorm_backward(dres, g.lnfw, g.lnfb, a.d_c, last, a.lnf_mean, a.lnf_rstd, p.lnfw, acc)

        for l in reversed(range(L)):
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            # MLP block
            matmul_grad(g.fcprojw[l], dres.T, a.fch_gelu[l], scratch, acc)
            K.column_sum(g.fcprojb[l], dres, acc)
            np.matmul(dres, p.fcprojw[l], out=a.d_4c)          # d gelu output
            GK.gelu_backward_inplace(a.d_4c, a.fch[l])       # d fc output
            matmul_grad(g.fcw[l], a.d_4c.T, a.ln2[l], scratch, acc)
            K.column_sum(g.fcb[l], a.d_4c, acc)
            np.matmul(a.d_4c, p.fcw[l], out=a.d_c)             # d ln2 output
            GK.layernorm_backward(dres, g.ln2w[l], g.ln2b[l], a.d_c, a.residual2[l],
                                 a.ln2_mean[l], a.ln2_rstd[l], p.ln2w[l], acc)
            # attention block
            matmul_grad(g.attprojw[l], dres.T, a.atty[l], scratch, acc)
            K.column_sum(g.attprojb[l], dres, acc)
            np.matmul(dres, p.attprojw[l], out=a.d_c)          # d attention output
            attention_backward(a.d_3c.reshape(B, T, 3 * C), a.d_c.reshape(B, T, C), a.atty[l].reshape(B, T, C),
                               a.att_lse[l], a.qkv[l].reshape(B, T, 3 * C), NH, NH, a.att_scratch, self.doc_starts)
            matmul_grad(g.qkvw[l], a.d_3c.T, a.ln1[l], scratch, acc)
            K.column_sum(g.qkvb[l], a.d_3c, acc)
            np.matmul(a.d_3c, p.qkvw[l], out=a.d_c)            # d ln1 output
            GK.layernorm_backward(dres, g.ln1w[l], g.ln1b[l], a.d_c, residual,
                                 a.ln1_mean[l], a.ln1_rstd[l], p.ln1w[l], acc)

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

    def scratch(self, n: int) -> dict[str, np.ndarray]:
        """Buffers for n rows (grown when a longer extend comes; shorter ones use the first rows)."""
        if n > self._rows:
            C = self.config.channels
            widths = {"x": C, "ln": C, "qkv": 3 * C, "atty": C, "proj": C, "fch": 4 * C, "fch_gelu": 4 * C}
            self._scratch = {name: np.empty((n, w), np.float32) for name, w in widths.items()}
            self._scratch["mean"] = np.empty(n, np.float32)
            self._scratch["rstd"] = np.empty(n, np.float32)
            self._rows = n
        return {name: buf[:n] for name, buf in self._scratch.items()}
