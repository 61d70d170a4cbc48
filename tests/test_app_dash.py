"""The rest of the dashboard (issue #13): watch mode in the App, live settings, checkpoints, overlays."""

from __future__ import annotations

import pytest

from tests.run_helpers import run_cli
from tests.test_app import shown, until
from tests.test_follow import FakeClient, finished, start, train, write
from tui_llm.app import TrainerApp
from tui_llm.engine import events as ev
from tui_llm.engine.run.run_dir import RunDir, checkpoint_name
from tui_llm.engine.run.watcher import RunWatcher
from tui_llm.screens.dialogs import LeaveScreen

pytestmark = pytest.mark.ui


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
async def test_checkpoint_browser_lists_keeps_and_shows_the_resume_command(tmp_path, monkeypatch):
    from tests.fake_trainer import FakeTrainer
    from tui_llm.engine import api
    from tui_llm.engine.training.sampler import SampleResult
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
            await until(pilot, lambda: app.steps_done == 5 * (i + 1))  # noqa: B023 (awaited here)
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
        await until(pilot, lambda: app.steps_done == 15)  # save is enabled once a step is unsaved
        await pilot.press("c")  # a new checkpoint shows up in the open browser
        await until(pilot, lambda: len(screen.rows) == 3)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.dashboard)
        trainer.send(ev.Stop(save=False))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)


def fake_val(step: int) -> float:
    from tests.fake_trainer import fake_loss

    return fake_loss(step) + 0.1


# -- compare runs ------------------------------------------------------------------------------


def other_run(path, steps: int):
    """A run directory with `steps` steps written (no lock: nobody trains there)."""
    path.mkdir(parents=True, exist_ok=True)
    events = [start()] + [train(s) for s in range(1, steps + 1)]
    write(path, *events)
    return path


@pytest.mark.slow
async def test_watch_two_runs_overlays_legend_toggle_reference_and_live_refresh(locked, tmp_path):
    from tui_llm.widgets.overlays import load_overlays

    write(locked.path, start(), *[train(s) for s in range(1, 30)])
    beta = other_run(tmp_path / "beta", 40)
    reference = tmp_path / "ref.csv"
    reference.write_text("step,loss,val_loss\n" + "".join(f"{s},{4.5 - s / 20},\n" for s in range(1, 50)))
    overlays, live_name = load_overlays(locked.path, [beta], reference)
    assert live_name == "run" and [o.name for o in overlays] == ["beta", "ref ref.csv"]
    watcher = watcher_of(locked, [])
    app = TrainerApp(watcher, watcher.history(), watching=True, overlays=overlays, live_name=live_name)
    async with app.run_test(size=(80, 24)) as pilot:
        chart = app.dashboard.chart
        await until(pilot, lambda: chart.drawn_points == 29)
        text = chart.chart_text()
        legend = text.splitlines()[0]
        assert "━━ run (EMA 0.9)" in legend and "━━ beta" in legend and "━━ ref ref.csv" in legend
        assert [line.style for line in chart.lines()][:2] == ["overlay1", "reference"]
        assert chart.lines()[0].xs[-1] == 40  # beta's own steps
        await pilot.press("x")  # tokens: beta has them, the CSV has not (drawn only against steps)
        assert [line.label for line in chart.lines()] == ["beta", "", "run (EMA 0.9)", "val"]
        await pilot.press("x", "x")
        await pilot.press("o")
        assert "beta" not in chart.chart_text().splitlines()[0] and "overlays hidden" in str(chart.border_subtitle)
        await pilot.press("o")
        assert "beta" in chart.chart_text().splitlines()[0]
        write(beta, train(41), train(42))  # a live overlay gains steps on the 1 s tick
        await until(pilot, lambda: chart.overlays[0].steps["step"][-1] == 42, timeout=5)
        await pilot.press("m")  # lr: the overlay's too
        assert [line.label for line in chart.lines()] == ["beta", "run"]  # the CSV has no lr
        write(locked.path, finished(29))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)


@pytest.mark.slow
def test_bad_overlays_are_one_line_and_status_2(tmp_path):
    run = other_run(tmp_path / "run", 3)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    for args, says in [(["watch", run, "--reference", tmp_path / "none.csv"], "no metrics.jsonl"),
                       (["watch", run, "--reference", bad_csv], "needs step and loss columns"),
                       (["--compare", tmp_path / "nope", "--steps", "1"], "no metrics.jsonl"),
                       (["--compare", run, "--no-ui"], "does not go with --no-ui")]:
        r = run_cli(*args)  # stdin is not a terminal
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (args, r.stderr)


def test_reference_from_metrics_csv_and_jsonl(tmp_path):
    from tui_llm.widgets.overlays import Overlay

    run = other_run(tmp_path / "run", 12)
    write(run, ev.Validation(step=12, loss=3.0))
    csv_path = RunDir(run).export_csv()
    from_csv, from_jsonl = Overlay(csv_path, "csv", reference=True), Overlay(run / "metrics.jsonl", "j", reference=True)
    assert from_csv.steps["loss"].tolist() == from_jsonl.steps["loss"].tolist()
    assert from_csv.steps["tokens"].tolist() == [32.0 * s for s in range(1, 13)]
    assert from_csv.val.y.tolist() == from_jsonl.val.y.tolist() == [3.0]
    assert not from_csv.poll()


async def test_training_with_compare_draws_the_other_run_under_this_one(tmp_path):
    from tests.fake_trainer import FakeTrainer
    from tui_llm.widgets.overlays import Overlay

    beta = other_run(tmp_path / "beta", 20)
    trainer = FakeTrainer(tmp_path / "run")
    app = TrainerApp(trainer, overlays=[Overlay(beta, "beta")])
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.phase == ev.RunState.RUNNING)
        trainer.advance(5)
        chart = app.dashboard.chart
        await until(pilot, lambda: chart.drawn_points == 5)
        legend = chart.chart_text().splitlines()[0]
        assert "━━ beta" in legend and "━━ this run (EMA 0.9)" in legend
        trainer.send(ev.Stop(save=False))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED)
