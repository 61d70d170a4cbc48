"""TrainingState: everything a run needs to continue exactly, and the one mapping between it and
a checkpoint file.

    state = trainer.state()                   # when saving (the trainer fills it)
    state.save(path)                          # formats/checkpoint.py: one safetensors file, atomically
    state = TrainingState.load(path)          # on --resume: a run directory's newest checkpoint, or a file
    Trainer.resume(path)                      # = Trainer(state.run_config, _resume=state), which restores it

A checkpoint holds the weights and AdamW's m and v (flat float32, the model's layout) and, in its
metadata, the step, the run settings (live ones included), the architecture, the data loader's
position, the sampling RNG, where metrics.jsonl stood (`history_bytes`), training time and tokens.
A LoRA run's holds its adapters instead of the weights (array `lora`, the adapters' flat layout,
models/lora.py; m and v in that layout) and, in its metadata, the adapters' settings (`lora`) and
the base model's identity (`base`: init_from, model_name, dtype, num_params, fingerprint); the
base itself is not copied, a resume reads it again from `init_from` and checks its fingerprint.
Nothing read from a checkpoint is used unchecked: a crafted file gives one CheckpointError line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tui_llm.engine.formats import CheckpointError, load_training_checkpoint, save_training_checkpoint
from tui_llm.engine.models.build import config_from_dict
from tui_llm.engine.run.run_dir import resolve_checkpoint
from tui_llm.engine.training.run_config import ConfigError, RunConfig


@dataclass
class TrainingState:
    step: int                    # optimizer steps done
    run_config: RunConfig        # the run's settings, live settings as they stood
    model_config: Any            # GPTConfig or LlamaConfig
    model_name: str
    params: np.ndarray           # (num_parameters,) float32
    adam_m: np.ndarray           # (num_parameters,) float32: AdamW's first moment ...
    adam_v: np.ndarray           # ... and second
    loader: dict                 # TrainLoader.state_dict(): checked by the loader that loads it
    sample_rng: dict             # numpy's bit-generator state of the sampling RNG
    history_bytes: int | None    # bytes of metrics.jsonl that existed (None: a checkpoint from before)
    elapsed_s: float             # training time so far
    tokens: int                  # tokens trained on so far
    path: Path | None = None     # the checkpoint file it was read from
    lora: dict | None = None     # LoRA: LoraConfig.to_dict(); params, adam_m, adam_v are then the adapters'
    base: dict | None = None     # LoRA: the frozen base's identity (model_source.base_identity)

    # -- to and from a file -----------------------------------------------------------------

    def save(self, path) -> None:
        """Atomically write this state as a checkpoint (refused if anything is not finite)."""
        meta = {"step": self.step, "run_config": self.run_config.to_dict(), "model_config": self.model_config.to_dict(),
                "model_name": self.model_name, "loader": self.loader, "sample_rng": self.sample_rng,
                "history_bytes": self.history_bytes, "elapsed_s": self.elapsed_s, "tokens": self.tokens}
        if self.lora is not None:
            meta.update(lora=self.lora, base=self.base)
        weights = "lora" if self.lora is not None else "params"
        save_training_checkpoint(path, {weights: self.params, "adam_m": self.adam_m, "adam_v": self.adam_v}, meta)

    @classmethod
    def load(cls, path) -> TrainingState:
        """The state in a run directory's newest checkpoint, or in a checkpoint file, every value checked."""
        checkpoint = resolve_checkpoint(path)
        arrays, meta = load_training_checkpoint(checkpoint)
        weights = "lora" if "lora" in meta else "params"
        for key in (weights, "adam_m", "adam_v"):
            if key not in arrays:
                raise CheckpointError(checkpoint, f"not a resumable training checkpoint (no {key})")
        if not isinstance(meta.get("run_config"), dict):
            raise CheckpointError(checkpoint, "not a resumable training checkpoint (no run_config in its metadata)")
        try:
            run_config = RunConfig.from_dict(meta["run_config"])
        except ConfigError as e:
            raise CheckpointError(checkpoint, str(e)) from None
        run_config.out_dir = str(checkpoint.parent.absolute())
        if not isinstance(meta.get("model_config"), dict):
            raise CheckpointError(checkpoint, "not a resumable training checkpoint (no model_config in its metadata)")
        try:
            model_config = config_from_dict(meta["model_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(checkpoint, f"bad model_config: {e}") from None
        n = arrays[weights].size
        for key in ("adam_m", "adam_v"):
            if arrays[key].dtype != np.float32 or arrays[key].shape != (n,):
                raise CheckpointError(checkpoint, f"{key} is {arrays[key].dtype} {arrays[key].shape}, "
                                                  f"expected float32 ({n},)")
        for key in ("loader", "sample_rng"):
            if not isinstance(meta.get(key), dict):
                raise CheckpointError(checkpoint, f"bad {key} state in the checkpoint's metadata")
        step = _meta_int(meta, "step", checkpoint)
        elapsed = meta.get("elapsed_s", 0.0)
        return cls(
            step=step, run_config=run_config, model_config=model_config,
            model_name=str(meta.get("model_name", "checkpoint")),
            params=arrays[weights], adam_m=arrays["adam_m"], adam_v=arrays["adam_v"],
            loader=meta["loader"], sample_rng=meta["sample_rng"],
            history_bytes=_meta_int(meta, "history_bytes", checkpoint) if meta.get("history_bytes") is not None else None,
            elapsed_s=float(elapsed) if type(elapsed) in (int, float) and 0 <= elapsed < float("inf") else 0.0,
            tokens=_meta_int(meta, "tokens", checkpoint) if "tokens" in meta else -1,  # -1: from before tokens
            path=checkpoint.absolute(), lora=meta.get("lora"), base=_base_identity(meta, checkpoint))


def _base_identity(meta: dict, path) -> dict | None:
    """A LoRA checkpoint's `base`, every field checked (None without LoRA)."""
    if "lora" not in meta:
        return None
    base = meta.get("base")
    ok = isinstance(base, dict) and (base.get("init_from") is None or isinstance(base.get("init_from"), str)) \
        and isinstance(base.get("model_name"), str) and base.get("dtype") in ("fp32", "bf16") \
        and isinstance(base.get("num_params"), int) and isinstance(base.get("fingerprint"), str) \
        and len(base["fingerprint"]) == 16
    if not ok:
        raise CheckpointError(path, f"bad base model identity in a LoRA checkpoint: {str(base)[:80]}")
    return base


def _meta_int(meta: dict, key: str, path) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**62:
        raise CheckpointError(path, f"bad {key} in the checkpoint's metadata: {v!r}")
    return v
