"""What a training run is asked to do: RunConfig, its checks, and what may change on resume.

Every field is also a CLI flag (`seq_len` is `--seq-len`). Errors name the field; the CLI
spells it as the flag.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from tui_llm.engine.errors import TuiLlmError

# Fields that describe the model or the data stream: fixed once a run exists.
FIXED_ON_RESUME = frozenset({"arch", "model", "init_from", "init_style", "layers", "heads", "kv_heads", "channels",
                             "ffn_channels", "max_seq_len", "tokenizer",
                             "batch_size", "seq_len", "total_batch_size", "shuffle", "train_file", "val_file",
                             "data_format", "seed", "out_dir",
                             "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "use_rslora", "base_dtype", "base"})

ARCHS = ("gpt2", "llama")
BASE_DTYPES = ("auto", "fp32", "bf16")
MATMUL_DTYPES = ("fp32", "bf16", "auto")
SIZES = ("layers", "heads", "kv_heads", "channels", "ffn_channels")  # optional sizes of a fresh model
LIMIT = 2**62  # beyond any step, batch or token count a run can reach


class ConfigError(TuiLlmError, ValueError):
    """A run configuration that cannot work. `field` names the RunConfig field (None: several)."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem, field=field)


@dataclass
class RunConfig:
    train_file: str = "data/tiny_shakespeare_train.bin"  # a token file, or a glob of shards
    val_file: str | None = None        # None: the sibling *_val.bin of a *_train.bin, if present
    data_format: str = "auto"           # auto | llmc | int32 | uint16
    arch: str = "gpt2"                  # a fresh model's architecture: gpt2 | llama
    model: str = "d6"                   # preset for a fresh model (sizes for either arch)
    init_from: str | None = None        # llm.c .bin, Hugging Face dir/name, our checkpoint or run directory
    layers: int | None = None           # explicit sizes override the preset's
    heads: int | None = None
    kv_heads: int | None = None         # llama: key/value heads (default: heads)
    channels: int | None = None
    ffn_channels: int | None = None     # llama: SwiGLU width (default: 8/3 channels, a multiple of 64)
    max_seq_len: int = 1024
    init_style: str = "llmc"            # llmc: torch's generator, as train_gpt2.py; numpy: faster (gpt2 only)
    tokenizer: str | None = None        # Hugging Face tokenizer dir (tokenizer.json); None: the model's own / GPT-2's
    batch_size: int = 4                 # sequences per micro-batch, per process
    seq_len: int = 64
    total_batch_size: int = 0           # tokens per optimizer step; 0: batch_size * seq_len * processes
    steps: int = 1000
    lr: float = 1e-4
    lr_scale: float = 1.0               # multiplies the schedule's learning rate; a live setting (watch, control channel)
    warmup: int = 0
    lr_schedule: str = "constant"       # constant | cosine
    final_lr_fraction: float = 0.1      # cosine decays to lr * this
    weight_decay: float = 0.0
    grad_clip: float = 0.0              # 0 = no clipping (the norm is reported either way)
    val_every: int = 25                 # 0 turns validation off
    val_batches: int = 5
    sample_every: int = 25              # 0 turns periodic samples off (25: a first sample within a minute)
    sample_len: int = 64
    temperature: float = 1.0
    top_k: int = 0
    prompt: str = ""
    chat_template: str | None = None    # the chat panel's, tui-llm chat RUN_DIR's: a file or "chatml"; None: the tokenizer's
    save_every: int = 250               # 0 = only on request and at the end
    keep_checkpoints: int = 2           # older periodic checkpoints are deleted; 0 keeps all
    out_dir: str | None = None          # None: runs/<date>-<model>
    seed: int = 42                      # model init and sampling; the loader uses llm.c's 42
    threads: int = 0                    # 0 = all cores (divided among the processes of an MPI run)
    zero: int = 0                       # 1: ZeRO-1 under MPI, AdamW state split among the ranks; not kept on resume
    shuffle: bool = True
    document_attention: bool = False    # plain text: a document starts at each end-of-text token (packed data: always)
    lora_rank: int = 0                  # LoRA adapters of this rank over a frozen base; 0: full fine-tuning
    lora_alpha: float = 0.0             # the adapters' scale is lora_alpha / lora_rank; 0: 2 * lora_rank
    lora_dropout: float = 0.0           # dropout on the adapters' input while training
    lora_targets: str = "all-linear"    # modules to adapt, by PEFT's names (q_proj,v_proj / c_attn,c_proj) or all-linear
    use_rslora: bool = False            # scale lora_alpha / sqrt(lora_rank) (rsLoRA)
    base_dtype: str = "auto"            # a LoRA run's frozen base in memory: fp32 | bf16; auto: bf16 when its file is
    base: str | None = None             # the base model of a PEFT adapter given as init_from (default: the one it names)
    recompute: bool = False             # keep only each layer's input and run the layer again in the backward
    matmul_dtype: str = "fp32"          # the weights' products: fp32 | bf16 (inputs rounded, fp32 sums) | auto

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """From a saved dict (config.json, checkpoint metadata): unknown keys are ignored, every
        known one must have its field's type."""
        if not isinstance(d, dict):
            raise ConfigError(None, "the saved run configuration is not a JSON object")
        values = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v, default = d[f.name], f.default if f.default is not MISSING else None
            kinds = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}.get(type(default), ())
            if f.name in SIZES:
                kinds = (int,)
            if f.name in ("val_file", "init_from", "out_dir", "tokenizer", "chat_template", "base"):
                kinds = (str,)
            if f.name == "lora_alpha":
                kinds = (int, float)
            ok = (v is None and default is None) or \
                (isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds))
            if not ok:
                raise ConfigError(f.name, f"has the wrong type in the saved configuration: {v!r}")
            values[f.name] = v
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Every number finite and in range, every choice known; raises ConfigError naming the field."""
        positive = ("batch_size", "seq_len", "val_batches", "max_seq_len", "sample_len")
        not_negative = ("steps", "val_every", "sample_every", "save_every", "warmup", "top_k", "threads",
                        "keep_checkpoints", "total_batch_size", "seed", "lora_rank")
        for name in positive + not_negative + SIZES:
            v = getattr(self, name)
            if v is None and name in SIZES:
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(name, f"must be a whole number, got {v!r}")
            low = 1 if name in positive or name in SIZES else 0
            if v < low:
                raise ConfigError(name, f"must be {'positive' if low else 'zero or more'}, got {_shown(v)}")
            if v >= LIMIT:
                raise ConfigError(name, f"must be less than 2**62 ({LIMIT:.2e}), got {_shown(v)}")
        finite = {"lr": (0.0, 10.0, False), "lr_scale": (0.0, 100.0, True), "final_lr_fraction": (0.0, 1.0, True),
                  "weight_decay": (0.0, 10.0, True),
                  "grad_clip": (0.0, 1e9, True), "temperature": (0.0, 100.0, True),
                  "lora_alpha": (0.0, 1e6, True), "lora_dropout": (0.0, 0.999, True)}
        for name, (least, high, least_ok) in finite.items():
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                    or v < least or (v == least and not least_ok) or v > high:
                bound = ">=" if least_ok else ">"
                raise ConfigError(name, f"must be a number {bound} {least:g} and <= {high:g}, got {v!r}")
        choices = {"lr_schedule": ("constant", "cosine"), "init_style": ("llmc", "numpy"),
                   "data_format": ("auto", "llmc", "int32", "uint16"), "arch": ARCHS, "zero": (0, 1),
                   "base_dtype": BASE_DTYPES, "matmul_dtype": MATMUL_DTYPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(map(str, allowed))}, got {getattr(self, name)!r}")
        if not isinstance(self.prompt, str):
            raise ConfigError("prompt", "must be text")
        for name in ("shuffle", "use_rslora", "recompute"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.lora_targets, str):
            raise ConfigError("lora_targets", f"must be text (module names separated by commas), got {self.lora_targets!r}")
        if not self.lora_rank:  # full fine-tuning: the LoRA settings would be silently ignored
            given = [name for name, off in (("lora_alpha", 0.0), ("lora_dropout", 0.0), ("lora_targets", "all-linear"),
                                            ("use_rslora", False)) if getattr(self, name) != off]
            if given:
                raise ConfigError(given[0], "is a LoRA setting: add --lora-rank R to train adapters")
            if self.base_dtype == "bf16":
                raise ConfigError("base_dtype", "bf16 holds a frozen base: it needs LoRA (--lora-rank R); "
                                                "full fine-tuning trains fp32 weights")
        if self.arch == "gpt2":
            for name in ("kv_heads", "ffn_channels"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "is a Llama size; add --arch llama (GPT-2 has as many key/value heads "
                                            "as heads and a 4x MLP)")

    def resumed_with(self, overrides: dict) -> RunConfig:
        """A copy with `overrides` applied; fields fixed on resume may only be given unchanged."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(unknown[0], "is not a run setting")
        changed = sorted(k for k, v in overrides.items()
                         if k in FIXED_ON_RESUME and v is not None and v != getattr(self, k)
                         and not _same_path(k, v, getattr(self, k))
                         and not (k == "total_batch_size" and self.total_batch_size == 0))  # 0: B*T*processes then
        if self.total_batch_size == 0 and overrides.get("total_batch_size"):
            values = {**asdict(self), "total_batch_size": overrides["total_batch_size"]}
            return RunConfig(**values).resumed_with({k: v for k, v in overrides.items() if k != "total_batch_size"})
        if changed:
            raise ConfigError(changed[0], "cannot change when resuming (it describes the model or the data)")
        values = {**asdict(self), **{k: v for k, v in overrides.items() if v is not None and k not in FIXED_ON_RESUME}}
        values["zero"] = overrides.get("zero") or 0  # how this launch shares the optimizer: checkpoints do not care
        return RunConfig(**values)


LIVE_SETTINGS = ("lr_scale", "temperature", "top_k", "sample_len", "val_every", "sample_every", "save_every")
"""Settings a running trainer changes at a step boundary (SetSetting); checkpoints keep the new values."""


def live_setting(config: RunConfig, name, value):
    """`value` checked as a new value of the live setting `name` of `config` (which is not changed);
    raises ConfigError naming the field."""
    if name not in LIVE_SETTINGS:
        raise ConfigError(None, f"{name!r} is not a live setting (those are: {', '.join(LIVE_SETTINGS)})")
    if isinstance(value, float) and value.is_integer() and isinstance(getattr(config, name), int):
        value = int(value)  # 40.0 from JSON is the whole number 40
    copy = RunConfig(**{**asdict(config), name: value})
    copy.validate()
    return value


def _shown(v: int) -> str:
    """A whole number as a message shows it: in full when short, its size when huge (not 309 digits)."""
    digits = len(str(v)) if v.bit_length() < 10_000 else int(v.bit_length() * 0.30103) + 1
    return str(v) if digits <= 20 else f"a number of {digits:,} digits ({float(v):.2e})" if digits < 309 \
        else f"a number of {digits:,} digits"


def _same_path(name: str, a, b) -> bool:
    """A data path given again on resume, relative to here, names the same file as the saved absolute one."""
    if name not in ("train_file", "val_file", "out_dir", "tokenizer", "init_from") \
            or not isinstance(a, str) or not isinstance(b, str):
        return False
    return str(Path(a).absolute()) == str(Path(b).absolute())


def default_val_file(train_file: str) -> str | None:
    """The sibling *_val.bin of a *_train.bin (or *_val_*.bin shards of *_train_*.bin), if it exists."""
    p = Path(train_file)
    if p.name.endswith("_train.bin"):
        sibling = p.with_name(p.name[: -len("_train.bin")] + "_val.bin")
        if sibling.is_file():
            return str(sibling)
    if "_train_" in p.name and any(ch in p.name for ch in "*?["):
        pattern = p.with_name(p.name.replace("_train_", "_val_"))
        if any(pattern.parent.glob(pattern.name)):
            return str(pattern)
    return None
