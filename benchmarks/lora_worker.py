"""The model side of benchmarks/lora.py, importable without this checkout's package: `memory` runs
it as a script in a subprocess with PYTHONPATH set to the checkout whose engine is measured
(this one, or --repo's, e.g. main's to compare with "today"), so its peak RSS is its own.

    python benchmarks/lora_worker.py --shape llama-3.2-3b -t 2048 --lora-rank 16 --base-dtype bf16 --recompute

prints one JSON line: peak RSS (getrusage), each step's time, the build time and, where the engine
has one, the memory estimate its run header would print.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

SHAPES = {  # Hugging Face config.json values: layers, heads, kv heads, hidden, intermediate, vocab, tied, head_dim
    "smollm2-135m": dict(num_layers=30, num_heads=9, num_kv_heads=3, channels=576, ffn_channels=1536,
                         vocab_size=49152, tied_embeddings=True),
    "smollm2-360m": dict(num_layers=32, num_heads=15, num_kv_heads=5, channels=960, ffn_channels=2560,
                         vocab_size=49152, tied_embeddings=True),
    "qwen2.5-0.5b": dict(num_layers=24, num_heads=14, num_kv_heads=2, channels=896, ffn_channels=4864,
                         vocab_size=151936, tied_embeddings=True, qkv_bias=True),
    "qwen2.5-1.5b": dict(num_layers=28, num_heads=12, num_kv_heads=2, channels=1536, ffn_channels=8960,
                         vocab_size=151936, tied_embeddings=True, qkv_bias=True),
    "llama-3.2-1b": dict(num_layers=16, num_heads=32, num_kv_heads=8, channels=2048, ffn_channels=8192,
                         vocab_size=128256, tied_embeddings=True, head_dim=64),
    "llama-3.2-3b": dict(num_layers=28, num_heads=24, num_kv_heads=8, channels=3072, ffn_channels=8192,
                         vocab_size=128256, tied_embeddings=True, head_dim=128),
    "llama-3.1-8b": dict(num_layers=32, num_heads=32, num_kv_heads=8, channels=4096, ffn_channels=14336,
                         vocab_size=128256, tied_embeddings=False, head_dim=128),
}


def llama_config(shape: str, T: int):
    from tui_llm.engine.models.llama_config import LlamaConfig
    return LlamaConfig(max_seq_len=max(T, 64), **SHAPES[shape])


def build(shape: str, T: int, lora_rank: int, base_dtype: str, recompute: bool, seed: int = 0):
    """A Llama of the shape with random weights (N(0, 0.02) matrices, norms 1), drawn in chunks
    straight into the storage dtype; LoRA adapters (all-linear) with B random too, so every
    product does its real work."""
    import numpy as np

    from tui_llm.engine.models.llama import Llama
    from tui_llm.engine.models.llama_config import LlamaParams

    cfg = llama_config(shape, T)
    if base_dtype == "bf16":  # (this tree's engine; --repo trees may predate bf16 and LoRA)
        from tui_llm.engine.kernels.bf16 import narrow_to_bf16
        params = LlamaParams(cfg, dtype=np.uint16)
    else:
        params = LlamaParams(cfg)
    rng = np.random.default_rng(seed)
    chunk = np.empty(1 << 22, np.float32)
    for name, view in params.items():
        flat = view.reshape(-1)
        for i in range(0, flat.size, chunk.size):
            part = chunk[:min(chunk.size, flat.size - i)]
            if name.endswith(("ln1w", "ln2w", "lnfw")):
                part[:] = 1.0
            else:
                rng.standard_normal(out=part, dtype=np.float32)
                part *= np.float32(0.02)
            if base_dtype == "bf16":
                narrow_to_bf16(flat[i:i + part.size], part)
            else:
                flat[i:i + part.size] = part
    model = Llama(cfg, params.flat, recompute=recompute) if recompute else Llama(cfg, params.flat)
    if lora_rank:
        from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets
        model.attach_lora(LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank, targets=resolve_targets(ALL_LINEAR, cfg)))
        rng.standard_normal(out=model.lora.params.flat, dtype=np.float32)
        model.lora.params.flat *= np.float32(0.01)
    return model


def one_step(model, opt, x, y) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = model.forward(x, y, training=True)
    model.backward()
    opt.update(1e-4)
    return time.perf_counter() - t0, loss


def batch(cfg, B: int, T: int, seed: int = 1):
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))



def worker(args) -> None:
    """The memory case (this process is its own): prints one JSON line."""
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.training.optim import AdamW

    set_threads(args.threads)
    t0 = time.perf_counter()
    model = build(args.shape, args.seq_len, args.lora_rank, args.base_dtype, args.recompute)
    build_s = time.perf_counter() - t0
    opt = AdamW(model)
    x, y = batch(model.config, args.batch, args.seq_len)
    times = [one_step(model, opt, x, y)[0] for _ in range(args.steps)]
    out = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "step_s": times, "build_s": build_s}
    try:
        from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets
        from tui_llm.engine.training.memory import estimate_memory
        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                          targets=resolve_targets(ALL_LINEAR, model.config)) if args.lora_rank else None
        out["estimate"] = estimate_memory(model.config, args.batch, args.seq_len, lora=lora, base_dtype=args.base_dtype,
                                          recompute=args.recompute).to_dict()
    except ImportError:  # another tree (--repo) without the estimator
        pass
    print(json.dumps(out), flush=True)




def main() -> None:
    p = argparse.ArgumentParser(description="one benchmarks/lora.py memory case")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
    p.add_argument("-b", "--batch", type=int, default=1)
    p.add_argument("-t", "--seq-len", type=int, default=512)
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--base-dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--steps", type=int, default=1)
    worker(p.parse_args())


if __name__ == "__main__":
    main()
