"""A SmolLM2-135M-shaped Llama: peak memory of training, and KV-cache sampling speed.

    python benchmarks/llama_memory_sample.py            # B=4 T=64: 2 steps, then sampling at contexts 1 and 256

Run in a fresh process (peak RSS is the process's own: VmHWM). Training: forward, backward and
AdamW as the trainer does; the expectation is ~16 bytes per parameter (weights, gradients, AdamW m
and v) plus activations. Sampling: 64 new tokens after a context of 1 and of 256 tokens through
the KV cache (model.extend), median of 3, against one full forward per token (no cache).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import fmt_bytes, print_machine
from llama_step import SMOLLM2_135M
from memory import proc_status_bytes

from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.llama import Llama, LlamaConfig
from tui_llm.engine.training.optim import AdamW, AdamWConfig
from tui_llm.engine.training.sampler import Sampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    print_machine()
    set_threads(args.threads)
    compile_kernels("llama")
    base = proc_status_bytes("VmHWM")
    cfg = LlamaConfig(**SMOLLM2_135M)
    model = Llama.random_init(cfg, seed=1)
    opt = AdamW(model, AdamWConfig(lr=1e-4))
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32) for _ in range(2))
    for _ in range(2):
        model.forward(x, y, training=True)
        model.backward()
        opt.update(1e-4)
    peak = proc_status_bytes("VmHWM")
    n = model.num_parameters
    acts = model.acts.nbytes() if hasattr(model.acts, "nbytes") else 0
    print(f"{n:,} parameters; peak RSS {fmt_bytes(peak)} ({fmt_bytes(peak - base)} above the interpreter and "
          f"kernels); 16 bytes/param = {fmt_bytes(16 * n)}; activations {fmt_bytes(acts)} at B={args.batch} "
          f"T={args.seq}")

    sampler = Sampler(model)
    for context in (1, 256):
        prompt = rng.integers(0, cfg.vocab_size, context).tolist()
        for use_cache in (True, False):
            times = []
            for _ in range(3 if use_cache else 1):
                t0 = time.perf_counter()
                result = sampler.generate(prompt, args.new_tokens, temperature=1.0, seed=1, use_cache=use_cache,
                                          stop_at_eot=False)
                times.append(time.perf_counter() - t0)
            rate = len(result.token_ids) / float(np.median(times))
            how = "with the KV cache" if use_cache else "re-running the whole forward per token"
            print(f"context {context:>3}: {rate:6.1f} tokens/s {how}")


if __name__ == "__main__":
    main()
