"""Text generation with a key/value cache, for any model that offers it.

The prompt goes through the model once (all its positions together); after that each new
token costs one position's forward pass: its query attends to the cached keys and values of
every earlier position. llm.c's CPU sampler instead re-runs the whole forward for every token.
`generate(..., use_cache=False)` does that too (the whole sequence from position 0 for every
token), as the reference the cached path is tested against.

What the sampler needs from a model (GPT here; a Llama model offers the same):
    model.config: vocab_size, padded_vocab_size, max_seq_len
    model.new_kv_cache(max_tokens=None) -> cache (Llama: only as many positions as asked for)
    model.extend(cache, tokens (n,) int32, t0) -> logits (padded_vocab_size,) float32 of the last
        position, after storing positions t0..t0+n-1 in the cache
and from a tokenizer (tiktoken's Encoding for GPT-2, or hf_tokenizer.HFTokenizer for the model's
own): encode_ordinary(text), decode(ids), eot_token, and decode_single_token_bytes(id) or
token_pieces(ids). Without one, ids are shown as numbers.

An HFTokenizer that adds a BOS to every text (Llama 2/3, Mistral) gets it before the prompt, and
its samples stop at the EOS (what its models were trained to end a document with); GPT-2's run
on past the end-of-text token, as llm.c's do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.kernels import common as K
from tui_llm.engine.tokenizers.gpt2 import token_pieces


class PromptError(TuiLlmError, ValueError):
    """A prompt this model cannot read (tokens beyond its vocabulary): one line."""


@dataclass
class SampleResult:
    """One sample. `text` is the continuation alone, without the prompt (as in a Sample event);
    `full_text` is prompt and continuation, what `tui-llm sample` prints."""

    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]                 # generated tokens only
    text: str                            # decoded generated text (the prompt is not in it)
    token_texts: list[str] = field(default_factory=list)   # text of each token ("" mid-character), joins to text
    token_probs: list[float] = field(default_factory=list)  # probability each token was drawn with
    seconds: float = 0.0

    @property
    def full_text(self) -> str:
        return self.prompt + self.text

    @property
    def tok_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


def choose_token(logits_row: np.ndarray, vocab_size: int, temperature: float, top_k: int,
                 coin: float, probs_buf: np.ndarray) -> tuple[int, float]:
    """Draw a token from softmax(logits / temperature) restricted to the top_k, with a coin in [0, 1).

    Temperature 0 means greedy. Returns (token, its probability under the sampling distribution).
    """
    real = logits_row[:vocab_size]
    if temperature <= 0:
        token = int(np.argmax(real))
        return token, 1.0
    K.softmax_rows(probs_buf[None, :], logits_row[None, :], vocab_size, np.float32(1.0 / temperature))
    probs = probs_buf[:vocab_size].astype(np.float64)
    if 0 < top_k < vocab_size:
        cutoff = np.partition(probs, vocab_size - top_k)[vocab_size - top_k]
        probs[probs < cutoff] = 0.0
        probs /= probs.sum()
    cdf = np.cumsum(probs)
    token = int(np.searchsorted(cdf, coin * cdf[-1], side="right"))
    token = min(token, vocab_size - 1)
    while probs[token] == 0.0 and token > 0:  # never land on a token the top-k excluded
        token -= 1
    return token, float(probs[token])


def check_prompt_ids(ids: list[int], vocab_size: int) -> None:
    """PromptError unless every token id is in the model's vocabulary."""
    outside = [t for t in ids if not 0 <= t < vocab_size]
    if outside:
        raise PromptError(f"the prompt has {len(outside)} token(s) outside this model's vocabulary of {vocab_size:,} "
                          f"(the first is {outside[0]}): the tokenizer is larger than the model; give a prompt of "
                          f"other text, or the model's own --tokenizer")


class Sampler:
    """Generates from a model's current weights. Owns its cache; never touches training buffers."""

    def __init__(self, model, encoding=None):
        self.model = model
        self.encoding = encoding
        cfg = model.config
        self.cache = None  # made on first use, as long as the first generation needs
        self.probs = np.empty(cfg.padded_vocab_size, np.float32)
        eot = getattr(encoding, "eot_token", None)
        self.eot = eot if eot is not None and 0 <= eot < cfg.vocab_size else None  # a small custom vocab has none
        bos = getattr(encoding, "bos_token_id", None) if getattr(encoding, "adds_bos", False) else None
        self.bos = bos if bos is not None and 0 <= bos < cfg.vocab_size else None
        self.stops_at_eot = hasattr(encoding, "token_pieces")  # the model's own (HF) tokenizer

    def _cache_for(self, positions: int):
        """A cache holding at least `positions` (grown in steps of 256, never past max_seq_len)."""
        if self.cache is None or getattr(self.cache, "max_tokens", self.model.config.max_seq_len) < positions:
            try:
                self.cache = self.model.new_kv_cache(max_tokens=min(self.model.config.max_seq_len,
                                                                    -(-positions // 256) * 256))
            except TypeError:  # a model whose cache always spans max_seq_len (GPT)
                self.cache = self.model.new_kv_cache()
        return self.cache

    def tokens(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
               rng: np.random.Generator, use_cache: bool = True) -> Iterator[tuple[int, float]]:
        """Up to max_new_tokens (token, probability) pairs after the token ids `ids`, one at a time
        (the caller stops early by not asking for more). ids + max_new_tokens must fit max_seq_len."""
        model, cfg = self.model, self.model.config
        ids = list(ids)
        cache = self._cache_for(len(ids) + max_new_tokens)
        logits = model.extend(cache, np.asarray(ids, np.int32), 0)
        for k in range(max_new_tokens):
            token, prob = choose_token(logits, cfg.vocab_size, temperature, top_k, rng.random(), self.probs)
            yield token, prob
            if k + 1 == max_new_tokens:
                return
            ids.append(token)
            if use_cache:  # only the new position
                logits = model.extend(cache, np.asarray([token], np.int32), len(ids) - 1)
            else:          # everything again, from position 0
                logits = model.extend(cache, np.asarray(ids, np.int32), 0)

    def generate(self, prompt: str | list[int] = "", max_new_tokens: int = 64, temperature: float = 1.0,
                 top_k: int = 0, seed: int | None = None, rng: np.random.Generator | None = None,
                 use_cache: bool = True, stop_at_eot: bool | None = None) -> SampleResult:
        """stop_at_eot: None stops at the EOS for the model's own (HF) tokenizer, not for GPT-2's."""
        cfg = self.model.config
        if isinstance(prompt, str):
            prompt_text = prompt
            prompt_ids = self.encoding.encode_ordinary(prompt) if prompt else []
        else:
            prompt_ids = [int(t) for t in prompt]
            prompt_text = self.encoding.decode(prompt_ids) if self.encoding else ""
        stop_at_eot = self.stops_at_eot if stop_at_eot is None else stop_at_eot
        if self.bos is not None:
            ids = [self.bos] + list(prompt_ids)
        else:
            ids = list(prompt_ids) if prompt_ids else [self.eot if self.eot is not None else 0]
        check_prompt_ids(ids, cfg.vocab_size)
        # keep within the model's context: the most recent tokens win
        max_new_tokens = max(0, min(max_new_tokens, cfg.max_seq_len - 1))
        ids = ids[-(cfg.max_seq_len - max_new_tokens):] if max_new_tokens else ids[-cfg.max_seq_len:]
        rng = rng if rng is not None else np.random.default_rng(seed)

        start = time.perf_counter()
        generated, probs = [], []
        for token, prob in self.tokens(ids, max_new_tokens, temperature, top_k, rng, use_cache):
            generated.append(token)
            probs.append(prob)
            if stop_at_eot and token == self.eot:
                break
        seconds = time.perf_counter() - start

        if hasattr(self.encoding, "token_pieces"):
            pieces = self.encoding.token_pieces(generated)
        else:
            pieces = token_pieces(generated, self.encoding) if self.encoding else [str(t) for t in generated]
        text = self.encoding.decode(generated) if self.encoding else " ".join(map(str, generated))
        return SampleResult(prompt_text, prompt_ids, generated, text, pieces, probs, seconds)
