"""Hugging Face PEFT LoRA adapter directories: what `PeftModel.from_pretrained(base, directory)`
loads, and what `peft_model.save_pretrained(directory)` writes.

    directory/adapter_config.json         {"peft_type": "LORA", "r": 16, "lora_alpha": 32, ...}
    directory/adapter_model.safetensors   base_model.model.<layers>.{l}.<module>.lora_A.weight  (r, in)
                                          base_model.model.<layers>.{l}.<module>.lora_B.weight  (out, r)

<layers> is `model.layers` (Llama family) or `transformer.h` (GPT-2); <module> a path such as
`self_attn.q_proj` or `attn.c_attn` (models/lora.py lists them). A and B have these shapes for
GPT-2's Conv1D modules too: PEFT's `fan_in_fan_out` (true for GPT-2) only transposes the merged
delta B A, never the stored matrices.

    write_peft(directory, adapters_params, base_name, base_identity)   # both files, or neither
    config = read_peft_config(directory)         # adapter_config.json, checked (PeftConfig)
    lora, flat = read_peft(directory, model_config)   # the tensors, checked against the base

What we read is checked before it is used: the JSON's size, syntax and every value we use (PEFT
writes many more keys; unknown ones are ignored, settings we cannot honour are refused: DoRA,
per-module ranks, LoRA on biases or on a subset of the layers, modules saved whole), the
safetensors header (formats/safetensors.py), every key (PEFT's spelling, a module this model has,
both A and B, every layer), every shape against the base and against `r`, dtypes F32/F16/BF16,
finite values. Each problem is one CheckpointError line.

Besides PEFT's keys, our safetensors metadata records the base we trained on:
`tui_llm_base_fingerprint` and `tui_llm_base_dtype` (models/base identity); PEFT ignores them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_llm.engine.formats.atomic import atomic_files, atomic_write
from tui_llm.engine.formats.common import CheckpointError, check_finite
from tui_llm.engine.formats.safetensors import no_duplicate_keys, read_header, read_tensor, write_safetensors
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama_config import LlamaConfig
from tui_llm.engine.models.lora import (
    ALL_LINEAR,
    LoraConfig,
    LoraError,
    LoraParams,
    layers_prefix,
    peft_tensor_map,
    sites,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1_000_000
FINGERPRINT_KEY, DTYPE_KEY = "tui_llm_base_fingerprint", "tui_llm_base_dtype"
# base_model.model.<layers>.<l>.<module>.lora_<A|B>.weight
_KEY = re.compile(r"^base_model\.model\.(?P<layers>transformer\.h|model\.layers)\.(?P<layer>\d+)\."
                  r"(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_ARCH_OF_LAYERS = {"transformer.h": "GPT-2", "model.layers": "Llama-family"}


def is_peft_dir(path) -> bool:
    """Whether `path` is a directory holding a PEFT adapter (its adapter_config.json)."""
    p = Path(str(path)).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def short_targets(config: GPTConfig | LlamaConfig, modules: tuple[str, ...]) -> list[str]:
    """PEFT's target_modules for these module paths: each module's last name where that name
    selects exactly modules in the set (q_proj, c_proj for both of GPT-2's), else its path."""
    every = [site.module for site in sites(config)]
    out: list[str] = []
    for module in modules:
        short = module.rsplit(".", 1)[1]
        selects = {m for m in every if m == short or m.endswith("." + short)}
        name = short if selects <= set(modules) else module
        if name not in out:
            out.append(name)
    return out


def peft_config_dict(lora: LoraConfig, config: GPTConfig | LlamaConfig, base_name: str | None) -> dict:
    """adapter_config.json as PEFT writes it for a causal LM (the keys PEFT reads; it fills in the rest)."""
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "revision": None,
        "r": lora.rank,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "target_modules": short_targets(config, lora.targets),
        "use_rslora": lora.use_rslora,
        "fan_in_fan_out": isinstance(config, GPTConfig),  # GPT-2's Conv1D keeps (in, out) weights
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }


def write_peft(directory, params: LoraParams, base_name: str | None, base: dict | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors (float32) in `directory`, both or neither
    (atomic_files). base: the base identity (fingerprint, dtype) kept in the safetensors metadata."""
    directory = Path(directory)
    check_finite(directory / ADAPTER_WEIGHTS, params.flat)
    metadata = {"format": "pt"}
    if base is not None:
        metadata.update({FINGERPRINT_KEY: str(base["fingerprint"]), DTYPE_KEY: str(base["dtype"])})
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_files(directory) as tmp:
            with atomic_write(tmp / ADAPTER_WEIGHTS) as f:
                write_safetensors(f, peft_tensor_map(params), metadata)
            with atomic_write(tmp / ADAPTER_CONFIG, "w") as f:
                json.dump(peft_config_dict(params.lora, params.config, base_name), f, indent=2)
                f.write("\n")
    except OSError as e:
        raise CheckpointError(directory, f"cannot write: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------
# Reading

@dataclass(frozen=True)
class PeftConfig:
    """The settings of an adapter_config.json that we use, checked."""
    rank: int
    alpha: float
    dropout: float
    use_rslora: bool
    target_modules: list[str] | str | None
    base_name: str | None
    path: Path


def read_peft_config(directory) -> PeftConfig:
    """adapter_config.json of a PEFT LoRA adapter, every value we use checked (CheckpointError)."""
    path = Path(str(directory)).expanduser() / ADAPTER_CONFIG
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CheckpointError(path, f"larger than {MAX_CONFIG_BYTES:,} bytes; not an adapter config")
    try:
        d = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(path, f"bad JSON: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(path, "not a JSON object")

    def bad(key, want):
        raise CheckpointError(path, f"{key} must be {want}, got {str(d.get(key))[:60]!r}")

    if d.get("peft_type") != "LORA":
        raise CheckpointError(path, f"not a LoRA adapter (peft_type {str(d.get('peft_type'))[:40]!r}); only LORA "
                                    "adapters are supported")
    rank = d.get("r", 0)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= 65536:
        bad("r", "a whole number > 0")
    alpha = d.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        bad("lora_alpha", "a finite number > 0")
    dropout = d.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        bad("lora_dropout", "a number in [0, 1)")
    use_rslora = d.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        bad("use_rslora", "true or false")
    if d.get("bias", "none") != "none":
        raise CheckpointError(path, f"bias {str(d.get('bias'))[:20]!r}: adapters that train biases are not supported "
                                    "(only bias \"none\")")
    for key in ("use_dora", "lora_bias"):
        if d.get(key):
            raise CheckpointError(path, f"{key} is set: only plain LoRA adapters are supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if d.get(key):
            raise CheckpointError(path, f"{key} gives some modules another rank or alpha: not supported (one r and "
                                        "lora_alpha for every module)")
    for key in ("modules_to_save", "layers_to_transform", "trainable_token_indices"):
        if d.get(key):
            raise CheckpointError(path, f"{key} is set: not supported (adapters on every layer, nothing saved whole)")
    targets = d.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        bad("target_modules", "a list of module names or a string")
    base_name = d.get("base_model_name_or_path")
    if base_name is not None and (not isinstance(base_name, str) or not base_name or len(base_name) > 4096
                                  or "\x00" in base_name):
        bad("base_model_name_or_path", "a path or a model name")
    return PeftConfig(rank=rank, alpha=float(alpha), dropout=float(dropout), use_rslora=use_rslora,
                      target_modules=targets, base_name=base_name, path=path)


def read_peft_metadata(directory) -> dict[str, str]:
    """The safetensors metadata of an adapter (our base identity keys, if we wrote it)."""
    path = Path(str(directory)).expanduser() / ADAPTER_WEIGHTS
    try:
        with open(path, "rb") as f:
            _, metadata, _ = read_header(f, path)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    return metadata


def _selected(path: str, targets: list[str] | str | None) -> bool:
    """Whether PEFT's target_modules selects the module at `path` (its full name in the model,
    e.g. transformer.h.0.attn.c_attn): a list entry matches a path that is it or ends with
    "." + it (PEFT writes short names, or every full path); a string (all-linear, or a regular
    expression) is not checked."""
    if not isinstance(targets, list):
        return True
    return any(path == t or path.endswith("." + t) for t in targets)


def read_peft(directory, config: GPTConfig | LlamaConfig) -> tuple[LoraConfig, np.ndarray, PeftConfig]:
    """(our LoraConfig, the adapters' flat float32 buffer in LoraParams' layout, the checked
    adapter_config) of a PEFT adapter for a base of this config; CheckpointError (one line) for
    an adapter that does not fit this base or a damaged file."""
    directory = Path(str(directory)).expanduser()
    peft = read_peft_config(directory)
    path = directory / ADAPTER_WEIGHTS
    want_layers = layers_prefix(config)
    arch = _ARCH_OF_LAYERS[want_layers]
    by_module = {site.module: site for site in sites(config)}
    L, r = config.num_layers, peft.rank
    try:
        f = open(path, "rb")  # noqa: SIM115 (the with below: an open error is said in one line first)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    with f:
        entries, _, data_start = read_header(f, path)
        found: dict[tuple[str, int, str], str] = {}
        for key, entry in entries.items():
            m = _KEY.match(key)
            if m is None:
                raise CheckpointError(path, f"tensor {key[:100]!r} is not a LoRA matrix in PEFT's naming "
                                            "(base_model.model.<layers>.N.<module>.lora_A/lora_B.weight)")
            if m["layers"] != want_layers:
                raise CheckpointError(path, f"is an adapter for a {_ARCH_OF_LAYERS[m['layers']]} model ({m['layers']}.*) "
                                            f"but the base is a {arch} model")
            module, layer, which = m["module"], int(m["layer"]), m["which"]
            site = by_module.get(module)
            if site is None:
                raise CheckpointError(path, f"adapts {module!r}, which this {arch} base has not (it has "
                                            f"{', '.join(by_module)})")
            if layer >= L or m["layer"] != str(layer):
                raise CheckpointError(path, f"adapts layer {m['layer'][:12]} but the base has {L} layers")
            if entry.dtype not in ("F32", "F16", "BF16"):
                raise CheckpointError(path, f"tensor {key!r} is {entry.dtype}; adapters are F32, F16 or BF16")
            shape = (r, site.in_features) if which == "A" else (site.out_features, r)
            if entry.shape != shape:
                dims = "rows" if which == "A" else "columns"
                got_r = entry.shape[0 if which == "A" else 1] if len(entry.shape) == 2 else None
                if len(entry.shape) == 2 and got_r != r and entry.shape[1 if which == "A" else 0] == shape[
                        1 if which == "A" else 0]:
                    raise CheckpointError(path, f"{ADAPTER_CONFIG} says r={r} but {key} has {got_r} {dims}")
                raise CheckpointError(path, f"tensor {key} has shape {list(entry.shape)}, but this base's {module} "
                                            f"needs {list(shape)} (an adapter for another model size?)")
            found[(module, layer, which)] = key
        modules = tuple(m for m in by_module if any(k[0] == m for k in found))
        if not modules:
            raise CheckpointError(path, "holds no LoRA matrices")
        for module in modules:
            missing = [f"layer {layer} lora_{which}" for layer in range(L) for which in "AB"
                       if (module, layer, which) not in found]
            if missing:
                raise CheckpointError(path, f"{module} has no {', '.join(missing[:3])}: adapters on only some layers "
                                            "are not supported")
            if not all(_selected(f"{want_layers}.{layer}.{module}", peft.target_modules) for layer in range(L)):
                raise CheckpointError(path, f"adapts {module}, which target_modules {peft.target_modules} in "
                                            f"{ADAPTER_CONFIG} does not select")
        try:
            lora = LoraConfig(rank=r, alpha=peft.alpha, targets=modules, dropout=peft.dropout,
                              use_rslora=peft.use_rslora)
        except LoraError as e:
            raise CheckpointError(directory / ADAPTER_CONFIG, str(e)) from None
        params = LoraParams(config, lora)
        views = dict(peft_tensor_map(params))
        for key, dest in views.items():
            tensor = read_tensor(f, path, data_start, key, entries[key])
            dest[...] = tensor  # F16 and widened BF16 become float32 exactly
    check_finite(path, params.flat)
    return lora, params.flat, peft


def targets_setting(lora: LoraConfig, config: GPTConfig | LlamaConfig) -> str:
    """The run setting lora_targets for an adapter's modules (all-linear, or their paths)."""
    every = tuple(site.module for site in sites(config))
    return ALL_LINEAR if lora.targets == every else ",".join(lora.targets)
