"""A Hugging Face `tokenizer.json` with the surface the sampler and prepare use for GPT-2's encoding.

    tok = HFTokenizer.from_dir("path/to/SmolLM2-135M")
    tok.encode_ordinary(text) -> ids        special-token text ("<|endoftext|>") stays plain text
    tok.decode(ids) -> str                  special tokens are shown, like tiktoken's decode
    tok.token_pieces(ids) -> [str]         streaming decode: pieces join to decode(ids), never half a character
    tok.encode_document(text) -> ids        one training document, framed as below
    tok.bos_token_id, tok.eos_token_id, tok.eot_token (= EOS), tok.vocab_size, tok.fingerprint()

Document framing (what each Llama family trains on): a document is `[BOS] + text + [EOS]`, with
the BOS only when the model's own tokenizer adds one to every encoded text (its post-processor, or
`add_bos_token` in tokenizer_config.json): Llama 2 / TinyLlama / Mistral (`<s>`) and Llama 3
(`<|begin_of_text|>`) do; SmolLM2 and Qwen2 do not, and separate documents only by their EOS
(`<|endoftext|>`). The EOS always ends a document when the tokenizer has one. (GPT-2's files put
its end-of-text token *before* each document instead; see prepare.py.)

BOS/EOS come from tokenizer_config.json (`bos_token`, `eos_token`), else config.json
(`bos_token_id`, `eos_token_id`, first of a list), else a special token with a well-known name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tui_llm.engine.tokenizers.gpt2 import TokenizerError

TOKENIZER_JSON = "tokenizer.json"
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise TokenizerError(f"{path}: bad JSON ({e})") from None
    return data if isinstance(data, dict) else {}


class StreamDecoder:
    """Tokens to text one at a time, holding back bytes until their character is complete.

    Decodes a short window of recent tokens and emits what it adds beyond the part already shown
    (the method vLLM and transformers' TextStreamer use), so it works for byte-level BPE and for
    SentencePiece byte-fallback tokenizers alike.
    """

    def __init__(self, tokenizer: HFTokenizer):
        self._decode = tokenizer.decode
        self._ids: list[int] = []
        self._prefix = 0   # window start: ids before it are shown and never re-decoded
        self._read = 0     # ids before it are shown

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        shown = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(shown):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        shown = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(shown):]


class HFTokenizer:
    def __init__(self, tokenizer_json, tokenizer_config: dict | None = None, model_config: dict | None = None):
        path = Path(tokenizer_json)
        try:
            self._bytes = path.read_bytes()
            self.tokenizer = Tokenizer.from_str(self._bytes.decode("utf-8"))
            # a second copy for encode_ordinary: flipping the flag per call would race between threads
            self._ordinary = Tokenizer.from_str(self._bytes.decode("utf-8"))
            self._ordinary.encode_special_tokens = True
        except FileNotFoundError:
            raise TokenizerError(f"{path.parent}: no {TOKENIZER_JSON}") from None
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None
        except Exception as e:  # tokenizers raises a plain Exception on malformed files
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({first})") from None
        self.path = path
        tc, mc = tokenizer_config or {}, model_config or {}
        self.bos_token_id = self._special(tc.get("bos_token"), mc.get("bos_token_id"), BOS_NAMES)
        self.eos_token_id = self._special(tc.get("eos_token"), mc.get("eos_token_id"), EOS_NAMES)
        if "add_bos_token" in tc:
            adds = bool(tc["add_bos_token"])
        else:  # what the post-processor adds to an empty text
            adds = self.bos_token_id is not None and self.bos_token_id in self.tokenizer.encode("").ids[:1]
        self.adds_bos = adds and self.bos_token_id is not None

    @classmethod
    def from_dir(cls, path) -> HFTokenizer:
        """From a model directory (tokenizer.json, tokenizer_config.json, config.json) or a tokenizer.json path."""
        path = Path(path).expanduser()
        directory = path.parent if path.is_file() else path
        if not directory.is_dir():
            raise TokenizerError(f"{path}: no such directory")
        tokenizer_json = path if path.is_file() else directory / TOKENIZER_JSON
        return cls(tokenizer_json, _read_json(directory / "tokenizer_config.json"), _read_json(directory / "config.json"))

    def _special(self, token, token_id, names) -> int | None:
        if isinstance(token, dict):  # {"content": "<s>", "lstrip": false, ...}
            token = token.get("content")
        if isinstance(token, str) and self.tokenizer.token_to_id(token) is not None:
            return self.tokenizer.token_to_id(token)
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if isinstance(token_id, int) and 0 <= token_id < self.vocab_size:
            return token_id
        for name in names:
            if self.tokenizer.token_to_id(name) is not None:
                return self.tokenizer.token_to_id(name)
        return None

    # -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_token(self) -> int | None:
        """The token that ends a document (and a sample): the EOS."""
        return self.eos_token_id

    def fingerprint(self) -> str:
        """sha256 of tokenizer.json's bytes: which tokenizer made a token file."""
        return hashlib.sha256(self._bytes).hexdigest()

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text, no BOS/EOS added; special-token text in it is encoded as plain text."""
        return self._ordinary.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        """encode_ordinary of each text, encoded in parallel by the tokenizers library."""
        return [e.ids for e in self._ordinary.encode_batch(texts, add_special_tokens=False)]

    def encode_document(self, text: str) -> list[int]:
        """[BOS if the tokenizer adds one] + encode_ordinary(text) + [EOS if there is one]."""
        ids = self.encode_ordinary(text)
        head = [self.bos_token_id] if self.adds_bos and self.bos_token_id is not None else []
        tail = [self.eos_token_id] if self.eos_token_id is not None else []
        return head + ids + tail

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """encode_document of every text (in parallel), concatenated: uint16 while the vocabulary
        fits, else uint32 (what prepare writes)."""
        head = [self.bos_token_id] if self.adds_bos else []
        tail = [self.eos_token_id] if self.eos_token_id is not None else []
        dtype = np.uint16 if self.vocab_size <= 65536 else np.uint32
        parts = [np.array(head + ids + tail, dtype=dtype) for ids in self.encode_ordinary_batch(texts)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)

    def token_pieces(self, ids) -> list[str]:
        """One string per token as a stream shows them ("" mid-character); they join to decode(ids)."""
        stream = self.stream()
        pieces = [stream.push(i) for i in ids]
        if pieces:
            pieces[-1] += stream.flush()
        return pieces
