"""LoRA adapters as a GGUF adapter file, for llama.cpp's `--lora FILE` over the base model's GGUF.

    write_gguf_lora(path, adapters_params, name=...)

The layout is what llama.cpp's convert_lora_to_gguf.py writes and llama-adapter.cpp loads:

    general.architecture     the base's (gpt2, llama, qwen2, qwen3: formats/gguf.py's gguf_arch)
    general.type = "adapter", adapter.type = "lora", adapter.lora.alpha (float32)
    blk.N.<tensor>.weight.lora_a   A (r, in)    GGUF dims (in, r)
    blk.N.<tensor>.weight.lora_b   B (out, r)   GGUF dims (r, out)

with <tensor> the base matrix's llama.cpp name (attn_q, attn_k, attn_v, attn_output, ffn_gate,
ffn_up, ffn_down; GPT-2: attn_qkv (fused, as its base tensor), attn_output, ffn_up, ffn_down).
llama.cpp adds `scale · alpha / r · B A x` (scale from `--lora-scaled`, default 1), so an rsLoRA
adapter (s = alpha / √r) is written with alpha · √r, giving the same s. For llama.cpp's llama
architecture the base's attn_q / attn_k rows are permuted for its RoPE (formats/gguf.py
rope_interleave); a row permutation of W + s B A is the same permutation of B's rows, so B of
q_proj / k_proj is permuted and A is not. Tensors are F32 (the converter's default outtype).
Written through atomic_write: complete or absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, MODEL_TENSOR, GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.gguf_writer import WriterState

from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.formats.common import CheckpointError, check_finite
from tui_llm.engine.formats.gguf import gguf_arch, rope_interleave, tensor_name
from tui_llm.engine.formats.gguf_file import encode_chunks, tensor_nbytes
from tui_llm.engine.models.llama_config import LlamaConfig
from tui_llm.engine.models.lora import LoraParams

T = MODEL_TENSOR
# our module path -> llama.cpp's base tensor
GGUF_TENSOR = {"self_attn.q_proj": T.ATTN_Q, "self_attn.k_proj": T.ATTN_K, "self_attn.v_proj": T.ATTN_V,
               "self_attn.o_proj": T.ATTN_OUT, "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP,
               "mlp.down_proj": T.FFN_DOWN,
               "attn.c_attn": T.ATTN_QKV, "attn.c_proj": T.ATTN_OUT, "mlp.c_fc": T.FFN_UP, "mlp.c_proj": T.FFN_DOWN}


def lora_tensors(params: LoraParams) -> list[tuple[str, np.ndarray, int]]:
    """(GGUF name, (r, in) or (out, r) view, heads whose rows to interleave for RoPE or 0), layer by layer."""
    cfg = params.config
    llama_rope = isinstance(cfg, LlamaConfig) and gguf_arch(cfg) == "llama"
    heads = {"self_attn.q_proj": cfg.num_heads, "self_attn.k_proj": cfg.num_kv_heads} if llama_rope else {}
    out = []
    for layer in range(cfg.num_layers):
        for module, A, B in params.modules():
            base = tensor_name(GGUF_TENSOR[module], layer)
            out += [(base + ".lora_a", A[layer], 0), (base + ".lora_b", B[layer], heads.get(module, 0))]
    return out


def gguf_alpha(params: LoraParams) -> float:
    """The adapter.lora.alpha that makes llama.cpp's alpha / r our scale."""
    return params.lora.scale * params.lora.rank


def write_gguf_lora(path, params: LoraParams, *, name: str = "tui-llm LoRA adapter") -> None:
    """The adapters as a GGUF LoRA adapter file (module docstring); CheckpointError (one line) for
    what llama.cpp cannot run; nothing is written then."""
    arch = gguf_arch(params.config, path)
    check_finite(path, params.flat)
    tensors = lora_tensors(params)
    alpha = gguf_alpha(params)
    if not math.isfinite(alpha):
        raise CheckpointError(path, f"the adapters' scale gives alpha {alpha}, which GGUF cannot hold")
    w = GGUFWriter(None, arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    w.add_name(name)
    w.add_file_type(LlamaFileType.ALL_F32)
    w.add_quantization_version(GGML_QUANT_VERSION)
    F32 = GGMLQuantizationType.F32
    for n, view, _ in tensors:
        w.add_tensor_info(n, view.shape, np.dtype(np.float32), tensor_nbytes(view.shape, F32), raw_dtype=F32)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            w.fout, w.state = [f], WriterState.EMPTY  # gguf-py writes header, metadata and table into our file
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for _, view, heads in tensors:
                w.write_padding(f, f.tell())
                written = 0
                for chunk in encode_chunks(rope_interleave(view, heads) if heads else view, F32):
                    f.write(memoryview(chunk).cast("B"))
                    written += chunk.nbytes
                w.write_padding(f, written)
            w.fout = None
    except OSError as e:
        raise CheckpointError(path, f"cannot write: {e.strerror or e}") from None
