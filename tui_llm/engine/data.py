"""Token files and the loaders that turn them into (inputs, targets) batches.

File formats (all little-endian):
  * "llmc"   llm.c's current format: 256 int32 header (magic 20240520, version 1, slot 2 = token
             count), then uint16 tokens. The file size must be exactly 1024 + 2 * count.
  * "int32"  llm.c before May 2024 and llm.rust: headerless int32 tokens.
  * "uint16" nanoGPT's train.bin: headerless uint16 tokens. Never guessed (any even-sized file would
             match), only read when the caller asks for it.

Files are memory-mapped, so a corpus larger than RAM costs nothing until batches are read.

Batching follows llm.c's DataLoader (llmc/dataloader.h) exactly, so losses can be compared with it:
a "sample" is one whole batch, B*T+1 consecutive tokens starting at k*B*T; the train loader visits the
samples in an order shuffled by MT19937 seeded with 42 (the same generator as torch.manual_seed(42)).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from .config import GPT2_VOCAB_SIZE
from .mt19937 import mt19937

LLMC_MAGIC = 20240520
LLMC_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = ("llmc", "int32", "uint16")


class DataError(Exception):
    """A token file or loader request that cannot work; the message names the file and the problem."""


class TokenFile:
    """A token file opened for reading: `.tokens` is a read-only 1-D memmap (or an empty array)."""

    def __init__(self, path: Path, tokens: np.ndarray, fmt: str):
        self.path = path
        self.tokens = tokens
        self.format = fmt

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, format={self.format!r}, num_tokens={self.num_tokens:,})"


def _memmap(path: Path, dtype: str, offset: int, count: int) -> np.ndarray:
    if count == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def open_tokens(path, format: str = "auto", vocab_size: int = GPT2_VOCAB_SIZE, check_ids: bool = True) -> TokenFile:
    """Open a token file. format: "auto" (llm.c header or legacy int32), "llmc", "int32" or "uint16".

    With check_ids, every token id is checked to be < vocab_size (one vectorised pass over the file).
    """
    path = Path(path)
    if format not in ("auto", *FORMATS):
        raise DataError(f"{path}: unknown token file format {format!r} (use auto, {', '.join(FORMATS)})")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a token file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None

    if size == 0:
        raise DataError(f"{path}: empty file")
    first = int(np.frombuffer(head[:4], dtype="<i4")[0]) if len(head) >= 4 else None

    if format == "auto":
        if first == LLMC_MAGIC:
            format = "llmc"
        elif first is not None and size % 4 == 0 and 0 <= first < 65536:
            format = "int32"
        else:
            raise DataError(
                f"{path}: not a token file (no llm.c header magic {LLMC_MAGIC}, and not headerless int32 tokens; "
                "for nanoGPT's headerless uint16 .bin files pass format='uint16')"
            )

    if format == "llmc":
        if len(head) < HEADER_BYTES:
            raise DataError(f"{path}: {size} bytes is too short for the {HEADER_BYTES}-byte llm.c header")
        header = np.frombuffer(head, dtype="<i4")
        magic, version, count = (int(x) for x in header[:3])
        if magic != LLMC_MAGIC:
            raise DataError(f"{path}: bad magic {magic} in header (expected {LLMC_MAGIC})")
        if version != LLMC_VERSION:
            hint = " (version 7 is llm.c's Llama-3 uint32 format, not supported)" if version == 7 else ""
            raise DataError(f"{path}: unsupported token file version {version}{hint}, expected {LLMC_VERSION}")
        if count < 0 or size != HEADER_BYTES + 2 * count:
            raise DataError(
                f"{path}: header says {count:,} tokens, so the file should be {HEADER_BYTES + 2 * max(count, 0):,} "
                f"bytes, but it is {size:,} bytes (truncated or corrupt)"
            )
        tokens = _memmap(path, "<u2", HEADER_BYTES, count)
    elif format == "int32":
        if size % 4:
            raise DataError(f"{path}: {size:,} bytes is not a whole number of int32 tokens")
        tokens = _memmap(path, "<i4", 0, size // 4)
        if tokens.min() < 0:
            raise DataError(f"{path}: negative token id {int(tokens.min())} (not an int32 token file?)")
    else:  # uint16
        if size % 2:
            raise DataError(f"{path}: {size:,} bytes is not a whole number of uint16 tokens")
        tokens = _memmap(path, "<u2", 0, size // 2)

    if check_ids and tokens.size:
        top = int(tokens.max())
        if top >= vocab_size:
            where = int(np.argmax(tokens >= vocab_size))
            raise DataError(
                f"{path}: token id {top} >= vocabulary size {vocab_size} (first bad id at token {where:,}; "
                f"wrong format or tokenizer?)"
            )
    return TokenFile(path, tokens, format)


def write_tokens(path, tokens, format: str = "llmc") -> int:
    """Write tokens atomically (temp file in the same directory, fsync, rename). Returns bytes written.

    A reader never sees a half-written file, and a crash leaves the previous file (if any) intact.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown token file format {format!r} (use {', '.join(FORMATS)})")
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or (format != "int32" and tokens.max() >= 65536)):
        raise DataError(f"{path}: token ids must be in [0, 65536) for the {format} format")
    if format == "llmc" and tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size:,} tokens do not fit llm.c's int32 count; split into shards")

    dtype = "<i4" if format == "int32" else "<u2"
    # A hidden temp name next to the target: os.replace is atomic only within one file system.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if format == "llmc":
                header = np.zeros(HEADER_INTS, dtype="<i4")
                header[:3] = (LLMC_MAGIC, LLMC_VERSION, tokens.size)
                f.write(header.tobytes())
            chunk = 1 << 22  # convert and write 4M tokens at a time: bounded memory for huge inputs
            for start in range(0, tokens.size, chunk):
                f.write(tokens[start:start + chunk].astype(dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return (HEADER_BYTES if format == "llmc" else 0) + tokens.size * np.dtype(dtype).itemsize


def _as_token_array(tokens) -> np.ndarray:
    return tokens.tokens if isinstance(tokens, TokenFile) else np.asarray(tokens)


def _count_samples(tokens: np.ndarray, B: int, T: int, what: str) -> int:
    if B <= 0 or T <= 0:
        raise DataError(f"{what}: batch size B={B} and sequence length T={T} must be positive")
    n = (tokens.shape[0] - 1) // (B * T)
    if n < 1:
        raise DataError(
            f"{what}: {tokens.shape[0]:,} tokens are too few for one batch of B*T+1 = {B * T + 1:,} tokens "
            "(use a smaller batch or sequence length, or more text)"
        )
    return n


def _batch(tokens: np.ndarray, sample: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    start = sample * B * T
    window = np.asarray(tokens[start:start + B * T + 1], dtype=np.int32)
    return window[:-1].reshape(B, T), window[1:].reshape(B, T)


def _describe(tokens) -> str:
    return str(tokens.path) if isinstance(tokens, TokenFile) else "tokens"


class TrainLoader:
    """Training batches in llm.c's order; resumable through state_dict()/load_state_dict().

    Every epoch visits each of the (ntok-1)//(B*T) samples once. With shuffle=True the order is a
    Fisher-Yates permutation drawn from one MT19937 stream that is never reseeded, exactly as
    llm.c's DataLoader with a single shard (a single shard needs no draws for the shard order).
    """

    def __init__(self, tokens, B: int, T: int, shuffle: bool = True, seed: int = 42):
        self.tokens = _as_token_array(tokens)
        self.B, self.T, self.shuffle, self.seed = B, T, shuffle, seed
        self.num_samples = _count_samples(self.tokens, B, T, _describe(tokens))
        self._rng = mt19937(seed)  # init_genrand(seed): the stream of llm.c's and torch's mt19937
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        """Draw this epoch's order; the RNG state before the draws is kept so a resume can redraw it."""
        self._epoch_rng_state = self._rng.state
        self.position = 0  # index into the order of the next sample to serve
        self.order = np.arange(self.num_samples, dtype=np.int64)
        if self.shuffle and self.num_samples > 1:
            n = self.num_samples
            draws = self._rng.random_raw(n - 1)  # one raw uint32 per swap, for i = n-1 down to 1
            js = (draws % np.arange(n, 1, -1, dtype=np.uint64)).tolist()
            order = self.order.tolist()  # plain lists: a sequential swap loop is fastest there
            for i, j in zip(range(n - 1, 0, -1), js):
                order[i], order[j] = order[j], order[i]
            self.order = np.array(order, dtype=np.int64)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), int32 arrays of shape (B, T); a new epoch begins when all samples were served."""
        if self.position >= self.num_samples:
            self.epoch += 1
            self._start_epoch()
        sample = int(self.order[self.position])
        self.position += 1
        return _batch(self.tokens, sample, self.B, self.T)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable: where we are, plus the RNG state that redraws this epoch's order."""
        state = self._epoch_rng_state["state"]
        return {
            "B": self.B, "T": self.T, "num_samples": self.num_samples,
            "shuffle": self.shuffle, "seed": self.seed,
            "epoch": self.epoch, "position": self.position,
            "epoch_rng": {"key": [int(k) for k in state["key"]], "pos": int(state["pos"])},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced `state` stopped."""
        mine = {"B": self.B, "T": self.T, "num_samples": self.num_samples, "shuffle": self.shuffle}
        theirs = {k: state.get(k) for k in mine}
        if mine != theirs:
            raise DataError(f"loader state is for {theirs}, but this loader has {mine} (different data or batch shape)")
        if not 0 <= state["position"] <= self.num_samples:
            raise DataError(f"loader state position {state['position']} is outside 0..{self.num_samples}")
        self.seed = state["seed"]
        self._rng.state = {
            "bit_generator": "MT19937",
            "state": {"key": np.array(state["epoch_rng"]["key"], dtype=np.uint32), "pos": state["epoch_rng"]["pos"]},
        }
        self.epoch = state["epoch"]
        self._start_epoch()  # redraws the same order and leaves the RNG where the original's is
        self.position = state["position"]


class ValLoader:
    """Validation batches: samples 0, 1, 2, ... in order, from the start on every evaluation (as llm.c)."""

    def __init__(self, tokens, B: int, T: int):
        self.tokens = _as_token_array(tokens)
        self.B, self.T = B, T
        self.num_samples = _count_samples(self.tokens, B, T, _describe(tokens))

    def batches(self, num: int | None = None):
        """Yield up to `num` batches (all of them if None), capped at the number available."""
        count = self.num_samples if num is None else min(num, self.num_samples)
        for sample in range(count):
            yield _batch(self.tokens, sample, self.B, self.T)
