"""GGUF: write -> read round trips for GPT-2 and the Llama family (weights, config, tokenizer),
the bytes and names llama.cpp expects (checked with gguf-py's own GGUFReader on valid files), and
one-line refusals of what GGUF or this engine cannot express. Damaged files: test_gguf_fuzz.py.
Agreement with a real llama.cpp is measured by benchmarks/gguf_vs_llamacpp.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tui_llm.engine.formats import CheckpointError, load_model_weights
from tui_llm.engine.formats.gguf import read_gguf, read_gguf_vocab, rope_deinterleave, rope_interleave, write_gguf
from tui_llm.engine.formats.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX
from tui_llm.engine.models.gpt2_config import GPTConfig, num_parameters
from tui_llm.engine.models.llama_config import LlamaConfig, LlamaParams
from tui_llm.engine.models.llama_config import num_parameters as llama_num_parameters
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer
from tui_llm.engine.tokenizers.hf import HFTokenizer

Q = GGMLQuantizationType
CORPUS = ("The quick brown fox jumps over the lazy dog. 12345 67 890. " * 20 +
          "Naïve café owners in Zürich serve crème brûlée. " * 10 +
          "日本語のテキストも少し。 Ελληνικά γράμματα. " * 10 +
          "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20)
HARD = "Zürich 😀 日本語, naïve — «ok» 🇫🇷 ελληνικά 2024 3.14\n  two  spaces\t<|im_start|>I'll"
GPT2 = GPTConfig(max_seq_len=16, vocab_size=50257, num_layers=2, num_heads=2, channels=64)

# family -> (pre-tokenizer, normalizer, BOS added, special tokens)
FAMILIES = {
    "smollm": (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)]), None, False),
    "llama-bpe": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                  None, True),
    "qwen2": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
              normalizers.NFC(), False),
    "gpt-2": (pre_tokenizers.ByteLevel(add_prefix_space=False), None, False),
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_tokenizer(directory, family: str) -> HFTokenizer:
    """A 400-token byte-level BPE with the family's pre-tokenizer, trained here (no downloads)."""
    pre, norm, adds_bos = FAMILIES[family]
    tok = Tokenizer(models.BPE(ignore_merges=family == "llama-bpe"))
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if norm is not None:
        tok.normalizer = norm
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS[i:i + 200] for i in range(0, len(CORPUS), 200)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[
        ("<|endoftext|>", 0)]) if adds_bos else processors.ByteLevel(trim_offsets=False)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "add_bos_token": adds_bos, "chat_template": CHATML}))
    return HFTokenizer.from_dir(directory)


def llama_config(arch: str, tied=True, **kw) -> LlamaConfig:
    base = dict(vocab_size=416, max_seq_len=32, num_layers=2, num_heads=4, num_kv_heads=2, channels=32,
                ffn_channels=64, rope_theta=10000.0, tied_embeddings=tied, qkv_bias=arch == "qwen2",
                qk_norm=arch == "qwen3")
    return LlamaConfig(**{**base, **kw})


def random_flat(n: int, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def gpt2_flat() -> np.ndarray:
    flat = random_flat(num_parameters(GPT2))
    flat[GPT2.vocab_size * GPT2.channels:GPT2.padded_vocab_size * GPT2.channels] = 0
    return flat


def llama_flat(cfg: LlamaConfig, seed=0) -> np.ndarray:
    p = LlamaParams(cfg, random_flat(llama_num_parameters(cfg), seed))
    p.wte[cfg.vocab_size:] = 0
    if not cfg.tied_embeddings:
        p.lm_head[cfg.vocab_size:] = 0
    return p.flat


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even) and back, computed independently of gguf-py."""
    bits = x.view(np.uint32).astype(np.uint64)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16).view(np.float32)


def fields(path) -> dict:
    reader = GGUFReader(path)
    return {name: f.contents() for name, f in reader.fields.items()}


# ---------------------------------------------------------------------------------------
# GPT-2


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_gpt2_round_trip(tmp_path, outtype):
    flat = gpt2_flat()
    path = tmp_path / f"m-{outtype}.gguf"
    write_gguf(path, GPT2, flat, get_tokenizer(), outtype=outtype, name="tiny", description="a test")
    cfg, back, vocab, md = read_gguf(path)
    assert cfg == GPT2 and back.dtype == np.float32 and back.shape == flat.shape
    if outtype == "f32":
        assert np.array_equal(back, flat)
    elif outtype == "bf16":  # matrices bit-exact bf16; norms, biases and wpe stay f32
        changed = back != flat
        assert np.array_equal(back[changed], bf16(flat)[changed])
        assert np.array_equal(back[:GPT2.vocab_size * 64], bf16(flat[:GPT2.vocab_size * 64]))
    else:
        rel = {"f16": 2.0 ** -11, "q8_0": 1 / 127}[outtype]
        assert np.all(np.abs(back - flat) <= rel * np.abs(flat).max() + 1e-7)
    assert vocab.is_gpt2 and vocab.bos_token_id == vocab.eos_token_id == 50256 and not vocab.add_bos
    assert md["general.architecture"] == "gpt2" and md["general.name"] == "tiny"
    assert md["general.description"] == "a test"


@pytest.mark.slow
def test_gpt2_names_types_and_metadata_as_llama_cpp_expects(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, GPT2, gpt2_flat(), None, outtype="q8_0")
    reader = GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # ggml order: ne[0] first
    assert "output.weight" not in types  # llama.cpp reuses token_embd
    assert types["token_embd.weight"] == Q.Q8_0 and shapes["token_embd.weight"] == (64, 50257)
    assert types["position_embd.weight"] == Q.F32
    assert types["blk.1.attn_qkv.weight"] == Q.Q8_0 and shapes["blk.1.attn_qkv.weight"] == (64, 192)
    assert types["blk.1.attn_qkv.bias"] == types["blk.0.attn_norm.weight"] == types["output_norm.bias"] == Q.F32
    assert shapes["blk.0.ffn_down.weight"] == (256, 64) and shapes["blk.0.ffn_up.weight"] == (64, 256)
    f = fields(path)
    assert (f["gpt2.context_length"], f["gpt2.embedding_length"], f["gpt2.block_count"],
            f["gpt2.feed_forward_length"], f["gpt2.attention.head_count"]) == (16, 64, 2, 256, 2)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.tokens"][50256] == "<|endoftext|>" and f["tokenizer.ggml.tokens"][220] == "Ġ"
    assert f["tokenizer.ggml.merges"][0] == "Ġ t" and f["tokenizer.ggml.token_type"][50256] == 3
    assert f["tokenizer.ggml.add_bos_token"] is False and f["general.file_type"] == 7


@pytest.mark.slow
def test_q8_0_known_bytes(tmp_path):
    """One q8_0 block as ggml's quantize_row_q8_0_ref makes it: d = max|x| / 127 as f16, then
    round-half-away-from-zero(x / d) as int8."""
    cfg = GPTConfig(max_seq_len=4, vocab_size=50257, num_layers=1, num_heads=1, channels=32)
    flat = random_flat(num_parameters(cfg))
    x = np.arange(32, dtype=np.float32) - 16  # max |x| = 16
    flat[:32] = x  # row 0 of token_embd
    path = tmp_path / "q.gguf"
    write_gguf(path, cfg, flat, None, outtype="q8_0")
    raw = next(t for t in GGUFReader(path).tensors if t.name == "token_embd.weight").data[0, :34].tobytes()
    assert raw[:2] == np.float16(np.float32(16) / np.float32(127)).tobytes()
    scaled = x.astype(np.float64) * 127 / 16  # exact here
    expected = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)
    assert np.frombuffer(raw[2:], np.int8).tolist() == expected.tolist()


# ---------------------------------------------------------------------------------------
# Llama family


def test_rope_interleave_known_rows():
    """One head, head_dim 4: rows [a0, a1 | b0, b1] (rotated as halves) -> [a0, b0, a1, b1]."""
    w = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert rope_interleave(w, 1).ravel().tolist() == [0.0, 2.0, 1.0, 3.0]
    w = np.arange(16.0).reshape(8, 2)
    assert np.array_equal(rope_deinterleave(rope_interleave(w, 2), 2), w)


@pytest.mark.parametrize("arch,family", [("llama", "llama-bpe"), ("qwen2", "qwen2"), ("qwen3", "qwen2"),
                                         ("llama", "smollm"), ("llama", "gpt-2")])
@pytest.mark.parametrize("outtype", ["f32", "bf16"])
def test_llama_family_round_trip(tmp_path, arch, family, outtype):
    tok = train_tokenizer(tmp_path / "tok", family)
    cfg = llama_config(arch, tied=arch != "qwen3", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    flat = llama_flat(cfg)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, flat, tok, outtype=outtype, name="tiny " + arch)
    back_cfg, back, vocab, md = read_gguf(path)
    assert back_cfg == cfg and md["general.architecture"] == arch
    assert np.array_equal(back, flat if outtype == "f32" else np.where(back == flat, flat, bf16(flat)))
    assert vocab.pre == family and vocab.chat_template == CHATML and vocab.add_bos == (family == "llama-bpe")
    assert vocab.tokens[400:] == [f"[PAD{i}]" for i in range(400, 416)]  # embedding rows beyond the tokenizer
    assert vocab.tokenizer_json().encode() == tok.path.read_bytes()  # the exact file travelled along
    for rebuilt in (vocab, type(vocab)(**{**vocab.__dict__, "hf_json": None})):  # and rebuilt from the vocab
        d = tmp_path / ("exact" if rebuilt.hf_json else "rebuilt")
        d.mkdir()
        for name, data in rebuilt.tokenizer_files().items():
            (d / name).write_bytes(data)
        again = HFTokenizer.from_dir(d)
        for text in (HARD, CORPUS[:300]):
            assert again.encode_ordinary(text) == tok.encode_ordinary(text)
            assert again.tokenizer.encode(text).ids == tok.tokenizer.encode(text).ids  # BOS as the original
        assert (again.bos_token_id, again.eos_token_id, again.adds_bos) == (tok.bos_token_id, tok.eos_token_id,
                                                                            tok.adds_bos)


def test_llama_q_and_k_rows_are_permuted_and_qwen_rows_are_not(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "llama-bpe")
    for arch in ("llama", "qwen2"):
        cfg = llama_config(arch)
        p = LlamaParams(cfg, llama_flat(cfg))
        path = tmp_path / f"{arch}.gguf"
        write_gguf(path, cfg, p.flat, tok)
        tensors = {t.name: t for t in GGUFReader(path).tensors}
        q = np.array(tensors["blk.1.attn_q.weight"].data).reshape(cfg.q_dim, cfg.channels)
        k = np.array(tensors["blk.1.attn_k.weight"].data).reshape(cfg.kv_dim, cfg.channels)
        ours_q, ours_k = p.qkvw[1, :cfg.q_dim], p.qkvw[1, cfg.q_dim:cfg.q_dim + cfg.kv_dim]
        if arch == "llama":  # head h, pair j: our rows h*hd + j and h*hd + hd/2 + j become 2j, 2j+1
            hd = cfg.head_dim
            assert np.array_equal(q[hd + 2 * 3], ours_q[hd + 3])
            assert np.array_equal(q[hd + 2 * 3 + 1], ours_q[hd + hd // 2 + 3])
            assert np.array_equal(k, rope_interleave(ours_k, cfg.num_kv_heads))
            assert "blk.0.attn_q.bias" not in tensors
        else:
            assert np.array_equal(q, ours_q) and np.array_equal(k, ours_k)
            assert tensors["blk.0.attn_q.bias"].tensor_type == Q.F32
        f = fields(path)
        assert f[f"{arch}.attention.head_count_kv"] == 2 and f[f"{arch}.rope.freq_base"] == 10000.0
        assert f[f"{arch}.attention.key_length"] == 8 and f[f"{arch}.feed_forward_length"] == 64


def test_untied_head_qk_norm_and_llama3_rope_scaling(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "llama-bpe")
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    cfg = llama_config("llama", tied=False, head_dim=64, channels=32, rope_theta=500000.0, rope_scaling=llama3,
                       bos_token_id=0, eos_token_id=2)
    flat = llama_flat(cfg)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, flat, tok, outtype="f32")
    names = {t.name for t in GGUFReader(path).tensors}
    assert {"output.weight", "rope_freqs.weight"} <= names
    back_cfg, back, _, _ = read_gguf(path)
    assert back_cfg == cfg and np.array_equal(back, flat)
    linear = llama_config("qwen3", rope_scaling={"rope_type": "linear", "factor": 2.0}, bos_token_id=0, eos_token_id=2)
    write_gguf(path, linear, llama_flat(linear), tok)
    assert fields(path)["qwen3.rope.scaling.type"] == "linear" and read_gguf(path)[0] == linear


def test_reexport_of_a_loaded_gguf_keeps_everything(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "qwen2")
    cfg = llama_config("qwen2")
    write_gguf(tmp_path / "a.gguf", cfg, llama_flat(cfg), tok)
    cfg_a, flat_a, vocab_a, _ = read_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf", cfg_a, flat_a, vocab_a)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert read_gguf_vocab(tmp_path / "a.gguf") == vocab_a


def test_load_model_weights_reads_gguf(tmp_path):
    write_gguf(tmp_path / "m.gguf", GPT2, gpt2_flat(), None)
    cfg, flat, description = load_model_weights(str(tmp_path / "m.gguf"))
    assert cfg == GPT2 and np.array_equal(flat, gpt2_flat()) and "GGUF" in description


# ---------------------------------------------------------------------------------------
# refusals: one line, nothing written


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_sentencepiece_tokenizers_are_refused(tmp_path):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                         show_progress=False))
    d = tmp_path / "spm"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    cfg = llama_config("llama", vocab_size=300)
    with pytest.raises(CheckpointError) as e:
        write_gguf(tmp_path / "m.gguf", cfg, llama_flat(cfg), HFTokenizer.from_dir(d))
    assert "SentencePiece" in one_line(e) and not (tmp_path / "m.gguf").exists()


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "gpt-2")
    doc = json.loads(tok.path.read_text())
    doc["pre_tokenizer"] = {"type": "Whitespace"}
    tok.path.write_text(json.dumps(doc))
    cfg = llama_config("llama")
    with pytest.raises(CheckpointError) as e:
        write_gguf(tmp_path / "m.gguf", cfg, llama_flat(cfg), HFTokenizer.from_dir(tok.path.parent))
    assert "llama.cpp knows" in one_line(e)


def test_what_gguf_cannot_express_is_refused(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "qwen2")
    cases = [(llama_config("qwen2", qk_norm=True), "no llama.cpp architecture"),
             (llama_config("qwen2", head_dim=16), "qwen2 needs"),
             (llama_config("llama", vocab_size=300), "only 300 rows"),
             (llama_config("qwen3", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
              "llama3 RoPE scaling")]
    for cfg, words in cases:
        with pytest.raises(CheckpointError) as e:
            write_gguf(tmp_path / "m.gguf", cfg, llama_flat(cfg), tok)
        assert words in one_line(e)
    with pytest.raises(CheckpointError) as e:
        write_gguf(tmp_path / "m.gguf", GPT2, gpt2_flat(), None, outtype="q4_0")
    assert "outtype" in one_line(e)
    flat = gpt2_flat()
    flat[70000] = np.nan
    with pytest.raises(CheckpointError):
        write_gguf(tmp_path / "m.gguf", GPT2, flat, None)
    assert not (tmp_path / "m.gguf").exists()


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    write_gguf(path, GPT2, gpt2_flat(), None)
    before = path.read_bytes()
    import tui_llm.engine.formats.gguf as module

    def broken(array, qtype):
        yield np.zeros(1, np.uint8)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "encode_chunks", broken)
    with pytest.raises(CheckpointError) as e:
        write_gguf(path, GPT2, gpt2_flat(), None, outtype="f16")
    assert "No space left" in one_line(e) and path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def write_raw_gguf(path, arch="llama", qtype=Q.Q4_0, tokens=("a", "b"), model="gpt2", rows=2):
    """A GGUF written by gguf-py directly: for files our writer never makes."""
    from gguf import quants

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(8)
    w.add_embedding_length(32)
    w.add_feed_forward_length(32)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(model)
    w.add_token_list(list(tokens))
    w.add_tensor("token_embd.weight", quants.quantize(np.zeros((rows, 32), np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_files_are_refused_in_one_line(tmp_path):
    cases = [(dict(qtype=Q.Q4_0), "Q4_0"), (dict(arch="phi3", qtype=Q.F32), "'phi3' is not supported"),
             (dict(qtype=Q.F32, model="llama"), "SentencePiece"),
             (dict(qtype=Q.F32, tokens=("a", "b", "c")), "3 tokens but token_embd has 2 rows")]
    for i, (kw, words) in enumerate(cases):
        path = tmp_path / f"{i}.gguf"
        write_raw_gguf(path, **kw)
        with pytest.raises(CheckpointError) as e:
            read_gguf(path)
        assert words in one_line(e), one_line(e)


def test_modelfile_for_ollama(tmp_path):
    from tui_llm.engine.formats.gguf_vocab import modelfile_text

    tok = train_tokenizer(tmp_path / "tok", "qwen2")
    cfg = llama_config("qwen2")
    write_gguf(tmp_path / "m.gguf", cfg, llama_flat(cfg), tok)
    _, _, vocab, _ = read_gguf(tmp_path / "m.gguf")
    text = modelfile_text("m.gguf", vocab)
    assert text.splitlines()[0] == "FROM ./m.gguf"
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}' in text
    assert text.endswith('PARAMETER stop "<|im_end|>"\n')  # the EOS is <|im_end|> too: listed once
    write_gguf(tmp_path / "g.gguf", GPT2, gpt2_flat(), None)
    gpt2_vocab = read_gguf(tmp_path / "g.gguf")[2]
    assert modelfile_text("g.gguf", gpt2_vocab) == 'FROM ./g.gguf\nPARAMETER stop "<|endoftext|>"\n'
