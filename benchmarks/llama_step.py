"""Llama training-step time against its BLAS floor (SmolLM2-135M's shape by default).

    python benchmarks/llama_step.py                          # SmolLM2-135M shape, B=4 T=64
    python benchmarks/llama_step.py --batch 8 --seq 128 --steps 5

A randomly initialised model of the given shape (default: 30 layers, 576 channels, 9 heads /
3 key-value heads, SwiGLU 1536, vocab 49,152, tied) runs forward (with the fused
softmax/cross-entropy), backward and the AdamW update, as the trainer does. The floor is the
forward+backward's matrix products alone: every np.matmul call of llama.py and grad_accumulation.py in one step is
recorded (shapes, which operands are transposed views; the modules' `np` is swapped for a
stand-in whose matmul records, benchmarks/step.py's matmuls_through; attention's products are
not recorded: they count as kernel time) and replayed through
np.matmul on fresh buffers of the same layout. Steps and replays alternate, so load changes hit both alike;
fwd+bwd / floor is what the kernels and glue cost on top of the products.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import Stats, command_line, fmt_ms, print_machine
from step import matmuls_through

import tui_llm.engine.models.llama as LM
from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.models.llama import Llama, LlamaConfig
from tui_llm.engine.training.optim import AdamW, AdamWConfig

SMOLLM2_135M = dict(vocab_size=49152, max_seq_len=2048, num_layers=30, num_heads=9, num_kv_heads=3,
                    channels=576, ffn_channels=1536, rms_norm_eps=1e-5, rope_theta=100000.0, tied_embeddings=True)


def record_matmuls(model: Llama, inputs, targets) -> list[tuple]:
    """(a, b, out) layouts of every product of one forward+backward: (shape, transposed) each."""
    calls = []

    def recording(a, b, out):
        calls.append(tuple((x.shape, x.strides[-1] != x.itemsize) for x in (a, b, out)))
        np.matmul(a, b, out=out)

    with matmuls_through(recording, LM):
        model.forward(inputs, targets, training=True)
        model.backward()
    return calls


def operand(shape, transposed, rng):
    """A fresh float32 array of this shape; a transposed view of a contiguous one when the step used one."""
    if transposed:
        return rng.standard_normal(shape[::-1], dtype=np.float32).T
    return rng.standard_normal(shape, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (and as many floor replays)")
    args = ap.parse_args()

    print_machine()
    print(f"command: {command_line()}")
    cfg = LlamaConfig(**SMOLLM2_135M)
    B, T = args.batch, args.seq
    print(f"model: SmolLM2-135M shape | {cfg.num_layers} layers, {cfg.channels} channels, {cfg.num_heads} heads / "
          f"{cfg.num_kv_heads} KV, SwiGLU {cfg.ffn_channels}, vocab {cfg.vocab_size} | B={B} T={T}\n")
    compile_kernels("llama")
    model = Llama.random_init(cfg, seed=1337)
    print(f"parameters: {model.num_parameters:,}")
    opt = AdamW(model, AdamWConfig(lr=6e-4, weight_decay=0.1, grad_clip=1.0))
    rng = np.random.default_rng(1337)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T + 1), dtype=np.int32)
    inputs, targets = np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])

    def step():
        t0 = time.perf_counter()
        loss = model.forward(inputs, targets, training=True)
        t1 = time.perf_counter()
        model.backward()
        t2 = time.perf_counter()
        opt.update(6e-4)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, loss

    step()  # warm-up: buffers, gradients, optimizer state
    calls = record_matmuls(model, inputs, targets)
    flops = sum(2 * a[0][0] * a[0][1] * b[0][1] for a, b, _ in calls)
    replay = [tuple(operand(shape, tr, rng) for shape, tr in call) for call in calls]

    def floor():
        t0 = time.perf_counter()
        for a, b, out in replay:
            np.matmul(a, b, out=out)
        return time.perf_counter() - t0

    floor()
    fwd, bwd, opt_s, floors = [], [], [], []
    for _ in range(args.steps):
        f, b, o, loss = step()
        fwd.append(f), bwd.append(b), opt_s.append(o)
        floors.append(floor())
    fb = Stats([f + b for f, b in zip(fwd, bwd)])
    fl = Stats(floors)
    print(f"loss after warm-up: {loss:.4f}")
    print(f"forward      {Stats(fwd).ms()}")
    print(f"backward     {Stats(bwd).ms()}")
    print(f"optimizer    {Stats(opt_s).ms()}")
    print(f"fwd+bwd      {fb.ms()}  ({flops / fb.median / 1e9:.1f} GFLOP/s)")
    print(f"BLAS floor   {fl.ms()}  ({len(calls)} products, {flops / 1e9:.2f} GFLOP, {flops / fl.median / 1e9:.1f} GFLOP/s)")
    print(f"fwd+bwd / floor: {fb.median / fl.median:.2f}x   (median {fmt_ms(fb.median)} / {fmt_ms(fl.median)}); "
          f"best {fb.min / fl.min:.2f}x ({fmt_ms(fb.min)} / {fmt_ms(fl.min)}), the fairer figure on a loaded machine")


if __name__ == "__main__":
    main()
