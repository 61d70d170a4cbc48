"""The rest of the dashboard (issue #13): watch mode in the App, live settings, checkpoints, overlays."""

from __future__ import annotations

import pytest
from tests.test_app import shown, until
from tests.test_follow import FakeClient, finished, start, train, write

from tui_llm.app import TrainerApp
from tui_llm.engine import events as ev
from tui_llm.engine.follow import RunWatcher
from tui_llm.engine.run_dir import RunDir, checkpoint_name
from tui_llm.screens.dialogs import LeaveScreen


@pytest.fixture
def locked(tmp_path):
    """A run directory with its lock held, as by a training process (the test writes its records)."""
    run = RunDir(tmp_path / "run")
    run.create()
    run.lock()
    yield run
    run.close()


def watcher_of(run: RunDir, sent: list, **kwargs) -> RunWatcher:
    return RunWatcher(run.path, interval=0.05, connect=lambda path: FakeClient(sent, []), **kwargs)


# -- watch mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["save", "leave"])
async def test_watch_mode_title_and_q_leaves_the_run_going(locked, answer):
    write(locked.path, start(), train(1), train(2))
    sent: list = []
    watcher = watcher_of(locked, sent)
    app = TrainerApp(watcher, watcher.history(), watching=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.steps_done == 2)
        assert f"tui-llm watch {locked.path}" in app.dashboard.status_bar.render().plain
        await pilot.press("q")  # unsaved steps: asks what the run should do
        await until(pilot, lambda: isinstance(app.screen, LeaveScreen))
        assert "Ask the run to save a checkpoint, then leave" in str(app.screen.query_one("#save").label)
        assert "Just leave" in str(app.screen.query_one("#leave").label)
        await pilot.press("s" if answer == "save" else "l")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0
    assert locked.is_locked()  # the run goes on
    assert not any(isinstance(c, ev.Stop) for c in sent)
    assert sent == ([{"command": "save"}] if answer == "save" else [])


async def test_watch_mode_shows_stale_and_settings_changes(locked):
    write(locked.path, start(), train(1), train(2))
    watcher = watcher_of(locked, [], stale_after=0.3)
    app = TrainerApp(watcher, watcher.history(), watching=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state == ev.RunState.STALE, timeout=5)  # read on the 1 s tick
        assert " STALE " in app.dashboard.status_bar.render().plain
        write(locked.path, ev.SettingChanged(step=2, name="lr_scale", value=0.5), train(3))
        await until(pilot, lambda: shown(app.dashboard.event_log, "the run is sending events again"))
        await until(pilot, lambda: shown(app.dashboard.event_log, "step 2: lr_scale = 0.5"))
        chart = app.dashboard.chart
        assert chart.markers == [(2, "lr_scale = 0.5")]
        await until(pilot, lambda: "┊" in chart.chart_text())
        assert "lr_scale = 0.5" in str(chart.border_subtitle)
        write(locked.path, finished(3))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0


# -- live settings --------------------------------------------------------------------------


async def set_value(pilot, name: str, text: str) -> None:
    field = pilot.app.screen.query_one(f"#setting-{name}")
    field.focus()
    field.value = text
    await pilot.press("enter")


async def test_settings_dialog_checks_the_value_and_sends_it(tmp_path):
    from tests.fake_trainer import FakeTrainer
    from tui_llm.screens.dialogs import SettingsScreen

    trainer = FakeTrainer(tmp_path / "run")
    app = TrainerApp(trainer)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.phase == ev.RunState.RUNNING)
        trainer.advance(3)
        await until(pilot, lambda: app.steps_done == 3)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        assert screen.query_one("#setting-lr_scale").value == "1"
        assert screen.query_one("#setting-save_every").value == "250"
        assert [i.id.removeprefix("setting-") for i in screen.query("Input")] == [
            "lr_scale", "temperature", "top_k", "sample_len", "val_every", "sample_every", "save_every"]
        await set_value(pilot, "top_k", "-1")
        assert "top_k must be zero or more, got -1" in str(screen.query_one("#settings-error").render())
        await set_value(pilot, "lr_scale", "fast")
        assert "lr_scale must be a number" in str(screen.query_one("#settings-error").render())
        assert app.screen is screen  # still open
        await set_value(pilot, "lr_scale", "0.5")
        await until(pilot, lambda: app.screen is app.dashboard)
        await until(pilot, lambda: shown(app.dashboard.event_log, "step 3: lr_scale = 0.5"))
        assert ev.SetSetting(name="lr_scale", value=0.5) in trainer.received
        assert app.settings["lr_scale"] == 0.5
        await pilot.press("v")  # the dialog shows the new value
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert app.screen.query_one("#setting-lr_scale").value == "0.5"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.dashboard)
        assert "Live settings" in [c.title for c in app.get_system_commands(app.screen)]
        trainer.send(ev.Stop(save=False))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)


# -- checkpoint browser ------------------------------------------------------------------------


async def test_checkpoint_browser_lists_keeps_and_shows_the_resume_command(tmp_path, monkeypatch):
    from tests.fake_trainer import FakeTrainer
    from tui_llm.engine import api
    from tui_llm.engine.sampler import SampleResult
    from tui_llm.screens.checkpoints import KEPT_MARK, CheckpointsScreen

    loaded = []
    monkeypatch.setattr(api, "load_model", lambda path: loaded.append(path) or f"model of {path.name}")
    monkeypatch.setattr(api, "generate", lambda model, prompt, **kw: SampleResult(
        prompt=prompt, prompt_ids=[], token_ids=[1], text=f" from {model} {kw}", seconds=1.0))
    trainer = FakeTrainer(tmp_path / "run")
    app = TrainerApp(trainer)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.phase == ev.RunState.RUNNING)
        for i in range(2):
            trainer.advance(5)
            await until(pilot, lambda: app.steps_done == 5 * (i + 1))
            await pilot.press("c")
            await until(pilot, lambda: not app.saving and not app.unsaved)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, CheckpointsScreen))
        screen = app.screen
        table = screen.query_one("DataTable")
        assert [p.name for p in screen.rows] == [checkpoint_name(5), checkpoint_name(10)]
        assert table.get_row_at(0)[1] == "5" and table.get_row_at(0)[4] == f"{fake_val(5):.4f}"
        assert "tui-llm --resume " + str(screen.rows[0]) in str(screen.query_one("#ckpt-resume").render())
        await pilot.press("m")  # keep the first
        await until(pilot, lambda: table.get_row_at(0)[0] == KEPT_MARK)
        assert RunDir(trainer.run_dir.path).kept() == {checkpoint_name(5)}
        await pilot.press("down")
        assert checkpoint_name(10) in str(screen.query_one("#ckpt-resume").render())
        screen.query_one("#ckpt-prompt").value = "Hi"
        await pilot.press("s")
        await until(pilot, lambda: f"from model of {checkpoint_name(10)}" in screen.sample_text)
        assert "'sample_len': 64" in screen.sample_text
        await pilot.press("s")  # the same checkpoint: the model is not loaded again
        await until(pilot, lambda: screen.samples_done == 2)
        assert len(loaded) == 1
        trainer.advance(5)
        await pilot.press("c")  # a new checkpoint shows up in the open browser
        await until(pilot, lambda: len(screen.rows) == 3)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.dashboard)
        trainer.send(ev.Stop(save=False))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)


def fake_val(step: int) -> float:
    from tests.fake_trainer import fake_loss

    return fake_loss(step) + 0.1
