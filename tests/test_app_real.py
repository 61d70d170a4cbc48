"""The Textual UI against the real Trainer: a tiny model on tiny data, keys pressed with Pilot."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tui_llm.app import TrainerApp
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import load_training_checkpoint
from tui_llm.engine.training.trainer import RunConfig, Trainer
from tui_llm.screens.dialogs import QuitScreen

pytestmark = [pytest.mark.ui, pytest.mark.slow]


async def until(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


def steps_in(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if json.loads(line)["type"] == "train")


async def test_real_trainer_pause_sample_save_and_quit(tmp_path):
    tokens = np.tile(np.random.default_rng(3).integers(0, 50257, 29), 60)
    write_tokens(tmp_path / "t_train.bin", tokens[:1500])
    write_tokens(tmp_path / "t_val.bin", tokens[1500:])
    run = tmp_path / "run"
    config = RunConfig(train_file=str(tmp_path / "t_train.bin"), model="d2", max_seq_len=32, batch_size=2,
                       seq_len=16, steps=100_000, val_every=5, sample_every=0, sample_len=6, save_every=0,
                       threads=1, init_style="numpy", out_dir=str(run))
    app = TrainerApp(Trainer(config))
    async with app.run_test(size=(100, 32)) as pilot:
        plot = app.dashboard.chart
        await until(pilot, lambda: app.phase == "running" and len(plot.train) >= 3)
        assert len(plot.train) >= 3  # the plot gains points as steps arrive

        await pilot.press("p")
        await until(pilot, lambda: app.phase == "paused")
        paused_at = steps_in(run)
        await pilot.pause(1.0)
        assert steps_in(run) == paused_at  # nothing trains while paused

        samples = app.dashboard.samples
        before = len(samples.lines)
        await pilot.press("s")
        await until(pilot, lambda: len(samples.lines) > before)

        await pilot.press("c")
        await until(pilot, lambda: list(run.glob("ckpt_*.safetensors")))
        arrays, meta = load_training_checkpoint(next(run.glob("ckpt_*.safetensors")))
        assert meta["step"] == paused_at and arrays["params"].size == app.trainer.model.num_parameters

        await pilot.press("p")
        await until(pilot, lambda: steps_in(run) > paused_at + 2 and app.steps_done > paused_at and app.unsaved)
        await pilot.press("q")  # unsaved steps (the app has seen them): asks
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("s")  # save and quit
        await until(pilot, lambda: not app.is_running, timeout=60)
    assert app.return_code in (0, None)
    saved = sorted(run.glob("ckpt_*.safetensors"))[-1]
    _, meta = load_training_checkpoint(saved)
    assert meta["step"] == steps_in(run)  # the final checkpoint is at the step it stopped


async def test_real_trainer_samples_from_the_final_weights_after_the_run(tmp_path):
    tokens = np.tile(np.random.default_rng(4).integers(0, 50257, 31), 40)
    write_tokens(tmp_path / "t_train.bin", tokens[:1000])
    config = RunConfig(train_file=str(tmp_path / "t_train.bin"), model="d2", max_seq_len=32, batch_size=2,
                       seq_len=16, steps=3, val_every=0, sample_every=0, sample_len=6, save_every=0, threads=1,
                       init_style="numpy", out_dir=str(tmp_path / "run"))
    app = TrainerApp(Trainer(config))
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.phase == "finished" and not app.alive)
        samples = app.dashboard.samples
        await pilot.press("s")
        await until(pilot, lambda: "step 3" in "\n".join(line.text for line in samples.lines))
        assert app.state == "finished"
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0
