"""The small, typed interface between the training loop and whoever watches it.

The trainer emits *events* (frozen dataclasses, built with keywords) to a callback; the headless
printer, the Textual UI and `metrics.jsonl` are consumers of the same stream. Other threads steer
the trainer by sending *commands*, which it reads between steps. Nothing here knows about Textual.

Every event's `step` counts the optimizer steps done when it happened: a `TrainStep` with
step 1 is the first step (its loss was measured on the weights before the update); a
`Validation` at step 0 evaluates the initial weights. The names are the glossary's
(docs/glossary.md): the same word in CLI flags, config fields, event fields, metrics.jsonl keys
and checkpoint metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a run's loop returned."""
    COMPLETED = "completed"      # all --steps done
    STOPPED = "stopped"          # the user quit (UI, watcher, Stop command)
    INTERRUPTED = "interrupted"  # a signal: SIGINT, SIGTERM, SIGHUP
    ERROR = "error"              # non-finite loss, failed final save, a crash


class SaveReason(StrEnum):
    """Why a checkpoint was written."""
    PERIODIC = "periodic"  # every --save-every steps
    REQUEST = "request"    # SaveNow (a key, a watcher)
    FINAL = "final"        # the run ended (completed, stopped or interrupted)


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"


class RunState(StrEnum):
    """What a run is doing, as the status bar and `watch` show it."""
    STARTING = "starting"
    COMPILING = "compiling"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"
    SAMPLING = "sampling"
    STOPPING = "stopping"
    FINISHED = "finished"
    ERROR = "error"
    STALE = "stale"          # watch: a running run that has sent nothing for a while


# ---------------------------------------------------------------------------------------
# Events: trainer -> consumers


@dataclass(frozen=True, kw_only=True)
class Event:
    kind = "event"  # the record's "type" in metrics.jsonl

    def to_json(self) -> dict:
        """The metrics.jsonl record for this event (type first)."""
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Compiling(Event):
    """Kernels are being compiled (or loaded from numba's cache) before the first step."""
    done: int
    total: int
    name: str
    kind = "compiling"


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    run_dir: str
    model_name: str       # preset name, source file or Hugging Face name
    run_config: dict      # the resolved RunConfig (what config.json holds)
    model_config: dict    # the model's architecture (GPTConfig.to_dict())
    num_params: int       # every parameter: the model's, plus a LoRA run's adapters
    trainable_params: int = 0  # what the optimizer updates: num_params, or a LoRA run's adapters
    memory_bytes: int     # what the run needs in all (memory.total; with --zero 1 this rank's)
    memory: dict = field(default_factory=dict)  # the estimate's parts (training/memory.py MemoryEstimate)
    train_file: str
    train_tokens: int
    val_file: str | None
    val_tokens: int
    batches_per_epoch: int
    tokens_per_step: int  # batch_size * seq_len * grad_accum * world_size
    world_size: int       # MPI ranks (1 without MPI)
    step: int             # steps already done (> 0 when resuming)
    steps: int            # the run's total steps
    elapsed_s: float      # training time already spent (continues across --resume)
    kind = "start"


@dataclass(frozen=True, kw_only=True)
class TrainStep(Event):
    """One optimizer step finished; `step` counts it (the first step is 1)."""
    step: int
    loss: float           # mean over the step's whole batch, measured before the update
    fwd_ms: float
    bwd_ms: float
    opt_ms: float
    step_ms: float
    tok_per_s: float
    lr: float
    grad_norm: float
    epoch: int
    tokens: int           # tokens trained on so far
    elapsed_s: float      # training time so far (continues across --resume)
    loss_tokens: int = 0  # predictions the step's loss averaged over (all ranks): its masked tokens, else every one
    kind = "train"


@dataclass(frozen=True, kw_only=True)
class Validation(Event):
    step: int
    loss: float
    kind = "val"


@dataclass(frozen=True, kw_only=True)
class Sample(Event):
    step: int
    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)   # decoded text of each generated token
    token_probs: list[float] = field(default_factory=list)  # probability each token was drawn with
    tok_per_s: float = 0.0
    kind = "sample"


@dataclass(frozen=True, kw_only=True)
class ChatReply(Event):
    """The model's reply to a ChatNow's conversation (from the current weights); `message` says why
    there is none (text "" then): a conversation longer than the context, a template that refused it."""
    step: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    tok_per_s: float = 0.0
    message: str = ""
    kind = "chat"


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    step: int
    path: str
    seconds: float
    reason: SaveReason
    kind = "checkpoint"


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    step: int
    kind = "paused"


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    step: int
    kind = "resumed"


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """A line for the log: notes and warnings."""
    step: int
    text: str
    level: Level = Level.INFO
    kind = "notice"


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    """Something failed (non-finite loss, failed save). The weights and last checkpoint are intact."""
    step: int
    message: str
    kind = "error"


@dataclass(frozen=True, kw_only=True)
class SettingChanged(Event):
    """A live setting (run_config.LIVE_SETTINGS) took a new value at this step boundary."""
    step: int
    name: str
    value: int | float
    kind = "setting"


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    step: int
    reason: FinishReason
    checkpoint: str | None   # the newest checkpoint of the run (None: nothing saved)
    lost_steps: int = 0      # steps done after that checkpoint (lost unless saved later)
    kind = "finished"


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (
    Compiling, RunStarted, TrainStep, Validation, Sample, ChatReply, CheckpointSaved, Paused, Resumed, Notice, Error,
    SettingChanged, Finished)}
"""metrics.jsonl "type" -> event class."""


def event_from_json(record: dict) -> Event | None:
    """The event a metrics.jsonl record was written from, or None for an unknown or malformed
    record: every field must be present (unless it has a default) and of its declared type, so
    whoever shows the event can trust it (a record is data from a file); other keys are ignored."""
    kind = record.get("type") if isinstance(record, dict) else None
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    checks = _field_checks(cls)
    values = {k: v for k, v in record.items() if k in checks}  # keys of other versions are ignored
    if not all(checks[k](v) for k, v in values.items()):
        return None
    try:
        return cls(**values)
    except TypeError:  # a field without a default is missing
        return None


_ENUMS: dict[str, type[StrEnum]] = {"FinishReason": FinishReason, "SaveReason": SaveReason, "Level": Level}
_SCALARS: dict[str, Callable[[object], bool]] = {"int": lambda v: type(v) is int, "float": lambda v: type(v) in (int, float),
            "str": lambda v: isinstance(v, str), "dict": lambda v: isinstance(v, dict), "None": lambda v: v is None}


def _accepts(annotation: str) -> Callable[[object], bool]:
    """A check for a value of the annotated type: `int`, `float`, `str | None`, `list[int]`, an enum, ..."""
    options: list[Callable[[object], bool]] = []
    for option in (a.strip() for a in annotation.split("|")):
        if option.startswith("list[") and option.endswith("]"):
            options.append(_list_of(_SCALARS[option[5:-1]]))
        elif option in _ENUMS:
            options.append(_one_of({m.value for m in _ENUMS[option]}))
        else:
            options.append(_SCALARS[option])
    return lambda v: any(check(v) for check in options)


def _list_of(item: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(item(x) for x in v)


def _one_of(values: set[str]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, str) and v in values


_CHECKS: dict[type, dict[str, Callable[[object], bool]]] = {}


def _field_checks(cls: type) -> dict:
    if cls not in _CHECKS:
        _CHECKS[cls] = {f.name: _accepts(str(f.type)) for f in fields(cls)}
    return _CHECKS[cls]


# ---------------------------------------------------------------------------------------
# Commands: any thread -> trainer (read between steps)


@dataclass(frozen=True, kw_only=True)
class Command:
    pass


@dataclass(frozen=True, kw_only=True)
class Pause(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Resume(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class SampleNow(Command):
    prompt: str = ""


@dataclass(frozen=True, kw_only=True)
class ChatNow(Command):
    """Reply to this conversation ({"role", "content"} messages, the user's last) with the current
    weights, the run's chat template and its sampling settings; a ChatReply answers."""
    messages: tuple[dict, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SaveNow(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class SetSetting(Command):
    """Change a live setting (lr_scale, temperature, ...) at the next step boundary; checked by
    run_config.live_setting before it is sent."""
    name: str
    value: int | float


@dataclass(frozen=True, kw_only=True)
class Stop(Command):
    """Finish the current step, save a checkpoint (unless save=False) and return."""
    save: bool = True
    reason: FinishReason = FinishReason.STOPPED
