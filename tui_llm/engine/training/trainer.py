"""The training loop, shared by the headless command, the Textual UI and notebooks.

    trainer = Trainer(RunConfig(train_file=..., steps=100))   # loads data and weights; raises on bad input
    trainer.run(emit)                      # blocking; emit(event) for every event in events.py
    trainer.send(Pause())                  # from any thread; applied between steps
    trainer = Trainer.resume("runs/x", steps=200)             # continue a saved run exactly

Step k (0-based; k steps are done) runs in llm.c's train_gpt2.c order: validation if due,
a sample if due (k > 0), then the training step. After the last step a final validation and
sample evaluate the final weights (train_gpt2.cu's order). A step may accumulate gradients over
several micro-batches (`total_batch_size`). Everything a run needs to continue exactly (weights,
AdamW moments, step, loader position, sampling RNG, where the history stood) goes into its
checkpoints; the history itself is the run directory's metrics.jsonl.

Packed conversations (a .mask beside the token file: `prepare --chat`) train on the loss of their
counted tokens: the step's count is known (and all-reduced) before its first micro-batch, and every
micro-batch's loss is weighted by its mask over that count (_step_weights), so any split of the step
into micro-batches and ranks gives the single-process result. `ChatNow` asks the current weights for
a reply with the run's chat template (the dashboard's chat panel).

(About 450 lines: the loop, the commands it serves between steps and its saves read best
together. What a checkpoint holds is in resume_state.py, where weights come from in
model_source.py.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

from tui_llm.engine import events as ev
from tui_llm.engine.data.loader import Batch, PackedTrainLoader, PackedValLoader, TrainLoader, ValLoader, documents_at
from tui_llm.engine.data.loader_state import BatchMismatch
from tui_llm.engine.data.packed import open_packed
from tui_llm.engine.data.sidecar import check_data_tokenizer
from tui_llm.engine.data.tokens import DataError, _as_shards, open_dataset
from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.formats import CheckpointError
from tui_llm.engine.formats.gguf_tokenizer import resolve_tokenizer_dir
from tui_llm.engine.formats.peft import is_peft_dir, read_peft, targets_setting
from tui_llm.engine.kernels import bf16_matmul
from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.kernels.lora import dropout_key
from tui_llm.engine.kernels.optimizer import sum_of_squares
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.build import build_model
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, LoraError, resolve_targets
from tui_llm.engine.run.channel import ControlServer
from tui_llm.engine.run.run_dir import RunDir, RunDirError, checkpoint_step
from tui_llm.engine.tokenizers.chat_template import BUILTIN_TEMPLATES, ChatTemplateError, load_chat_template
from tui_llm.engine.tokenizers.lookup import load_tokenizer
from tui_llm.engine.training.chat import Chat
from tui_llm.engine.training.control import Control
from tui_llm.engine.training.distributed import World
from tui_llm.engine.training.memory import MemoryEstimate, check_run_fits
from tui_llm.engine.training.model_source import (
    base_identity,
    check_base,
    check_peft_base,
    fresh_config,
    fresh_model,
    is_lora_checkpoint,
    load_base,
    load_model_source,
    peek_model_source,
    peft_base_source,
    resolve_source,
    restore_tokenizer_dir,
    to_bf16,
)
from tui_llm.engine.training.optim import AdamW, AdamWConfig, learning_rate
from tui_llm.engine.training.run_config import ConfigError, RunConfig, default_val_file, live_setting
from tui_llm.engine.training.sampler import PromptError, Sampler, check_prompt_ids
from tui_llm.engine.training.state import TrainingState

__all__ = ["Trainer", "RunConfig", "ConfigError", "TrainingError"]


class TrainingError(TuiLlmError):
    """The step cannot go on (non-finite loss or gradient); the weights were not updated."""

    exit_code = 1  # a training error, not bad input


class Trainer:
    def __init__(self, config: RunConfig, *, world: World | None = None, _resume: TrainingState | None = None):
        """Load the model and data and claim the run directory now, so bad input fails before
        anything starts. The caller's config is not modified (see `self.config`).

        world: the processes of a data-parallel MPI run (World.detect()); default one process.
        Every rank builds the same Trainer; rank 0 alone writes the run directory and emits events.
        """
        config.validate()
        self.config = replace(config)
        self.world = world or World.single()
        self.control = Control()
        self._notes: list[str] = []  # said once the run starts (small validation data, a directory started over)
        self._load_model(_resume)
        self._open_data()
        self._make_optimizer()
        self._start_at(_resume)
        self._failed_saves = 0                   # saves failed in a row ...
        self._save_problem: str | None = None  # ... and why (said once)
        self._claim_run_dir(fresh=_resume is None)
        self.sampler: Sampler | None = None
        self.chatter: Chat | None = None  # the chat panel's (ChatNow), made on first use
        self._emit: Callable[[ev.Event], None] = lambda event: None  # run() sets the real one
        self._history_error: OSError | None = None
        self._history_opened = False
        self._history_note: str | None = None
        self.channel: ControlServer | None = None  # rank 0's control channel while run() runs

    @classmethod
    def resume(cls, path, *, world: World | None = None, **overrides) -> Trainer:
        """Continue the run saved at `path` (a run directory: its newest checkpoint; or a checkpoint
        file). `overrides` may change run settings (steps, lr, cadences, ...) but not the model or
        the data (ConfigError names the field).

        A run directory whose run stopped before its first checkpoint is started again from step 0
        with the configuration its config.json recorded."""
        saved = _unsaved_run_config(path)
        if saved is not None:
            config = saved.resumed_with(overrides)
            config.out_dir = str(Path(path).absolute())
            return cls(config, world=world)
        state = TrainingState.load(path)
        return cls(state.run_config.resumed_with(overrides), world=world, _resume=state)

    def _short_name(self) -> str:
        """The model part of a run directory's default name: the preset (d6, llama-d4), or the name
        of what the weights came from (SmolLM2-135M for an HF dir or cached name, gpt2_124M for an
        llm.c file, model for model.gguf, the run directory's name for one of our checkpoints)."""
        import re

        name = self.model_name
        if self.config.init_from:
            source = Path(self.config.init_from.rstrip("/"))
            name = source.parent.name if checkpoint_step(source) is not None else source.name
            name = name.removesuffix(".bin").removesuffix(".safetensors").removesuffix(".gguf")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")[:40] or "model"

    # -- what __init__ does, in order ---------------------------------------------------------

    def _load_model(self, state: TrainingState | None) -> None:
        """The model, and the tokenizer it speaks (recorded absolute, so a resume and `sample` find it).

        Before any weight is read: the adapters' settings are checked against the model and the
        run's memory is estimated (refused if it does not fit). A LoRA run's base comes from
        init_from (an absolute path, or a cached name) or the fresh model the settings describe,
        in base_dtype; its fingerprint is the base's identity in checkpoints, checked on resume."""
        c = self.config
        if c.init_from and Path(c.init_from).expanduser().exists():
            c.init_from = str(Path(c.init_from).expanduser().absolute())
        self._adapter: tuple | None = None   # a PEFT adapter's (LoraConfig, flat) to continue training
        if c.base is not None and not (state is not None or (c.init_from and is_peft_dir(c.init_from))):
            raise ConfigError("base", "is the base model of a PEFT adapter given as --init-from ADAPTER_DIR; "
                                      "without one, give the model as --init-from")
        named_base = c.base is not None   # a base the user named is not checked against the adapter's record
        if state is None and c.init_from and is_peft_dir(c.init_from):
            c.base = peft_base_source(c.init_from, c.base)   # recorded: a resume needs no adapter directory
        model_config, file_bf16 = self._plan_model(state)
        loaded = None
        if model_config is None:  # a source whose sizes are known only once it is read (GGUF)
            loaded = load_model_source(c.base or c.init_from)
            model_config = loaded[0]
        self.lora_config = self._lora_config(model_config, state)
        c.base_dtype = ("bf16" if file_bf16 else "fp32") if c.base_dtype == "auto" else c.base_dtype
        if self.lora_config is None:
            c.base_dtype = "fp32"
        self.memory = self._check_memory(model_config, file_bf16)
        recorded = None
        if state is not None and self.lora_config is None:
            self.model = build_model(state.model_config, state.params)
            self.model_name = state.model_name
        elif c.init_from or self.lora_config is not None:  # weights from a file, or a LoRA run's base
            if loaded is None:
                loaded = load_base(c) if self.lora_config is not None else load_model_source(c.init_from)
            elif c.base_dtype == "bf16":
                loaded = (loaded[0], to_bf16(loaded[1]), *loaded[2:])
            model_cfg, flat, self.model_name, recorded = loaded
            self.model = build_model(model_cfg, flat)
        else:
            self.model, self.model_name = fresh_model(c)
        self.model.recompute = c.recompute
        c.matmul_dtype = self._matmul_dtype(c.matmul_dtype)
        self.model.w.matmul_dtype = c.matmul_dtype
        self.base: dict | None = None
        if self.lora_config is not None:
            flat = state.params if state is not None else self._adapter[1] if self._adapter is not None else None
            self.model.attach_lora(self.lora_config, flat=flat, seed=c.seed)
            self.base = base_identity(self.model, c.base or c.init_from, self.model_name)
            if state is None and self._adapter is not None:
                assert c.init_from is not None
                check_peft_base(self.model, Path(c.init_from), explicit_base=named_base)
            if state is not None:
                assert state.base is not None
                self.model_name = state.model_name
                check_base(self.base, state.base, state.path)
            if len(set(self.world.allgather_obj(self.base["fingerprint"]))) > 1:
                raise ConfigError("init_from", "the ranks loaded different base models (their fingerprints differ)")
        # a directory, a cached name or a GGUF file (its tokenizer rebuilt into the cache), made absolute
        found = resolve_tokenizer_dir(restore_tokenizer_dir(c.tokenizer, c.base or c.init_from) or recorded)
        c.tokenizer = str(found) if found else None
        self.encoding = load_tokenizer(c.tokenizer)
        if isinstance(self.model, Llama) and c.tokenizer is None:
            raise ConfigError("tokenizer", "is needed: a Llama model has no GPT-2 vocabulary; give the directory "
                                           "holding its tokenizer.json")
        if c.tokenizer and self.encoding.vocab_size > self.model.config.vocab_size:
            raise ConfigError("tokenizer", f"{c.tokenizer} has {self.encoding.vocab_size:,} tokens, more than the "
                                           f"model's vocabulary of {self.model.config.vocab_size:,}")
        if c.prompt:
            try:
                check_prompt_ids(self.encoding.encode_ordinary(c.prompt), self.model.config.vocab_size)
            except PromptError as e:
                raise ConfigError("prompt", e.problem) from None
        if c.chat_template is not None:  # the chat panel's: refused now rather than at the first question
            if c.chat_template not in BUILTIN_TEMPLATES and Path(c.chat_template).expanduser().exists():
                c.chat_template = str(Path(c.chat_template).expanduser().absolute())
            try:
                load_chat_template(c.chat_template, c.tokenizer)
            except ChatTemplateError as e:
                raise ConfigError("chat_template", e.problem) from None
        if c.seq_len > self.model.config.max_seq_len:
            raise ConfigError("seq_len", f"{c.seq_len} is larger than the model's maximum sequence length "
                                         f"{self.model.config.max_seq_len}")

    def _matmul_dtype(self, requested: str) -> str:
        """The products' precision this run uses (recorded resolved): bf16 needs vdpbf16ps (avx512_bf16);
        auto picks it where the CPU has it (the bf16 kernel is faster there, BENCHMARKS.md) and
        falls back to fp32 with a notice where it has not."""
        has_bf16 = bf16_matmul.cpu_has_bf16()
        if requested == "fp32" or (requested == "bf16" and has_bf16):
            return requested
        if requested == "bf16":
            raise ConfigError("matmul_dtype", "bf16 needs a CPU with avx512_bf16 (vdpbf16ps) and this one has "
                                              "none: use fp32 (or auto, which falls back to it)")
        if has_bf16:
            return "bf16"
        self._notes.append("matrix products in fp32: this CPU has no avx512_bf16 for --matmul-dtype auto's bf16")
        return "fp32"

    def _plan_model(self, state: TrainingState | None) -> tuple:
        """(the model's config, whether its weights are stored as bf16) before reading them; the
        config is None where the file must be read to know it."""
        c = self.config
        if state is not None:
            return state.model_config, state.base is not None and state.base["dtype"] == "bf16"
        if c.init_from:
            if is_lora_checkpoint(resolve_source(c.init_from)):
                raise ConfigError("init_from", f"{c.init_from} is a LoRA run: --resume continues it (or export "
                                               "its adapter with --to peft and start from that directory)")
            peeked = peek_model_source(c.base or c.init_from)
            return peeked if peeked is not None else (None, False)
        return fresh_config(c)[0], False

    def _lora_config(self, model_config, state: TrainingState | None) -> LoraConfig | None:
        """The adapters' settings (a checkpoint's on resume), checked against the model; None: full fine-tuning."""
        c = self.config
        if state is not None and state.lora is not None:
            try:
                return LoraConfig.from_dict(state.lora, state.model_config)
            except LoraError as e:
                raise CheckpointError(state.path, str(e)) from None
        if c.base is not None and state is None:  # continue training a PEFT adapter: its settings
            return self._adapter_settings(model_config)
        if not c.lora_rank:
            return None
        if c.lora_alpha == 0:
            c.lora_alpha = 2.0 * c.lora_rank
        try:
            return LoraConfig(rank=c.lora_rank, alpha=float(c.lora_alpha), targets=resolve_targets(c.lora_targets,
                              model_config), dropout=float(c.lora_dropout), use_rslora=c.use_rslora)
        except LoraError as e:
            raise ConfigError("lora_targets" if "targets" in str(e) else "lora_rank", str(e)) from None

    def _adapter_settings(self, model_config) -> LoraConfig:
        """A PEFT adapter's LoraConfig, read and checked against the base (CheckpointError), its
        tensors kept for attach_lora; the run's LoRA settings become the adapter's (a rank or
        targets given that differ are refused; dropout given on the command line is kept)."""
        c = self.config
        assert c.init_from is not None
        lora, flat, _ = read_peft(c.init_from, model_config)
        if c.lora_rank and c.lora_rank != lora.rank:
            raise ConfigError("lora_rank", f"{c.lora_rank} differs from the adapter's r={lora.rank} "
                                           f"({c.init_from}); leave --lora-rank out to continue it")
        if c.lora_alpha and c.lora_alpha != lora.alpha:
            raise ConfigError("lora_alpha", f"{c.lora_alpha:g} differs from the adapter's lora_alpha={lora.alpha:g} "
                                            f"({c.init_from}); leave --lora-alpha out to continue it")
        targets = targets_setting(lora, model_config)
        if c.lora_targets not in (ALL_LINEAR, targets):
            try:
                wanted = resolve_targets(c.lora_targets, model_config)
            except LoraError as e:
                raise ConfigError("lora_targets", str(e)) from None
            if wanted != lora.targets:
                raise ConfigError("lora_targets", f"{c.lora_targets} differs from the adapter's modules "
                                                  f"({', '.join(lora.targets)}); leave --lora-targets out")
        if c.lora_dropout:
            lora = replace(lora, dropout=float(c.lora_dropout))
        if c.use_rslora and not lora.use_rslora:
            raise ConfigError("use_rslora", f"the adapter {c.init_from} does not use rsLoRA; leave --use-rslora out")
        c.lora_rank, c.lora_alpha, c.lora_targets = lora.rank, lora.alpha, targets
        c.lora_dropout, c.use_rslora = lora.dropout, lora.use_rslora
        self._adapter = (lora, flat)
        return lora

    def _check_memory(self, model_config, file_bf16: bool) -> MemoryEstimate:
        c = self.config
        shards = self.world.size if c.zero else 1
        return check_run_fits(model_config, c.batch_size, c.seq_len, lora=self.lora_config, base_dtype=c.base_dtype,
                              recompute=c.recompute, optimizer_shards=shards, file_bf16=file_bf16)

    def _open_data(self) -> None:
        """Training and validation tokens and their loaders (paths made absolute, so a resume works
        from any directory); the optimizer step's total batch split into micro-batches and ranks."""
        c, world, vocab_size = self.config, self.world, self.model.config.vocab_size
        c.train_file = str(Path(c.train_file).absolute())
        c.val_file = c.val_file and str(Path(c.val_file).absolute())
        check_data_tokenizer(c.train_file, self.encoding)
        self.train_tokens = open_dataset(c.train_file, c.data_format, vocab_size=vocab_size)
        tokens_per_micro = c.batch_size * c.seq_len * world.size
        total = c.total_batch_size or tokens_per_micro
        if total % tokens_per_micro:
            factors = [("batch_size", c.batch_size), ("seq_len", c.seq_len)]
            factors += [(f"{world.size} processes", world.size)] if world.size > 1 else []
            raise ConfigError("total_batch_size", f"{total} is not a multiple of {' * '.join(n for n, _ in factors)} = "
                                                  f"{' * '.join(str(v) for _, v in factors)} = {tokens_per_micro}")
        self.grad_accum = total // tokens_per_micro
        self.tokens_per_step = total
        c.total_batch_size = total  # recorded resolved: a resume on another number of processes keeps it
        # packed rows (a .mask beside the tokens: prepare --chat) carry their loss mask and documents
        self.packed = open_packed(c.train_file, vocab_size)
        self.doc_start_token = self.encoding.eot_token if c.document_attention else None
        self.loader: TrainLoader
        if self.packed is not None:
            self.loader = PackedTrainLoader(self.packed, c.batch_size, c.seq_len, shuffle=c.shuffle, seed=42,
                                            grad_accum=self.grad_accum, rank=world.rank, world_size=world.size)
        else:
            if c.document_attention and self.doc_start_token is None:
                raise ConfigError("document_attention", "needs an end-of-text token, and this tokenizer has none")
            self.loader = TrainLoader(self.train_tokens, c.batch_size, c.seq_len, shuffle=c.shuffle, seed=42,
                                      grad_accum=self.grad_accum, rank=world.rank, world_size=world.size,
                                      doc_start_token=self.doc_start_token)
        val_file = c.val_file or default_val_file(c.train_file)
        self.val_tokens = self.val_loader = None
        if val_file:
            check_data_tokenizer(val_file, self.encoding)
            self.val_tokens = open_dataset(val_file, c.data_format, vocab_size=vocab_size)
            self.val_loader = self._val_loader(val_file)
        self.val_file = val_file if self.val_loader else None

    def _val_loader(self, val_file: str) -> ValLoader | PackedValLoader | None:
        """Whole total batches, as one process with the whole batch would see them (split into
        micro-batches in _validate). Validation tokens too few for that (a small corpus): as many
        micro-batches as they hold, said at the start; too few for one: no validation, said too.
        Packed training data is validated on packed rows (micro-batches of B rows, masked)."""
        B, T = self.config.batch_size, self.config.seq_len
        val_packed = open_packed(val_file, self.model.config.vocab_size)
        if (val_packed is None) != (self.packed is None):
            has, lacks = (val_file, self.config.train_file) if self.packed is None else (self.config.train_file, val_file)
            raise DataError(f"{has} has a loss mask (.mask) and {lacks} has none: prepare them together (--val "
                            f"another file, or --val-every 0)")
        if val_packed is not None:
            loader = PackedValLoader(val_packed, B, T)
            if loader.num_samples == 0:
                self._notes.append(f"no validation: {Path(val_file).name} holds fewer than {B} packed rows")
                return None
            return loader
        shards = [t.shape[0] for _, t in _as_shards(self.val_tokens)]
        rows = min(self.loader.rows, min((n - 1) // T for n in shards) // B * B)
        if rows == self.loader.rows:
            return ValLoader(self.val_tokens, rows, T)
        have = f"{Path(val_file).name} holds {min(shards):,} tokens"
        if rows < B:
            self._notes.append(f"no validation: {have}, fewer than one batch of B*T+1 = {B * T + 1:,} "
                               f"(make more text, a larger --val-fraction in prepare, or a smaller -b / -t)")
            return None
        self._notes.append(f"validation uses batches of {rows} rows, not {self.loader.rows}: {have}, fewer than one "
                           f"total batch of {self.loader.rows * T + 1:,}")
        return ValLoader(self.val_tokens, rows, T)

    def _make_optimizer(self) -> None:
        """AdamW (with --zero 1 each rank keeps its state for its slice of the parameters); rank 0's
        weights become every rank's."""
        c, world = self.config, self.world
        if c.zero and world.size < 2:
            raise ConfigError("zero", "1 needs an MPI run of 2 or more processes (mpiexec -n N tui-llm --no-ui ...)")
        self.optimizer = AdamW(self.model, AdamWConfig(lr=c.lr, weight_decay=c.weight_decay, grad_clip=c.grad_clip),
                               shard=world.shard(self.model.num_trainable) if c.zero else None)
        self.sharded = bool(c.zero)
        world.bcast_(self.model.trainable.flat)  # a LoRA base is every rank's own (its fingerprints agree)

    def _start_at(self, state: TrainingState | None) -> None:
        """Where the run stands: step 0 of a fresh run, or everything a checkpoint saved."""
        self.sample_rng = np.random.default_rng(self.config.seed)
        self.step = 0
        self.elapsed_s = 0.0        # training time, continued across resumes
        self.tokens = 0             # tokens trained on
        self.last_saved_step = -1
        self.last_checkpoint: Path | None = None
        self.history_bytes: int | None = 0  # how much of metrics.jsonl to keep when opening it
        if state is None:
            return
        path = state.path
        if state.params.size != self.model.num_trainable:
            raise CheckpointError(path, f"holds {state.params.size:,} parameters; its model trains "
                                        f"{self.model.num_trainable:,}")
        self.optimizer.load_state(state.adam_m, state.adam_v)  # this rank's slice under --zero 1
        self.step = self.optimizer.step = self.last_saved_step = state.step
        try:
            self.loader.load_state_dict(state.loader)
        except BatchMismatch as e:
            tokens, c = e.rows * self.config.seq_len, self.config
            how = f"pass it, or launch {e.rows // c.batch_size} processes" if e.rows % c.batch_size == 0 else "pass it"
            name = path.name if path else "it"
            raise ConfigError("total_batch_size", f"must be {tokens} to continue {name}: {e} ({how})") from None
        except (DataError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"bad loader state: {e}") from None
        try:
            self.sample_rng.bit_generator.state = state.sample_rng
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"bad sample_rng state: {e}") from None
        self.elapsed_s = state.elapsed_s
        self.tokens = state.tokens if state.tokens >= 0 else state.step * self.tokens_per_step
        self.history_bytes = state.history_bytes
        self.last_checkpoint = path
        if self.config.steps <= self.step:
            raise ConfigError("steps", f"{self.config.steps}: this run has already done {self.step} steps; "
                                       f"give a larger total to continue it")

    def _claim_run_dir(self, fresh: bool) -> None:
        """A fresh run needs a new or empty run directory; a resume continues its checkpoint's.
        Rank 0 alone creates and locks it; every rank learns whether that worked."""
        c, world = self.config, self.world
        if fresh:
            c.out_dir = str(Path(c.out_dir).absolute()) if c.out_dir else \
                str(Path("runs").absolute() / f"{datetime.now():%Y%m%d-%H%M%S}-{self._short_name()}")
        self.run_dir = RunDir(world.bcast_obj(c.out_dir))
        problem = None
        if world.is_root:
            try:
                note = self.run_dir.create() if fresh else None
                self.run_dir.lock()
                self.run_dir.check_files()      # config.json or metrics.jsonl a directory: one line now,
                self.run_dir.metrics.check()    # not an error once the run has started
                if note:
                    self._notes.append(note)
            except TuiLlmError as e:
                self.run_dir.close()
                problem = (e.problem, e.field)
        problem = world.bcast_obj(problem)
        if problem:
            raise RunDirError(problem[0], field=problem[1])

    def state(self, adam_m: np.ndarray, adam_v: np.ndarray) -> TrainingState:
        """What a checkpoint of this step holds (adam_m, adam_v: the whole AdamW state)."""
        return TrainingState(
            step=self.step, run_config=self.config, model_config=self.model.config, model_name=self.model_name,
            params=self.model.trainable.flat, adam_m=adam_m, adam_v=adam_v, loader=self.loader.state_dict(),
            sample_rng=dict(self.sample_rng.bit_generator.state), history_bytes=self.run_dir.metrics.size(),
            elapsed_s=self.elapsed_s, tokens=self.tokens,
            lora=self.lora_config.to_dict() if self.lora_config is not None else None, base=self.base)

    # -------------------------------------------------------------------------------------
    # commands (any thread)

    def send(self, command: ev.Command) -> None:
        self.control.send(command)

    def _serve_commands(self) -> None:
        """Apply the commands sent since the last step; under MPI rank 0's, on every rank at once."""
        poll = self._poll_commands
        if self.world.is_distributed:
            poll = lambda waiting: self.world.agree(self._poll_commands(waiting) if self.world.is_root else None)  # noqa: E731
        self.control.serve(self._on_command, lambda: self.step, self._emit, poll=poll)

    def _poll_commands(self, waiting: bool) -> list[ev.Command]:
        """The control channel's requests join the queue, then the queue's commands (waiting ~0.1 s if paused)."""
        if self.channel is not None:
            self.channel.poll()
        return self.control.poll(waiting)

    def _on_command(self, cmd: ev.Command) -> None:
        if isinstance(cmd, ev.SampleNow):
            self._sample(cmd.prompt or self.config.prompt)
        elif isinstance(cmd, ev.ChatNow):
            self._chat(list(cmd.messages))
        elif isinstance(cmd, ev.SaveNow):
            self._save(ev.SaveReason.REQUEST)
        elif isinstance(cmd, ev.SetSetting):
            try:
                value = live_setting(self.config, cmd.name, cmd.value)
            except ConfigError as e:
                self._emit(ev.Notice(step=self.step, text=f"setting not changed: {e}", level=ev.Level.WARNING))
                return
            if value == getattr(self.config, cmd.name):
                self._emit(ev.Notice(step=self.step, text=f"{cmd.name} is already {value}: nothing changed"))
                return
            setattr(self.config, cmd.name, value)  # every rank: the schedule and cadences stay the same everywhere
            self._emit(ev.SettingChanged(step=self.step, name=cmd.name, value=value))

    def _start_channel(self) -> None:
        """Rank 0 listens for commands from other processes (watchers); without it the run goes on."""
        channel = ControlServer(self.run_dir.path, self.control.send,
                                lambda name, value: live_setting(self.config, name, value))
        try:
            channel.start()
        except OSError as e:
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING,
                                 text=f"no control channel (tui-llm watch cannot steer this run): {e.strerror or e}"))
            return
        self.channel = channel

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    # -------------------------------------------------------------------------------------
    # the loop

    def run(self, emit, on_error: str = "stop") -> ev.FinishReason:
        """Train until done or stopped; returns why it finished.

        on_error: "stop" ends the run on a non-finite loss or a failed save (headless);
        "pause" pauses it so a person can decide (the UI).
        """
        if on_error not in ("stop", "pause"):
            raise ValueError(f"on_error must be 'stop' or 'pause', got {on_error!r}")
        self._on_error = on_error
        self._emit = (lambda event: self._record(event, emit)) if self.world.is_root else (lambda event: None)
        self._emit_compiling = emit if self.world.is_root else (lambda event: None)  # rank 0 alone says it
        c = self.config
        reason = ev.FinishReason.ERROR
        try:
            set_threads(c.threads or self.world.threads_per_rank())
            compile_kernels("llama" if isinstance(self.model, Llama) else "gpt2", self._compiling,
                            lora=self.model.lora is not None, bf16_products=c.matmul_dtype == "bf16")
            if self.world.is_root:
                self._open_history()
                self.run_dir.write_config({"run_config": c.to_dict(), "model_config": self.model.config.to_dict(),
                                           "model_name": self.model_name, "num_params": self.model.num_parameters,
                                           **({"lora": self.lora_config.to_dict(), "base": self.base}
                                              if self.lora_config is not None else {})})
                self._start_channel()  # before RunStarted: a watcher that sees it can connect at once
            self._emit(self._run_started())
            for note in self._notes:
                self._emit(ev.Notice(step=self.step, text=note))
            if self._history_note:  # the history lost records: the checkpoint still holds the run
                self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING, text=self._history_note))
            reason = self._loop()
        except _StoppedWhileCompiling:  # a signal or Stop before anything was trained: nothing to save
            sent = self.control.stop_sent
            reason = ev.FinishReason(sent.reason) if sent is not None else ev.FinishReason.STOPPED
        except Exception as e:  # anything unexpected still reaches the consumer as one event
            if self.world.is_distributed:  # the other ranks wait in a collective: end the whole job
                self.world.abort(f"{type(e).__name__}: {e}")
            self._emit(ev.Error(step=self.step, message=f"{type(e).__name__}: {e}"))
            reason = ev.FinishReason.ERROR
        finally:  # also on a third Ctrl-C (KeyboardInterrupt): no socket is left behind
            self._close_channel()
        lost = self.step - max(self.last_saved_step, 0) if self.step > 0 else 0
        self._emit(ev.Finished(step=self.step, reason=reason, lost_steps=lost,
                               checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None))
        if self.step == 0 and self.last_checkpoint is None:
            self.run_dir.discard()  # quit before the first step: leave nothing behind
        self.run_dir.close()
        return reason

    def _compiling(self, done: int, total: int, name: str) -> None:
        """Compile progress; a Stop sent meanwhile (a signal at start-up) ends the run here."""
        if self.control.stop_sent is not None and not self.world.is_distributed:  # MPI: the ranks agree at step 0
            raise _StoppedWhileCompiling
        self._emit_compiling(ev.Compiling(done=done, total=total, name=name))

    def _loop(self) -> ev.FinishReason:
        c = self.config
        while self.step < c.steps:
            self._serve_commands()
            if self.control.stop is not None:
                break
            k = self.step
            if self.val_loader and c.val_every and k % c.val_every == 0:
                self._validate()
            if c.sample_every and k > 0 and k % c.sample_every == 0:
                self._sample(c.prompt)
            try:
                self._train_step()
            except TrainingError as e:
                self._emit(ev.Error(step=self.step, message=str(e)))
                if self._on_error == "stop":
                    return self._finish(ev.FinishReason.ERROR)
                self.control.pause(self.step, self._emit)
                continue
            if self._history_error is not None and self.control.stop is None:  # stop at the next boundary
                self._emit(ev.Error(step=self.step, message=f"cannot write {self.run_dir.metrics.path}: "
                                                            f"{self._history_error.strerror or self._history_error}"))
                self.control.send(ev.Stop(save=True, reason=ev.FinishReason.ERROR))
            if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                self._save(ev.SaveReason.PERIODIC)
        stop = self.control.stop
        if stop is None:  # completed: evaluate the final weights
            if self.val_loader and c.val_every:
                self._validate()
            if c.sample_every:
                self._sample(c.prompt)
            return self._finish(ev.FinishReason.COMPLETED)
        if not stop.save:
            return ev.FinishReason(stop.reason)
        return self._finish(ev.FinishReason(stop.reason))

    def _finish(self, reason: ev.FinishReason) -> ev.FinishReason:
        """The final save; a run that could not save its final state finished in error. A run that
        trained nothing (--steps 0, stopped before its first step) has nothing to save."""
        if self.step == 0:
            return reason
        if self._save(ev.SaveReason.FINAL) is False:
            return ev.FinishReason.ERROR
        return reason

    def _step_weights(self, batches: list[Batch]) -> tuple[list, int]:
        """The loss weights of the step's micro-batches, and the counted predictions of the whole step
        (all ranks). Masked data: each micro-batch's mask times K*N/counted, so that the mean gradient
        below (1/K of the sum over micro-batches, averaged over the N ranks) is the gradient of the mean
        over the step's counted tokens, exactly as one process with the whole batch computes it."""
        if batches[0].weights is None:
            return [None] * len(batches), self.tokens_per_step
        mine = sum(b.loss_tokens for b in batches)
        counted = int(self.world.allreduce_sum_(np.array([mine], np.float64))[0])
        scale = np.float32(self.grad_accum * self.world.size / max(counted, 1))
        return [None if b.weights is None else b.weights * scale for b in batches], counted

    def _train_step(self) -> None:
        """One optimizer step: grad_accum micro-batches on every rank, their mean gradient
        averaged over the ranks (one all-reduce), then the same AdamW update everywhere."""
        c, model, opt, world = self.config, self.model, self.optimizer, self.world
        t0 = time.perf_counter()
        fwd_s = bwd_s = 0.0
        loss_sum = 0.0
        batches = [self.loader.next_micro() for _ in range(self.grad_accum)]  # (B, T) each
        weights, loss_tokens = self._step_weights(batches)
        for micro, (batch, weight) in enumerate(zip(batches, weights)):
            if model.lora is not None:  # this micro-batch's dropout masks (the same after a resume)
                model.lora.step_key = dropout_key(c.seed, self.step, micro, world.rank)
            t1 = time.perf_counter()
            loss = model.forward(batch.inputs, batch.targets, training=True, doc_starts=batch.doc_starts,
                                 loss_weights=weight)
            assert loss is not None  # forward with targets returns the loss
            t2 = time.perf_counter()
            loss_sum += loss
            if not math.isfinite(loss) and not world.is_distributed:
                break  # under MPI every rank goes on to the all-reduce, which carries the NaN to all
            model.backward(accumulate=micro > 0)  # micro-batch 0 writes the gradients, the rest add theirs
            fwd_s, bwd_s = fwd_s + t2 - t1, bwd_s + time.perf_counter() - t2
        t3 = time.perf_counter()
        loss = loss_sum / self.grad_accum
        if world.is_distributed:  # the mean loss over all ranks (float64), NaN if any rank's is
            loss = float(world.allreduce_sum_(np.array([loss], np.float64))[0]) / world.size
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss}) at step {self.step + 1}: weights not updated")
        # the mean gradient of the whole batch: 1/K of this rank's sum, averaged over the ranks
        # (with --zero 1 only this rank's slice of it, and the norm summed over the slices)
        scale = 1.0 / self.grad_accum
        if not self.sharded:
            grads = world.allreduce_mean_(model.allocate_grads().flat)
            grad_norm = opt.grad_norm(grads, scale)
        else:
            grads = world.reduce_scatter_mean_(model.allocate_grads().flat)
            squares = world.allreduce_sum_(np.array([sum_of_squares(grads)], np.float64))
            grad_norm = math.sqrt(squares[0]) * scale
        if not math.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm ({grad_norm}) at step {self.step + 1}: weights not updated")
        lr = learning_rate(self.step, c.lr, c.steps, c.lr_schedule, c.warmup, c.final_lr_fraction) * c.lr_scale
        opt.update(lr, grad_norm, grads=grads, grad_scale=scale)
        if self.sharded:
            world.allgather_shards_(model.trainable.flat)  # every rank updated its slice: now all hold all
        t4 = time.perf_counter()
        step_s = t4 - t0
        self.step += 1
        self.elapsed_s += step_s
        self.tokens += self.tokens_per_step
        self._emit(ev.TrainStep(
            step=self.step, loss=loss, fwd_ms=fwd_s * 1e3, bwd_ms=bwd_s * 1e3, opt_ms=(t4 - t3) * 1e3,
            step_ms=step_s * 1e3, tok_per_s=self.tokens_per_step / step_s, lr=lr, grad_norm=grad_norm,
            epoch=self.loader.epoch, tokens=self.tokens, elapsed_s=round(self.elapsed_s, 3), loss_tokens=loss_tokens))

    def _validate(self) -> None:
        """The mean loss of the first val_batches total batches: each is cut into micro-batches of
        batch_size rows, dealt out to the ranks in turn, so any split gives the same mean. Packed
        rows: the mean over their counted tokens (masked)."""
        B, world, val_loader = self.config.batch_size, self.world, self.val_loader
        if val_loader is None:
            return
        if isinstance(val_loader, PackedValLoader):
            micros = self.config.val_batches * (self.loader.rows // B)  # as many rows as val_batches total batches
            weighted, counted = 0.0, 0
            for batch in val_loader.micros(micros):
                assert batch.weights is not None
                loss = self.model.forward(batch.inputs, batch.targets, doc_starts=batch.doc_starts,
                                          loss_weights=batch.weights)
                assert loss is not None
                weighted += loss
                counted += batch.loss_tokens
            total = world.allreduce_sum_(np.array([weighted, counted], np.float64))
            self._emit(ev.Validation(step=self.step, loss=float(total[0] / max(total[1], 1))))
            return
        loss_sum, count = 0.0, 0
        for x, y in val_loader.batches(self.config.val_batches):  # (rows, T) each
            for j in range(world.rank, x.shape[0] // B, world.size):
                rows = x[j * B:(j + 1) * B]
                loss = self.model.forward(rows, y[j * B:(j + 1) * B],
                                          doc_starts=documents_at(rows, self.doc_start_token))
                assert loss is not None
                loss_sum += loss
                count += 1
        total = world.allreduce_sum_(np.array([loss_sum, count], np.float64))
        self._emit(ev.Validation(step=self.step, loss=float(total[0] / total[1])))

    def _sample(self, prompt: str) -> None:
        if not self.world.is_root:
            return
        c = self.config
        if self.sampler is None:
            self.sampler = Sampler(self.model, self.encoding)
        try:
            result = self.sampler.generate(prompt, c.sample_len, temperature=c.temperature, top_k=c.top_k,
                                           rng=self.sample_rng)
        except PromptError as e:  # a prompt asked for while training (a key, a watcher): only that sample fails
            self._emit(ev.Notice(step=self.step, level=ev.Level.WARNING, text=f"no sample: {e}"))
            return
        self._emit(ev.Sample(step=self.step, prompt=prompt, text=result.text, token_ids=result.token_ids,
                             token_texts=result.token_texts, token_probs=[round(p, 5) for p in result.token_probs],
                             tok_per_s=result.tok_per_s))

    def sample(self, prompt: str = "", **settings) -> ev.Sample:
        """Sample from the current weights (the model stays loaded after a run finishes)."""
        events: list[ev.Event] = []
        emit, self._emit = self._emit, events.append
        try:
            self._sample(prompt)
        finally:
            self._emit = emit
        sample = events[0] if events else None
        if not isinstance(sample, ev.Sample):  # the prompt was refused (a Notice says why)
            raise PromptError(getattr(sample, "text", "no sample"))
        return sample

    def _chat(self, messages: list[dict]) -> None:
        """The reply of the current weights to a conversation (rank 0; the run's template and sampling
        settings); a ChatReply says it, or why there is none."""
        if not self.world.is_root:
            return
        c = self.config
        try:
            if self.chatter is None:
                self.chatter = Chat(self.model, self.encoding, c.chat_template)
            reply = self.chatter.reply(messages, c.sample_len, c.temperature, c.top_k, rng=self.sample_rng)
        except TuiLlmError as e:  # no template, a conversation the template refuses or the context cannot hold
            self._emit(ev.ChatReply(step=self.step, text="", message=str(e)))
            return
        self._emit(ev.ChatReply(step=self.step, text=reply.text, token_ids=reply.token_ids, tok_per_s=reply.tok_per_s))

    def chat(self, messages: list[dict]) -> ev.ChatReply:
        """_chat's reply, returned (the model stays loaded after a run finishes)."""
        events: list[ev.Event] = []
        emit, self._emit = self._emit, events.append
        try:
            self._chat(list(messages))
        finally:
            self._emit = emit
        reply = events[0]
        assert isinstance(reply, ev.ChatReply)
        return reply

    # -------------------------------------------------------------------------------------
    # checkpoints and history

    def _save(self, reason: ev.SaveReason) -> bool | None:
        """Write a checkpoint of the current step. False: it failed (the previous one is intact);
        None: nothing new to save."""
        adam_m, adam_v = self.optimizer.m, self.optimizer.v
        if self.sharded:  # every rank sends its slice of AdamW's state to rank 0; m lands in the gradient
            n = self.model.num_trainable  # buffer (free between steps, rewritten by the next backward)
            whole_m = self.world.gather_shards(adam_m, n, into=self.model.allocate_grads().flat)
            whole_v = self.world.gather_shards(adam_v, n)
            if whole_m is None or whole_v is None:  # not rank 0: it sent its slices
                return None
            adam_m, adam_v = whole_m, whole_v
        if not self.world.is_root:
            return None
        if self.step == self.last_saved_step:
            if reason == ev.SaveReason.REQUEST:
                self._emit(ev.Notice(step=self.step, text=f"checkpoint for step {self.step} already saved"))
            return None
        path = self.run_dir.checkpoint_path(self.step)
        t0 = time.perf_counter()
        try:
            for name, buf in (("weights", self.model.trainable.flat), ("AdamW m", adam_m), ("AdamW v", adam_v)):
                if not math.isfinite(sum_of_squares(buf)):
                    raise TrainingError(f"not saving step {self.step}: the {name} are not finite")
            self.run_dir.metrics.sync()
            self.state(adam_m, adam_v).save(path)
        except (OSError, CheckpointError, TrainingError) as e:
            self._save_failed(path, e.strerror if isinstance(e, OSError) and e.strerror else str(e), reason)
            return False
        if self._failed_saves:
            self._emit(ev.Notice(step=self.step, text=f"saving works again ({self._failed_saves} failed before)"))
            self._failed_saves, self._save_problem = 0, None
        self.last_saved_step = self.step
        self.last_checkpoint = path
        self.run_dir.prune(self.config.keep_checkpoints, protect=path)  # first: who hears the event sees the final list
        self._emit(ev.CheckpointSaved(step=self.step, path=str(path), seconds=time.perf_counter() - t0, reason=reason))
        return True

    def _save_failed(self, path: Path, problem: str, reason: ev.SaveReason) -> None:
        """Say a failed save once per problem (a full disk fails every save the same way). Training
        goes on only while a good checkpoint holds the run; without one it stops (headless) or
        pauses (the UI), naming the steps that would be lost."""
        self._failed_saves += 1
        if problem != self._save_problem:
            self._save_problem = problem
            kept = f"the checkpoint of step {self.last_saved_step} is intact" if self.last_saved_step >= 0 \
                else "no checkpoint has been saved yet"
            again = "; training goes on and saves are retried (said once)" \
                if reason == ev.SaveReason.PERIODIC and self.last_saved_step >= 0 else ""
            self._emit(ev.Error(step=self.step, message=f"saving {path} failed: {problem}; {kept}{again}"))
        if reason == ev.SaveReason.FINAL or self.control.stop is not None:
            return
        if self.last_saved_step < 0 and self._on_error == "stop":
            self._emit(ev.Error(step=self.step, message=f"stopping: no checkpoint can be saved, so steps 1..{self.step} "
                                                        f"would be lost however long the run goes on"))
            self.control.send(ev.Stop(save=True, reason=ev.FinishReason.ERROR))
        elif self._on_error == "pause" and (reason == ev.SaveReason.REQUEST or self.last_saved_step < 0
                                            or self._failed_saves == 1):
            self.control.pause(self.step, self._emit)

    def _history_keep(self) -> int:
        """How many bytes of metrics.jsonl belong to this run's past: on resume, up to where the
        checkpoint's history stood (plus that checkpoint's own record); a fresh run has none."""
        if self.step == 0:
            return 0
        if self.history_bytes is None:  # a checkpoint from before history offsets: keep the records up to its step
            return self.run_dir.metrics.history_end_at_step(self.step)
        return self.run_dir.metrics.history_end(self.history_bytes, self.last_checkpoint)

    def _open_history(self) -> None:
        """metrics.jsonl: cut back to this run's past, then appended to."""
        metrics = self.run_dir.metrics
        damaged = self.history_bytes is not None and self.history_bytes > 0 \
            and not metrics.ends_a_line_at(self.history_bytes)
        note = metrics.open(self._history_keep())
        if damaged and note is None:
            note = f"{metrics.path.name} does not end a line where the checkpoint recorded its history (damaged)"
        if note and self.last_checkpoint is not None:  # the checkpoint is the run: say what it gave back
            note += (f"; the run continues from {self.last_checkpoint.name} at step {self.step} (weights, optimizer, "
                     f"data position and settings come from it); the history of the steps before is incomplete")
        self._history_note = note
        self._history_opened = True

    def history(self) -> list[dict]:
        """The run's records so far: before run() what a resume continues from (the UI shows it)."""
        if not self._history_opened:
            return self.run_dir.metrics.read(self._history_keep())
        return self.run_dir.metrics.read()

    def _record(self, event: ev.Event, emit) -> None:
        if event.kind != "compiling" and self.run_dir.metrics.is_open and self._history_error is None:
            try:
                self.run_dir.metrics.append(event.to_json())
            except OSError as e:
                self._history_error = e
        emit(event)

    def _run_started(self) -> ev.RunStarted:
        c, m = self.config, self.model
        return ev.RunStarted(
            run_dir=str(self.run_dir.path), model_name=self.model_name, run_config=c.to_dict(),
            model_config=m.config.to_dict(), num_params=m.num_parameters + (m.lora.num_parameters if m.lora else 0),
            trainable_params=m.num_trainable, memory_bytes=self.memory.total, memory=self.memory.to_dict(),
            train_file=str(c.train_file), train_tokens=self.train_tokens.num_tokens,
            val_file=self.val_file, val_tokens=self.val_tokens.num_tokens if self.val_tokens else 0,
            batches_per_epoch=self.loader.num_samples, tokens_per_step=self.tokens_per_step,
            world_size=self.world.size,
            step=self.step, steps=c.steps, elapsed_s=self.elapsed_s)


def _unsaved_run_config(path) -> RunConfig | None:
    """The configuration of a run directory whose run stopped before its first checkpoint (its
    config.json), or None: a directory with a checkpoint, or a checkpoint file, is resumed from it."""
    run_dir = RunDir(path)
    if not run_dir.path.is_dir() or run_dir.checkpoints():
        return None
    try:
        saved = run_dir.read_config()
    except RunDirError as e:
        raise RunDirError(f"{run_dir.path}: no checkpoint to resume from, and no configuration to start it again "
                          f"from ({e.problem}); start it with the command that made it") from None
    if not isinstance(saved.get("run_config"), dict):
        raise RunDirError(f"{run_dir.path / 'config.json'}: no run_config in it (not a run directory of ours)")
    try:
        return RunConfig.from_dict(saved["run_config"])
    except ConfigError as e:
        raise RunDirError(f"{run_dir.path / 'config.json'}: {e}") from None


class _StoppedWhileCompiling(Exception):
    """A Stop arrived before the first step (a signal during start-up): the run ends untrained."""
