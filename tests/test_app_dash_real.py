"""The dashboard's live settings and checkpoint browser against the real Trainer (a tiny d2 model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_app_real import until
from tui_llm.app import TrainerApp
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.training.trainer import RunConfig, Trainer
from tui_llm.screens.dialogs import QuitScreen, SettingsScreen

pytestmark = [pytest.mark.ui, pytest.mark.slow]


def records(run_dir, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def tiny_config(tmp_path, **overrides) -> RunConfig:
    tokens = np.tile(np.random.default_rng(5).integers(0, 50257, 29), 60)
    write_tokens(tmp_path / "t_train.bin", tokens[:1500])
    values = dict(train_file=str(tmp_path / "t_train.bin"), model="d2", max_seq_len=32, batch_size=2, seq_len=16,
                  steps=100_000, lr=1e-3, val_every=0, sample_every=0, sample_len=4, save_every=0, threads=1,
                  init_style="numpy", out_dir=str(tmp_path / "run"))
    return RunConfig(**{**values, **overrides})


async def test_real_trainer_lr_scale_from_the_settings_dialog(tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    app = TrainerApp(Trainer(config))
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.phase == "running" and app.steps_done >= 2)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        field = app.screen.query_one("#setting-lr_scale")
        field.focus()
        field.value = "0.5"
        await pilot.press("enter")
        await until(pilot, lambda: records(run, "setting"))
        changed = records(run, "setting")[0]
        assert (changed["name"], changed["value"]) == ("lr_scale", 0.5)
        await until(pilot, lambda: any(r["step"] > changed["step"] for r in records(run, "train")))
        steps = records(run, "train")
        assert all(r["lr"] == 1e-3 for r in steps if r["step"] <= changed["step"])
        assert all(r["lr"] == 0.5e-3 for r in steps if r["step"] > changed["step"])  # the next step's lr is scaled
        assert app.dashboard.chart.markers == [(changed["step"], "lr_scale = 0.5")]
        await pilot.press("q")
        await until(pilot, lambda: app.screen is not app.dashboard)
        await pilot.press("d")
        await until(pilot, lambda: not app.is_running, timeout=60)


async def test_real_trainer_checkpoint_browser_keeps_one_and_samples_from_it_while_training(tmp_path):
    from tui_llm.screens.checkpoints import KEPT_MARK, CheckpointsScreen

    config = tiny_config(tmp_path, save_every=3, keep_checkpoints=1)
    run = tmp_path / "run"
    app = TrainerApp(Trainer(config))
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.phase == "running" and list(run.glob("ckpt_*.safetensors")))
        await pilot.press("p")  # paused while one is picked: no save prunes it meanwhile
        await until(pilot, lambda: app.phase == "paused")
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, CheckpointsScreen))
        screen = app.screen
        first = screen.rows[0]
        await pilot.press("m")  # keep it
        await until(pilot, lambda: screen.query_one("DataTable").get_row_at(0)[0] == KEPT_MARK)
        await pilot.press("p")  # the app's keys work here too
        await until(pilot, lambda: app.phase == "running")
        await until(pilot, lambda: app.steps_done >= 10)  # periodic saves since, keep_checkpoints=1
        await pilot.press("p")  # counted between steps: a save in flight has its newest and the one it prunes
        await until(pilot, lambda: app.phase == "paused")
        names = sorted(p.name for p in run.glob("ckpt_*.safetensors"))
        assert first.name in names and len(names) == 2  # the kept one and the newest; the others pruned
        await until(pilot, lambda: len(screen.rows) == 2)  # the list follows the saves
        await pilot.press("p")
        await until(pilot, lambda: app.phase == "running")
        screen.query_one("DataTable").move_cursor(row=0)
        before = app.steps_done
        await pilot.press("s")  # a model of its own, in a thread: training goes on meanwhile
        await until(pilot, lambda: screen.samples_done == 1)
        assert first.name in screen.sample_text
        # training was never paused for it: the next step comes (the sample may finish before it
        # on a loaded machine, so wait for the step rather than assert it already came)
        await until(pilot, lambda: app.steps_done > before and app.phase == "running")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.dashboard)
        await pilot.press("q")  # asks only if steps were done since the last periodic save
        await until(pilot, lambda: not app.is_running or isinstance(app.screen, QuitScreen))
        if app.is_running:
            await pilot.press("d")
        await until(pilot, lambda: not app.is_running, timeout=60)
    assert (run / first.name).exists()
