"""Every kernel a training step, a LoRA step and a sample run, on small random models; prints one
JSON object {case: sha1 of the bytes it produced}. tests/test_kernel_cache.py runs it twice on one
empty numba cache directory: the first process compiles the kernels, the second loads them, and
the two must print the same digests (bit for bit).

    NUMBA_CACHE_DIR=/tmp/c python -m tests.kernel_battery
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from tests.test_llama import CONFIGS, random_model
from tests.test_lora import lora_config, randomise_adapters
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.training.optim import AdamW, AdamWConfig

B, T = 2, 160  # T > 128: attention's long-row path (log-sum-exp) besides the kept probabilities
VOCAB = 97


def digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (B, T)).astype(np.int32), rng.integers(0, VOCAB, (B, T)).astype(np.int32)


def documents() -> np.ndarray:
    """(B, T) int32 doc_starts: row 0 one document, row 1 three."""
    starts = np.zeros((B, T), np.int32)
    starts[1, 40:100], starts[1, 100:] = 40, 100
    return starts


def train_step(model, seed: int, **forward) -> dict[str, str]:
    """Two accumulated micro-batches, then AdamW: digests of the loss, the gradients, the weights."""
    trainable, grads = model.trainable, model.allocate_grads()
    losses = []
    for micro in range(2):
        x, y = batch(seed + micro)
        losses.append(model.forward(x, y, training=True, **forward))
        model.backward(accumulate=micro > 0)
    optimizer = AdamW(model, AdamWConfig(weight_decay=0.1))
    norm = optimizer.grad_norm()
    optimizer.update(1e-3, grad_norm=norm)
    return {"loss": digest(np.array(losses, np.float64)), "grads": digest(grads.flat),
            "weights": digest(trainable.flat)}


def sample(model) -> str:
    cache = model.new_kv_cache()
    x, _ = batch(9)
    logits = [model.extend(cache, x[:1, :12], 0).copy()]
    for t in range(12, 20):
        logits.append(model.extend(cache, x[:1, t:t + 1], t).copy())
    return digest(*logits)


def run() -> dict[str, str]:
    set_threads(1)
    out: dict[str, str] = {}
    gpt_cfg = GPTConfig(max_seq_len=T, vocab_size=VOCAB, num_layers=2, num_heads=2, channels=64)
    for name, recompute in (("gpt2", False), ("gpt2-recompute", True)):
        model = GPT.random_init(gpt_cfg, seed=1)
        model.recompute = recompute
        out |= {f"{name} {k}": v for k, v in train_step(model, 1).items()}
    model = GPT.random_init(gpt_cfg, seed=1)
    out |= {f"gpt2-documents {k}": v for k, v in train_step(model, 3, doc_starts=documents()).items()}
    out["gpt2 sample"] = sample(model)
    model = GPT.random_init(gpt_cfg, seed=1)
    model.w.matmul_dtype = "bf16"
    out |= {f"gpt2-bf16-products {k}": v for k, v in train_step(model, 5).items()}
    model = GPT.random_init(gpt_cfg, seed=1)
    model.attach_lora(lora_config(model, dropout=0.1))
    randomise_adapters(model)
    out |= {f"gpt2-lora {k}": v for k, v in train_step(model, 7).items()}

    for name in ("gqa-bias", "qwen3-qk-norm"):
        cfg = dataclasses.replace(CONFIGS[name], max_seq_len=T)
        model = random_model(cfg)
        out |= {f"llama {name} {k}": v for k, v in train_step(model, 11).items()}
        out[f"llama {name} sample"] = sample(model)
        model = random_model(cfg)
        model.recompute = True
        model.attach_lora(lora_config(model, dropout=0.1))
        randomise_adapters(model)
        out |= {f"llama {name} lora-recompute {k}": v for k, v in train_step(model, 13).items()}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1, sort_keys=True))
