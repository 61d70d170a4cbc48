"""The engine as a library: only `import tui_llm` names, no terminal, files where the caller says."""

import threading

import numpy as np
import pytest

import tui_llm
from tui_llm.engine.data.tokens import write_tokens


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("api_data")
    tokens = np.tile(np.random.default_rng(1).integers(0, 50257, 29), 50)
    write_tokens(d / "t_train.bin", tokens[:1300])
    write_tokens(d / "t_val.bin", tokens[1300:])
    return str(d / "t_train.bin")


def tiny(train_file, out_dir, **kw):
    settings = dict(model="d2", batch_size=2, seq_len=16, max_seq_len=32, threads=1, steps=6, lr=3e-3, val_every=3,
                    sample_every=0, save_every=0)
    return tui_llm.RunConfig(train_file=train_file, out_dir=str(out_dir), **{**settings, **kw})


@pytest.mark.slow
def test_train_resume_and_sample_from_python(train_file, tmp_path):
    config = tiny(train_file, tmp_path / "run")
    events = []
    trainer = tui_llm.Trainer(config)
    assert trainer.run(events.append) == tui_llm.FinishReason.COMPLETED
    assert config.out_dir == str(tmp_path / "run") and config.steps == 6  # the caller's config is untouched
    steps = [e for e in events if isinstance(e, tui_llm.TrainStep)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert isinstance(events[-1], tui_llm.Finished) and events[-1].checkpoint.endswith("ckpt_00000006.safetensors")

    resumed = tui_llm.Trainer.resume(tmp_path / "run", steps=9, lr=1e-3)  # allowed: more steps, another lr
    assert resumed.step == 6 and resumed.config.lr == 1e-3
    more = []
    resumed.run(more.append)
    assert [e.step for e in more if isinstance(e, tui_llm.TrainStep)] == [7, 8, 9]
    assert [r["step"] for r in resumed.history() if r["type"] == "train"] == list(range(1, 10))

    with pytest.raises(tui_llm.ConfigError) as info:
        tui_llm.Trainer.resume(tmp_path / "run", steps=20, seq_len=8)  # forbidden: the data stream
    assert info.value.field == "seq_len"

    model = tui_llm.load_model(tmp_path / "run")
    result = tui_llm.generate(model, "Hello", sample_len=5, seed=1)
    assert len(result.token_ids) == 5 and result.text == "".join(result.token_texts)
    assert tui_llm.generate(model, "Hello", sample_len=5, seed=1).token_ids == result.token_ids


def test_engine_errors_name_the_field(train_file, tmp_path):
    with pytest.raises(tui_llm.ConfigError) as info:
        tui_llm.Trainer(tiny(train_file, tmp_path / "r", temperature=float("nan")))
    assert info.value.field == "temperature" and "--temperature" in info.value.cli_message()


def test_a_run_paused_on_error_resumes_headless_and_stops(train_file, tmp_path):
    """What the UI wants on an error (pause) belongs to the run call, not the saved config."""
    trainer = tui_llm.Trainer(tiny(train_file, tmp_path / "run", steps=4))
    trainer.model.params.flat[:] = 3e38  # finite, but the first forward overflows
    seen = []
    paused = threading.Event()

    def emit(event):
        seen.append(event)
        if isinstance(event, tui_llm.Paused):
            paused.set()

    thread = threading.Thread(target=trainer.run, args=(emit,), kwargs={"on_error": "pause"})
    thread.start()
    assert paused.wait(60), seen
    trainer.send(tui_llm.Stop(save=False))
    thread.join(60)
    assert not thread.is_alive(), seen
    assert any(isinstance(e, tui_llm.Error) and "non-finite loss" in e.message for e in seen)
    assert "on_error" not in tui_llm.RunConfig().to_dict()
