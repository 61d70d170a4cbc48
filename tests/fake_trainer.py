"""A deterministic stand-in for the real Trainer, for the UI tests.

It speaks the trainer protocol (`run(emit)` blocks in a thread and emits events; `send(command)`
is thread-safe; `history()` and `sample(prompt)` as the real one) but does no work: a training
step happens only when the test calls `advance()` (or every `step_interval` seconds if one is
given), so a test decides exactly which events the UI sees. Commands go through the engine's
`Control`, the same loop the real trainer serves them with (pause, resume, stop; sample and save
handed back here). It waits on a queue, so it costs no CPU while idle (Pilot's idle-wait stays
fast). The run directory is the engine's `RunDir`: real checkpoint names (tiny files), every
event after Compiling appended to metrics.jsonl, and a run stopped before its first step leaves
no directory behind, as with the real trainer.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tui_llm.engine import events as ev
from tui_llm.engine.run.run_dir import RunDir
from tui_llm.engine.training.control import Control


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
        history: list[dict] | None = None,
    ) -> None:
        self.run_dir = RunDir(run_dir)
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
        self.last_saved_step = start_step if start_step else -1
        self.last_checkpoint: Path | None = None
        self.elapsed_s = start_step * 0.033
        self._history = list(history or [])
        self.control = Control()
        self._compiled = threading.Event()
        if not hold_compile:
            self._compiled.set()
        self._inbox: queue.Queue = queue.Queue()
        """Commands and the tests' advances, in order."""
        self._owed = 0
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

    def history(self) -> list[dict]:
        return self._history + self.run_dir.metrics.read()

    def sample(self, prompt: str = "") -> ev.Sample:
        return self._sample_event(prompt)

    def run(self, emit: Callable[[ev.Event], None], on_error: str = "pause") -> ev.FinishReason:
        self._emit = emit
        for done in range(1, self.kernels + 1):
            emit(ev.Compiling(done=done, total=self.kernels, name=f"kernel_{done}"))
        self._compiled.wait()  # commands sent meanwhile wait in the inbox
        if not self.run_dir.path.exists():
            self.run_dir.create()
        metrics = self.run_dir.metrics.path
        self.run_dir.metrics.open(metrics.stat().st_size if self.step and metrics.exists() else 0)
        self._record(ev.RunStarted(
            run_dir=str(self.run_dir.path), model_name="fake-tiny", run_config={}, model_config={},
            num_params=123_456, memory_bytes=4 * 4 * 123_456, train_file="fake.txt",
            train_tokens=10_000, val_file=None, val_tokens=0, batches_per_epoch=50, tokens_per_step=4096,
            world_size=1, step=self.step, steps=self.total_steps, elapsed_s=self.elapsed_s,
        ))
        reason = self._loop()
        lost = self.step - max(self.last_saved_step, 0) if self.step > 0 else 0
        self._record(ev.Finished(step=self.step, reason=reason, lost_steps=lost,
                                 checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None))
        if self.step == 0 and self.last_checkpoint is None:
            self.run_dir.discard()
        self.run_dir.close()
        return reason

    def _loop(self) -> ev.FinishReason:
        while self.step < self.total_steps:
            self.control.serve(self._on_command, lambda: self.step, self._record, poll=self._poll)
            if self.control.stop is not None:
                stop = self.control.stop
                if stop.save and self._save(ev.SaveReason.FINAL) is False:
                    return ev.FinishReason.ERROR
                return ev.FinishReason(stop.reason)
            if self._owed:
                self._owed -= 1
                self._train_step()
        if self._save(ev.SaveReason.FINAL) is False:
            return ev.FinishReason.ERROR
        return ev.FinishReason.COMPLETED

    def _poll(self, paused: bool) -> list[ev.Command]:
        """Control's poll: the commands queued now. When there is nothing to do (paused, or no
        step owed) it waits for the next item; the tests' advances and failures are taken here."""
        commands, wait = [], paused or not self._owed
        while True:
            try:
                if wait:
                    timeout = 0.1 if paused else self.step_interval
                    item = self._inbox.get(timeout=timeout)
                else:
                    item = self._inbox.get_nowait()
            except queue.Empty:
                if wait and not paused and self.step_interval is not None:
                    self._owed += 1
                return commands
            wait = False
            match item:
                case _Advance(steps=steps):
                    self._owed += steps
                case _Fail(message=message):
                    self._record(ev.Error(step=self.step, message=message))
                    self.control.pause(self.step, self._record)
                    return commands  # serve() waits again, now paused
                case _:
                    commands.append(item)

    def chat(self, messages) -> ev.ChatReply:
        return self._chat_event(list(messages))

    def _on_command(self, command: ev.Command) -> None:
        if isinstance(command, ev.SampleNow):
            self._record(self._sample_event(command.prompt))
        elif isinstance(command, ev.ChatNow):
            self._record(self._chat_event(list(command.messages)))
        elif isinstance(command, ev.SaveNow):
            self._save(ev.SaveReason.REQUEST)
        elif isinstance(command, ev.SetSetting):
            self._record(ev.SettingChanged(step=self.step, name=command.name, value=command.value))

    # -- the fake work -------------------------------------------------------------------

    def _record(self, event: ev.Event) -> None:
        if not isinstance(event, ev.Compiling):
            self.run_dir.metrics.append(event.to_json())
        self._emit(event)

    def _train_step(self) -> None:
        # Like the real trainer: validation before step k (k steps done), then the step,
        # whose TrainStep.step counts it (k + 1).
        k = self.step
        if k % self.val_every == 0:
            self._record(ev.Validation(step=k, loss=fake_loss(k) + 0.1))
        fwd = 10.0 + k % 3
        self.elapsed_s += 0.033
        self._record(ev.TrainStep(
            step=k + 1, loss=fake_loss(k), fwd_ms=fwd, bwd_ms=20.0, opt_ms=2.0, step_ms=fwd + 23.0,
            tok_per_s=4096 * 1000 / (fwd + 23.0), lr=3e-4, grad_norm=1.0 / (k + 1), epoch=k // 50,
            tokens=(k + 1) * 4096, elapsed_s=round(self.elapsed_s, 3),
        ))
        self.step = k + 1

    def _sample_event(self, prompt: str) -> ev.Sample:
        pieces = [word + " " for word in self.sample_text.split(" ")]
        probs = [(i % 10) / 10 for i in range(len(pieces))]
        return ev.Sample(
            step=self.step, prompt=prompt, text="".join(pieces), token_ids=list(range(len(pieces))),
            token_texts=pieces, token_probs=probs, tok_per_s=100.0,
        )

    def _chat_event(self, messages: list[dict]) -> ev.ChatReply:
        """A reply naming the last message and the step (so a test sees which weights answered);
        "fail" as the message: no reply, as when the conversation is too long."""
        last = messages[-1]["content"] if messages else ""
        if last == "fail":
            return ev.ChatReply(step=self.step, text="", message="the conversation is too long")
        return ev.ChatReply(step=self.step, text=f"reply to {last!r} at step {self.step}", tok_per_s=50.0)

    def _save(self, reason: ev.SaveReason) -> bool | None:
        if self.step == self.last_saved_step:  # nothing new: no file (as the real one)
            if reason == ev.SaveReason.REQUEST:
                self._record(ev.Notice(step=self.step, text=f"checkpoint for step {self.step} already saved"))
            return
        if self.saves_fail:
            self._record(ev.Error(step=self.step, message="saving failed: disk full"))
            return False
        started = time.monotonic()
        path = self.run_dir.checkpoint_path(self.step)
        path.write_bytes(self.step.to_bytes(8, "little"))
        self.last_saved_step, self.last_checkpoint = self.step, path
        self._record(ev.CheckpointSaved(
            step=self.step, path=str(path), seconds=time.monotonic() - started, reason=reason,
        ))
        return True
