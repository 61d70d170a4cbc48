"""GGUF through the command and the Python API: `export --to gguf` (+ its Modelfile), `--init-from
MODEL.gguf`, `sample`, `load_model`, `prepare --tokenizer MODEL.gguf`; round trips of weights
(f32/f16/bf16 bit-exact, q8_0 within its step) and of tokenization; the tokenizer cache; damaged
files through every command (one line, exit 2); train from a GGUF, resume, export back (slow).
The container and its metadata are tested in test_gguf.py, damaged headers in test_gguf_fuzz.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import tui_llm
from tests.run_helpers import run_cli
from tests.test_cli import bad as one_line_error
from tests.test_cli import interrupt_at_step, read_metrics
from tests.test_gguf import CORPUS, HARD, bf16, train_tokenizer, write_raw_gguf
from tui_llm import cli
from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats import load_training_checkpoint, read_llmc, write_llmc
from tui_llm.engine.formats.gguf import MAX_POSITIONS, read_gguf, storage_type, tensor_map, write_gguf
from tui_llm.engine.formats.gguf_file import read_contents
from tui_llm.engine.formats.gguf_tokenizer import gguf_tokenizer_dir, tokenizer_cache_dir
from tui_llm.engine.formats.hf_llama import read_hf_llama, write_hf_llama
from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors, num_parameters
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.llama_config import LlamaConfig, LlamaParams
from tui_llm.engine.models.llama_config import num_parameters as llama_num_parameters
from tui_llm.engine.tokenizers.gpt2 import TokenizerError, get_tokenizer
from tui_llm.engine.tokenizers.hf import HFTokenizer
from tui_llm.engine.training.model_source import load_model_source, recorded_tokenizer, restore_tokenizer_dir

TEXTS = [HARD, CORPUS[:300], "To be, or not to be<|im_end|>\n\n  x", ""]
GPT2_SMALL = GPTConfig(max_seq_len=32, vocab_size=50257, num_layers=2, num_heads=2, channels=64)
# family of the trained tokenizer (tests/test_gguf.py) for each llama.cpp architecture
LLAMAS = {"llama": ("llama-bpe", {}), "qwen2": ("qwen2", {"qkv_bias": True}),
          "qwen3": ("qwen2", {"qk_norm": True, "head_dim": 32, "tied_embeddings": False}),
          "smollm": ("smollm", {})}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The tokenizer cache of this test (XDG_CACHE_HOME), also for the subprocesses it starts."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "tui-llm" / "tokenizers"


def random_flat(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: model source}: an llm.c GPT-2 file, and an HF dir per Llama-family variant (64 channels,
    so q8_0 blocks fit; embeddings 16 rows larger than the tokenizer: [PAD] tokens)."""
    root = tmp_path_factory.mktemp("models")
    cfg = GPT2_SMALL
    flat = random_flat(num_parameters(cfg), 0)
    ParamTensors(cfg, flat).wte[cfg.vocab_size:] = 0
    write_llmc(root / "gpt2.bin", cfg, flat)
    out = {"gpt2": root / "gpt2.bin"}
    for i, (name, (family, kw)) in enumerate(LLAMAS.items()):
        tok = train_tokenizer(root / f"{name}_tok", family)
        lcfg = LlamaConfig(vocab_size=tok.vocab_size + 16, max_seq_len=64, num_layers=2, num_heads=4, num_kv_heads=2,
                           channels=64, ffn_channels=128, rope_theta=10000.0, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, **kw)
        lflat = random_flat(llama_num_parameters(lcfg), i + 1)
        p = LlamaParams(lcfg, lflat)
        p.wte[lcfg.vocab_size:] = 0
        if not lcfg.tied_embeddings:
            p.lm_head[lcfg.vocab_size:] = 0
        write_hf_llama(root / name, lcfg, lflat, tokenizer_dir=tok.path.parent)
        out[name] = root / name
    return out


def bad(capsys, *argv) -> str:
    """test_cli.bad, with paths as arguments."""
    return one_line_error(capsys, *map(str, argv))


def export(capsys, source, out, *more) -> str:
    assert cli.main(["export", "--init-from", str(source), str(out), "--to", "gguf", *map(str, more)]) == 0
    return capsys.readouterr().out


def source_weights(source):
    if str(source).endswith(".bin"):
        return read_llmc(source)
    return read_hf_llama(source)


def expected_after(cfg, flat, outtype):
    """flat as a GGUF of this outtype stores it: each matrix rounded to f16 / bf16 (numpy and the bit
    arithmetic of test_gguf.bf16, not gguf-py); norms, biases and position_embd stay f32."""
    out = flat.copy()
    p = (ParamTensors if isinstance(cfg, GPTConfig) else LlamaParams)(cfg, out)
    qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[outtype]
    for name, view, _ in tensor_map(p):
        kind = storage_type(name, view.shape, qtype)
        if kind == Q.F16:
            view[...] = view.astype(np.float16).astype(np.float32)
        elif kind == Q.BF16:
            view[...] = bf16(view)
    return out


# ---------------------------------------------------------------------------------------
# export -> --init-from: weights, tokenizer, re-export


@pytest.mark.parametrize("name", [pytest.param("gpt2", marks=pytest.mark.slow),  # 50,257 x 64 embeddings: ~3 s
                                  "llama", "qwen2", "qwen3", "smollm"])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_export_then_load_gives_the_weights_back_and_reexport_the_same_file(models, tmp_path, capsys, name, outtype):
    cfg, flat = source_weights(models[name])
    out = tmp_path / f"{name}.gguf"
    printed = export(capsys, models[name], out, "--outtype", outtype)
    assert f"wrote {out} (gguf {outtype}) and {tmp_path / (name + '.Modelfile')}" in printed
    back_cfg, back, _, tokenizer_dir = load_model_source(out)
    assert back_cfg == cfg
    if outtype == "q8_0":  # each block of 32 within half a step (max|block| / 127) of the original
        assert not np.array_equal(back, flat)
        p, q = (LlamaParams if isinstance(cfg, LlamaConfig) else ParamTensors)(cfg, flat), \
            (LlamaParams if isinstance(cfg, LlamaConfig) else ParamTensors)(cfg, back)
        for (n, a, _), (_, b, _) in zip(tensor_map(p), tensor_map(q)):
            if storage_type(n, a.shape, Q.Q8_0) == Q.Q8_0:
                blocks_a, blocks_b = a.reshape(-1, 32), b.reshape(-1, 32)
                step = np.abs(blocks_a).max(axis=1, keepdims=True) / 127
                assert np.all(np.abs(blocks_a - blocks_b) <= step * (0.5 + 127 * 2.0 ** -11)), n
            else:
                assert np.array_equal(a, b), n
    else:
        assert np.array_equal(back, expected_after(cfg, flat, outtype))

    again = tmp_path / "again.gguf"
    export(capsys, out, again, "--outtype", outtype)
    assert again.read_bytes() == out.read_bytes()
    assert (tmp_path / "again.Modelfile").read_text() == (tmp_path / f"{name}.Modelfile").read_text().replace(
        f"{name}.gguf", "again.gguf")


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "qwen3", "smollm"])
def test_the_tokenizer_of_an_exported_gguf_tokenizes_as_the_original(models, tmp_path, capsys, cache, name):
    out = tmp_path / "m.gguf"
    export(capsys, models[name], out, "--outtype", "bf16")
    _, _, _, tokenizer_dir = load_model_source(out)
    if name == "gpt2":
        assert tokenizer_dir is None and not cache.exists()  # GPT-2's own vocabulary: the built-in tokenizer
        return
    original, rebuilt = HFTokenizer.from_dir(models[name]), HFTokenizer.from_dir(tokenizer_dir)
    assert Path(tokenizer_dir).parent == cache and Path(tokenizer_dir).name.startswith("gguf-")
    assert rebuilt.fingerprint() == original.fingerprint()  # tokenizer.json travelled verbatim
    assert (rebuilt.bos_token_id, rebuilt.eos_token_id, rebuilt.adds_bos) == \
        (original.bos_token_id, original.eos_token_id, original.adds_bos)
    for text in TEXTS:
        assert rebuilt.encode_ordinary(text) == original.encode_ordinary(text)
        assert rebuilt.encode_document(text) == original.encode_document(text)
        assert rebuilt.tokenizer.encode(text).ids == original.tokenizer.encode(text).ids  # special tokens too
    assert load_model_source(out)[3] == tokenizer_dir  # the same directory every time


def test_gguf_metadata_names_the_model_and_carries_its_chat_template(models, tmp_path, capsys):
    out = tmp_path / "q.gguf"
    export(capsys, models["qwen2"], out, "--outtype", "f32")
    md = read_contents(out).metadata
    assert md["general.name"] == "qwen2" and md["general.description"] == "exported by tui-llm from qwen2"
    assert md["tokenizer.chat_template"].startswith("{% for m in messages %}<|im_start|>")
    assert md["general.architecture"] == "qwen2" and md["qwen2.context_length"] == 64
    modelfile = (tmp_path / "q.Modelfile").read_text()
    assert modelfile.startswith('FROM ./q.gguf\nTEMPLATE """{{- range .Messages }}<|im_start|>')
    assert modelfile.endswith('PARAMETER stop "<|im_end|>"\n')

    export(capsys, models["gpt2"], tmp_path / "g.gguf", "--chat-template", "chatml")
    assert "<|im_start|>" in read_contents(tmp_path / "g.gguf").metadata["tokenizer.chat_template"]
    assert (tmp_path / "g.Modelfile").read_text().startswith('FROM ./g.gguf\nTEMPLATE """{{- range .Messages }}')


def test_destinations_the_modelfile_included(models, tmp_path, capsys):
    src = models["gpt2"]
    out = tmp_path / "m.gguf"
    export(capsys, src, out)
    assert "already exists; pass --force" in bad(capsys, "export", "--init-from", src, out, "--to", "gguf")
    out.unlink()  # the Modelfile alone is protected too
    line = bad(capsys, "export", "--init-from", src, out, "--to", "gguf")
    assert "m.Modelfile: already exists; pass --force" in line and not out.exists()
    export(capsys, src, out, "--force", "--outtype", "f32")
    assert read_contents(out).metadata["general.file_type"] == 0  # ALL_F32: replaced
    (tmp_path / "d.Modelfile").mkdir()
    assert "d.Modelfile: is a directory" in bad(capsys, "export", "--init-from", src, tmp_path / "d.gguf", "--to", "gguf")
    assert "its own Modelfile" in bad(capsys, "export", "--init-from", src, tmp_path / "x.Modelfile", "--to", "gguf")
    assert "--outtype is for --to gguf only" in bad(capsys, "export", "--init-from", src, tmp_path / "x.bin",
                                                    "--outtype", "f16")
    assert "invalid choice: 'q4_0'" in bad(capsys, "export", "--init-from", src, out, "--to", "gguf", "--outtype", "q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.Modelfile", "m.Modelfile", "m.gguf"]


def test_a_sentencepiece_llama_is_refused_in_one_line(models, tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    from tui_llm.cli.export import OUTTYPES as CLI_OUTTYPES
    from tui_llm.engine.formats.gguf import OUTTYPES

    assert tuple(OUTTYPES) == CLI_OUTTYPES  # named twice so that --help imports no gguf
    tok = Tokenizer(tok_models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                         show_progress=False))
    (tmp_path / "spm_tok").mkdir()
    tok.save(str(tmp_path / "spm_tok" / "tokenizer.json"))
    cfg = LlamaConfig(vocab_size=300, max_seq_len=16, num_layers=1, num_heads=2, channels=32, ffn_channels=32)
    write_hf_llama(tmp_path / "spm", cfg, random_flat(llama_num_parameters(cfg), 5), tokenizer_dir=tmp_path / "spm_tok")
    line = bad(capsys, "export", "--init-from", tmp_path / "spm", tmp_path / "spm.gguf", "--to", "gguf")
    assert line.startswith(f"error: {tmp_path / 'spm.gguf'}: SentencePiece-style tokenizers")
    assert not list(tmp_path.glob("spm.*"))


def test_what_gguf_cannot_store_is_refused_before_anything_is_written(tmp_path, capsys):
    cfg = GPTConfig(max_seq_len=8, vocab_size=50257, num_layers=1, num_heads=1, channels=32)
    flat = random_flat(num_parameters(cfg), 3)
    flat[cfg.padded_vocab_size * 32 + 8 * 32 + 100] = 70000.0  # inside blk.0, beyond f16's 65504
    write_llmc(tmp_path / "big.bin", cfg, flat)
    line = bad(capsys, "export", "--init-from", tmp_path / "big.bin", tmp_path / "big.gguf", "--to", "gguf")
    assert "beyond what F16 stores (65504); export with --outtype bf16 or f32" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
    export(capsys, tmp_path / "big.bin", tmp_path / "big.gguf", "--outtype", "bf16")


def test_a_huge_context_loads_with_a_bounded_number_of_positions(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "qwen2")
    cfg = LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=1 << 20, num_layers=1, num_heads=2, channels=32,
                      ffn_channels=32, qkv_bias=True)
    write_gguf(tmp_path / "long.gguf", cfg, random_flat(llama_num_parameters(cfg), 4), tok)
    assert read_contents(tmp_path / "long.gguf").metadata["qwen2.context_length"] == 1 << 20
    back, _, _, _ = load_model_source(tmp_path / "long.gguf")
    assert back.max_seq_len == MAX_POSITIONS == 131072
    assert read_gguf(tmp_path / "long.gguf", max_seq_len=4096)[0].max_seq_len == 4096


# ---------------------------------------------------------------------------------------
# the tokenizer cache


def test_the_tokenizer_cache_is_named_by_content_and_repaired(models, tmp_path, capsys, cache):
    export(capsys, models["llama"], tmp_path / "m.gguf", "--outtype", "f32")
    export(capsys, models["llama"], tmp_path / "n.gguf", "--outtype", "q8_0")
    vocab = read_gguf(tmp_path / "m.gguf")[2]
    directory = gguf_tokenizer_dir(vocab)
    assert directory == gguf_tokenizer_dir(read_gguf(tmp_path / "n.gguf")[2])  # same tokenizer, same place
    assert directory.parent == tokenizer_cache_dir() == cache and sorted(p.name for p in cache.iterdir()) == \
        [directory.name]
    assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    (directory / "tokenizer.json").write_text("{}")
    assert gguf_tokenizer_dir(vocab) == directory  # a changed file is written again
    assert (directory / "tokenizer.json").read_bytes() == (models["llama"] / "tokenizer.json").read_bytes()
    assert [p.name for p in cache.iterdir()] == [directory.name]  # no temporaries left

    # a run recorded the directory; the cache was cleared: remade from the GGUF the run started from
    shutil.rmtree(cache)
    assert restore_tokenizer_dir(str(directory), str(tmp_path / "m.gguf")) == str(directory)
    assert (directory / "tokenizer.json").is_file()
    shutil.rmtree(cache)
    with pytest.raises(TokenizerError) as e:
        restore_tokenizer_dir(str(directory), str(tmp_path / "gone.gguf"))
    assert "no longer in the cache" in str(e.value) and "\n" not in str(e.value)
    assert restore_tokenizer_dir(str(tmp_path), None) == str(tmp_path)  # anything else: as recorded
    assert restore_tokenizer_dir("someone/gguf-0123456789abcdef", None) == "someone/gguf-0123456789abcdef"


def test_prepare_with_a_gguf_tokenizer_equals_prepare_with_its_original(models, tmp_path, capsys):
    export(capsys, models["llama"], tmp_path / "m.gguf", "--outtype", "q8_0")
    (tmp_path / "story.txt").write_text(CORPUS, encoding="utf-8")
    for tokenizer, out in ((models["llama"], "a"), (tmp_path / "m.gguf", "b")):
        assert cli.main(["prepare", str(tmp_path / "story.txt"), "--tokenizer", str(tokenizer), "--out-dir",
                         str(tmp_path / out)]) == 0
    for name in ("story_train.bin", "story_val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a, b = (json.loads((tmp_path / d / "story.tokenizer.json").read_text()) for d in "ab")
    assert a["fingerprint"] == b["fingerprint"] and b["path"].startswith(str(tmp_path / "xdg"))

    export(capsys, models["gpt2"], tmp_path / "g.gguf")  # GPT-2's vocabulary: GPT-2's files, no sidecar
    assert cli.main(["prepare", str(tmp_path / "story.txt"), "--tokenizer", str(tmp_path / "g.gguf"), "--out-dir",
                     str(tmp_path / "g")]) == 0
    assert not (tmp_path / "g" / "story.tokenizer.json").exists()
    ids = np.fromfile(tmp_path / "g" / "story_val.bin", np.uint16, offset=1024)
    assert ids.tolist() == [50256] + get_tokenizer().encode_ordinary(CORPUS)[:len(ids) - 1]


def test_load_model_and_generate_with_a_gguf(models, tmp_path, capsys):
    export(capsys, models["qwen3"], tmp_path / "m.gguf", "--outtype", "f16")
    model = tui_llm.load_model(tmp_path / "m.gguf")
    assert isinstance(model, Llama) and model.name.startswith("GGUF qwen3")
    assert HFTokenizer.from_dir(model.tokenizer_dir).fingerprint() == HFTokenizer.from_dir(models["qwen3"]).fingerprint()
    result = tui_llm.generate(model, "To be", sample_len=6, temperature=0)
    assert result.prompt == "To be" and len(result.token_ids) >= 1
    also = tui_llm.load_model(models["qwen3"], tokenizer=tmp_path / "m.gguf")  # a GGUF as the tokenizer
    assert also.tokenizer_dir == model.tokenizer_dir


# ---------------------------------------------------------------------------------------
# damaged and unsupported files, through every command that reads one


@pytest.fixture(scope="module")
def damaged(models, tmp_path_factory):
    """{what: path}: a good export cut in its metadata, cut in its tensor data, its magic broken,
    a tensor overrunning the file, and a Q4_0 file."""
    d = tmp_path_factory.mktemp("damaged")
    assert cli.main(["export", "--init-from", str(models["llama"]), str(d / "good.gguf"), "--to", "gguf"]) == 0
    data = (d / "good.gguf").read_bytes()
    files = {"metadata cut": data[:3000], "data cut": data[:len(data) - 1000], "magic": b"GGUZ" + data[4:]}
    for what, raw in files.items():
        (d / f"{what.replace(' ', '_')}.gguf").write_bytes(raw)
    write_raw_gguf(d / "q4_0.gguf")
    (d / "story.txt").write_text(CORPUS[:400], encoding="utf-8")
    write_tokens(d / "t_train.bin", np.arange(300) % 200)
    return d


EXPECTED = {"metadata_cut": "damaged GGUF: metadata 'tokenizer.ggml.tokens' claims",
            "data_cut": "runs past the end of the file (truncated?)",
            "magic": "unrecognised file",
            "q4_0": "tensor token_embd.weight is Q4_0; only F32, F16, BF16 and Q8_0 GGUF files can be loaded"}


@pytest.mark.parametrize("what", list(EXPECTED))
@pytest.mark.parametrize("command", [pytest.param("train", marks=pytest.mark.slow), "sample",  # ~1 s each, 16 of them:
                                     pytest.param("export", marks=pytest.mark.slow), "prepare"])  # half in the fast loop
def test_a_damaged_or_unsupported_gguf_is_one_line_and_exit_2_in_every_command(damaged, tmp_path, command, what):
    path = damaged / f"{what}.gguf"
    argv = {"train": [damaged / "t_train.bin", "--no-ui", "--init-from", path, "--steps", "1"],
            "sample": ["sample", "--init-from", path],
            "export": ["export", "--init-from", path, tmp_path / "out.gguf", "--to", "gguf"],
            "prepare": ["prepare", damaged / "story.txt", "--tokenizer", path, "--out-dir", tmp_path]}[command]
    result = run_cli(*argv, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result
    words = EXPECTED[what]
    if command == "prepare" and what == "magic":
        words = "neither a tokenizer directory, a tokenizer.json nor a GGUF model file"
    elif command == "prepare" and what == "q4_0":
        words = "without BPE merges"  # prepare reads no tensor data: a Q4_0 file with a vocabulary would do
    assert lines[0].startswith(f"error: {path}: ") and words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and result.stdout == ""


# ---------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_train_from_a_gguf_resume_sample_and_export_back(models, tmp_path, capsys, cache):
    gguf = tmp_path / "base.gguf"
    export(capsys, models["llama"], gguf, "--outtype", "f32")
    (tmp_path / "story.txt").write_text(CORPUS, encoding="utf-8")
    prepared = run_cli("prepare", tmp_path / "story.txt", "--tokenizer", gguf, "--out-dir", tmp_path / "data",
                       "--val-fraction", "0.2")
    assert prepared.returncode == 0, prepared.stderr
    common = [tmp_path / "data" / "story_train.bin", "--no-ui", "--init-from", gguf, "-b", "2", "-t", "16",
              "--threads", "1", "--val-every", "4", "--sample-every", "0", "--save-every", "0", "--steps", "8",
              "--lr", "1e-2"]
    straight = run_cli(*common, "--out-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    assert f"model: GGUF llama {gguf}" in straight.stdout
    expected = [m["loss"] for m in read_metrics(tmp_path / "straight") if m["type"] == "train"]
    assert len(expected) == 8

    run = tmp_path / "run"
    interrupt_at_step(3, *common, "--out-dir", run)
    shutil.rmtree(cache)  # the recorded tokenizer directory is gone: the resume makes it again from the GGUF
    resumed = run_cli("--resume", run, "--no-ui", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [m["loss"] for m in read_metrics(run) if m["type"] == "train"] == expected  # bit-identical
    checkpoint = sorted(run.glob("ckpt_*"))[-1]
    arrays, meta = load_training_checkpoint(checkpoint, names=["params"])
    assert meta["run_config"]["tokenizer"] == str(recorded_tokenizer(str(checkpoint)))
    assert Path(meta["run_config"]["tokenizer"]).parent == cache

    sample = run_cli("sample", "--init-from", run, "--prompt", "The quick", "--sample-len", "4")
    assert sample.returncode == 0 and "\nThe quick" in sample.stdout, sample.stderr

    out = tmp_path / "tuned.gguf"
    exported = run_cli("export", "--init-from", run, out, "--to", "gguf", "--outtype", "f32")
    assert exported.returncode == 0, exported.stderr
    back_cfg, back, vocab, md = read_gguf(out)
    assert np.array_equal(back, arrays["params"]) and back_cfg == read_gguf(gguf)[0]
    assert md["general.name"] == "run"
    assert md["general.description"] == f"fine-tuned with tui-llm from base.gguf for 8 steps on story_train.bin " \
                                        f"(run run, {checkpoint.stem})"
    assert vocab == read_gguf(gguf)[2]  # the same tokenizer and chat template went back out
    assert (tmp_path / "tuned.Modelfile").read_text() == (tmp_path / "base.Modelfile").read_text().replace(
        "base.gguf", "tuned.gguf")
