"""LoRA runs end to end: the trainer, checkpoints and resume, the base's identity, bad input and
the memory estimate; recompute and LoRA under accumulation and MPI."""

import json
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import tui_llm
from tests.run_helpers import Process
from tests.run_helpers import run as run_command
from tests.test_llama_cli import llama as llama_fixture
from tui_llm.engine import events as ev
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import load_training_checkpoint, write_llmc
from tui_llm.engine.machine import NotEnoughMemory
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.training import memory

TINY = ["--no-ui", "--model", "d2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy",
        "--lr", "3e-2", "--val-every", "4", "--val-batches", "2", "--sample-every", "0", "--save-every", "0"]
MPIEXEC = shutil.which("mpiexec")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_data")
    tokens = np.tile(np.random.default_rng(5).integers(0, 50257, 41), 80)
    write_tokens(d / "s_train.bin", tokens[:2800])
    write_tokens(d / "s_val.bin", tokens[2800:])
    return d


def cli(*args, ranks=1, cwd=None):
    cmd = [sys.executable, "-m", "tui_llm", *args]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return run_command(cmd, cwd=cwd)


def records(run, kind):
    lines = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["type"] == kind]


def losses(run):
    return [r["loss"] for r in records(run, "train")], [r["loss"] for r in records(run, "val")]


def api_config(data, tmp_path, name, **kw):
    settings = dict(train_file=str(data / "s_train.bin"), out_dir=str(tmp_path / name), model="d2", batch_size=2,
                    seq_len=16, max_seq_len=32, steps=3, lr=3e-2, threads=1, init_style="numpy", val_every=0,
                    sample_every=0, save_every=0)
    return tui_llm.RunConfig(**{**settings, **kw})


def train(config):
    events = []
    trainer = tui_llm.Trainer(config)
    trainer.run(events.append)
    return trainer, events


@pytest.mark.slow
def test_lora_trains_only_the_adapters_from_the_base_models_loss(data, tmp_path):
    _, full_events = train(api_config(data, tmp_path, "full"))
    trainer, events = train(api_config(data, tmp_path, "lora", lora_rank=4, lora_targets="c_attn,c_proj"))
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    full = [e for e in full_events if isinstance(e, ev.TrainStep)]
    assert steps[0].loss == full[0].loss                  # step 0: B = 0, the base model exactly
    assert steps[-1].loss < steps[0].loss                 # and the adapters learn
    model = trainer.model
    fresh = GPT.random_init(GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=64), seed=42)
    assert np.array_equal(model.params.flat, fresh.params.flat)  # the frozen base, bit for bit
    assert model.grads is None and model.lora.params.views["attn.c_attn.lora_B"].any()
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.trainable_params == model.lora.num_parameters == 2 * 4 * (64 + 192 + 64 + 64 + 256 + 64)
    assert started.num_params == model.num_parameters + started.trainable_params
    assert started.memory["total"] == started.memory_bytes and started.memory["adapters"] == 4 * started.trainable_params
    arrays, meta = load_training_checkpoint(trainer.last_checkpoint)
    assert set(arrays) == {"lora", "adam_m", "adam_v"} and arrays["lora"].size == started.trainable_params
    assert meta["lora"] == {"rank": 4, "alpha": 8.0, "targets": ["attn.c_attn", "attn.c_proj", "mlp.c_proj"],
                            "dropout": 0.0, "use_rslora": False}
    assert meta["base"]["init_from"] is None and meta["base"]["dtype"] == "fp32" and len(meta["base"]["fingerprint"]) == 16
    # sampling from the run's checkpoint: the base, rebuilt from the run's settings, with the adapters
    loaded = tui_llm.load_model(tmp_path / "lora")
    assert np.array_equal(loaded.lora.params.flat, model.lora.params.flat)
    assert tui_llm.generate(loaded, sample_len=4).text


@pytest.mark.slow
def test_sigint_at_a_random_step_resumes_a_lora_run_bit_for_bit(data, tmp_path):
    """Dropout, a bf16 base, two micro-batches per step; the resumed half runs with --recompute,
    which changes nothing."""
    common = [str(data / "s_train.bin"), *TINY, "-b", "1", "-d", "32", "--steps", "12", "--lora-rank", "4",
              "--lora-dropout", "0.2", "--lora-alpha", "16", "--base-dtype", "bf16"]
    straight = cli(*common, "--out-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    assert "frozen bf16 base" in straight.stdout and "LoRA rank 4, alpha 16, dropout 0.2" in straight.stdout
    stop_at = random.Random().randint(2, 9)
    run = tmp_path / "run"

    def on_line(line):
        if line.startswith(f"step {stop_at}/"):
            proc.send_signal(signal.SIGINT)

    with Process([sys.executable, "-m", "tui_llm", *common, "--out-dir", str(run)], on_line=on_line) as proc:
        proc.wait(expect=130)
    resumed = cli("--resume", str(run), "--no-ui", "--recompute")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == losses(tmp_path / "straight"), f"stopped at step {stop_at}"


@pytest.mark.slow
def test_a_changed_base_is_refused_in_one_line(data, tmp_path):
    cfg = GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=64)
    base = GPT.random_init(cfg, seed=1)
    write_llmc(tmp_path / "base.bin", cfg, base.params.flat)
    run = tmp_path / "run"
    r = cli(str(data / "s_train.bin"), *TINY[5:], "--no-ui", "-t", "16", "--init-from", "base.bin", "--steps", "2",
            "--lora-rank", "2", "--out-dir", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["run_config"]["init_from"] == str(tmp_path / "base.bin")  # absolute: a resume finds it
    assert config["base"]["init_from"] == str(tmp_path / "base.bin")
    assert cli("sample", "--init-from", str(run), "--sample-len", "3").returncode == 0
    changed = base.params.flat.copy()
    changed[12345] += 1e-3                       # one weight
    write_llmc(tmp_path / "base.bin", cfg, changed)
    for args in (("--resume", str(run), "--no-ui", "--steps", "4"), ("sample", "--init-from", str(run))):
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "the base changed" in r.stderr and "fingerprint" in r.stderr
    assert len(records(run, "train")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["--lora-rank", "-1"], "--lora-rank: must be positive"),
    (["--lora-rank", "0"], "--lora-rank: must be positive"),
    (["--lora-rank", "4", "--lora-alpha", "nan"], "--lora-alpha must be a number"),
    (["--lora-rank", "4", "--lora-dropout", "1"], "--lora-dropout must be a number"),
    (["--lora-alpha", "16"], "--lora-alpha is a LoRA setting: add --lora-rank"),
    (["--base-dtype", "bf16"], "--base-dtype bf16 holds a frozen base"),
    (["--lora-rank", "4", "--lora-targets", "q_proj,c_fc"], "has no 'q_proj' (it has c_attn, c_fc, c_proj"),
    (["--arch", "llama", "--lora-rank", "4", "--lora-targets", "c_attn"], "--tokenizer"),
])
def test_bad_lora_settings_are_one_line_and_write_nothing(data, tmp_path, args, words):
    r = cli(str(data / "s_train.bin"), *TINY, "--steps", "2", *args, "--out-dir", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_lora_run_of_a_fresh_model_exports_merged_and_its_adapter_needs_a_base(data, tmp_path):
    """A fresh model's LoRA run: --to llmc / hf write the merged model (the run's logits); its
    PEFT adapter names no base, so starting from it asks for --base; --init-from the run itself
    says to resume it or export its adapter."""
    from tui_llm.engine.api import load_model

    run = tmp_path / "run"
    assert cli(str(data / "s_train.bin"), *TINY, "--steps", "1", "--lora-rank", "2", "--out-dir", str(run)).returncode == 0
    tokens = np.arange(16, dtype=np.int32).reshape(1, 16)
    model = load_model(run)
    model.forward(tokens)
    expected = model.acts.logits[:, :model.config.vocab_size].copy()
    for to, out in (("llmc", tmp_path / "m.bin"), ("hf", tmp_path / "m_hf")):
        r = cli("export", "--init-from", str(run), str(out), "--to", to)
        assert r.returncode == 0, r.stderr
        plain = load_model(out)
        plain.forward(tokens)
        assert np.abs(plain.acts.logits[:, :plain.config.vocab_size] - expected).max() < 1e-5
    assert cli("export", "--init-from", str(run), str(tmp_path / "adapter"), "--to", "peft").returncode == 0
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    r = cli(str(data / "s_train.bin"), *TINY, "--steps", "1", "--init-from", str(tmp_path / "adapter"),
            "--out-dir", str(tmp_path / "z"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "names no base model" in r.stderr, r.stderr
    assert not (tmp_path / "z").exists()
    r = cli(str(data / "s_train.bin"), *TINY, "--steps", "1", "--init-from", str(run), "--out-dir", str(tmp_path / "y"))
    assert r.returncode == 2 and "is a LoRA run: --resume continues it" in r.stderr


def test_memory_refusal_names_what_would_fit(data, tmp_path, monkeypatch):
    config = api_config(data, tmp_path, "m", model="d6", batch_size=8, seq_len=512, max_seq_len=512)
    need = memory.estimate_memory(GPTConfig(max_seq_len=512, num_layers=6, num_heads=6, channels=384), 8, 512)
    lora_need = memory.estimate_memory(GPTConfig(max_seq_len=512, num_layers=6, num_heads=6, channels=384), 8, 512,
                                       lora=None, recompute=True)
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: (need.total + lora_need.total) // 2)
    with pytest.raises(NotEnoughMemory) as info:
        tui_llm.Trainer(config)
    message = str(info.value)
    assert "this run needs" in message and "--recompute" in message and "would make it fit" in message
    assert "\n" not in message and not (tmp_path / "m").exists()
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: need.weights // 3)
    with pytest.raises(NotEnoughMemory, match="even its weights as bf16 do not fit"):
        tui_llm.Trainer(config)


def test_a_lora_run_is_not_refused_by_the_full_fine_tuning_rule(data, tmp_path, monkeypatch):
    cfg = GPTConfig(max_seq_len=32, num_layers=2, num_heads=2, channels=64)
    from tui_llm.engine.models.gpt2_config import num_parameters
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 10 * num_parameters(cfg))  # < 16 bytes a parameter
    with pytest.raises(NotEnoughMemory, match="LoRA"):
        tui_llm.Trainer(api_config(data, tmp_path, "full"))
    trainer = tui_llm.Trainer(api_config(data, tmp_path, "lora", lora_rank=4))
    assert trainer.memory.total < 10 * num_parameters(cfg)
    trainer.run_dir.close()


@pytest.mark.slow
def test_recompute_and_accumulation_give_the_same_run(data, tmp_path):
    common = [str(data / "s_train.bin"), *TINY, "--steps", "6"]
    one = cli(*common, "-b", "4", "--out-dir", str(tmp_path / "one"))
    split = cli(*common, "-b", "1", "-d", "64", "--recompute", "--out-dir", str(tmp_path / "split"))
    plain = cli(*common, "-b", "1", "-d", "64", "--out-dir", str(tmp_path / "plain"))
    for r in (one, split, plain):
        assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "split") == losses(tmp_path / "plain")           # bit for bit
    np.testing.assert_allclose(losses(tmp_path / "split")[0], losses(tmp_path / "one")[0], rtol=0, atol=1e-5)
    start = records(tmp_path / "split", "start")[0]["memory"]
    assert start["recompute"] and start["activations_recompute"] < start["activations"]
    assert f"activations {start['activations_recompute'] / 2**20:,.1f} MiB" in split.stdout


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_lora_and_recompute_under_mpi(data, tmp_path):
    """Two ranks with ZeRO-1 over the adapter buffer train what one process does; --recompute
    changes no bit under MPI either."""
    common = [str(data / "s_train.bin"), *TINY, "--steps", "6", "--lora-rank", "4", "--weight-decay", "0.1"]
    one = cli(*common, "-b", "2", "--out-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    runs = {}
    for name, extra in (("zero", ["--zero", "1"]), ("zero-recompute", ["--zero", "1", "--recompute"])):
        r = cli(*common, "-b", "1", *extra, "--out-dir", str(tmp_path / name), ranks=2)
        assert r.returncode == 0, r.stderr
        runs[name] = losses(tmp_path / name)
    assert runs["zero"] == runs["zero-recompute"]
    np.testing.assert_allclose(runs["zero"][0], losses(tmp_path / "one")[0], rtol=0, atol=1e-5)
    start = records(tmp_path / "zero", "start")[0]
    assert start["memory"]["optimizer"] == 8 * start["trainable_params"] // 2


llama = llama_fixture  # a tiny HF Llama dir and data prepared with its tokenizer (module-scoped)


@pytest.mark.slow
def test_a_llama_lora_run_keeps_its_bf16_base_as_bf16(llama, tmp_path):
    """A BF16 Hugging Face Llama: the LoRA run's base stays bf16 bits (the default for a BF16
    file), trains, resumes, samples; the frozen base is the file's, bit for bit."""
    from safetensors.numpy import load_file

    from tests.test_hf_llama import to_bf16_bits, write_safetensors
    from tests.test_llama_cli import SMALL

    model_dir, data = llama
    bf16_dir = tmp_path / "bf16_model"
    shutil.copytree(model_dir, bf16_dir)
    tensors = load_file(model_dir / "model.safetensors")
    write_safetensors(bf16_dir / "model.safetensors", {n: ("BF16", to_bf16_bits(v)) for n, v in tensors.items()})
    common = [str(data / "story_train.bin"), "--no-ui", "--init-from", str(bf16_dir), *SMALL, "--lr", "1e-2",
              "--lora-rank", "4", "--lora-targets", "q_proj,v_proj,down_proj"]
    r = cli(*common, "--steps", "4", "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "frozen bf16 base" in r.stdout and "on q_proj,v_proj,down_proj" in r.stdout
    resumed = cli("--resume", str(tmp_path / "run"), "--no-ui", "--steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    trainer = tui_llm.Trainer(tui_llm.RunConfig(train_file=str(data / "story_train.bin"), init_from=str(bf16_dir),
                                                lora_rank=2, out_dir=str(tmp_path / "api"), steps=1, seq_len=16))
    assert trainer.model.params.flat.dtype == np.uint16 and trainer.config.base_dtype == "bf16"
    from tui_llm.engine.formats.hf_llama import read_hf_llama
    assert np.array_equal(trainer.model.params.flat, read_hf_llama(bf16_dir, dtype="bf16")[1])
    trainer.run_dir.close()
    sample = cli("sample", "--init-from", str(tmp_path / "run"), "--prompt", "The quick", "--sample-len", "4")
    assert sample.returncode == 0 and "\nThe quick" in sample.stdout, sample.stderr
    refused = cli("export", "--init-from", str(tmp_path / "run"), str(tmp_path / "m.bin"), "--to", "llmc")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--to hf" in refused.stderr
    assert not (tmp_path / "m.bin").exists()
    merged = cli("export", "--init-from", str(tmp_path / "run"), str(tmp_path / "merged"), "--to", "hf")
    assert merged.returncode == 0, merged.stderr       # the bf16 base widened exactly, plus s B A
    from tui_llm.engine.api import load_model
    tokens = np.arange(1, 17, dtype=np.int32).reshape(1, 16)
    run_model, plain = load_model(tmp_path / "run"), load_model(tmp_path / "merged")
    assert run_model.params.flat.dtype == np.uint16 and plain.params.flat.dtype == np.float32
    run_model.forward(tokens)
    plain.forward(tokens)
    V = plain.config.vocab_size
    assert np.abs(plain.acts.logits[:, :V] - run_model.acts.logits[:, :V]).max() < 1e-5
