"""Our GGUF LoRA adapter (`export --to gguf-lora`) in a real llama.cpp: the base GGUF with the adapter
applied (`llama_cpp.Llama(model_path=BASE, lora_path=ADAPTER)`) against our model with its adapters.

Runs in a throwaway venv holding llama-cpp-python built from its sdist (never a dependency; see
docs/gguf-verification.md for the build), with this repository and the project's site-packages
(numba) importable:

    PYTHONPATH=$PWD:/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages \\
        /work/venvs/llamacpp/bin/python benchmarks/gguf_lora_llamacpp.py

For a tiny GPT-2 (fused attn_qkv), a Llama (GQA; llama.cpp permutes attn_q / attn_k rows, so the
adapter's B rows are permuted too) and a Qwen2 (q/k/v biases; rsLoRA, so adapter.lora.alpha carries
alpha * sqrt(r)), with random weights and adapters whose B is random (not zero): f32 base GGUF,
f32 adapter GGUF, llama.cpp's logits (f32 KV cache) against ours, relative to the largest logit;
and, as a control, llama.cpp without the adapter against ours without it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_gguf import train_tokenizer
from tui_llm.engine.formats.gguf import write_gguf
from tui_llm.engine.formats.gguf_lora import write_gguf_lora
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama, LlamaConfig
from tui_llm.engine.models.lora import LoraConfig, resolve_targets

CASES = {
    "gpt2": (GPTConfig(max_seq_len=64, num_layers=2, num_heads=2, channels=64), None, "all-linear", False),
    "llama": (LlamaConfig(vocab_size=400, max_seq_len=64, num_layers=2, num_heads=4, num_kv_heads=2, channels=64,
                          ffn_channels=128, rope_theta=10000.0), "llama-bpe", "all-linear", False),
    "qwen2": (LlamaConfig(vocab_size=400, max_seq_len=64, num_layers=2, num_heads=4, num_kv_heads=2, channels=64,
                          ffn_channels=128, qkv_bias=True, rope_theta=10000.0), "qwen2", "q_proj,k_proj,v_proj,down_proj",
              True),
}


def our_logits(model, ids) -> np.ndarray:
    model.forward(np.array([ids], np.int32))
    return model.acts.logits[:len(ids), :model.config.vocab_size].copy()


def cpp_logits(path, ids, lora=None) -> np.ndarray:
    from llama_cpp import Llama as LlamaCpp

    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = LlamaCpp(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, type_k=0, type_v=0, n_threads=2,
                   verbose=False, **kwargs)
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], np.float32)


def relative(a, b, scale: float) -> str:
    return f"{np.abs(a - b).max() / scale:.1e}"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, family, targets, rslora) in CASES.items():
            d = Path(tmp) / name
            d.mkdir()
            tokenizer = train_tokenizer(d / "tok", family) if family else None
            base = Llama.random_init(config, seed=1) if isinstance(config, LlamaConfig) else GPT.random_init(config, 1)
            model = Llama(config, base.params.flat.copy()) if isinstance(config, LlamaConfig) \
                else GPT(config, base.params.flat.copy())
            model.attach_lora(LoraConfig(rank=4, alpha=8.0, targets=resolve_targets(targets, config),
                                         use_rslora=rslora), seed=2)
            rng = np.random.default_rng(3)
            for _, _, B in model.lora.params.modules():
                B[...] = rng.normal(0, 0.2, B.shape)
            write_gguf(d / "base.gguf", config, base.params.flat, tokenizer, outtype="f32")
            write_gguf_lora(d / "lora.gguf", model.lora.params)
            ids = [int(i) for i in np.random.default_rng(4).integers(1, 300, 24)]
            ours, ours_base = our_logits(model, ids), our_logits(base, ids)
            theirs, theirs_base = cpp_logits(d / "base.gguf", ids, d / "lora.gguf"), cpp_logits(d / "base.gguf", ids)
            scale = float(np.abs(ours).max())
            rows.append([name, f"r=4 alpha=8 {targets}{' rsLoRA' if rslora else ''}", relative(theirs, ours, scale),
                         relative(theirs_base, ours_base, scale), f"{np.abs(ours - ours_base).max() / scale:.2f}"])
    headers = ["model", "adapter", "with adapter: max abs diff / max logit", "without (control)",
               "what the adapter changes"]
    print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
