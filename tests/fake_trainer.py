"""A deterministic stand-in for the real Trainer, for the UI tests.

It speaks the trainer protocol (`run(emit)` blocks in a thread and emits events; `send(command)`
is thread-safe) but does no work: a training step happens only when the test calls
`advance()` (or every `step_interval` seconds if one is given), so a test decides exactly
which events the UI sees. It waits on a queue, so it costs no CPU while idle (Pilot's
idle-wait stays fast). Checkpoints are real, tiny files; every event after RunStarted is
appended to run_dir/metrics.jsonl, as the real trainer does.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tui_llm.engine import events as ev


@dataclass(frozen=True)
class _Advance:
    steps: int


@dataclass(frozen=True)
class _Fail:
    message: str


def fake_loss(step: int) -> float:
    """A falling, slightly wiggly loss curve."""
    return 2.0 + 3.0 * math.exp(-step / 20) + 0.05 * math.sin(step)


class FakeTrainer:
    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int = 1000,
        val_every: int = 5,
        kernels: int = 2,
        sample_text: str = "the quick brown fox",
        step_interval: float | None = None,
        hold_compile: bool = False,
        start_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.val_every = val_every
        self.kernels = kernels
        self.sample_text = sample_text
        self.step_interval = step_interval
        self.saves_fail = False
        """Set to make every save emit Error instead of writing a file."""
        self.received: list[ev.Command] = []
        """Every command sent, in order (list.append is atomic: safe from any thread)."""
        self.step = start_step
        """Steps done (start_step > 0: resumed from a checkpoint at that step)."""
        self._saved_step = start_step
        self._compiled = threading.Event()
        if not hold_compile:
            self._compiled.set()
        self._inbox: queue.Queue = queue.Queue()
        self._emit: Callable[[ev.Event], None] = lambda event: None

    # -- what the tests call -------------------------------------------------------------

    def send(self, command: ev.Command) -> None:
        self.received.append(command)
        self._inbox.put(command)
        if isinstance(command, ev.Stop):  # never leave a test's thread stuck compiling
            self._compiled.set()

    def advance(self, steps: int = 1) -> None:
        """Train `steps` steps (later, if paused)."""
        self._inbox.put(_Advance(steps))

    def finish_compiling(self) -> None:
        """Let a trainer made with hold_compile=True start its run."""
        self._compiled.set()

    def fail(self, message: str) -> None:
        """Behave like a non-finite loss: emit Error, then pause."""
        self._inbox.put(_Fail(message))

    # -- the protocol --------------------------------------------------------------------

    def run(self, emit: Callable[[ev.Event], None], on_error: str = "pause") -> None:
        self._emit = emit
        for done in range(1, self.kernels + 1):
            emit(ev.Compiling(done=done, total=self.kernels, name=f"kernel_{done}"))
        self._compiled.wait()  # commands sent meanwhile wait in the inbox
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._record(ev.RunStarted(
            run_dir=str(self.run_dir), model_name="fake-tiny", run_config={}, model_config={},
            num_params=123_456, memory_bytes=4 * 4 * 123_456, train_file="fake.txt",
            train_tokens=10_000, val_file=None, val_tokens=0, batches_per_epoch=50, tokens_per_step=4096,
            world_size=1, step=self.step, steps=self.total_steps, elapsed_s=0.0,
        ))
        paused, owed = False, 0
        while True:
            if owed and not paused:  # commands are read between steps
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            else:
                try:
                    item = self._inbox.get(timeout=self.step_interval)
                except queue.Empty:
                    item = _Advance(1)
            if item is None:
                owed -= 1
                self._train_step()
                if self.step >= self.total_steps:
                    self._save(ev.SaveReason.FINAL)
                    self._record(ev.Finished(step=self.step, reason=ev.FinishReason.COMPLETED, checkpoint=None))
                    return
                continue
            match item:
                case _Advance(steps=steps):
                    owed += steps
                case _Fail(message=message):
                    self._record(ev.Error(step=self.step, message=message))
                    paused = True
                    self._record(ev.Paused(step=self.step))
                case ev.Pause() if not paused:
                    paused = True
                    self._record(ev.Paused(step=self.step))
                case ev.Resume() if paused:
                    paused = False
                    self._record(ev.Resumed(step=self.step))
                case ev.SampleNow(prompt=prompt):
                    self._sample(prompt)
                case ev.SaveNow():
                    self._save(ev.SaveReason.REQUEST)
                case ev.Stop(save=save, reason=reason):
                    if save:
                        self._save(ev.SaveReason.FINAL)
                    self._record(ev.Finished(step=self.step, reason=reason, checkpoint=None))
                    return

    # -- the fake work -------------------------------------------------------------------

    def _record(self, event: ev.Event) -> None:
        if not isinstance(event, ev.Compiling):
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(event.to_json()) + "\n")
        self._emit(event)

    def _train_step(self) -> None:
        # Like the real trainer: validation before step k (k steps done), then the step,
        # whose TrainStep.step counts it (k + 1).
        k = self.step
        if k % self.val_every == 0:
            self._record(ev.Validation(step=k, loss=fake_loss(k) + 0.1))
        fwd = 10.0 + k % 3
        self._record(ev.TrainStep(
            step=k + 1, loss=fake_loss(k), fwd_ms=fwd, bwd_ms=20.0, opt_ms=2.0, step_ms=fwd + 23.0,
            tok_per_s=4096 * 1000 / (fwd + 23.0), lr=3e-4, grad_norm=1.0 / (k + 1), epoch=k // 50,
            tokens=(k + 1) * 4096, elapsed_s=(k + 1) * 0.033,
        ))
        self.step = k + 1

    def _sample(self, prompt: str) -> None:
        pieces = [word + " " for word in self.sample_text.split(" ")]
        probs = [(i % 10) / 10 for i in range(len(pieces))]
        self._record(ev.Sample(
            step=self.step, prompt=prompt, text="".join(pieces), token_ids=list(range(len(pieces))),
            token_texts=pieces, token_probs=probs, tok_per_s=100.0,
        ))

    def _save(self, reason: str) -> None:
        if self.step == self._saved_step:  # nothing new: no file, no event (as the real one)
            return
        if self.saves_fail:
            self._record(ev.Error(step=self.step, message="saving failed: disk full"))
            return
        self._saved_step = self.step
        started = time.monotonic()
        path = self.run_dir / f"ckpt_{self.step:06d}.bin"
        path.write_bytes(self.step.to_bytes(8, "little"))
        self._record(ev.CheckpointSaved(
            step=self.step, path=str(path), seconds=time.monotonic() - started, reason=reason,
        ))
