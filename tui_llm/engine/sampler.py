"""Text generation with a key/value cache.

The prompt goes through the model once (all its positions together); after that each new
token costs one position's forward pass: its query attends to the cached keys and values of
every earlier position. llm.c's CPU sampler instead re-runs the whole (B, T) forward for every
token. `generate(..., use_cache=False)` does that too (one full forward per token), as the
reference the cached path is tested against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tui_llm.engine import kernels as K
from tui_llm.engine.config import EOT_TOKEN
from tui_llm.engine.model import GPT, matmul
from tui_llm.engine.tokenizer import token_pieces


@dataclass
class SampleResult:
    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]                 # generated tokens only
    text: str                            # decoded generated text
    token_texts: list[str] = field(default_factory=list)   # text of each token ("" mid-character), joins to text
    token_probs: list[float] = field(default_factory=list)  # probability each token was drawn with
    seconds: float = 0.0

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


class Sampler:
    """Generates from a model's current weights. Owns its cache; never touches training buffers."""

    def __init__(self, model: GPT, encoding=None):
        self.model = model
        self.encoding = encoding
        cfg = model.config
        L, C, maxT = cfg.num_layers, cfg.channels, cfg.max_seq_len
        self.k_cache = np.zeros((L, maxT, C), np.float32)
        self.v_cache = np.zeros((L, maxT, C), np.float32)
        self.probs = np.empty(cfg.padded_vocab_size, np.float32)
        self.logits = np.empty((1, cfg.padded_vocab_size), np.float32)
        self._bufs_n = 0

    def _buffers(self, n: int):
        if n > self._bufs_n:
            C = self.model.config.channels
            f32 = np.float32
            self.x = np.empty((n, C), f32)
            self.ln = np.empty((n, C), f32)
            self.qkv = np.empty((n, 3 * C), f32)
            self.atty = np.empty((n, C), f32)
            self.proj = np.empty((n, C), f32)
            self.fch = np.empty((n, 4 * C), f32)
            self.fch_gelu = np.empty((n, 4 * C), f32)
            self.mean = np.empty(n, f32)
            self.rstd = np.empty(n, f32)
            self._bufs_n = n
        return n

    def _extend(self, tokens: np.ndarray, t0: int) -> np.ndarray:
        """Run tokens at positions t0.. through the model, filling the cache; return last logits (Vp,)."""
        cfg, p = self.model.config, self.model.params
        n = len(tokens)
        C, NH = cfg.channels, cfg.num_heads
        self._buffers(n)
        x, ln, qkv, atty, proj = self.x[:n], self.ln[:n], self.qkv[:n], self.atty[:n], self.proj[:n]
        fch, fch_gelu, mean, rstd = self.fch[:n], self.fch_gelu[:n], self.mean[:n], self.rstd[:n]
        np.add(p.wte[tokens], p.wpe[t0:t0 + n], out=x)
        for l in range(cfg.num_layers):
            K.layernorm_forward(ln, mean, rstd, x, p.ln1w[l], p.ln1b[l])
            matmul(ln, p.qkvw[l].T, out=qkv)
            K.add_bias(qkv, p.qkvb[l])
            self.k_cache[l, t0:t0 + n] = qkv[:, C:2 * C]
            self.v_cache[l, t0:t0 + n] = qkv[:, 2 * C:]
            K.attention_cached(atty, qkv, self.k_cache[l], self.v_cache[l], t0, NH)
            matmul(atty, p.attprojw[l].T, out=proj)
            K.residual_bias_forward(x, x, proj, p.attprojb[l])
            K.layernorm_forward(ln, mean, rstd, x, p.ln2w[l], p.ln2b[l])
            matmul(ln, p.fcw[l].T, out=fch)
            K.bias_gelu_forward(fch_gelu, fch, p.fcb[l])
            matmul(fch_gelu, p.fcprojw[l].T, out=proj)
            K.residual_bias_forward(x, x, proj, p.fcprojb[l])
        K.layernorm_forward(ln[n - 1:n], mean[:1], rstd[:1], x[n - 1:n], p.lnfw, p.lnfb)
        matmul(ln[n - 1:n], p.wte.T, out=self.logits)
        return self.logits[0]

    def _full_forward_logits(self, ids: list[int]) -> np.ndarray:
        """Reference path: the whole sequence through GPT.forward (what llm.c does per token)."""
        model = self.model
        model.forward(np.asarray(ids, np.int32)[None, :])
        return model.acts.logits[len(ids) - 1]

    def generate(self, prompt: str | list[int] = "", max_new_tokens: int = 64, temperature: float = 1.0,
                 top_k: int = 0, seed: int | None = None, rng: np.random.Generator | None = None,
                 use_cache: bool = True, stop_at_eot: bool = False) -> SampleResult:
        cfg = self.model.config
        if isinstance(prompt, str):
            prompt_text = prompt
            prompt_ids = self.encoding.encode_ordinary(prompt) if prompt else []
        else:
            prompt_ids = [int(t) for t in prompt]
            prompt_text = self.encoding.decode(prompt_ids) if self.encoding else ""
        ids = [EOT_TOKEN if cfg.vocab_size > EOT_TOKEN else 0] + prompt_ids if not prompt_ids else list(prompt_ids)
        if any(not 0 <= t < cfg.vocab_size for t in ids):
            raise ValueError(f"prompt has token ids outside the model's vocabulary of {cfg.vocab_size}")
        # keep within the model's context: the most recent tokens win
        max_new_tokens = max(0, min(max_new_tokens, cfg.max_seq_len - 1))
        ids = ids[-(cfg.max_seq_len - max_new_tokens):] if max_new_tokens else ids[-cfg.max_seq_len:]
        rng = rng if rng is not None else np.random.default_rng(seed)

        start = time.perf_counter()
        generated, probs = [], []
        logits = self._extend(np.asarray(ids, np.int32), 0) if use_cache else self._full_forward_logits(ids)
        for _ in range(max_new_tokens):
            token, prob = choose_token(logits, cfg.vocab_size, temperature, top_k, rng.random(), self.probs)
            generated.append(token)
            probs.append(prob)
            if stop_at_eot and token == EOT_TOKEN:
                break
            ids.append(token)
            if len(generated) == max_new_tokens:
                break
            if use_cache:
                logits = self._extend(np.asarray([token], np.int32), len(ids) - 1)
            else:
                logits = self._full_forward_logits(ids)
        seconds = time.perf_counter() - start

        pieces = token_pieces(generated) if self.encoding else [str(t) for t in generated]
        text = self.encoding.decode(generated) if self.encoding else " ".join(map(str, generated))
        return SampleResult(prompt_text, prompt_ids, generated, text, pieces, probs, seconds)
