"""HFTokenizer over a tiny byte-level BPE trained here with the `tokenizers` package (no downloads)."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tui_llm.engine.tokenizers.gpt2 import TokenizerError
from tui_llm.engine.tokenizers.hf import HFTokenizer

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 20 +
          "Naïve café owners in Zürich serve crème brûlée. " * 10 +
          "日本語のテキストも少し。 Ελληνικά γράμματα. " * 10 +
          "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20)
HARD = "Zürich 😀 日本語, naïve — «ok» 🇫🇷 ελληνικά\n  two  spaces\t<|endoftext|>"


def train(directory, bos_post_processor=False, tokenizer_config=None, model_config=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS[i:i + 200] for i in range(0, len(CORPUS), 200)], trainer)
    if bos_post_processor:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if model_config is not None:
        (directory / "config.json").write_text(json.dumps(model_config))
    return directory


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2-like: no BOS added, <|endoftext|> is both BOS and EOS in tokenizer_config.json."""
    d = train(tmp_path_factory.mktemp("smol"), tokenizer_config={
        "bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True}})
    return HFTokenizer.from_dir(d)


def test_round_trip_including_multibyte(smol):
    for text in (HARD, CORPUS[:500], "", "a"):
        ids = smol.encode_ordinary(text)
        assert smol.decode(ids) == text
    assert smol.vocab_size == 400
    assert smol.encode_ordinary_batch([HARD, "a"]) == [smol.encode_ordinary(HARD), smol.encode_ordinary("a")]


def test_special_token_text_is_ordinary_text(smol):
    ids = smol.encode_ordinary("x<|endoftext|>y")
    assert smol.eos_token_id == 0 and 0 not in ids
    assert smol.decode(ids + [0]) == "x<|endoftext|>y<|endoftext|>"


def test_streaming_pieces_join_and_never_split_characters(smol):
    ids = smol.encode_ordinary(HARD)
    pieces = smol.token_pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == HARD
    assert "" in pieces  # some emoji / CJK bytes were held back for a later token
    assert not any("\ufffd" in p for p in pieces)
    stream = smol.stream()  # an incomplete character at the end is flushed as U+FFFD
    emoji = smol.encode_ordinary("😀")
    assert len(emoji) > 1 and stream.push(emoji[0]) == ""
    assert stream.flush() == "\ufffd"


def test_smol_framing_is_text_then_eos(smol):
    assert not smol.adds_bos and smol.bos_token_id == 0 and smol.eot_token == 0
    assert smol.encode_document("hello") == smol.encode_ordinary("hello") + [0]


def test_llama_like_framing_from_post_processor_and_config(tmp_path):
    d = train(tmp_path / "llama", bos_post_processor=True, model_config={"bos_token_id": 1, "eos_token_id": [0, 5]})
    tok = HFTokenizer.from_dir(d)
    assert (tok.bos_token_id, tok.eos_token_id, tok.adds_bos) == (1, 0, True)
    assert tok.encode_document("hello") == [1] + tok.encode_ordinary("hello") + [0]
    assert tok.decode(tok.encode_ordinary(HARD)) == HARD  # the post-processor never leaks into encode_ordinary
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert not HFTokenizer.from_dir(d).adds_bos


def test_fingerprint_identifies_the_file(tmp_path, smol):
    a = train(tmp_path / "a")
    assert HFTokenizer.from_dir(a / "tokenizer.json").fingerprint() == smol.fingerprint()
    assert len(smol.fingerprint()) == 64
    b = train(tmp_path / "b", bos_post_processor=True)
    assert HFTokenizer.from_dir(b).fingerprint() != smol.fingerprint()


def test_errors_are_one_line(tmp_path):
    with pytest.raises(TokenizerError, match="no such directory"):
        HFTokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json") as e:
        HFTokenizer.from_dir(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(TokenizerError, match="bad JSON"):
        HFTokenizer.from_dir(tmp_path)


def test_sentencepiece_style_byte_fallback_streams_too(tmp_path):
    """Llama 2 / TinyLlama / Mistral tokenizers: '▁' for spaces, <0xNN> byte tokens, a stripped leading space."""
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator([CORPUS[:3000]], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    t = HFTokenizer.from_dir(tmp_path)
    text = "Hello Zürich 😀 日本 fox"
    ids = t.encode_ordinary(text)
    assert any(t.tokenizer.id_to_token(i) == "<0xF0>" for i in ids)  # the emoji is spelled in bytes
    pieces = t.token_pieces(ids)
    assert t.decode(ids) == text and "".join(pieces) == text
    assert "😀" in pieces and not any("\ufffd" in p for p in pieces)
    assert (t.bos_token_id, t.eos_token_id, t.adds_bos) == (1, 2, True)
    assert t.encode_document("fox") == [1] + t.encode_ordinary("fox") + [2]
