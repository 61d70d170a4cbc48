"""Hugging Face Llama-family models (llama, mistral, qwen2, qwen3): read and write without torch.

A model directory holds `config.json` and `model.safetensors` (or shards listed by
`model.safetensors.index.json`). Reading maps HF's tensors onto the engine's flat layout
(llama_config.py): q/k/v rows go into the fused `qkvw`, gate/up into `fcw`; float32, float16 and
bfloat16 tensors are converted to float32 in chunks, straight into the flat buffer (or, for a
frozen LoRA base kept as bf16, BF16 tensors copied bit for bit into a uint16 buffer). Both config
spellings are read: transformers 4.x (`rope_theta`, `rope_scaling` at the top level) and 5.x
(`rope_parameters`). What the engine cannot run exactly is refused with one line naming it:
other model types, mixture-of-experts, sliding windows shorter than the sequence used, RoPE
scaling other than linear/llama3, biases other than Qwen2's q/k/v, missing or misshapen tensors.
Qwen3 is Qwen2 without the q/k/v biases and with an RMSNorm over each q and k head
(`self_attn.q_norm` / `k_norm`, weights (hd,)) before RoPE.

Writing produces what transformers' AutoModelForCausalLM loads: model_type `llama`
(`qwen2` when the model has q/k/v biases, `qwen3` when it has the q/k norms), 4.x field names
(which 5.x still reads), float32 weights, no lm_head when tied.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tui_llm.engine.formats.common import CheckpointError, check_finite
from tui_llm.engine.kernels.bf16 import narrow_to_bf16
from tui_llm.engine.machine import NotEnoughMemory
from tui_llm.engine.models.llama_config import LlamaConfig, LlamaConfigError, LlamaParams, check_rope_scaling

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a constant some older checkpoints stored
# safetensors dtype -> (stored numpy dtype, conversion to float32)
DTYPES: dict[str, tuple[np.dtype, Callable[[np.ndarray], np.ndarray]]] = {
    "F32": (np.dtype("<f4"), lambda a: a),
    "F16": (np.dtype("<f2"), lambda a: a.astype(np.float32)),
    "BF16": (np.dtype("<u2"), lambda a: (a.astype(np.uint32) << 16).view(np.float32)),
}
CHUNK = 1 << 22  # elements converted at a time: bounds the temporaries to ~16 MB
MAX_HEADER_BYTES = 100_000_000


# ---------------------------------------------------------------------------------------
# config.json <-> LlamaConfig

def _rope(hf: dict, path) -> tuple[float, dict | None]:
    params = hf.get("rope_parameters")
    scaling: dict | None
    if isinstance(params, dict) and params:  # transformers 5.x
        if not ({"rope_theta", "rope_type", "type"} & set(params)):
            raise CheckpointError(path, f"rope_parameters per layer type ({', '.join(params)}) are not supported")
        theta, scaling = params.get("rope_theta", hf.get("rope_theta", 10000.0)), params
    else:                                    # transformers 4.x
        theta, scaling = hf.get("rope_theta", 10000.0), hf.get("rope_scaling")  # a dict or None
    partial = (params if isinstance(params, dict) else {}).get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise CheckpointError(path, f"partial_rotary_factor {partial} is not supported (RoPE over the whole head only)")
    try:
        return float(theta), check_rope_scaling(scaling) if scaling is not None else None
    except (LlamaConfigError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad RoPE settings: {e}") from None


def config_from_hf(hf: dict, path=CONFIG, max_seq_len: int | None = None) -> LlamaConfig:
    """LlamaConfig for an HF config.json dict, or CheckpointError naming what is unsupported.

    max_seq_len: the longest sequence that will be used (default max_position_embeddings).
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(path, f"model_type {model_type!r} is not supported ({', '.join(MODEL_TYPES)})")
    for key in MOE_KEYS:
        if hf.get(key):
            raise CheckpointError(path, f"{key} = {hf[key]}: mixture-of-experts models are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(path, f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("mlp_bias"):
        raise CheckpointError(path, "mlp_bias is true: MLP biases are not supported")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise CheckpointError(path, "attention_bias is true: q/k/v/o biases are not supported (only Qwen2's q/k/v)")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings"):
        if not isinstance(hf.get(key), int):
            raise CheckpointError(path, f"no integer {key!r} in the config")
    max_pos = hf["max_position_embeddings"]
    T = max_pos if max_seq_len is None else max_seq_len
    if max_pos < T:
        raise CheckpointError(path, f"sequence length {T} exceeds max_position_embeddings {max_pos}")
    window = hf.get("sliding_window")
    uses_window = model_type == "mistral" or (model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"))
    if uses_window and window is not None and window < T:
        raise CheckpointError(path, f"sliding_window {window} is shorter than the {T} positions used: sliding-window "
                                    f"attention is not implemented (use sequences of at most {window})")
    theta, scaling = _rope(hf, path)
    H = hf["num_attention_heads"]

    def token(key):
        value = hf.get(key)
        value = value[0] if isinstance(value, list) and value else value
        return value if isinstance(value, int) and 0 <= value < hf["vocab_size"] else None

    try:
        return LlamaConfig(
            vocab_size=hf["vocab_size"], max_seq_len=T, num_layers=hf["num_hidden_layers"], num_heads=H,
            num_kv_heads=hf.get("num_key_value_heads") or H, channels=hf["hidden_size"],
            ffn_channels=hf["intermediate_size"], head_dim=hf.get("head_dim") or 0,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            tied_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            bos_token_id=token("bos_token_id"), eos_token_id=token("eos_token_id"))
    except (LlamaConfigError, NotEnoughMemory) as e:
        raise CheckpointError(path, str(e)) from None


def hf_config_dict(cfg: LlamaConfig) -> dict:
    """config.json for transformers' LlamaForCausalLM (Qwen2ForCausalLM when qkv_bias,
    Qwen3ForCausalLM when qk_norm)."""
    if cfg.qkv_bias and cfg.qk_norm:
        raise LlamaConfigError("q/k/v biases together with q/k norms have no Hugging Face model type")
    model_type = "qwen2" if cfg.qkv_bias else "qwen3" if cfg.qk_norm else "llama"
    d = {
        "architectures": [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}.get(model_type, "LlamaForCausalLM")],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.channels,
        "intermediate_size": cfg.ffn_channels,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if model_type in ("qwen2", "qwen3"):
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    if model_type == "qwen3":
        d.update(attention_bias=False)
    if model_type == "llama":
        d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return d


# ---------------------------------------------------------------------------------------
# tensors

def hf_tensor_map(p: LlamaParams) -> list[tuple[str, np.ndarray]]:
    """Every HF tensor name -> the (contiguous) view of the flat buffer it fills."""
    cfg = p.config
    V, QD, KVD, F = cfg.vocab_size, cfg.q_dim, cfg.kv_dim, cfg.ffn_channels
    mapping = [("model.embed_tokens.weight", p.wte[:V])]  # HF has no padded rows
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        mapping += [(pre + "input_layernorm.weight", p.ln1w[i]),
                    (pre + "self_attn.q_proj.weight", p.qkvw[i, :QD]),
                    (pre + "self_attn.k_proj.weight", p.qkvw[i, QD:QD + KVD]),
                    (pre + "self_attn.v_proj.weight", p.qkvw[i, QD + KVD:])]
        if cfg.qkv_bias:
            mapping += [(pre + "self_attn.q_proj.bias", p.qkvb[i, :QD]),
                        (pre + "self_attn.k_proj.bias", p.qkvb[i, QD:QD + KVD]),
                        (pre + "self_attn.v_proj.bias", p.qkvb[i, QD + KVD:])]
        if cfg.qk_norm:
            mapping += [(pre + "self_attn.q_norm.weight", p.qnormw[i]),
                        (pre + "self_attn.k_norm.weight", p.knormw[i])]
        mapping += [(pre + "self_attn.o_proj.weight", p.attprojw[i]),
                    (pre + "post_attention_layernorm.weight", p.ln2w[i]),
                    (pre + "mlp.gate_proj.weight", p.fcw[i, :F]),
                    (pre + "mlp.up_proj.weight", p.fcw[i, F:]),
                    (pre + "mlp.down_proj.weight", p.fcprojw[i])]
    mapping.append(("model.norm.weight", p.lnfw))
    if not cfg.tied_embeddings:
        mapping.append(("lm_head.weight", p.lm_head[:V]))
    return mapping


def _read_header(path: Path) -> dict[str, tuple[str, tuple, int, int]]:
    """{name: (dtype code, shape, absolute start, absolute end)} of one safetensors file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if not 0 < n <= min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(path, "not a safetensors file (bad header length)")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise CheckpointError(path, f"cannot read ({e.strerror})") from None
    except ValueError as e:
        raise CheckpointError(path, f"bad safetensors header JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "bad safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    entries = {}
    for name, info in header.items():
        try:
            code, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            start, end = (8 + n + int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"bad safetensors header entry for {name!r}") from None
        itemsize = DTYPES[code][0].itemsize if code in DTYPES else None
        if end > size or (itemsize and end - start != math.prod(shape) * itemsize):
            raise CheckpointError(path, f"tensor {name!r}: offsets do not match shape {shape} {code} (truncated?)")
        entries[name] = (code, shape, start, end)
    return entries


def _weight_files(directory: Path) -> tuple[dict[str, Path], dict[Path, dict]]:
    """({tensor name: the file holding it}, {file: its header}) from model.safetensors or the shard index."""
    if (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    elif (directory / INDEX).is_file():
        try:
            weight_map = json.loads((directory / INDEX).read_text(encoding="utf-8"))["weight_map"]
            files = sorted({directory / name for name in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(directory / INDEX, "not a safetensors index (no weight_map)") from None
        for f in files:
            if not f.is_file():
                raise CheckpointError(directory / INDEX, f"shard {f.name} is missing")
    else:
        other = sorted(q.name for q in directory.glob("*.bin")) + sorted(q.name for q in directory.glob("*.pth"))
        hint = f" (found {', '.join(other)}: only safetensors weights are supported)" if other else ""
        raise CheckpointError(directory, f"no {WEIGHTS} or {INDEX}{hint}")
    headers = {f: _read_header(f) for f in files}
    return {name: f for f in files for name in headers[f]}, headers


def _to_bf16_bits(chunk: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 bits (uint16), ties to even."""
    bits = np.empty(chunk.size, np.uint16)
    narrow_to_bf16(bits, np.ascontiguousarray(chunk, np.float32))
    return bits


def _read_tensor(path: Path, header: dict, name: str, dest: np.ndarray) -> None:
    """Fill the contiguous view dest with the named tensor chunk by chunk: converted to float32, or,
    for a bf16 destination (uint16 bits, a frozen base), BF16 bits copied as they are (others rounded)."""
    code, shape, start, _ = header[name]
    if shape != dest.shape:
        raise CheckpointError(path, f"{name} has shape {shape}, config.json implies {dest.shape}")
    if code not in DTYPES:
        raise CheckpointError(path, f"{name} has dtype {code}; only F32, F16 and BF16 are supported")
    stored, convert = DTYPES[code]
    keep_bits = dest.dtype == np.uint16
    assert dest.flags.c_contiguous  # so that reshape(-1) below is a view, not a copy
    out = dest.reshape(-1)
    try:
        with open(path, "rb") as f:
            for i in range(0, out.size, CHUNK):
                count = min(CHUNK, out.size - i)
                f.seek(start + i * stored.itemsize)
                raw = np.fromfile(f, dtype=stored, count=count)
                if raw.size != count:
                    raise CheckpointError(path, f"{name}: truncated")
                if keep_bits and code == "BF16":
                    chunk = raw
                    finite = ((raw & 0x7F80) != 0x7F80).all()   # exponent all ones: inf or NaN
                else:
                    chunk = convert(raw)
                    finite = np.isfinite(chunk).all()
                    if keep_bits:
                        chunk = _to_bf16_bits(chunk)
                if not finite:
                    raise CheckpointError(path, f"{name} has NaN or infinite values")
                out[i:i + count] = chunk
    except OSError as e:
        raise CheckpointError(path, f"cannot read ({e.strerror})") from None


def hf_model_type(path) -> str | None:
    """model_type of the config.json in an HF model directory (or next to a file in it), None when
    there is none or it cannot be read: lets --init-from choose between read_hf and read_hf_llama."""
    directory = Path(path).expanduser()
    directory = directory.parent if directory.is_file() else directory
    try:
        model_type = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def _read_config(path, max_seq_len: int | None = None) -> tuple[Path, dict, LlamaConfig]:
    """(the model directory, its config.json dict, LlamaConfig) of an HF directory or a file inside it."""
    directory = Path(path).expanduser()
    directory = directory.parent if directory.is_file() else directory
    if not directory.is_dir():
        raise CheckpointError(path, "no such directory")
    config_path = directory / CONFIG
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(hf, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise CheckpointError(directory, f"no {CONFIG}") from None
    except ValueError as e:
        raise CheckpointError(config_path, f"bad JSON: {e}") from None
    return directory, hf, config_from_hf(hf, config_path, max_seq_len)


def peek_hf_llama(path) -> tuple[LlamaConfig, bool]:
    """(LlamaConfig, whether its weights are stored as BF16) from config.json and the safetensors
    headers alone: what a run's memory estimate needs before any weight is read."""
    directory, _, cfg = _read_config(path)
    _, headers = _weight_files(directory)
    codes = {code for header in headers.values() for code, shape, _, _ in header.values() if len(shape) == 2}
    return cfg, codes == {"BF16"}


def read_hf_llama(path, max_seq_len: int | None = None, dtype: str = "fp32") -> tuple[LlamaConfig, np.ndarray]:
    """(LlamaConfig, flat parameters) from an HF model directory (or a file inside it): float32, or
    with dtype="bf16" the bf16 bits (uint16) of a frozen base, BF16 tensors copied without widening."""
    directory, hf, cfg = _read_config(path, max_seq_len)
    files, headers = _weight_files(directory)
    # a bare LlamaModel (no LM head wrapper) saves its tensors without the "model." prefix
    names = {(n if n.startswith(("model.", "lm_head.")) else "model." + n): n for n in files}
    p = LlamaParams(cfg, dtype=np.uint16 if dtype == "bf16" else np.float32)  # zeros: padded vocabulary rows stay 0
    wanted = dict(hf_tensor_map(p))
    missing = [n for n in wanted if n not in names]
    if missing:
        why = " (tie_word_embeddings is false)" if missing == ["lm_head.weight"] else ""
        raise CheckpointError(directory, f"{len(missing)} tensors missing{why}, e.g. {', '.join(missing[:3])}")
    unknown = [n for n in names if n not in wanted and n != "lm_head.weight" and not n.endswith(IGNORED_SUFFIXES)]
    if unknown:
        raise CheckpointError(directory, f"unexpected tensors for {hf['model_type']}, e.g. {', '.join(unknown[:3])}")

    def read(name, dest):
        path = files[names[name]]
        _read_tensor(path, headers[path], names[name], dest)

    for name, dest in wanted.items():
        read(name, dest)
    if cfg.tied_embeddings and "lm_head.weight" in names:
        head = np.empty((cfg.vocab_size, cfg.channels), p.flat.dtype)
        read("lm_head.weight", head)
        if not np.array_equal(head, p.wte[:cfg.vocab_size]):
            raise CheckpointError(directory, "lm_head.weight differs from embed_tokens but tie_word_embeddings is true")
    return cfg, p.flat


def write_hf_llama(directory, config: LlamaConfig, flat: np.ndarray, tokenizer_dir=None) -> None:
    """Write config.json + model.safetensors (float32) that transformers' AutoModelForCausalLM loads,
    plus the tokenizer files found in tokenizer_dir, all together or none (atomic_files)."""
    from tui_llm.engine.formats.hf_gpt2 import tokenizer_files, write_hf_directory

    p = LlamaParams(config, flat)
    check_finite(directory, flat)
    extra = tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else {}
    write_hf_directory(directory, hf_tensor_map(p), hf_config_dict(config), extra)
