"""The Textual UI, driven by a deterministic fake trainer (tests/fake_trainer.py).

The fake only steps when told, so each test controls exactly which events arrive. Waits
poll a condition with short explicit pauses (see the Pilot idle-wait note in tui-notes.md).
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import RichLog

from tests.fake_trainer import FakeTrainer, fake_loss
from tests.run_helpers import run as run_command
from tui_llm.app import TrainerApp
from tui_llm.engine import events as ev
from tui_llm.screens.dialogs import HelpScreen, PromptScreen, QuitScreen
from tui_llm.terminal import SignalHandlers
from tui_llm.widgets.status_bar import EtaClock
from tui_llm.widgets.text_charts import bucket_means

pytestmark = pytest.mark.ui


async def until(pilot, condition, timeout: float = 5.0) -> None:
    """Let the app run until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.02)


def text_of(log: RichLog) -> str:
    return "\n".join(line.text for line in log.lines)


def shown(log: RichLog, text: str) -> bool:
    """Is `text` in the log, however the log wrapped it?"""
    return "".join(text.split()) in "".join(text_of(log).split())


def keys_shown(app: TrainerApp) -> dict[str, bool]:
    """What the footer shows: key description -> enabled (False: dimmed)."""
    return {
        active.binding.description: active.enabled
        for active in app.screen.active_bindings.values()
        if active.binding.show
    }


def footer_widgets(app: TrainerApp) -> dict:
    """The footer's key widgets by description."""
    return {key.description: key for key in app.screen.query("FooterKey")}


def footer_dims(app: TrainerApp, description: str) -> bool | None:
    """Does the footer widget for this key look dimmed (None while the footer recomposes)?"""
    key = footer_widgets(app).get(description)
    return None if key is None else key.has_class("-disabled")


@pytest.fixture
def trainer(tmp_path: Path) -> FakeTrainer:
    return FakeTrainer(tmp_path / "run")


def started(pilot):
    """Wait until the fake trainer's run has started."""
    return until(pilot, lambda: pilot.app.phase == ev.RunState.RUNNING)


# -- plot -------------------------------------------------------------------------------


async def test_plot_gains_points_as_steps_arrive(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        trainer.advance(7)
        await until(pilot, lambda: plot.drawn_points == 7)  # drawn by the redraw timer
        assert plot.train.x.tolist() == list(range(1, 8))  # TrainStep.step counts the step (the first is 1)
        assert plot.train.y.tolist() == [fake_loss(s) for s in range(7)]
        assert plot.val.x.tolist() == [0, 5]
        assert "━━ EMA 0.9" in plot.chart_text() and "└┬" in plot.chart_text()
        assert "step 7/1,000" in app.dashboard.status_bar.render().plain  # steps done
        timings = app.dashboard.timings.render_lines(app.dashboard.timings.region.reset_offset)
        timings_text = "\n".join(strip.text for strip in timings)
        assert "fwd     10.0 ms" in timings_text  # the fake's fwd_ms is 10 + step % 3
        assert "▁▅█▁▅█▁" in timings_text  # 10, 11, 12, 10, 11, 12, 10 ms
        assert "tok/s" in timings_text


async def test_log_scale_and_smoothing_keys_change_the_plot(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        await pilot.press("l")  # before any data
        assert plot.log_scale and "log scale" in plot.border_subtitle
        plot.redraw()
        await pilot.pause(0.05)  # renders without crashing
        trainer.advance(20)
        await until(pilot, lambda: plot.drawn_points == 20)
        log_chart = plot.chart_text()
        assert "━━ EMA 0.9" in log_chart
        await pilot.press("l")
        assert not plot.log_scale
        assert plot.chart_text() != log_chart  # drawn again at once, on a linear axis

        before, weight = plot.smoothed.y.tolist(), plot.smoothing
        await pilot.press("plus")
        assert plot.smoothing > weight
        assert plot.smoothed.y.tolist() != before
        assert "━━ EMA 0.95" in plot.chart_text()
        await pilot.press("minus", "minus")
        assert plot.smoothing < weight
        # the debiased EMA starts at the first loss, whatever the weight
        assert plot.smoothed.y[0] == pytest.approx(plot.train.y[0])


async def test_metric_and_x_axis_keys_switch_the_chart(trainer):
    app = TrainerApp(trainer)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot)
        chart = app.dashboard.chart
        trainer.advance(30)
        await until(pilot, lambda: chart.drawn_points == 30)
        assert chart.border_title == "loss" and "━━ EMA 0.9" in chart.chart_text()
        seen = []
        for _ in range(5):
            await pilot.press("m")
            seen.append((chart.border_title, chart.chart_text().splitlines()[0].split()[1]))
        assert seen == [("lr", "lr"), ("grad_norm", "grad_norm"), ("tok/s", "tok/s"), ("step ms", "fwd"),
                        ("loss", "train")]
        await pilot.press("x")
        assert chart.x_axis == "tokens" and "x: tokens" in chart.border_subtitle
        labels = chart.chart_text().splitlines()[-1].split()
        assert labels[-1].endswith("k") and chart.chart_text().splitlines()[0].endswith("tokens")
        await pilot.press("x")
        assert chart.x_axis == "time" and chart.chart_text().splitlines()[-1].split()[-1].endswith("s")
        await pilot.press("x")
        assert chart.x_axis == "step" and chart.border_subtitle == ""
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Chart the next metric", "Chart against the next x axis"} <= titles


@pytest.mark.slow
async def test_a_new_step_repaints_only_the_rows_that_changed(trainer):
    app = TrainerApp(trainer)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        trainer.advance(299)
        await until(pilot, lambda: plot.drawn_points == 299)
        repainted = []
        plot.refresh = lambda *regions, **kwargs: repainted.append(regions)  # watch, don't paint
        trainer.advance(1)
        await until(pilot, lambda: plot.drawn_points == 300)
        assert repainted and all(len(regions) == 1 and regions[0].height == 1 for regions in repainted)
        assert len(repainted) < plot.size.height // 2


@pytest.mark.slow
async def test_a_100k_step_history_draws_at_once(tmp_path):
    history = [train_record(s, 2 + 9 / (1 + s / 100)) for s in range(100_000)]
    app = TrainerApp(FakeTrainer(tmp_path / "run", start_step=100_000, total_steps=200_000), history=history)
    async with app.run_test(size=(200, 50)) as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        await until(pilot, lambda: plot.drawn_points == 100_000)
        chart = plot.chart_text()
        assert chart.splitlines()[-1].split()[-1] == "100000"  # the x axis reaches the last step
        assert chart.splitlines()[0].endswith("step")
        assert "2┤" in chart and "7┤" in chart  # the first dot column: the mean of the first ~250 steps


def test_bucket_means_downsamples_long_series():
    xs = list(range(100_000))
    x, y = bucket_means(xs, [2.0 * v for v in xs], 200)
    assert len(x) == len(y) == 200
    assert x[0] == pytest.approx(249.5)  # mean of the first 500 steps
    assert y == pytest.approx([2 * v for v in x])
    assert bucket_means([1, 2], [3.0, 4.0], 200) == ([1, 2], [3.0, 4.0])


def train_record(step: int, loss: float) -> dict:
    return ev.TrainStep(step=step, loss=loss, fwd_ms=1.0, bwd_ms=2.0, opt_ms=3.0, step_ms=6.0, tok_per_s=100.0,
                        lr=1e-3, grad_norm=1.0, epoch=0, tokens=step * 600, elapsed_s=step * 0.006).to_json()


async def test_history_repopulates_the_plot_up_to_the_resumed_step(tmp_path):
    history = [train_record(s, 5.0 - s / 10) for s in range(1, 31)]
    history += [train_record(s, 1.0) for s in range(11, 16)]  # an earlier resume repeated 11..15
    history += [ev.Validation(step=10, loss=4.2).to_json(), ev.Validation(step=25, loss=4.0).to_json(),
                ev.CheckpointSaved(step=20, path="ckpt_20", seconds=1.0, reason=ev.SaveReason.PERIODIC).to_json(),
                ev.Sample(step=20, prompt="", text="old sample").to_json(), {"type": "start"}]
    trainer = FakeTrainer(tmp_path / "run", start_step=20)  # resumes from the checkpoint
    app = TrainerApp(trainer, history=history)
    async with app.run_test() as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        assert plot.train.x.tolist() == list(range(1, 21))  # steps 21..30 will be trained again
        assert plot.train.y[10:15].tolist() == [1.0] * 5
        assert plot.val.x.tolist() == [10]
        assert shown(app.dashboard.event_log, "step 20: saved ckpt_20")
        assert "old sample" in text_of(app.dashboard.samples)
        trainer.advance(2)
        await until(pilot, lambda: plot.train.x[-2:].tolist() == [21, 22])
        assert "step 22/1,000" in app.dashboard.status_bar.render().plain


async def test_resumed_ui_restores_curves_samples_and_log_from_the_trainers_history(tmp_path):
    start = ev.RunStarted(
        run_dir=str(tmp_path / "run"), model_name="fake-tiny", run_config={}, model_config={}, num_params=1,
        memory_bytes=16, train_file="fake.txt", train_tokens=10, val_file=None, val_tokens=0, batches_per_epoch=5,
        tokens_per_step=4096, world_size=1, step=0, steps=1000, elapsed_s=0.0)
    history = [start.to_json(), ev.Validation(step=0, loss=5.5).to_json()]
    history += [train_record(s, 5.0 - s / 100) for s in range(1, 41)]
    history += [ev.Paused(step=12).to_json(), ev.Resumed(step=12).to_json(),
                ev.Notice(step=15, text="an old notice [/bold]", level=ev.Level.WARNING).to_json(),
                ev.Error(step=17, message="an old error").to_json(),
                ev.Validation(step=20, loss=4.5).to_json(),
                ev.Sample(step=20, prompt="O", text="O Romeo", token_texts=[" Romeo"], token_probs=[0.5]).to_json(),
                ev.CheckpointSaved(step=40, path="ckpt_40", seconds=1.0, reason=ev.SaveReason.FINAL).to_json(),
                ev.Finished(step=40, reason=ev.FinishReason.INTERRUPTED, checkpoint="ckpt_40").to_json(),
                {"type": "from-a-newer-version", "step": 3}, {"type": "val", "step": "broken"}]
    trainer = FakeTrainer(tmp_path / "run", start_step=40, history=history)
    trainer.elapsed_s = 3725.0  # training time of the earlier runs
    app = TrainerApp(trainer)  # no history given: the app asks the trainer
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot)
        chart, log = app.dashboard.chart, app.dashboard.event_log
        assert chart.train.x.tolist() == list(range(1, 41))
        assert chart.val.x.tolist() == [0, 20]
        for line in ("run started", "step 20: val loss 4.5000", "paused at step 12", "resumed at step 12",
                     "an old notice [/bold]", "step 17: ERROR an old error", "step 40: saved ckpt_40",
                     "stopped at step 40 (interrupted)", "loaded 40 steps and 2 validations",
                     "run started (resuming at step 40)"):
            assert shown(log, line), line
        assert "earlier" in text_of(log)  # history lines have no time of day
        assert "O Romeo" in text_of(app.dashboard.samples)
        assert "1h02m" in app.dashboard.status_bar.render().plain  # elapsed time goes on from the earlier runs
        trainer.advance(1)
        await until(pilot, lambda: app.steps_done == 41)
        assert chart.train.x.tolist()[-1] == 41


def test_eta_skips_warm_up_steps_averages_a_window_and_cuts_out_pauses():
    clock = EtaClock()
    clock.step(0.0)
    clock.step(30.0)  # the first steps after a start are slow (compiling caches, threads spinning up)
    assert clock.eta(100, 30.0) is None
    for i in range(1, 7):
        clock.step(30.0 + i)  # then 1 s a step
    assert clock.seconds_per_step() == pytest.approx(1.0)  # the slow steps left out
    assert clock.eta(100, 36.0) == pytest.approx(100.0)
    assert clock.eta(100, 36.5) == pytest.approx(99.5)  # counts down between steps
    clock.shift(600.0)  # a ten-minute pause
    clock.step(637.0)
    assert clock.seconds_per_step() == pytest.approx(1.0)
    for i in range(1, 300):
        clock.step(637.0 + 2 * i)  # slower now: the window follows
    assert clock.seconds_per_step() == pytest.approx(2.0)


async def test_samples_and_log_wrap_at_80x24_and_rewrap_when_resized(trainer):
    app = TrainerApp(trainer)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        dash = app.dashboard
        long_words = "a-very-long-path/" * 12
        dash.event_log.add(f"saved {long_words} and more words after it " * 3)
        dash.samples.show(1, "", "the quick brown fox " * 30)
        await pilot.pause(0.1)

        def no_sideways_scroll(log) -> bool:
            return log.virtual_size.width <= log.scrollable_content_region.width and log.max_scroll_x == 0

        for log in (dash.event_log, dash.samples):
            assert no_sideways_scroll(log), log
            assert "a-very-long-path" in text_of(log) or "the quick" in text_of(log)
        await pilot.resize_terminal(60, 24)
        await pilot.pause(0.2)
        for log in (dash.event_log, dash.samples):
            assert no_sideways_scroll(log), log
        assert shown(dash.samples, "the quick brown fox " * 30)


# -- keys -------------------------------------------------------------------------------


async def test_pause_stops_steps_until_resume(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        plot = app.dashboard.chart
        trainer.advance(2)
        await until(pilot, lambda: len(plot.train) == 2)

        await pilot.press("p")
        await until(pilot, lambda: app.state == "paused")
        assert "Resume" in keys_shown(app) and "Pause" not in keys_shown(app)
        trainer.advance(3)
        await pilot.pause(0.1)
        assert len(plot.train) == 2

        await pilot.press("space")
        await until(pilot, lambda: len(plot.train) == 5)
        assert app.state == "running"
        assert [type(c) for c in trainer.received] == [ev.Pause, ev.Resume]


async def test_sample_key_adds_a_sample_and_markup_in_it_is_just_text(tmp_path):
    trainer = FakeTrainer(tmp_path / "run", sample_text="KING [/bold] to [aside] [/foo]")
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        await pilot.press("s")
        samples = app.dashboard.samples
        await until(pilot, lambda: "KING [/bold] to [aside] [/foo]" in text_of(samples))
        assert "step 0" in text_of(samples)
        assert trainer.received == [ev.SampleNow(prompt="")]
        assert app.state == "running"


async def test_prompt_dialog_samples_from_typed_text(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        await pilot.press("g")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("H", "i", "enter")
        await until(pilot, lambda: "prompt: 'Hi'" in text_of(app.dashboard.samples))
        assert trainer.received == [ev.SampleNow(prompt="Hi")]


async def test_save_key_logs_the_checkpoint(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        assert keys_shown(app)["Save"] is False  # nothing to save yet
        trainer.advance(3)
        await until(pilot, lambda: app.steps_done == 3)
        await pilot.press("c")
        log = app.dashboard.event_log
        await until(pilot, lambda: shown(log, "step 3: saved"))
        assert trainer.run_dir.checkpoint_path(3).is_file()
        assert app.saved_steps == 3 and app.state == "running"
        assert keys_shown(app)["Save"] is False  # saved already
        trainer.advance(1)
        await until(pilot, lambda: keys_shown(app)["Save"])
        await pilot.press("ctrl+s")
        await until(pilot, lambda: shown(log, "step 4: saved"))


async def test_export_writes_csv_next_to_metrics(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(12)
        await until(pilot, lambda: app.steps_done == 12)
        await pilot.press("e")
        csv_path = trainer.run_dir.path / "metrics.csv"
        await until(pilot, lambda: shown(app.dashboard.event_log, f"metrics written to {csv_path}"))
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(13))  # validation at 0, then steps 1..12
    assert rows[0]["loss"] == ""
    assert [float(r["loss"]) for r in rows[1:]] == pytest.approx([fake_loss(s) for s in range(12)])
    assert {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]} == pytest.approx(
        {0: fake_loss(0) + 0.1, 5: fake_loss(5) + 0.1, 10: fake_loss(10) + 0.1})


async def test_help_opens_and_closes(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        for key in ("p / space", "s", "g", "c / ^s", "l", "+-", "m", "x", "e", "?", "q"):
            assert key in keys, (key, list(keys))
        assert "not saved" in keys["q"]
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_footer_shows_the_keys_and_dims_what_does_not_apply(tmp_path):
    trainer = FakeTrainer(tmp_path / "run", hold_compile=True)
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.state == "compiling")
        assert app.dashboard.has_class("-compiling")
        wanted = {"Pause", "Sample", "Prompt", "Save", "Log", "EMA", "CSV", "Help", "Quit"}
        await until(pilot, lambda: wanted <= set(footer_widgets(app)))
        keys = keys_shown(app)
        assert not any(keys[k] for k in ("Sample", "Prompt", "Save", "Pause"))
        assert keys["Quit"] and keys["Help"] and keys["Log"]
        await until(pilot, lambda: footer_dims(app, "Sample") is True)
        await pilot.press("s")
        assert trainer.received == []

        trainer.finish_compiling()
        await started(pilot)
        keys = keys_shown(app)
        assert keys["Sample"] and keys["Pause"] and keys["CSV"]
        assert not keys["Save"]  # no step done yet: nothing to save
        await until(pilot, lambda: footer_dims(app, "Sample") is False)
        assert not app.dashboard.has_class("-compiling")


async def test_command_palette_offers_the_actions(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(1)
        await until(pilot, lambda: app.steps_done == 1)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Pause training", "Sample now", "Sample from a prompt", "Save checkpoint",
                "Toggle log scale", "Export metrics CSV", "Help", "Quit"} <= titles
        assert "Resume training" not in titles


# -- quitting -----------------------------------------------------------------------------


async def test_quitting_while_compiling_says_so_and_exits_when_compiled(tmp_path):
    trainer = FakeTrainer(tmp_path / "run", hold_compile=True)
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.state == "compiling")
        await pilot.press("q")
        assert not isinstance(app.screen, QuitScreen)  # nothing to save: no question
        assert shown(app.dashboard.event_log, "quitting once the kernel being compiled is done")
        assert shown(app.dashboard.event_log, "nothing is saved and no run directory is left")
        await until(pilot, lambda: app.return_code is not None)  # the fake finishes compiling on Stop
    assert app.return_code == 0
    assert trainer.received == [ev.Stop(save=False)]
    assert not trainer.run_dir.path.exists()  # quit before the first step: nothing left behind


async def test_sigterm_saves_the_current_step_and_exits_143(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(3)
        await until(pilot, lambda: app.steps_done == 3)
        stop = ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED)
        with SignalHandlers(stop=lambda: trainer.send(stop), tell=app.signal_received, abort_message=str):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs on this (the main) thread
            await until(pilot, lambda: app.return_code is not None)
        assert shown(app.dashboard.event_log, "SIGTERM: finishing the current step and saving")
    assert app.return_code == 143
    assert trainer.received == [stop]
    assert trainer.run_dir.checkpoint_path(3).is_file()


def test_a_second_signal_waits_and_a_third_aborts_at_once():
    script = """if True:
        import os, signal, sys, time
        from tui_llm.terminal import SignalHandlers
        handlers = SignalHandlers(stop=lambda: print("stop", flush=True),
                                  tell=lambda signum, count: print("told", count, flush=True),
                                  abort_message=lambda: "aborted: steps 4..6 are lost")
        with handlers:
            for count in range(1, 4):
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 10
                while len(handlers.received) < count:  # the handler runs on this thread, between bytecodes
                    assert time.monotonic() < deadline, handlers.received
        print("still running after the third signal", flush=True)  # never: it aborts the process
        """
    done = run_command([sys.executable, "-c", script])
    assert done.returncode == 143
    assert done.stdout.split("\n")[:3] == ["stop", "told 1", "told 2"]  # the Stop is sent once
    assert "aborted: steps 4..6 are lost" in done.stderr


async def test_a_second_signal_while_saving_is_only_acknowledged(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(2)
        await until(pilot, lambda: app.steps_done == 2)
        app.signal_received(signal.SIGHUP, 1)  # as the handler does (it also sends the Stop: below)
        await until(pilot, lambda: app.state == "stopping")
        app.signal_received(signal.SIGHUP, 2)
        await until(pilot, lambda: shown(app.dashboard.event_log, "still finishing the step and saving"))
        assert app.return_code is None and "Save" not in {k for k, v in keys_shown(app).items() if v}
        trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED))
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 129
    assert trainer.run_dir.checkpoint_path(2).is_file()


async def test_a_signal_after_the_run_finished_exits_at_once(tmp_path):
    trainer = FakeTrainer(tmp_path / "run", total_steps=2)
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(2)
        await until(pilot, lambda: app.state == "finished")
        app.signal_received(signal.SIGHUP, 1)
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 129


async def test_quit_dialog_shows_its_keys(trainer):
    app = TrainerApp(trainer)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        trainer.advance(1)
        await until(pilot, lambda: app.steps_done == 1)
        await pilot.press("q")
        labels = {button.id: str(button.label) for button in app.screen.query("Button")}
        assert labels == {"save": "Save and quit (s)", "discard": "Quit without saving (d)", "cancel": "Cancel (esc)"}
        for button in app.screen.query("Button"):
            assert button.region.width >= len(str(button.label)) + 2, button.id  # not cut off at 80x24
        await pilot.press("escape")


@pytest.mark.parametrize("answer", ["save", "discard", "cancel"])
async def test_quit_with_unsaved_steps_asks(trainer, answer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(4)
        await until(pilot, lambda: app.steps_done == 4)
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.click(f"#{answer}")
        if answer == "cancel":
            await pilot.pause(0.1)
            assert app.screen is app.dashboard and app.return_code is None
            assert trainer.received == []
        else:
            await until(pilot, lambda: app.return_code is not None)
    if answer != "cancel":
        assert app.return_code == 0
        assert trainer.received == [ev.Stop(save=answer == "save")]
        assert trainer.run_dir.checkpoint_path(4).is_file() == (answer == "save")


async def test_quit_without_unsaved_steps_stops_at_once(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
    assert trainer.received == [ev.Stop(save=False)]
    assert app.return_code == 0


async def test_after_finishing_sampling_still_works_from_the_final_weights(tmp_path):
    trainer = FakeTrainer(tmp_path / "run", total_steps=3, sample_text="final words")
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(3)
        await until(pilot, lambda: app.state == "finished")
        keys = keys_shown(app)
        assert not any(keys[k] for k in ("Pause", "Save"))
        assert keys["Quit"] and keys["CSV"] and keys["Sample"] and keys["Prompt"]
        assert shown(app.dashboard.event_log, "s and g still sample from the final weights")
        await pilot.press("s")  # trainer.sample() in a thread worker: the run is over
        await until(pilot, lambda: "final words" in text_of(app.dashboard.samples))
        assert "step 3" in text_of(app.dashboard.samples)
        await until(pilot, lambda: app.state == "finished")
        await pilot.press("g")
        await pilot.press("H", "i", "enter")
        await until(pilot, lambda: "prompt: 'Hi'" in text_of(app.dashboard.samples))
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 0
    assert trainer.received == []  # no command: the trainer's loop has returned


# -- errors -------------------------------------------------------------------------------


async def test_error_is_shown_and_pauses_and_quitting_returns_1(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(2)
        await until(pilot, lambda: app.steps_done == 2)
        trainer.fail("loss is nan [/bold]")
        await until(pilot, lambda: app.state == "error" and app.phase == "paused")
        assert shown(app.dashboard.event_log, "ERROR loss is nan [/bold]")
        assert shown(app.dashboard.event_log, "save (c), resume (p) or quit (q)")
        assert "ERROR" in app.dashboard.status_bar.render().plain
        assert keys_shown(app)["Save"]  # the user can save...
        await pilot.press("c")
        await until(pilot, lambda: app.saved_steps == 2)
        assert app.state == "error"
        await pilot.press("q")  # ...or quit (nothing unsaved: no question)
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1


async def test_a_failed_final_save_keeps_the_app_open(trainer):
    app = TrainerApp(trainer)
    async with app.run_test() as pilot:
        await started(pilot)
        trainer.advance(2)
        await until(pilot, lambda: app.steps_done == 2)
        trainer.saves_fail = True
        await pilot.press("q")
        await pilot.click("#save")
        await until(pilot, lambda: app.phase == "finished")
        assert app.state == "error" and app.return_code is None
        assert shown(app.dashboard.event_log, "ERROR saving failed: disk full")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1


class CrashingTrainer:
    def run(self, emit, on_error="pause"):
        raise RuntimeError("out of memory")

    def send(self, command):
        pass


async def test_trainer_crash_is_shown_and_quit_returns_1():
    app = TrainerApp(CrashingTrainer())
    async with app.run_test() as pilot:
        await until(pilot, lambda: not app.alive)
        assert app.state == "error"
        assert shown(app.dashboard.event_log, "RuntimeError('out of memory')")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1


YIELD_SCRIPT = """
import json, os, threading
from tui_llm.terminal import UI_NICENESS, yield_to_training

def nice(tid):
    return os.getpriority(os.PRIO_PROCESS, tid)

base = nice(threading.get_native_id())
ids, started, stepped_back, kernel_up, done = {}, threading.Barrier(4), threading.Event(), threading.Event(), \
    threading.Event()

def park(name):
    ids[name] = threading.get_native_id()
    if name == "kernel":
        kernel_up.set()
    else:
        started.wait()
    if name == "trainer":  # a thread training starts after the UI stepped back (numba's, BLAS's)
        stepped_back.wait()
        kernel = threading.Thread(target=park, args=("kernel",))
        kernel.start()
    done.wait()

threads = [threading.Thread(target=park, args=(name,), name=name) for name in ("textual-input", "textual-output", "trainer")]
for thread in threads:
    thread.start()
started.wait()
yield_to_training()
stepped_back.set()
kernel_up.wait()
niceness = {name: nice(tid) for name, tid in ids.items()}
niceness["main"] = nice(threading.get_native_id())
done.set()
print(json.dumps({"base": base, "ui": UI_NICENESS, **niceness}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_the_ui_threads_step_back_for_training():
    """yield_to_training lowers the priority of the UI's threads (main, Textual's input and output)
    and leaves the trainer's, and the threads the trainer starts later, as they were."""
    import json

    done = run_command([sys.executable, "-c", YIELD_SCRIPT], timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    ui = max(got["base"], got["ui"])
    assert (got["main"], got["textual-input"], got["textual-output"]) == (ui, ui, ui), got
    assert (got["trainer"], got["kernel"]) == (got["base"], got["base"]), got
