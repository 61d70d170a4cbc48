"""Our resumable training checkpoint: one safetensors file.

Arrays: "params" (the flat float32 parameter buffer) and whatever else the trainer keeps (AdamW
"adam_m", "adam_v", ...). Safetensors metadata: format, format_version and "meta", a JSON object
with the step, data loader and RNG state, GPTConfig.to_dict() under "model_config", metrics.

On load, the model config is validated first, then every parameter-shaped array (params, adam_m,
adam_v) is checked to be float32 of exactly the config's size before it is allocated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.formats.common import CheckpointError, check_finite, file_size
from tui_llm.engine.formats.safetensors import read_header, read_tensor, write_safetensors
from tui_llm.engine.models.build import config_from_dict, num_parameters
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.lora import LoraConfig, LoraError
from tui_llm.engine.models.lora import num_parameters as lora_parameters

TRAINING_FORMAT = "tui-llm-training"
TRAINING_FORMAT_VERSION = "1"
TRAINING_PARAMS_KEY = "params"              # arrays[...]: the flat parameter buffer
TRAINING_MODEL_CONFIG_KEY = "model_config"  # meta[...]: GPTConfig.to_dict()
PARAM_SHAPED = ("params", "lora", "adam_m", "adam_v")  # arrays with the trained buffer's layout


def save_training_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write arrays (params, AdamW m and v, ...) and JSON-able meta to one safetensors file.

    Arrays are streamed from their own memory to the file, so saving a d12 run adds only a few MB
    of memory. Non-finite float arrays are refused (CheckpointError) before any file is touched, as
    is meta that is not JSON-able (TypeError/ValueError); OSErrors become CheckpointError.
    """
    try:  # a TypeError for meta that is not JSON-able propagates: that is a programming error
        meta_json = json.dumps(meta, allow_nan=False)
    except ValueError as e:
        raise CheckpointError(path, f"metadata holds a non-finite number ({e}); refusing to save it") from None
    metadata = {"format": TRAINING_FORMAT, "format_version": TRAINING_FORMAT_VERSION, "meta": meta_json}
    for name, arr in arrays.items():
        if arr.dtype.kind == "f":
            try:
                check_finite(path, arr.reshape(-1))
            except CheckpointError as e:
                raise CheckpointError(path, f"array {name!r}: {e.problem}") from None
    try:
        with atomic_write(path) as f:
            write_safetensors(f, list(arrays.items()), metadata)
    except OSError as e:
        raise CheckpointError(path, f"cannot write: {e.strerror or e}") from None


def load_training_checkpoint(path, names: Iterable[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a training checkpoint into fresh arrays: all of them, or only `names` (which must exist)."""
    file_size(path)  # a clear "no such file"
    with open(path, "rb") as f:
        entries, metadata, data_start = read_header(f, path)
        if metadata.get("format") != TRAINING_FORMAT:
            raise CheckpointError(path, "not a tui-llm training checkpoint (safetensors metadata has no "
                                        f"format={TRAINING_FORMAT!r})")
        if metadata.get("format_version") != TRAINING_FORMAT_VERSION:
            raise CheckpointError(path, f"training checkpoint format version {metadata.get('format_version')!r} "
                                        f"is not {TRAINING_FORMAT_VERSION!r}")
        try:
            meta = json.loads(metadata["meta"])
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (KeyError, ValueError, RecursionError) as e:
            raise CheckpointError(path, f"bad training metadata: {type(e).__name__}: {e}") from None
        cfg = training_model_config(path, meta) if TRAINING_MODEL_CONFIG_KEY in meta else None
        trained = None if cfg is None else num_parameters(cfg)   # the size of params, adam_m, adam_v
        if cfg is not None and "lora" in meta:                    # a LoRA run's: the adapters' (lora, adam_m, adam_v)
            try:
                trained = lora_parameters(cfg, LoraConfig.from_dict(meta["lora"], cfg))
            except LoraError as e:
                raise CheckpointError(path, str(e)) from None
        names = list(entries) if names is None else list(names)
        missing = [name for name in names if name not in entries]
        if missing:
            raise CheckpointError(path, f"missing arrays: {', '.join(missing)} (has {', '.join(entries) or 'none'})")
        for name in PARAM_SHAPED:  # checked from the header alone, before anything is allocated
            entry = entries.get(name)
            if entry is not None and trained is not None and (entry.dtype != "F32" or entry.shape != (trained,)):
                raise CheckpointError(path, f"array {name!r} is {entry.dtype} {list(entry.shape)}; the model config "
                                            f"needs F32 [{trained}]")
        arrays = {}
        for name in names:
            arr = read_tensor(f, path, data_start, name, entries[name])
            if arr.dtype.kind == "f":
                try:
                    check_finite(path, arr.reshape(-1), cfg if name in PARAM_SHAPED and isinstance(cfg, GPTConfig)
                                 and "lora" not in meta else None)
                except CheckpointError as e:
                    raise CheckpointError(path, f"array {name!r}: {e.problem}") from None
            arrays[name] = arr
    return arrays, meta


def training_model_config(path, meta: dict):
    """The model config (GPTConfig, or LlamaConfig when it says "arch": "llama") stored in a
    checkpoint's metadata, validated."""
    raw = meta.get(TRAINING_MODEL_CONFIG_KEY)
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"{TRAINING_MODEL_CONFIG_KEY} is {type(raw).__name__}, not an object")
        return config_from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"training checkpoint has no usable model config: {e}") from None


def load_training_params(path) -> tuple:
    """(config, flat params, description) of a training checkpoint: what --init-from uses."""
    _, meta = load_training_checkpoint(path, names=[])
    if "lora" in meta:
        raise CheckpointError(path, "is a LoRA run's checkpoint (adapters over a base model): --resume continues it; "
                                    "exporting its adapter or merged weights is not supported yet")
    arrays, meta = load_training_checkpoint(path, names=[TRAINING_PARAMS_KEY])
    if TRAINING_MODEL_CONFIG_KEY not in meta:
        raise CheckpointError(path, "training checkpoint has no usable model config (no model_config in its metadata)")
    cfg = training_model_config(path, meta)
    step = meta.get("step", "?")
    return cfg, arrays[TRAINING_PARAMS_KEY], f"training checkpoint {path} (step {step}, " \
                                         f"{arrays[TRAINING_PARAMS_KEY].size / 1e6:.1f}M params)"


_MISSING = object()


def require(meta: dict, key: str, kind, *, min=None, max=None, path="checkpoint"):
    """meta[key], checked: of type `kind` (a type or tuple; bool is never an int), within [min, max].

        step = require(meta, "step", int, min=0, path=ckpt)
        loader = require(meta, "loader", dict, path=ckpt)

    Raises CheckpointError naming the field otherwise. Float fields also refuse NaN/inf.
    """
    value = meta.get(key, _MISSING) if isinstance(meta, dict) else _MISSING
    if value is _MISSING:
        raise CheckpointError(path, f"metadata field {key!r} is missing")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # JSON writes 1.0 as 1
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(path, f"metadata field {key!r} must be {names}, got {str(value)[:40]!r}")
    if isinstance(value, float) and not np.isfinite(value):
        raise CheckpointError(path, f"metadata field {key!r} is {value}, not a finite number")
    if min is not None and value < min or max is not None and value > max:
        raise CheckpointError(path, f"metadata field {key!r} is {value}, outside {min}..{max}")
    return value
