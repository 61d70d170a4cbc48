"""The training loop, shared by the headless command and the Textual UI.

    trainer = Trainer(RunConfig(...))      # loads data and weights; raises on bad input
    trainer.run(emit)                      # blocking; emit(event) for every event in events.py
    trainer.send(Pause())                  # from any thread; read between steps

Inside step k, in llm.c's train_gpt2.c order: validation if due, a sample if due (k > 0),
then the training step on the next batch. Everything a run needs to continue exactly where it
stopped (weights, AdamW moments, step, loader position, sampling RNG, config, metrics) goes
into its checkpoints, each written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from tui_llm.engine import events as ev
from tui_llm.engine import kernels
from tui_llm.engine.config import GPTConfig, preset_config
from tui_llm.engine.data import DataError, TrainLoader, ValLoader, open_tokens
from tui_llm.engine.formats import (CheckpointError, atomic_write, load_model_weights, load_training_checkpoint,
                                    save_training_checkpoint)
from tui_llm.engine.model import GPT
from tui_llm.engine.optim import AdamW, AdamWConfig, learning_rate
from tui_llm.engine.sampler import Sampler
from tui_llm.engine.threads import set_threads
from tui_llm.engine.tokenizer import get_tokenizer
from tui_llm.engine.torch_init import llmc_random_init

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d{8})\.safetensors$")


class ConfigError(ValueError):
    """A run configuration that cannot work (one line for the user)."""


@dataclass
class RunConfig:
    train_file: str = "data/tiny_shakespeare_train.bin"
    val_file: str | None = None        # None: the sibling *_val.bin of a *_train.bin, if present
    data_format: str = "auto"           # auto | llmc | int32 | uint16
    model: str = "d6"                   # preset for a fresh model
    init_from: str | None = None        # llm.c .bin, Hugging Face dir/name, or our checkpoint
    layers: int | None = None           # explicit sizes override the preset's
    heads: int | None = None
    channels: int | None = None
    max_seq_len: int = 1024
    init_style: str = "llmc"            # llmc: torch's generator, as train_gpt2.py; numpy: faster
    batch_size: int = 4
    seq_len: int = 64
    steps: int = 1000
    lr: float = 1e-4
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
    save_every: int = 250               # 0 = only on request and at the end
    keep_checkpoints: int = 2           # older periodic checkpoints are deleted
    out_dir: str | None = None          # None: runs/<date>-<model>
    seed: int = 42                      # model init and sampling; the loader uses llm.c's 42
    threads: int = 0                    # 0 = all cores
    shuffle: bool = True
    pause_on_error: bool = False        # the UI pauses on an error; headless runs stop

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TrainingError(RuntimeError):
    pass


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))
    return found[-1][1] if found else None


def resolve_resume(path: str) -> Path:
    """A run directory (its newest checkpoint) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise CheckpointError(p, "no checkpoint (ckpt_*.safetensors) in this run directory")
        return ckpt
    if not p.exists():
        raise CheckpointError(p, "no such file or directory")
    return p


def load_resume_state(path: str) -> tuple[RunConfig, dict, dict]:
    """(saved run config, arrays, meta) of a training checkpoint."""
    ckpt = resolve_resume(path)
    arrays, meta = load_training_checkpoint(ckpt)
    for key in ("params", "adam_m", "adam_v"):
        if key not in arrays:
            raise CheckpointError(ckpt, f"not a resumable training checkpoint (no {key})")
    for key in ("step", "run_config", "model_config", "loader"):
        if key not in meta:
            raise CheckpointError(ckpt, f"not a resumable training checkpoint (no {key} in its metadata)")
    meta["path"] = str(ckpt)
    return RunConfig.from_dict(meta["run_config"]), arrays, meta


def default_val_file(train_file: str) -> str | None:
    p = Path(train_file)
    if p.name.endswith("_train.bin"):
        sibling = p.with_name(p.name[: -len("_train.bin")] + "_val.bin")
        if sibling.is_file():
            return str(sibling)
    return None


class Trainer:
    def __init__(self, config: RunConfig, resume: tuple[dict, dict] | None = None):
        """Load the model and data now, so bad input fails before any UI starts.

        resume: (arrays, meta) from load_resume_state, to continue a saved run.
        """
        self.config = c = config
        self.commands: queue.Queue[ev.Command] = queue.Queue()
        self._check_numbers()

        # model
        if resume is not None:
            arrays, meta = resume
            model_cfg = GPTConfig(**meta["model_config"])
            self.model = GPT(model_cfg, arrays["params"])
            self.model_desc = meta.get("model_desc", "checkpoint")
        elif c.init_from:
            model_cfg, flat, desc = load_model_weights(c.init_from)
            self.model = GPT(model_cfg, flat)
            self.model_desc = desc
        else:
            model_cfg = self._fresh_model_config()
            if c.init_style == "llmc":  # bit-identical to llm.c's train_gpt2.py --model dN init
                self.model = GPT(model_cfg, llmc_random_init(model_cfg, seed=c.seed))
            else:
                self.model = GPT.random_init(model_cfg, seed=c.seed)
            self.model_desc = c.model if c.layers is None and c.channels is None and c.heads is None else "custom"
        mc = self.model.config
        if c.seq_len > mc.max_seq_len:
            raise ConfigError(f"--seq-len {c.seq_len} is larger than the model's maximum sequence length {mc.max_seq_len}")

        # data
        if not Path(c.train_file).exists():
            raise DataError(f"{c.train_file}: no such file")
        self.train_tokens = open_tokens(c.train_file, c.data_format, vocab_size=mc.vocab_size)
        self.loader = TrainLoader(self.train_tokens, c.batch_size, c.seq_len, shuffle=c.shuffle, seed=42)
        val_file = c.val_file or default_val_file(c.train_file)
        self.val_tokens = self.val_loader = None
        if val_file:
            self.val_tokens = open_tokens(val_file, c.data_format, vocab_size=mc.vocab_size)
            self.val_loader = ValLoader(self.val_tokens, c.batch_size, c.seq_len)
        self.val_file = val_file

        # optimizer, sampling RNG, run state
        self.optimizer = AdamW(self.model, AdamWConfig(lr=c.lr, weight_decay=c.weight_decay, grad_clip=c.grad_clip))
        self.sample_rng = np.random.default_rng(c.seed)
        self.step = 0
        self.metrics: list[dict] = []
        self.last_saved_step = -1
        if resume is not None:
            arrays, meta = resume
            self.optimizer.m[:] = arrays["adam_m"]
            self.optimizer.v[:] = arrays["adam_v"]
            self.step = self.optimizer.step = int(meta["step"])
            self.loader.load_state_dict(meta["loader"])
            if "sample_rng" in meta:
                self.sample_rng.bit_generator.state = meta["sample_rng"]
            self.metrics = list(meta.get("metrics", []))
            self.last_saved_step = self.step
        if c.steps < self.step:
            raise ConfigError(f"--steps {c.steps} is less than the {self.step} steps this run has already done")

        self.run_dir = Path(c.out_dir) if c.out_dir else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{self.model_desc_short()}"
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out-dir {self.run_dir}: exists and is not a directory")
        c.out_dir = str(self.run_dir)
        self.encoding = get_tokenizer()
        self.sampler: Sampler | None = None
        self.paused = False
        self._stop: ev.Stop | None = None
        self._emit = None
        self._metrics_file = None

    def _check_numbers(self):
        c = self.config
        for name in ("batch_size", "seq_len", "val_batches", "max_seq_len"):
            if getattr(c, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(c, name)}")
        for name in ("steps", "val_every", "sample_every", "save_every", "warmup", "sample_len", "top_k", "threads"):
            if getattr(c, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(c, name)}")
        if c.lr <= 0 or not math.isfinite(c.lr):
            raise ConfigError(f"--lr must be a positive number, got {c.lr}")
        if c.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"--lr-schedule must be constant or cosine, got {c.lr_schedule!r}")
        if c.init_style not in ("llmc", "numpy"):
            raise ConfigError(f"--init-style must be llmc or numpy, got {c.init_style!r}")
        if c.temperature < 0:
            raise ConfigError(f"--temperature must not be negative, got {c.temperature}")

    def _fresh_model_config(self) -> GPTConfig:
        c = self.config
        try:
            base = preset_config(c.model, max_seq_len=c.max_seq_len)
            return GPTConfig(max_seq_len=c.max_seq_len, vocab_size=base.vocab_size,
                             num_layers=c.layers or base.num_layers, num_heads=c.heads or base.num_heads,
                             channels=c.channels or base.channels)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def model_desc_short(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.model_desc).name)[:40] or "model"

    # -------------------------------------------------------------------------------------
    # commands (any thread)

    def send(self, command: ev.Command) -> None:
        self.commands.put(command)

    def _handle_commands(self, block: bool = False) -> None:
        """Apply queued commands. While paused, wait here (still serving sample/save/stop)."""
        while True:
            try:
                cmd = self.commands.get(timeout=0.1) if (block or self.paused) else self.commands.get_nowait()
            except queue.Empty:
                if self.paused and self._stop is None:
                    continue
                return
            if isinstance(cmd, ev.Pause) and not self.paused:
                self.paused = True
                self._emit(ev.Paused(self.step))
            elif isinstance(cmd, ev.Resume) and self.paused:
                self.paused = False
                self._emit(ev.Resumed(self.step))
            elif isinstance(cmd, ev.SampleNow):
                self._sample(cmd.prompt or self.config.prompt)
            elif isinstance(cmd, ev.SaveNow):
                self._save("request")
            elif isinstance(cmd, ev.Stop):
                self._stop = cmd
                self.paused = False
                return

    # -------------------------------------------------------------------------------------
    # the loop

    def run(self, emit) -> str:
        """Train until done or stopped. Returns the finish reason: completed, stopped, error."""
        self._open_metrics()
        self._emit = lambda event: self._record(event, emit)
        c = self.config
        try:
            set_threads(c.threads)
            kernels.compile_kernels(lambda done, total, name: emit(ev.Compiling(done, total, name)))
            self._emit(self._run_started())
            self._write_config()
            reason = self._loop()
        except Exception as e:  # anything unexpected still reaches the consumer as one event
            self._emit(ev.Error(self.step, f"{type(e).__name__}: {e}"))
            reason = "error"
        self._emit(ev.Finished(self.step, reason))
        if self._metrics_file:
            self._metrics_file.close()
        return reason

    def _loop(self) -> str:
        c = self.config
        while self.step < c.steps:
            self._handle_commands()
            if self._stop is not None:
                break
            k = self.step
            if self.val_loader and c.val_every and (k % c.val_every == 0 or k == c.steps - 1):
                self._validate()
            if c.sample_every and k > 0 and (k % c.sample_every == 0 or k == c.steps - 1):
                self._sample(c.prompt)
            try:
                self._train_step()
            except TrainingError as e:
                self._emit(ev.Error(self.step, str(e)))
                if not c.pause_on_error:
                    return "error"
                self.paused = True
                self._emit(ev.Paused(self.step))
                continue
            if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                self._save("periodic")
        stop = self._stop
        if stop is None or stop.save:
            self._save("final" if stop is None else stop.reason)
        return "completed" if stop is None else stop.reason

    def _train_step(self) -> None:
        c, model, opt = self.config, self.model, self.optimizer
        t0 = time.perf_counter()
        x, y = self.loader.next_batch()
        t1 = time.perf_counter()
        loss = model.forward(x, y, training=True)
        t2 = time.perf_counter()
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss}) at step {self.step}: weights not updated")
        model.backward()
        t3 = time.perf_counter()
        grad_norm = opt.grad_norm()
        if not math.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm ({grad_norm}) at step {self.step}: weights not updated")
        lr = learning_rate(self.step, c.lr, c.steps, c.lr_schedule, c.warmup, c.final_lr_fraction)
        opt.update(lr, grad_norm)
        t4 = time.perf_counter()
        step_s = t4 - t0
        self.step += 1
        self._emit(ev.StepDone(
            step=self.step - 1, loss=loss, fwd_ms=(t2 - t1) * 1e3, bwd_ms=(t3 - t2) * 1e3, opt_ms=(t4 - t3) * 1e3,
            step_ms=step_s * 1e3, tok_per_s=c.batch_size * c.seq_len / step_s, lr=lr, grad_norm=grad_norm,
            epoch=self.loader.epoch))

    def _validate(self) -> None:
        losses = [self.model.forward(x, y) for x, y in self.val_loader.batches(self.config.val_batches)]
        self._emit(ev.Validation(self.step, float(np.mean(losses))))

    def _sample(self, prompt: str) -> None:
        c = self.config
        if self.sampler is None:
            self.sampler = Sampler(self.model, self.encoding)
        result = self.sampler.generate(prompt, c.sample_len, temperature=c.temperature, top_k=c.top_k,
                                       rng=self.sample_rng)
        self._emit(ev.Sample(self.step, prompt, result.text, result.ids, result.pieces,
                             [round(p, 5) for p in result.probs], result.tokens_per_second))

    # -------------------------------------------------------------------------------------
    # checkpoints, config.json, metrics.jsonl

    def checkpoint_path(self, step: int) -> Path:
        return self.run_dir / f"ckpt_{step:08d}.safetensors"

    def _save(self, reason: str) -> None:
        if self.step == self.last_saved_step:
            if reason == "request":
                self._emit(ev.Message(f"checkpoint for step {self.step} already saved"))
            return
        path = self.checkpoint_path(self.step)
        t0 = time.perf_counter()
        meta = {
            "step": self.step,
            "run_config": asdict(self.config),
            "model_config": self.model.config.to_dict(),
            "model_desc": self.model_desc,
            "loader": self.loader.state_dict(),
            "sample_rng": self.sample_rng.bit_generator.state,
            "metrics": [m for m in self.metrics if m["type"] in ("train", "val")],
        }
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_training_checkpoint(path, {"params": self.model.params.flat, "adam_m": self.optimizer.m,
                                            "adam_v": self.optimizer.v}, meta)
        except (OSError, CheckpointError) as e:
            self._emit(ev.Error(self.step, f"saving {path} failed: {e}; the previous checkpoint is intact"))
            if self.config.pause_on_error and self._stop is None:
                self.paused = True
                self._emit(ev.Paused(self.step))
            return
        self.last_saved_step = self.step
        self._emit(ev.CheckpointSaved(self.step, str(path), time.perf_counter() - t0, reason))
        self._prune_checkpoints(keep_also=path)

    def _prune_checkpoints(self, keep_also: Path) -> None:
        keep = self.config.keep_checkpoints
        if keep <= 0:
            return
        found = sorted(p for p in self.run_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name))
        for old in found[:-keep]:
            if old != keep_also:
                old.unlink(missing_ok=True)

    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / "config.json", "w") as f:
            json.dump({"run": asdict(self.config), "model": self.model.config.to_dict(),
                       "model_desc": self.model_desc, "num_parameters": self.model.num_parameters},
                      f, indent=2)

    def _open_metrics(self) -> None:
        """metrics.jsonl: on resume, rewritten from the checkpoint's metrics, then appended to."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if self.step > 0:
            with atomic_write(path, "w") as f:
                for m in self.metrics:
                    f.write(json.dumps(m) + "\n")
        elif path.exists():
            path.unlink()
        self._metrics_file = open(path, "a", buffering=1)

    def _record(self, event: ev.Event, emit) -> None:
        record = event.to_json()
        if event.kind in ("train", "val"):
            self.metrics.append(record)
        if self._metrics_file is not None and event.kind != "compiling":
            self._metrics_file.write(json.dumps(record) + "\n")
        emit(event)

    def _run_started(self) -> ev.RunStarted:
        c, m = self.config, self.model
        return ev.RunStarted(
            run_dir=str(self.run_dir), model=self.model_desc, config=asdict(c), model_config=m.config.to_dict(),
            num_params=m.num_parameters, param_bytes=4 * 4 * m.num_parameters,
            train_file=str(c.train_file), train_tokens=self.train_tokens.num_tokens,
            val_file=self.val_file, val_tokens=self.val_tokens.num_tokens if self.val_tokens else 0,
            batches_per_epoch=self.loader.num_samples, start_step=self.step, total_steps=c.steps)
