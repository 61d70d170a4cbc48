"""What a training checkpoint holds besides the weights, and getting it back with every value checked.

    meta = checkpoint_meta(trainer)                          # when saving
    saved_config, arrays, meta = read_resume_checkpoint(p)   # on --resume, before the Trainer exists
    restore(trainer, arrays, meta)                           # once it does

Nothing read from a checkpoint is used unchecked: a crafted file gives one CheckpointError line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_llm.engine.models.build import config_from_dict
from tui_llm.engine.data.tokens import DataError
from tui_llm.engine.formats import CheckpointError, load_training_checkpoint
from tui_llm.engine.training.run_config import ConfigError, RunConfig
from tui_llm.engine.run.run_dir import resolve_checkpoint


def checkpoint_meta(trainer) -> dict:
    """Everything besides params and AdamW m/v that continuing the run exactly needs."""
    return {
        "step": trainer.step,
        "run_config": trainer.config.to_dict(),
        "model_config": trainer.model.config.to_dict(),
        "model_name": trainer.model_name,
        "loader": trainer.loader.state_dict(),
        "sample_rng": trainer.sample_rng.bit_generator.state,
        "history_bytes": trainer.run_dir.metrics.size(),  # how much of metrics.jsonl is this run's past
        "elapsed_s": trainer.elapsed_s,
        "tokens": trainer.tokens,
    }


def read_resume_checkpoint(path) -> tuple[RunConfig, dict, dict]:
    """(the saved run config, arrays, meta) of a run directory's newest checkpoint or a checkpoint file."""
    checkpoint = resolve_checkpoint(path)
    arrays, meta = load_training_checkpoint(checkpoint)
    for key in ("params", "adam_m", "adam_v"):
        if key not in arrays:
            raise CheckpointError(checkpoint, f"not a resumable training checkpoint (no {key})")
    if not isinstance(meta.get("run_config"), dict):
        raise CheckpointError(checkpoint, "not a resumable training checkpoint (no run_config in its metadata)")
    try:
        saved = RunConfig.from_dict(meta["run_config"])
    except ConfigError as e:
        raise CheckpointError(checkpoint, str(e)) from None
    saved.out_dir = str(checkpoint.parent.absolute())
    meta["path"] = str(checkpoint.absolute())
    return saved, arrays, meta


def model_config(meta: dict):
    """The architecture (GPTConfig or LlamaConfig) a checkpoint's metadata describes."""
    path = meta["path"]
    mc = meta.get("model_config")
    if not isinstance(mc, dict):
        raise CheckpointError(path, "not a resumable training checkpoint (no model_config in its metadata)")
    try:
        return config_from_dict(mc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad model_config: {e}") from None


def meta_int(meta: dict, key: str, path) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**62:
        raise CheckpointError(path, f"bad {key} in the checkpoint's metadata: {v!r}")
    return v


def restore(trainer, arrays: dict, meta: dict) -> None:
    """Optimizer, step, loader, RNG and history position of a checkpoint, into a fresh trainer."""
    path = meta["path"]
    n = trainer.model.num_parameters
    for key in ("adam_m", "adam_v"):
        if arrays[key].dtype != np.float32 or arrays[key].shape != (n,):
            raise CheckpointError(path, f"{key} is {arrays[key].dtype} {arrays[key].shape}, expected float32 ({n},)")
    step = meta_int(meta, "step", path)
    trainer.optimizer.load_state(arrays["adam_m"], arrays["adam_v"])  # this rank's slice under --zero 1
    trainer.step = trainer.optimizer.step = trainer.last_saved_step = step
    try:
        trainer.loader.load_state_dict(meta["loader"])
    except (DataError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad loader state: {e}") from None
    try:
        trainer.sample_rng.bit_generator.state = meta["sample_rng"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad sample_rng state: {e}") from None
    elapsed = meta.get("elapsed_s", 0.0)
    trainer.elapsed_s = float(elapsed) if isinstance(elapsed, (int, float)) and elapsed >= 0 else 0.0
    trainer.tokens = meta_int(meta, "tokens", path) if "tokens" in meta else step * trainer.tokens_per_step
    trainer.history_bytes = meta_int(meta, "history_bytes", path) if "history_bytes" in meta else None
    trainer.last_checkpoint = Path(path)
