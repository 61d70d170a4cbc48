"""Our Llama against transformers' LlamaForCausalLM (PyTorch eager, fp32, same threads).

transformers and torch are benchmark-only: install them into a throwaway venv, never the product's.

    python -m venv /tmp/benchvenv --system-site-packages
    /tmp/benchvenv/bin/pip install torch==2.13.0 "transformers>=5"
    /tmp/benchvenv/bin/python benchmarks/llama_vs_torch.py --check          # logits agree? (tiny random models)
    /tmp/benchvenv/bin/python benchmarks/llama_vs_torch.py                  # SmolLM2-135M shape, B=4, T=64 and 256

--check writes small random Llama, Qwen2 (q/k/v biases, untied head, GQA, llama3 RoPE scaling) and Qwen3 (q/k norms)
models with our HF writer, loads them with transformers, and compares the logits of the same
tokens with ours (max |diff|). The timing runs one training step (forward with the loss,
backward, AdamW) of the same shape in each, ours first, then transformers', in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import Stats, fmt_ms, print_machine
from llama_step import SMOLLM2_135M

from tui_llm.engine.formats.hf_llama import write_hf_llama
from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.llama import Llama, LlamaConfig
from tui_llm.engine.training.optim import AdamW, AdamWConfig

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
CHECKS = {
    "llama (GQA, tied, llama3 RoPE)": dict(num_kv_heads=2, rope_scaling=LLAMA3),
    "qwen2 (q/k/v bias, untied)": dict(num_kv_heads=1, qkv_bias=True, tied_embeddings=False),
    "mha (untied)": dict(tied_embeddings=False),
    "qwen3 (q/k norm, head_dim 32, untied)": dict(num_kv_heads=2, qk_norm=True, head_dim=32, tied_embeddings=False),
}


def check(torch, transformers) -> None:
    base = dict(vocab_size=300, max_seq_len=64, num_layers=3, num_heads=4, channels=64, ffn_channels=96,
                rope_theta=10000.0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, (2, 40)).astype(np.int32)
    for name, extra in CHECKS.items():
        cfg = LlamaConfig(**base, **extra)
        ours = Llama.random_init(cfg, seed=1)
        ours.params.flat[:] += 0.02 * rng.standard_normal(ours.params.flat.size, dtype=np.float32)  # norms off 1
        ours.forward(tokens)
        logits = ours.acts.logits.reshape(2, 40, -1)[:, :, :cfg.vocab_size]
        with tempfile.TemporaryDirectory() as d:
            write_hf_llama(d, cfg, ours.params.flat)
            theirs = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
            theirs.eval()
            with torch.no_grad():
                their_logits = theirs(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
        diff = np.abs(logits - their_logits[:, :, :cfg.vocab_size]).max()
        print(f"{name:34s} {type(theirs).__name__:20s} max |logits diff| {diff:.2e} "
              f"(logits up to {np.abs(their_logits).max():.1f})")


def timed(step, steps: int) -> Stats:
    """One warm-up call, then `steps` timed ones."""
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return Stats(times)


def time_ours(cfg, B, T, steps) -> Stats:
    model = Llama.random_init(cfg, seed=1)
    opt = AdamW(model, AdamWConfig(lr=1e-4, weight_decay=0.1, grad_clip=1.0))
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32) for _ in range(2))

    def step():
        model.forward(x, y, training=True)
        model.backward()
        opt.update(1e-4)

    return timed(step, steps)


def time_theirs(torch, transformers, cfg, B, T, steps) -> Stats:
    hf = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.channels,
                                  intermediate_size=cfg.ffn_channels, num_hidden_layers=cfg.num_layers,
                                  num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.rms_norm_eps,
                                  rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tied_embeddings,
                                  attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int64))

    def step():
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare logits with transformers instead of timing")
    p.add_argument("--seq", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    threads = set_threads(args.threads)
    from vs_torch import torch_environment

    torch_environment()
    import torch
    import transformers

    torch.set_num_threads(threads)
    print_machine()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads")
    if args.check:
        check(torch, transformers)
        return
    compile_kernels("llama")
    cfg = LlamaConfig(**SMOLLM2_135M)
    for T in args.seq:
        ours = time_ours(cfg, args.batch, T, args.steps)
        theirs = time_theirs(torch, transformers, cfg, args.batch, T, args.steps)
        print(f"SmolLM2-135M shape B={args.batch} T={T}: ours {fmt_ms(ours.median)}, transformers eager "
              f"{fmt_ms(theirs.median)} per training step -> ours {theirs.median / ours.median:.2f}x faster")


if __name__ == "__main__":
    main()
