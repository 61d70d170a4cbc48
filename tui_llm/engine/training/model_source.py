"""Models for a run: fresh ones of either architecture, or weights from anywhere with the
tokenizer that goes with them.

    model, name = fresh_model(run_config)                             # --arch, --model, sizes, --tokenizer

    config, flat, name, tokenizer_dir = load_model_source("runs/x")   # or a checkpoint, an llm.c .bin,
                                                                      # an HF dir, a cached name or a GGUF
    config, file_bf16 = peek_model_source("runs/x")                   # before reading any weight (or None)
    model = load_model("runs/x")                                      # a Model, a LoRA run's with its adapters
    recorded_chat_template("runs/x")                                  # the run's --chat-template, if any
    source = load_lora_source("runs/x" or "adapter_dir")              # a LoRA run's or a PEFT adapter's parts

A LoRA run's checkpoint holds its adapters and the identity of its base (`base`: where it came
from, `init_from` as an absolute path or a cached name, and the fingerprint of its weights): the
base is read again from there and refused if its fingerprint differs (check_base). A PEFT adapter
directory (formats/peft.py) names its base (`base_model_name_or_path`, or `--base`): a local path or
a name in the local Hugging Face cache, never downloaded (peft_base_source).
The tokenizer directory is where the model's tokenizer.json lives: a Llama-family HF dir's own,
the one a run recorded (`run_config.tokenizer` in its checkpoints), or a GGUF file's, rebuilt
from its metadata into the user's cache (formats/gguf_tokenizer.py); None means GPT-2's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_llm.engine.formats import (
    CheckpointError,
    detect_checkpoint_kind,
    load_model_weights,
    load_training_checkpoint,
    training_model_config,
)
from tui_llm.engine.formats.gguf_tokenizer import gguf_tokenizer_dir, is_cache_dir_path, is_gguf
from tui_llm.engine.formats.hf_gpt2 import hf_files, read_hf_config
from tui_llm.engine.formats.hf_llama import hf_model_type, peek_hf_llama, read_hf_llama
from tui_llm.engine.formats.llmc import read_llmc_header
from tui_llm.engine.formats.peft import (
    ADAPTER_CONFIG,
    DTYPE_KEY,
    FINGERPRINT_KEY,
    is_peft_dir,
    read_peft,
    read_peft_config,
    read_peft_metadata,
)
from tui_llm.engine.formats.safetensors import read_header
from tui_llm.engine.hf_cache import find_hf_cached
from tui_llm.engine.kernels.bf16 import fingerprint, narrow_to_bf16, widen_bf16
from tui_llm.engine.machine import NotEnoughMemory
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig, preset_config
from tui_llm.engine.models.llama import Llama, LlamaConfig, LlamaConfigError
from tui_llm.engine.models.lora import LoraConfig
from tui_llm.engine.models.torch_init import llmc_random_init
from tui_llm.engine.run.run_dir import is_run_dir, resolve_checkpoint
from tui_llm.engine.tokenizers.gpt2 import TokenizerError
from tui_llm.engine.tokenizers.lookup import load_tokenizer
from tui_llm.engine.training.run_config import ConfigError, RunConfig


def resolve_source(source) -> str:
    """What a source names: a run directory's newest checkpoint, else the path (or the cached name)."""
    path = Path(str(source)).expanduser()
    hf_dir = path.is_dir() and (hf_model_type(path) is not None or (path / "model.safetensors").is_file()
                                or (path / "model.safetensors.index.json").is_file())
    if path.is_dir() and is_run_dir(path) and not hf_dir:  # an HF dir has a config.json too
        path = resolve_checkpoint(path)
    return str(path) if path.exists() else str(source)


def load_model_source(source, base_dtype: str = "fp32") -> tuple:
    """(config, flat, name, tokenizer_dir or None) of a run directory (its newest checkpoint), a
    checkpoint, an llm.c .bin, a Hugging Face directory, a cached name or a GGUF file.
    base_dtype="bf16": the flat buffer is bf16 bits (uint16), read as such from a BF16 Hugging
    Face Llama (no float32 copy), else rounded from float32 after reading."""
    path = Path(str(source)).expanduser()
    if is_gguf(path):
        from tui_llm.engine.formats.gguf import read_gguf  # imports gguf only for a GGUF file

        config, flat, vocab, md = read_gguf(path)
        tokenizer = gguf_tokenizer_dir(vocab)
        return config, to_bf16(flat) if base_dtype == "bf16" else flat, \
            f"GGUF {md['general.architecture']} {path} ({flat.size / 1e6:.1f}M params)", \
            str(tokenizer) if tokenizer else None
    target = resolve_source(source)
    if is_lora_checkpoint(target) or is_peft_dir(target):
        what = "a LoRA run's checkpoint" if is_lora_checkpoint(target) else "a PEFT adapter"
        raise CheckpointError(target, f"is {what} (adapters over a base model), not a whole model")
    if base_dtype == "bf16":
        cached = find_hf_cached(target) if not Path(target).exists() else None
        directory = cached or Path(target)
        if hf_model_type(directory) not in (None, "gpt2"):
            llama_config, bits = read_hf_llama(directory, dtype="bf16")
            return llama_config, bits, f"Hugging Face {hf_model_type(directory)} {source} (bf16, {bits.size / 1e6:.1f}M " \
                                 f"params)", recorded_tokenizer(target)
    config, flat, name = load_model_weights(target)
    return config, to_bf16(flat) if base_dtype == "bf16" else flat, name, recorded_tokenizer(target)


def to_bf16(flat: np.ndarray) -> np.ndarray:
    """float32 weights rounded to bf16 bits (uint16), ties to even."""
    bits = np.empty(flat.size, np.uint16)
    narrow_to_bf16(bits, flat)
    return bits


def peek_model_source(source) -> tuple | None:
    """(config, whether the weights are stored as bf16) from a source's headers alone, or None
    where that takes reading the weights (GGUF). Bad sources raise as load_model_source would."""
    target = resolve_source(source)
    path = Path(target)
    if not path.exists():
        cached = find_hf_cached(target)
        if cached is None:
            return None  # load_model_source says why
        path = cached
    kind = detect_checkpoint_kind(path)
    if kind == "hf_llama":
        return peek_hf_llama(path)
    if kind == "llmc":
        version, config = read_llmc_header(path)
        return config, version == 5
    if kind == "training":
        _, meta = load_training_checkpoint(path, names=[])
        if "lora" in meta:
            return None
        return training_model_config(path, meta), False
    if kind == "hf":
        config_path, weights = hf_files(path)
        with open(weights, "rb") as f:
            entries, _, _ = read_header(f, weights)
        codes = {e.dtype for e in entries.values() if len(e.shape) == 2}
        return read_hf_config(config_path), codes == {"BF16"}
    return None


def is_lora_checkpoint(target: str) -> bool:
    path = Path(target)
    if not path.is_file() or detect_checkpoint_kind(path) != "training":
        return False
    _, meta = load_training_checkpoint(path, names=[])
    return "lora" in meta


def recorded_tokenizer(target: str) -> str | None:
    """The tokenizer directory that belongs to these weights (None: GPT-2's)."""
    path = Path(target)
    if not path.exists():
        path = find_hf_cached(target) or path
    if path.is_dir() or (path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file()
                         and detect_checkpoint_kind(path) != "training"):
        directory = path if path.is_dir() else path.parent
        llama = hf_model_type(directory) not in (None, "gpt2")
        return str(directory.absolute()) if llama and (directory / "tokenizer.json").is_file() else None
    if path.is_file() and detect_checkpoint_kind(path) == "training":
        _, meta = load_training_checkpoint(path, names=[])
        run_config = meta.get("run_config")
        if not isinstance(run_config, dict):
            return None
        tokenizer, init_from = run_config.get("tokenizer"), run_config.get("init_from")
        return restore_tokenizer_dir(tokenizer, init_from) if isinstance(tokenizer, str) else None
    return None


def recorded_chat_template(source) -> str | None:
    """The chat template a run was given (`run_config.chat_template` of a run directory's newest
    checkpoint, or of a checkpoint); None for anything else, or a run without one."""
    path = Path(str(source)).expanduser()
    if path.is_dir() and is_run_dir(path) and hf_model_type(path) is None:
        path = resolve_checkpoint(path)
    if not (path.is_file() and detect_checkpoint_kind(path) == "training"):
        return None
    _, meta = load_training_checkpoint(path, names=[])
    run_config = meta.get("run_config")
    template = run_config.get("chat_template") if isinstance(run_config, dict) else None
    return template if isinstance(template, str) else None


def restore_tokenizer_dir(recorded: str | None, init_from: str | None) -> str | None:
    """A run's recorded tokenizer directory; if it was a GGUF's cache directory that is gone (the
    cache was cleared) and the run started from that GGUF, made again from it (the directory is
    named by its content, so the same name is the same tokenizer). TokenizerError when it cannot be."""
    if recorded is None or Path(recorded).exists() or not is_cache_dir_path(recorded):
        return recorded
    if init_from is not None and is_gguf(init_from):
        from tui_llm.engine.formats.gguf import read_gguf_vocab

        rebuilt = gguf_tokenizer_dir(read_gguf_vocab(Path(init_from).expanduser()))
        if rebuilt is not None and rebuilt.name == Path(recorded).name:
            return str(rebuilt)
    raise TokenizerError(f"{recorded}: the tokenizer this run rebuilt from a GGUF file is no longer in the cache, and "
                         f"{init_from or 'that file'} no longer holds it; loading that GGUF again (e.g. `tui-llm "
                         f"prepare --tokenizer FILE.gguf ...`) puts it back")


def fresh_model(c: RunConfig) -> tuple[Model, str]:
    """A new model of the preset's sizes (or the given ones), and its name."""
    config, name = fresh_config(c)
    if isinstance(config, LlamaConfig):
        return Llama.random_init(config, seed=c.seed), name
    if c.init_style == "llmc":  # bit-identical to llm.c's train_gpt2.py --model dN init
        return GPT(config, llmc_random_init(config, seed=c.seed)), name
    return GPT.random_init(config, seed=c.seed), name


def fresh_config(c: RunConfig) -> tuple[GPTConfig | LlamaConfig, str]:
    """The config of a new model of the preset's sizes (or the given ones), and its name."""
    tokenizer = load_tokenizer(c.tokenizer) if c.tokenizer else None
    try:
        base = preset_config(c.model, max_seq_len=c.max_seq_len)
    except ValueError as e:
        raise ConfigError("model", str(e)) from None
    L, H, C = c.layers or base.num_layers, c.heads or base.num_heads, c.channels or base.channels
    vocab_size = tokenizer.vocab_size if tokenizer else base.vocab_size
    custom = any(v is not None for v in (c.layers, c.heads, c.channels, c.kv_heads, c.ffn_channels))
    name = "custom" if custom else c.model
    if c.arch == "llama":
        if tokenizer is None:
            raise ConfigError("tokenizer", "is needed for a fresh Llama model (the directory holding its "
                                           "tokenizer.json, e.g. a Llama-family model's)")
        try:
            llama_cfg = LlamaConfig(num_layers=L, num_heads=H, channels=C, max_seq_len=c.max_seq_len,
                                    vocab_size=vocab_size, num_kv_heads=c.kv_heads or 0,
                                    ffn_channels=c.ffn_channels or 64 * math.ceil(8 * C / 3 / 64),
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        except (LlamaConfigError, NotEnoughMemory) as e:
            raise ConfigError(None, f"a Llama of these sizes cannot be built: {e}") from None
        return llama_cfg, f"llama-{name}"
    try:
        cfg = GPTConfig(num_layers=L, num_heads=H, channels=C, max_seq_len=c.max_seq_len, vocab_size=vocab_size)
    except ValueError as e:
        raise ConfigError("model", str(e)) from None
    return cfg, name


# ---------------------------------------------------------------------------------------
# A LoRA run's frozen base: loaded from where the run recorded it, checked by its fingerprint

def load_base(c: RunConfig) -> tuple:
    """(config, flat, name, tokenizer_dir) of a LoRA run's base in c.base_dtype: c.base's weights
    (a run started from a PEFT adapter), c.init_from's, or the fresh model c describes (the same
    seed gives the same weights)."""
    if c.base:
        return load_model_source(c.base, c.base_dtype)
    if c.init_from:
        return load_model_source(c.init_from, c.base_dtype)
    model, name = fresh_model(c)
    return model.config, to_bf16(model.params.flat) if c.base_dtype == "bf16" else model.params.flat, name, None


def base_identity(model: Model, init_from: str | None, name: str) -> dict:
    """What a LoRA checkpoint records about its base (`base` in its metadata)."""
    return {"init_from": init_from, "model_name": name, "dtype": model.base_dtype,
            "num_params": model.num_parameters, "fingerprint": fingerprint(model.params.flat)}


def check_base(now: dict, recorded: dict, checkpoint) -> None:
    """CheckpointError (one line) when the base loaded now is not the one the adapters were trained on."""
    if now["fingerprint"] != recorded.get("fingerprint"):
        where = recorded.get("init_from") or f"the fresh model {recorded.get('model_name')!r}"
        raise CheckpointError(checkpoint, f"its adapters were trained on a base model with fingerprint "
                                          f"{recorded.get('fingerprint')}, but {where} now has {now['fingerprint']}: "
                                          f"the base changed; restore it, or start a new run")


# ---------------------------------------------------------------------------------------
# Adapters from anywhere: a LoRA run's checkpoint or a PEFT adapter directory

def peft_base_source(adapter_dir, base: str | None = None) -> str:
    """Where a PEFT adapter's base model is: `base` (--base) or the adapter's
    base_model_name_or_path, as an absolute path (a local file or directory) or a name in the
    local Hugging Face cache. CheckpointError (one line) when it names none, or one not here."""
    peft = read_peft_config(adapter_dir)
    name = base or peft.base_name
    if not name:
        raise CheckpointError(peft.path, "names no base model (base_model_name_or_path); give --base MODEL")
    path = Path(name).expanduser()
    if path.exists():
        return str(path.absolute())
    if find_hf_cached(name) is not None:
        return name
    if base:
        raise CheckpointError(name, "no such file or directory, and no model of that name in the local Hugging Face "
                                    "cache (nothing is downloaded)")
    raise CheckpointError(peft.path, f"its base model {name[:200]!r} is not a local path nor in the local Hugging Face "
                                     "cache (nothing is downloaded); give --base MODEL")


def resolve_base_dtype(base_source: str, base_dtype: str) -> str:
    """auto: bf16 when the base's file is bf16, else fp32."""
    if base_dtype != "auto":
        return base_dtype
    peeked = peek_model_source(base_source)
    return "bf16" if peeked is not None and peeked[1] else "fp32"


@dataclass
class LoraSource:
    """Adapters and the base they go on, as a LoRA run's checkpoint or a PEFT adapter gives them."""
    config: GPTConfig | LlamaConfig
    base_flat: np.ndarray          # the base's weights: float32, or bf16 bits (uint16)
    lora: LoraConfig
    adapters: np.ndarray           # the adapters' flat float32 buffer (models/lora.py's layout)
    name: str                      # the base's description
    tokenizer_dir: str | None
    base_source: str | None        # where the base came from (absolute path or cached name; None: a fresh model)
    path: Path                     # the checkpoint or adapter directory

    def base_fp32(self) -> np.ndarray:
        """The base's weights as float32 (widened from bf16 exactly: what the model's products use)."""
        if self.base_flat.dtype == np.float32:
            return self.base_flat
        out = np.empty(self.base_flat.size, np.float32)
        widen_bf16(out, self.base_flat)
        return out


def is_adapter_source(source) -> bool:
    """Whether `source` is a LoRA run (directory or checkpoint) or a PEFT adapter directory."""
    return is_peft_dir(source) or is_lora_checkpoint(resolve_source(source))


def load_lora_source(source, base: str | None = None, base_dtype: str = "auto") -> LoraSource:
    """The adapters of a LoRA run (its newest checkpoint; its base in the run's dtype, refused if
    its fingerprint changed) or of a PEFT adapter directory (its base from `base` or the adapter's
    base_model_name_or_path, in base_dtype: auto is the file's), checked against that base."""
    from tui_llm.engine.models.build import build_model
    from tui_llm.engine.training.state import TrainingState

    if is_peft_dir(source):
        directory = Path(str(source)).expanduser().absolute()
        where = peft_base_source(directory, base)
        config, flat, name, tokenizer_dir = load_model_source(where, resolve_base_dtype(where, base_dtype))
        lora, adapters, _ = read_peft(directory, config)
        check_peft_base(build_model(config, flat), directory, explicit_base=base is not None)
        return LoraSource(config, flat, lora, adapters, name, tokenizer_dir, where, directory)
    if base is not None:
        raise ConfigError("base", "is for a PEFT adapter directory given as --init-from (a LoRA run records its base)")
    state = TrainingState.load(resolve_source(source))
    assert state.lora is not None and state.base is not None and state.path is not None
    c = state.run_config
    config, flat, name, recorded = load_base(c)
    lora = LoraConfig.from_dict(state.lora, state.model_config)
    check_base(base_identity(build_model(config, flat), c.base or c.init_from, name), state.base, state.path)
    return LoraSource(config, flat, lora, state.params, state.model_name, c.tokenizer or recorded,
                      c.base or c.init_from, state.path)


def check_peft_base(model: Model, adapter_dir: Path, explicit_base: bool) -> None:
    """An adapter we exported records its base's fingerprint: refuse a base that differs (in the
    same dtype) unless the user named the base (--base) themselves."""
    metadata = read_peft_metadata(adapter_dir)
    recorded, dtype = metadata.get(FINGERPRINT_KEY), metadata.get(DTYPE_KEY)
    if explicit_base or recorded is None or dtype != model.base_dtype:
        return
    now = fingerprint(model.params.flat)
    if now != recorded:
        raise CheckpointError(adapter_dir / ADAPTER_CONFIG, f"its adapters were trained on a base with fingerprint "
                                                            f"{recorded}, but the base named there now has {now}; "
                                                            "restore it, or give --base MODEL to use another")


def peek_lora_config(source, base: str | None = None) -> GPTConfig | LlamaConfig | None:
    """The base's config of a LoRA run or PEFT adapter, before any weight is read (None where
    that takes reading the base: GGUF)."""
    if is_peft_dir(source):
        peeked = peek_model_source(peft_base_source(source, base))
        return peeked[0] if peeked is not None else None
    target = resolve_source(source)
    return training_model_config(Path(target), load_training_checkpoint(target, names=[])[1])


def read_adapters(source, base: str | None = None) -> tuple:
    """(base config, LoraConfig, the adapters' flat float32 buffer) of a LoRA run or PEFT adapter,
    without reading the base's weights where its headers tell its config (GGUF: they are read)."""
    from tui_llm.engine.training.state import TrainingState

    if is_peft_dir(source):
        config = peek_lora_config(source, base)
        if config is None:
            src = load_lora_source(source, base)
            return src.config, src.lora, src.adapters
        lora, adapters, _ = read_peft(source, config)
        return config, lora, adapters
    if base is not None:
        raise ConfigError("base", "is for a PEFT adapter directory given as --init-from (a LoRA run records its base)")
    state = TrainingState.load(resolve_source(source))
    assert state.lora is not None
    return state.model_config, LoraConfig.from_dict(state.lora, state.model_config), state.params
