"""The small, typed interface between the training loop and whoever watches it.

The trainer emits *events* (plain frozen dataclasses) to a callback; the headless printer
and the Textual UI are two consumers of the same stream. Other threads steer the trainer by
sending *commands*, which it reads between steps. Nothing here knows about Textual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


# ---------------------------------------------------------------------------------------
# Events: trainer -> consumers


@dataclass(frozen=True)
class Event:
    def to_json(self) -> dict:
        """The metrics.jsonl record for this event (type first)."""
        return {"type": self.kind, **asdict(self)}

    kind = "event"


@dataclass(frozen=True)
class Compiling(Event):
    """Kernels are being compiled (or loaded from numba's cache) before the first step."""
    done: int
    total: int
    name: str
    kind = "compiling"


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    model: str            # preset name or source file
    config: dict          # resolved run configuration (what config.json holds)
    model_config: dict    # GPTConfig as a dict
    num_params: int
    param_bytes: int      # params + grads + AdamW m/v
    train_file: str
    train_tokens: int
    val_file: str | None
    val_tokens: int
    batches_per_epoch: int
    start_step: int       # > 0 when resuming
    total_steps: int
    kind = "start"


@dataclass(frozen=True)
class StepDone(Event):
    """One optimizer step finished. `step` is its 0-based index (llm.c's "step k");
    every other event's `step` counts the steps done so far."""
    step: int
    loss: float
    fwd_ms: float
    bwd_ms: float
    opt_ms: float
    step_ms: float
    tok_per_s: float
    lr: float
    grad_norm: float
    epoch: int
    kind = "train"


@dataclass(frozen=True)
class Validation(Event):
    step: int
    loss: float
    kind = "val"


@dataclass(frozen=True)
class Sample(Event):
    step: int
    prompt: str
    text: str
    token_ids: list = field(default_factory=list)
    token_texts: list = field(default_factory=list)   # decoded piece per generated token
    token_probs: list = field(default_factory=list)   # probability of each generated token
    tok_per_s: float = 0.0
    kind = "sample"


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str
    seconds: float
    reason: str  # "periodic", "request", "final", "interrupt"
    kind = "checkpoint"


@dataclass(frozen=True)
class Paused(Event):
    step: int
    kind = "paused"


@dataclass(frozen=True)
class Resumed(Event):
    step: int
    kind = "resumed"


@dataclass(frozen=True)
class Message(Event):
    """A line for the log: warnings, notes."""
    text: str
    level: str = "info"  # "info" | "warning"
    kind = "log"


@dataclass(frozen=True)
class Error(Event):
    """Training cannot continue (non-finite loss, failed save). The last good checkpoint stays."""
    step: int
    message: str
    kind = "error"


@dataclass(frozen=True)
class Finished(Event):
    step: int
    reason: str  # "completed", "stopped", "error"
    kind = "finished"


# ---------------------------------------------------------------------------------------
# Commands: any thread -> trainer (read between steps)


@dataclass(frozen=True)
class Command:
    pass


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class SampleNow(Command):
    prompt: str = ""


@dataclass(frozen=True)
class SaveNow(Command):
    pass


@dataclass(frozen=True)
class Stop(Command):
    """Finish the current step, save a checkpoint (unless save=False) and return."""
    save: bool = True
    reason: str = "stopped"
