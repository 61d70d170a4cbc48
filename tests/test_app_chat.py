"""The dashboard's chat panel (key t), driven by the fake trainer: the request goes to the trainer as a
ChatNow command, its ChatReply comes back into the panel, training goes on meanwhile, escape returns."""

from __future__ import annotations

import time

import pytest

from tests.fake_trainer import FakeTrainer
from tui_llm.app import TrainerApp
from tui_llm.engine import events as ev
from tui_llm.screens.chat import ChatScreen
from tui_llm.widgets.chat import ChatLog

pytestmark = pytest.mark.ui


async def until(pilot, condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


def transcript(app) -> str:
    return app.screen.query_one(ChatLog).transcript() if isinstance(app.screen, ChatScreen) else ""


@pytest.mark.slow
async def test_chat_panel_talks_to_the_trainer_and_training_goes_on(tmp_path):
    trainer = FakeTrainer(tmp_path / "run")
    app = TrainerApp(trainer)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.phase == ev.RunState.RUNNING, "the run to start")
        trainer.advance(3)
        await until(pilot, lambda: app.steps_done == 3, "three steps")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), "the chat panel")
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: "assistant: reply to 'hello' at step 3" in transcript(app), "the reply")
        assert [c for c in trainer.received if isinstance(c, ev.ChatNow)] == [
            ev.ChatNow(messages=({"role": "user", "content": "hello"},))]
        trainer.advance(2)  # training goes on under the panel
        await until(pilot, lambda: app.steps_done == 5, "two more steps")
        await pilot.press(*"again", "enter")
        await until(pilot, lambda: "reply to 'again' at step 5" in transcript(app), "the second reply")
        sent = [c for c in trainer.received if isinstance(c, ev.ChatNow)][-1]
        assert [m["role"] for m in sent.messages] == ["user", "assistant", "user"]  # the whole conversation
        await pilot.press(*"fail", "enter")
        await until(pilot, lambda: "no reply: the conversation is too long" in transcript(app), "the failure note")
        assert not app.screen.busy
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.dashboard, "the dashboard")
        assert "chat reply" in "\n".join(line.text for line in app.dashboard.event_log.lines)
        await pilot.press("t")  # the conversation is kept while the panel is closed
        await until(pilot, lambda: "reply to 'again'" in transcript(app), "the kept conversation")
        await pilot.press(*"/reset", "enter")
        await until(pilot, lambda: "reply to" not in transcript(app), "the reset")
        assert app.conversation.messages == []
        await pilot.press("escape")
        trainer.send(ev.Stop(save=False))
        await until(pilot, lambda: app.phase == ev.RunState.FINISHED, "the end of the run")
        await pilot.press("t")  # after the run: the final weights answer, in a thread
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), "the chat panel again")
        await pilot.press(*"last", "enter")
        await until(pilot, lambda: "reply to 'last' at step 5" in transcript(app), "a reply from the final weights")


async def test_status_bar_shows_the_counted_tokens_of_a_masked_step(tmp_path):
    trainer = FakeTrainer(tmp_path / "run")
    app = TrainerApp(trainer)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.phase == ev.RunState.RUNNING, "the run to start")
        trainer.advance(1)  # the fake's steps count every position: nothing extra shown
        await until(pilot, lambda: app.steps_done == 1, "a step")
        bar = app.dashboard.status_bar
        assert "loss_tokens" not in bar.render().plain
        masked = ev.TrainStep(step=2, loss=1.0, fwd_ms=1, bwd_ms=1, opt_ms=1, step_ms=3, tok_per_s=1.0, lr=1e-3,
                              grad_norm=1.0, epoch=0, tokens=8192, elapsed_s=1.0, loss_tokens=1234)
        bar.record_step(masked)  # as a packed-data step arrives
        assert "loss_tokens 1.2k" in bar.render().plain
