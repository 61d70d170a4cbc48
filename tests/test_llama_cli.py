"""A Llama-family model end to end through the command and the Python API: a tiny HF-layout
directory (numpy weights, a BPE tokenizer.json trained here) -> prepare --tokenizer -> train,
interrupt, resume, sample, export; wrong data and unsupported configs are one line, exit 2."""

import json

import numpy as np
import pytest

import tui_llm
from tests import reference_llama as ref
from tests.run_helpers import run_cli
from tests.test_cli import bad, interrupt_at_step, read_metrics
from tests.test_hf_llama import C, F, L, hf_config, write_safetensors
from tests.test_hf_tokenizer import CORPUS
from tests.test_hf_tokenizer import train as train_tokenizer
from tui_llm import cli
from tui_llm.engine.data.tokens import open_tokens, write_tokens
from tui_llm.engine.formats import load_training_checkpoint
from tui_llm.engine.formats.hf_llama import read_hf_llama
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.tokenizers.hf import HFTokenizer

VOCAB, MAX_POS = 400, 64  # the trained tokenizer's vocabulary; positions
SMALL = ["-b", "2", "-t", "16", "--threads", "1", "--val-every", "5", "--sample-every", "0", "--save-every", "0"]


def make_llama_dir(d, model_type="llama", spelling="4.x", seed=0, **extra):
    """An HF Llama-family dir: config.json (either spelling), F32 weights, and the test tokenizer
    (Llama-like: <s> BOS added to every text, <|endoftext|> EOS)."""
    train_tokenizer(d, tokenizer_config={"bos_token": "<s>", "eos_token": "<|endoftext|>", "add_bos_token": True})
    hf = hf_config(model_type=model_type, spelling=spelling, vocab_size=VOCAB, max_position_embeddings=MAX_POS,
                   bos_token_id=1, eos_token_id=0, **extra)
    cfg = dict(num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"], head_dim=C // 4,
               eps=1e-5, theta=100.0, rope_scaling=None, vocab_size=VOCAB, tied=True, bias=model_type == "qwen2",
               qk_norm=model_type == "qwen3")
    P = ref.random_params(cfg, L, C, F, np.random.default_rng(seed), std=0.1)
    write_safetensors(d / "model.safetensors", {n: ("F32", v.astype(np.float32)) for n, v in P.items()})
    (d / "config.json").write_text(json.dumps(hf))
    return d


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(model dir, data dir with story_{train,val}.bin prepared by the model's tokenizer)."""
    model = make_llama_dir(tmp_path_factory.mktemp("smol_llama"))
    data = tmp_path_factory.mktemp("data")
    (data / "story.txt").write_text(CORPUS, encoding="utf-8")
    assert cli.main(["prepare", str(data / "story.txt"), "--tokenizer", str(model), "--out-dir", str(data),
                     "--val-fraction", "0.2"]) == 0
    return model, data


def test_prepare_with_the_models_tokenizer_frames_documents_and_writes_a_sidecar(llama):
    model, data = llama
    tok = HFTokenizer.from_dir(model)
    ids = np.concatenate([open_tokens(data / f"story_{s}.bin", vocab_size=VOCAB).tokens for s in ("val", "train")])
    assert ids[0] == tok.bos_token_id == 1 and ids[-1] == tok.eos_token_id == 0  # [BOS] text [EOS]
    assert tok.decode(ids[1:-1]) == CORPUS
    sidecar = json.loads((data / "story.tokenizer.json").read_text())
    assert sidecar["fingerprint"] == tok.fingerprint() and sidecar["path"] == str(model)
    assert sidecar["vocab_size"] == VOCAB


def test_wide_vocabularies_use_llmcs_uint32_token_files(tmp_path):
    ids = np.array([0, 70_000, 151_000, 5], np.int64)
    nbytes = write_tokens(tmp_path / "w.bin", ids, "llmc", wide=True)
    assert nbytes == 1024 + 4 * 4
    header = np.fromfile(tmp_path / "w.bin", "<i4", 3)
    assert list(header) == [20240801, 7, 4]
    assert open_tokens(tmp_path / "w.bin", vocab_size=151_936).tokens.tolist() == ids.tolist()


@pytest.mark.slow
def test_train_interrupt_resume_sample_export(llama, tmp_path):
    model, data = llama
    common = [str(data / "story_train.bin"), "--no-ui", "--init-from", str(model), *SMALL, "--steps", "12",
              "--lr", "1e-2"]
    straight = run_cli(*common, "--out-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    assert "model: Hugging Face llama" in straight.stdout
    expected = [m["loss"] for m in read_metrics(tmp_path / "straight") if m["type"] == "train"]
    assert len(expected) == 12 and np.mean(expected[-3:]) < np.mean(expected[:3]) - 0.5  # it learns

    run = tmp_path / "interrupted"
    interrupt_at_step(3, *common, "--out-dir", str(run))
    resumed = run_cli("--resume", str(run), "--no-ui", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [m["loss"] for m in read_metrics(run) if m["type"] == "train"] == expected  # bit-identical

    _, meta = load_training_checkpoint(sorted(run.glob("ckpt_*"))[-1], names=[])
    assert meta["model_config"]["arch"] == "llama" and meta["run_config"]["tokenizer"] == str(model)

    sample = run_cli("sample", "--init-from", str(run), "--prompt", "The quick", "--sample-len", "8")
    assert sample.returncode == 0, sample.stderr
    assert "\nThe quick" in sample.stdout

    out = tmp_path / "hf_out"
    exported = run_cli("export", "--init-from", str(run), str(out), "--to", "hf")
    assert exported.returncode == 0, exported.stderr
    arrays, _ = load_training_checkpoint(sorted(run.glob("ckpt_*"))[-1], names=["params"])
    cfg, flat = read_hf_llama(out)
    assert np.array_equal(flat, arrays["params"]) and cfg.vocab_size == VOCAB
    assert (out / "tokenizer.json").read_bytes() == (model / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    refused = run_cli("export", "--init-from", str(run), str(tmp_path / "m.bin"), "--to", "llmc")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --to llmc: llm.c files hold GPT-2")
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_prepare_shards_with_the_models_tokenizer_equal_the_unsharded_files(llama, tmp_path, capsys):
    """--tokenizer with --shard-size: the same documents, framed the same way, cut into shards;
    the sidecar comes with them and training on the glob accepts them."""
    model, _ = llama
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):  # three files; the second split into sections by blank lines
        (corpus / f"part{i}.txt").write_text(CORPUS[i * 300:(i + 1) * 300] + ("\n\n" + CORPUS[:120]) * i,
                                             encoding="utf-8")
    flags = ["--tokenizer", str(model), "--split-on-blank-lines", "--name", "c"]
    assert cli.main(["prepare", str(corpus), *flags, "--out-dir", str(tmp_path / "whole"),
                     "--val-fraction", "0.3"]) == 0
    assert cli.main(["prepare", str(corpus), *flags, "--out-dir", str(tmp_path / "shards"), "--shard-size", "60",
                     "--val-tokens", "50"]) == 0
    capsys.readouterr()
    whole = np.concatenate([open_tokens(tmp_path / "whole" / f"c_{s}.bin", vocab_size=VOCAB).tokens
                            for s in ("val", "train")])
    shard_files = sorted((tmp_path / "shards").glob("c_val_*.bin")) + sorted((tmp_path / "shards").glob("c_train_*.bin"))
    assert len(shard_files) > 3
    sharded = np.concatenate([open_tokens(f, vocab_size=VOCAB).tokens for f in shard_files])
    assert sharded.tolist() == whole.tolist()  # token for token
    tok = HFTokenizer.from_dir(model)
    documents = sum(len(f.read_text(encoding="utf-8").split("\n\n")) for f in corpus.iterdir())
    assert (sharded == tok.bos_token_id).sum() == (sharded == tok.eos_token_id).sum() == documents  # [BOS] doc [EOS]
    assert (tmp_path / "shards" / "c.tokenizer.json").read_bytes() == (tmp_path / "whole" / "c.tokenizer.json").read_bytes()
    trained = run_cli(str(tmp_path / "shards" / "c_train_*.bin"), "--no-ui", "--init-from", str(model), *SMALL,
                      "--steps", "2", "--out-dir", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr


@pytest.mark.slow
def test_a_qwen3_model_trains_and_exports(llama, tmp_path):
    """Qwen3 (per-head q/k RMSNorm before RoPE): loaded from its HF layout, trained (the loss
    falls), exported back under its own model type with the same weights."""
    _, data = llama
    model = make_llama_dir(tmp_path / "qwen3", model_type="qwen3", seed=1, attention_bias=False)
    run = tmp_path / "run"
    trained = run_cli(str(data / "story_train.bin"), "--no-ui", "--init-from", str(model), *SMALL, "--steps", "12",
                      "--lr", "1e-2", "--out-dir", str(run))
    assert trained.returncode == 0, trained.stderr
    assert "model: Hugging Face qwen3 " in trained.stdout
    losses = [m["loss"] for m in read_metrics(run) if m["type"] == "train"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    exported = run_cli("export", "--init-from", str(run), str(tmp_path / "out"), "--to", "hf")
    assert exported.returncode == 0, exported.stderr
    cfg, flat = read_hf_llama(tmp_path / "out")
    arrays, _ = load_training_checkpoint(sorted(run.glob("ckpt_*"))[-1], names=["params"])
    assert cfg.qk_norm and np.array_equal(flat, arrays["params"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "qwen3"


def test_data_of_another_tokenizer_is_refused_in_one_line(llama, tmp_path, capsys):
    model, data = llama
    write_tokens(tmp_path / "gpt2_train.bin", np.arange(300) % 50)  # no sidecar: GPT-2's tokens
    line = bad(capsys, str(tmp_path / "gpt2_train.bin"), "--no-ui", "--init-from", str(model), *SMALL,
               "--out-dir", str(tmp_path / "r1"))
    assert "made by the gpt2 tokenizer" in line and "--tokenizer" in line
    line = bad(capsys, str(data / "story_train.bin"), "--no-ui", "--model", "d2", *SMALL, "--out-dir", str(tmp_path / "r2"))
    assert "but the model uses GPT-2's" in line


def test_a_fresh_llama_trains_and_needs_a_tokenizer(llama, tmp_path, capsys):
    model, data = llama
    args = [str(data / "story_train.bin"), "--no-ui", "--arch", "llama", "--model", "d2", "--kv-heads", "1",
            "--ffn-channels", "96", "--max-seq-len", "32", *SMALL, "--steps", "3", "--lr", "3e-3"]
    line = bad(capsys, *args, "--out-dir", str(tmp_path / "none"))
    assert line.startswith("error: --tokenizer is needed for a fresh Llama model")
    assert cli.main([*args, "--tokenizer", str(model), "--out-dir", str(tmp_path / "fresh")]) == 0
    assert "model: llama-custom | 2 layers, 2 heads / 1 KV, 64 channels, SwiGLU 96" in capsys.readouterr().out
    start = next(m for m in read_metrics(tmp_path / "fresh") if m["type"] == "start")
    mc = start["model_config"]
    assert (mc["arch"], mc["num_layers"], mc["num_heads"], mc["num_kv_heads"], mc["ffn_channels"], mc["vocab_size"]) \
        == ("llama", 2, 2, 1, 96, VOCAB)
    assert start["run_config"]["tokenizer"] == str(model)
    line = bad(capsys, str(data / "story_train.bin"), "--no-ui", "--kv-heads", "2", *SMALL)
    assert line.startswith("error: --kv-heads is a Llama size; add --arch llama")


UNSUPPORTED = [
    (dict(model_type="phi3"), "model_type 'phi3'"),
    (dict(model_type="gpt_neox"), "model_type 'gpt_neox' is not supported"),
    (dict(num_local_experts=8), "mixture-of-experts"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic' is not supported"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(model_type="mistral", sliding_window=8), "sliding_window 8"),
]


@pytest.mark.parametrize("change,message", UNSUPPORTED)
def test_every_unsupported_hf_config_is_one_line_through_the_cli(llama, tmp_path, capsys, change, message):
    model, data = llama
    d = tmp_path / "bad_model"
    d.mkdir()
    (d / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    hf = {**json.loads((model / "config.json").read_text()), **change}
    (d / "config.json").write_text(json.dumps(hf))
    for argv in ([str(data / "story_train.bin"), "--no-ui", "--init-from", str(d), *SMALL, "--out-dir", str(tmp_path / "r")],
                 ["sample", "--init-from", str(d)], ["export", "--init-from", str(d), str(tmp_path / "x"), "--to", "hf"]):
        assert message in bad(capsys, *argv)


def test_python_api_trains_loads_and_generates_with_a_llama(llama, tmp_path):
    model_dir, data = llama
    events = []
    trainer = tui_llm.Trainer(tui_llm.RunConfig(train_file=str(data / "story_train.bin"), init_from=str(model_dir),
                                                batch_size=2, seq_len=16, steps=2, val_every=0, sample_every=2,
                                                sample_len=6, threads=1, out_dir=str(tmp_path / "api")))
    assert trainer.run(events.append) == tui_llm.FinishReason.COMPLETED
    sample = next(e for e in events if isinstance(e, tui_llm.Sample))
    assert "".join(sample.token_texts) == sample.text and 1 <= len(sample.token_ids) <= 6
    model = tui_llm.load_model(tmp_path / "api")
    assert isinstance(model, Llama) and model.tokenizer_dir == str(model_dir)
    result = tui_llm.generate(model, "To be", sample_len=5)
    assert result.prompt == "To be" and "".join(result.token_texts) == result.text
    again = tui_llm.Trainer.resume(tmp_path / "api", steps=3)
    assert isinstance(again.model, Llama) and again.config.tokenizer == str(model_dir)


def test_sampling_a_long_context_model_allocates_only_the_positions_it_needs(llama):
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.tokenizers.lookup import load_tokenizer
    from tui_llm.engine.training.sampler import Sampler

    model_dir, _ = llama
    cfg = LlamaConfig(vocab_size=VOCAB, max_seq_len=131072, num_layers=1, num_heads=2, channels=16, ffn_channels=32)
    sampler = Sampler(Llama.random_init(cfg), load_tokenizer(model_dir))
    result = sampler.generate("To be", 64, seed=1, stop_at_eot=False)
    assert len(result.token_ids) == 64 and sampler.cache.k.shape[1] == 256  # not 131,072 positions
    assert result.token_texts and "".join(result.token_texts) == result.text


def test_a_cached_name_gives_the_model_and_its_tokenizer(llama, tmp_path, monkeypatch, capsys):
    import shutil

    model_dir, data = llama
    snapshot = tmp_path / "hub" / "models--tiny--llama" / "snapshots" / "abc123"
    shutil.copytree(model_dir, snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = tui_llm.load_model("tiny/llama")
    assert isinstance(model, Llama) and model.tokenizer_dir == str(snapshot)
    (tmp_path / "t.txt").write_text("To be, or not to be", encoding="utf-8")
    assert cli.main(["prepare", str(tmp_path / "t.txt"), "--tokenizer", "tiny/llama", "--out-dir", str(tmp_path)]) == 0
    sidecar = json.loads((tmp_path / "t.tokenizer.json").read_text())
    assert sidecar["path"] == str(snapshot) and sidecar["tokenizer"] == "tiny/llama"
    # preparing the same name with GPT-2's tokenizer again drops the sidecar that no longer applies
    assert cli.main(["prepare", str(tmp_path / "t.txt"), "--out-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "t.tokenizer.json").exists()
    assert bad(capsys, "prepare", str(tmp_path / "t.txt"), "--tokenizer", "no/such-model").startswith(
        "error: no/such-model: no such directory, and no tokenizer.json for it in the local Hugging Face cache")


def test_sidecar_names_cover_splits_and_shards():
    from tui_llm.engine.data.sidecar import sidecar_path

    for name in ("data/web_train.bin", "data/web_val.bin", "data/web_train_000003.bin", "data/web_train_*.bin"):
        assert str(sidecar_path(name)) == "data/web.tokenizer.json"
    assert str(sidecar_path("data/tokens.bin")) == "data/tokens.tokenizer.json"


def test_gpt2_hf_exports_carry_gpt2s_tokenizer_files(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    from tui_llm.engine.formats import write_hf
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig
    from tui_llm.engine.tokenizers.gpt2 import get_tokenizer

    cfg = GPTConfig(max_seq_len=8, vocab_size=50257, num_layers=1, num_heads=1, channels=8)
    write_hf(tmp_path / "hf", cfg, GPT.random_init(cfg).params.flat)
    tok = ByteLevelBPETokenizer(str(tmp_path / "hf" / "vocab.json"), str(tmp_path / "hf" / "merges.txt"))
    text = "Zürich, 1984: naïve   café\n\nROMEO: wherefore art thou?"
    assert tok.encode(text).ids == get_tokenizer().encode_ordinary(text)
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    model = tui_llm.load_model(tmp_path / "hf")  # an HF dir, not a run directory, though it has a config.json
    assert isinstance(model, GPT) and model.tokenizer_dir is None


def test_a_llama_without_a_tokenizer_is_refused_in_one_line(llama, tmp_path, capsys):
    model_dir, data = llama
    d = tmp_path / "weights_only"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        (d / name).write_bytes((model_dir / name).read_bytes())
    line = bad(capsys, str(data / "story_train.bin"), "--no-ui", "--init-from", str(d), *SMALL,
               "--out-dir", str(tmp_path / "r"))
    assert line.startswith("error: --tokenizer is needed")
    assert "--tokenizer" in bad(capsys, "sample", "--init-from", str(d))
    # given explicitly, it trains
    assert cli.main([str(data / "story_train.bin"), "--no-ui", "--init-from", str(d), "--tokenizer", str(model_dir),
                     *SMALL, "--steps", "1", "--out-dir", str(tmp_path / "ok")]) == 0


def test_uint32_token_files_train(llama, tmp_path):
    from tui_llm.engine.data.loader import TrainLoader
    from tui_llm.engine.data.tokens import open_dataset

    write_tokens(tmp_path / "w_train.bin", np.arange(200) % VOCAB, "llmc", wide=True)
    loader = TrainLoader(open_dataset(str(tmp_path / "w_train.bin"), vocab_size=VOCAB), 2, 8, shuffle=False)
    x, y = loader.next_batch()
    assert x.dtype == np.int32 and x.tolist()[0] == list(range(8)) and y[0, 0] == 1
