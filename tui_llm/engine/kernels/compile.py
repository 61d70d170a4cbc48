"""Compile (or load from numba's on-disk cache) a model's kernels up front, with the argument
types the model uses, so the first training step is not also a compile step. Only the kernels of
the architecture that runs are compiled, plus the shared ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tui_llm.engine.kernels import bf16, common, gpt2, llama, optimizer
from tui_llm.engine.kernels import lora as lora_kernels

Progress = Callable[[int, int, str], None]


def compile_kernels(arch: str = "gpt2", progress: Progress | None = None, lora: bool = False) -> None:
    """arch: "gpt2" or "llama"; lora: a LoRA run's too (bf16 base, fingerprint, dropout).
    progress(done, total, name) is called before each group and at the end."""
    calls = _shared_calls() + (_llama_calls() if arch == "llama" else _gpt2_calls()) + (_lora_calls() if lora else [])
    for i, (name, call) in enumerate(calls):
        if progress is not None:
            progress(i, len(calls), name)
        call()
    if progress is not None:
        progress(len(calls), len(calls), "done")


def _shared_calls() -> list[tuple[str, Callable[[], object]]]:
    f32 = np.float32
    a2, a1 = np.zeros((2, 6), f32), np.zeros(6, f32)
    att4, stats, starts = np.zeros((1, 1, 2, 2), f32), np.zeros((1, 1, 2), f32), np.zeros((1, 2), np.int32)
    ranges = np.zeros(1, np.int64)
    return [
        ("bias", lambda: (common.add_bias(a2, a1), common.column_sum(a1, a2, False))),
        ("attention softmax", lambda: (common.attention_softmax(att4, stats, starts, 0, 0, f32(1.0)),
                                       common.attention_softmax_backward(att4, att4.copy(), stats, att4, att4, starts,
                                                                         0, 0, f32(1.0), True))),
        ("softmax / cross-entropy", lambda: (
            common.softmax_crossentropy(a2, np.zeros(2, f32), np.zeros(2, np.int32), 5, f32(0.5), True),
            common.softmax_rows(a2, a2, 5, f32(1.0)))),
        ("adamw", lambda: (optimizer.sum_of_squares(a1), optimizer.accumulate(a1.copy(), a1),
                           optimizer.adamw_update(a1, a1, a1.copy(), a1.copy(), ranges, ranges,
                                                  1e-4, 0.9, 0.999, 1e-8, 0.0, 1, 1.0))),
    ]


def _gpt2_calls() -> list[tuple[str, Callable[[], object]]]:
    f32 = np.float32
    a2, a1 = np.zeros((2, 6), f32), np.zeros(6, f32)
    a3, tok = np.zeros((1, 2, 6), f32), np.zeros((1, 2), np.int32)
    qkv2, cache = np.zeros((2, 18), f32), np.zeros((4, 6), f32)
    return [
        ("encoder", lambda: (gpt2.encoder_forward(a3, tok, tok, a2, a2), gpt2.encoder_backward(a2, a2, a3, tok, tok))),
        ("layernorm", lambda: (gpt2.layernorm_forward(a2, np.zeros(2, f32), np.zeros(2, f32), a2, a1, a1),
                               gpt2.layernorm_backward(a2, a1, a1, a2, a2, np.zeros(2, f32), np.zeros(2, f32), a1,
                                                       False))),
        ("residual", lambda: gpt2.residual_bias_forward(a2, a2, a2, a1)),
        ("gelu", lambda: (gpt2.bias_gelu_forward(a2, a2, a1), gpt2.gelu_backward_inplace(a2, a2))),
        ("attention (cached)", lambda: common.attention_cached(a2, qkv2, cache, cache, 0, 2, 2)),
    ]


def _llama_calls() -> list[tuple[str, Callable[[], object]]]:
    f32 = np.float32
    a2, a1, r1 = np.zeros((2, 4), f32), np.zeros(4, f32), np.zeros(2, f32)
    qkv3, y3 = np.zeros((1, 2, 16), f32), np.zeros((1, 2, 8), f32)
    cs = np.ones((4, 2), f32)
    return [
        ("embedding", lambda: llama.embedding_backward(a2, a2, np.zeros(2, np.int32))),
        ("rmsnorm", lambda: (llama.rmsnorm_forward(a2, r1, a2, a1, 1e-5),
                             llama.rmsnorm_backward(a2, a1, a2, a2, r1, a1, False))),
        ("rope", lambda: llama.rope_rotate(qkv3, cs, cs, 3, np.zeros((1, 2), np.int32), 1.0)),
        ("q/k norm", lambda: (llama.head_rmsnorm_forward(qkv3[0][:, :8].reshape(2, 2, 4), np.zeros((2, 2, 4), f32),
                                                         np.zeros((2, 2), f32), a1, 1e-5),
                              llama.head_rmsnorm_backward(qkv3[0][:, :8].reshape(2, 2, 4), a1.copy(),
                                                          np.zeros((2, 2, 4), f32), np.ones((2, 2), f32), a1, False))),
        ("swiglu", lambda: (llama.swiglu_forward(a2[:, :2], a2), llama.swiglu_backward(a2, a2[:, :2].copy(), a2.copy()))),
        ("attention (cached)", lambda: common.attention_cached(y3[0], qkv3[0], np.zeros((4, 4), f32),
                                                               np.zeros((4, 4), f32), 0, 2, 1)),
    ]


def _lora_calls() -> list[tuple[str, Callable[[], object]]]:
    f32 = np.float32
    a1, bits, a2 = np.zeros(6, f32), np.zeros(6, np.uint16), np.zeros((2, 3), f32)
    return [
        ("bf16 base", lambda: (bf16.widen_bf16(a1, bits), bf16.narrow_to_bf16(bits.copy(), a1),
                               bf16.fingerprint_f32(a1), bf16.fingerprint_bf16(bits))),
        ("lora dropout", lambda: lora_kernels.dropout_apply(a2.copy(), a2, 0.5, np.uint64(1))),
    ]
