"""Token files and the loaders that turn them into (inputs, targets) batches.

File formats (all little-endian):
  * "llmc"   llm.c's current format: 256 int32 header (magic 20240520, version 1, slot 2 = token
             count), then uint16 tokens. The file size must be exactly 1024 + 2 * count. Vocabularies
             beyond 65,536 tokens use llm.c's Llama-3 variant: magic 20240801, version 7, uint32
             tokens (1024 + 4 * count bytes); both read as "llmc".
  * "int32"  llm.c before May 2024 and llm.rust: headerless int32 tokens.
  * "uint16" nanoGPT's train.bin: headerless uint16 tokens. Never guessed (any even-sized file would
             match), only read when the caller asks for it.

Files are memory-mapped, so a corpus larger than RAM costs nothing until batches are read. A dataset
that outgrows one file is a glob of shards ("data/fineweb_train_*.bin", open_dataset).

Batching follows llm.c's DataLoader (llmc/dataloader.h) exactly, so losses can be compared with it:
a "sample" is one whole total batch, R*T+1 consecutive tokens starting at k*R*T (R = B rows for one
process without accumulation); the train loader visits the samples in an order shuffled by MT19937
seeded with 42 (the same generator as torch.manual_seed(42)). With gradient accumulation and several
ranks, each micro-batch is a fixed slice of the total batch's rows (TrainLoader), so the rows of every
optimizer step, and their order, do not depend on how the total batch is split.

(Over 400 lines: the file formats and llm.c's loader order are one concern read together; the
checks of a saved loader position are in loader_state.py.)
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

import numpy as np

from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.models.gpt2_config import GPT2_VOCAB_SIZE
from tui_llm.engine.mt19937 import mt19937
from tui_llm.engine.errors import TuiLlmError

LLMC_MAGIC = 20240520
LLMC_VERSION = 1
LLMC_MAGIC_U32, LLMC_VERSION_U32 = 20240801, 7  # llm.c's uint32 tokens (Llama 3)
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = ("llmc", "int32", "uint16")
LOADER_STATE_VERSION = 2  # TrainLoader.state_dict(); version 1 (one file, no accumulation) still loads


class DataError(TuiLlmError):
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
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise DataError(f"{path}: not a regular file")
        size = st.st_size
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
        if first in (LLMC_MAGIC, LLMC_MAGIC_U32):
            format = "llmc"
        elif first is not None and size % 4 == 0 and 0 <= first < 65536:
            format = "int32"
        else:
            raise DataError(
                f"{path}: not a token file (no llm.c header magic {LLMC_MAGIC}, and not headerless int32 tokens; "
                "for nanoGPT's headerless uint16 .bin files use --format uint16)"
            )

    if format == "llmc":
        if len(head) < HEADER_BYTES:
            raise DataError(f"{path}: {size} bytes is too short for the {HEADER_BYTES}-byte llm.c header")
        header = np.frombuffer(head, dtype="<i4")
        magic, version, count = (int(x) for x in header[:3])
        if magic not in (LLMC_MAGIC, LLMC_MAGIC_U32):
            raise DataError(f"{path}: bad magic {magic} in header (expected {LLMC_MAGIC}, or {LLMC_MAGIC_U32} "
                            f"for uint32 tokens)")
        expected = LLMC_VERSION if magic == LLMC_MAGIC else LLMC_VERSION_U32
        if version != expected:
            hint = f" (version 7 is llm.c's Llama-3 uint32 format, magic {LLMC_MAGIC_U32})" if version == 7 else ""
            raise DataError(f"{path}: unsupported token file version {version} for magic {magic}{hint}, "
                            f"expected {expected}")
        width = 2 if magic == LLMC_MAGIC else 4
        if count < 0 or size != HEADER_BYTES + width * count:
            raise DataError(
                f"{path}: header says {count:,} tokens, so the file should be "
                f"{HEADER_BYTES + width * max(count, 0):,} bytes, but it is {size:,} bytes (truncated or corrupt)"
            )
        tokens = _memmap(path, "<u2" if width == 2 else "<u4", HEADER_BYTES, count)
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


def write_tokens(path, tokens, format: str = "llmc", wide: bool = False) -> int:
    """Write tokens atomically (atomic_write: temp file in the same directory, fsync, rename). Returns bytes written.

    wide: llm.c's uint32 variant of "llmc" (magic 20240801, version 7), for vocabularies beyond 65,536.

    A reader never sees a half-written file, and a crash leaves the previous file (if any) intact.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown token file format {format!r} (use {', '.join(FORMATS)})")
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if wide and format != "llmc":
        raise DataError(f"{path}: the {format} format holds 16-bit tokens only; use llmc (uint32) or int32")
    limit = 2**32 if wide else 65536
    if tokens.size and (tokens.min() < 0 or (format != "int32" and tokens.max() >= limit)):
        raise DataError(f"{path}: token ids must be in [0, {limit}) for the {format} format")
    if format == "llmc" and tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size:,} tokens do not fit llm.c's int32 count; split into shards")

    dtype = "<i4" if format == "int32" else "<u4" if wide else "<u2"
    with atomic_write(path, "wb") as f:
        if format == "llmc":
            header = np.zeros(HEADER_INTS, dtype="<i4")
            header[:3] = (LLMC_MAGIC_U32, LLMC_VERSION_U32, tokens.size) if wide else (LLMC_MAGIC, LLMC_VERSION, tokens.size)
            f.write(header.tobytes())
        chunk = 1 << 22  # convert and write 4M tokens at a time: bounded memory for huge inputs
        for start in range(0, tokens.size, chunk):
            f.write(tokens[start:start + chunk].astype(dtype).tobytes())
    return (HEADER_BYTES if format == "llmc" else 0) + tokens.size * np.dtype(dtype).itemsize


# ----------------------------------------------------------------------------------------------------
# datasets that outgrow one file: llm.c shards

class TokenShards:
    """A dataset of one or more token files (llm.c "shards"), in sorted path order, all of one format."""

    def __init__(self, files: list[TokenFile], pattern: str):
        self.files, self.pattern = files, pattern

    @property
    def format(self) -> str:
        return self.files[0].format

    @property
    def num_tokens(self) -> int:
        return sum(f.num_tokens for f in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"TokenShards({self.pattern!r}, {len(self.files)} files, format={self.format!r}, num_tokens={self.num_tokens:,})"


def open_dataset(spec, format: str = "auto", vocab_size: int = GPT2_VOCAB_SIZE, check_ids: bool = True) -> TokenShards:
    """One token file, or a glob pattern of shards ("data/fineweb_train_*.bin"), each opened by open_tokens.

    Shards are taken in sorted path order (llm.c: glob() sorts). They must all have the same format
    (and so the same token dtype); mixing llm.c and headerless files is an error, not a guess.
    """
    pattern = os.fspath(spec)
    if not glob.has_magic(pattern) or os.path.isfile(pattern):  # a file may be called "data[1].bin"
        return TokenShards([open_tokens(pattern, format, vocab_size, check_ids)], pattern)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise DataError(f"{pattern}: no files match this pattern")
    files = [open_tokens(p, format, vocab_size, check_ids) for p in paths]
    formats = {f.format for f in files}
    if len(formats) > 1:
        first = files[0]
        other = next(f for f in files if f.format != first.format)
        raise DataError(f"{pattern}: the shards mix token formats ({first.path.name} is {first.format}, "
                        f"{other.path.name} is {other.format}); all shards must have one format")
    return TokenShards(files, pattern)


def _as_shards(tokens) -> list[tuple[str, np.ndarray]]:
    """(name, 1-D token array) for each shard of an array, a TokenFile, a TokenShards or a list of them."""
    if isinstance(tokens, TokenShards):
        tokens = tokens.files
    if not isinstance(tokens, (list, tuple)):
        tokens = [tokens]
    if not tokens:
        raise DataError("no token data given")
    shards = []
    for t in tokens:
        if isinstance(t, TokenFile):
            shards.append((t.path.name, t.tokens))
        else:
            shards.append(("", np.asarray(t)))
    if len({a.dtype for _, a in shards}) > 1:
        raise DataError(f"the shards mix token dtypes ({', '.join(sorted({str(a.dtype) for _, a in shards}))})")
    return shards


def _describe(name: str, index: int, count: int) -> str:
    return (name or "tokens") + (f" (shard {index} of {count})" if count > 1 else "")


def _count_samples(tokens: np.ndarray, rows: int, T: int, what: str, unit: str = "one batch of B*T+1") -> int:
    n = (tokens.shape[0] - 1) // (rows * T)
    if n < 1:
        raise DataError(
            f"{what}: {tokens.shape[0]:,} tokens are too few for {unit} = {rows * T + 1:,} tokens "
            "(use a smaller batch or sequence length, or more text)"
        )
    return n


def _window(tokens: np.ndarray, start: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    window = np.asarray(tokens[start:start + B * T + 1], dtype=np.int32)
    return window[:-1].reshape(B, T), window[1:].reshape(B, T)


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{name}={v!r} must be a positive integer")


def _fisher_yates(items: list, rng: np.random.MT19937) -> list:
    """llm.c's random_permutation, in place: for i = n-1 down to 1, j = randint32 % (i+1), swap."""
    n = len(items)
    if n > 1:
        draws = rng.random_raw(n - 1)  # one raw uint32 per swap
        js = (draws % np.arange(n, 1, -1, dtype=np.uint64)).tolist()
        for i, j in zip(range(n - 1, 0, -1), js):  # plain lists: a sequential swap loop is fastest there
            items[i], items[j] = items[j], items[i]
    return items


# ----------------------------------------------------------------------------------------------------
# loaders

class TrainLoader:
    """Training batches in llm.c's order, split over gradient accumulation and ranks; resumable.

    The unit that is shuffled is the *total batch* of one optimizer step: R = B * grad_accum *
    world_size rows of T tokens, i.e. R*T+1 consecutive tokens starting at k*R*T of a shard ("sample" k;
    samples per shard = (ntok-1) // (R*T), as llm.c). Every optimizer step consumes exactly the rows a
    single process with B_total = R would, in the same order, whatever the split.

    Row rule: micro-batch m (0..grad_accum-1) of rank r is rows [(m*N + r)*B, (m*N + r + 1)*B) of the
    step's total batch (N = world_size): within one micro-step the ranks read adjacent slices, as in
    llm.c's multi-process loader. next_batch() serves this rank's micro-batches m = 0, 1, ..., K-1 in
    turn; after the K-th the loader moves to the next total batch.

    Order (llm.c's dataloader.h): shards in sorted order. With shuffle, at every epoch the shard order
    is Fisher-Yates-permuted in place (continuing from the previous epoch's order; no draws for one
    shard), then each shard, when it is reached, gets a fresh Fisher-Yates permutation of its samples.
    All draws come from one MT19937 stream seeded with `seed` (42: llm.c's and torch.manual_seed's
    stream) and never reseeded. Every rank seeds the same stream (llm.c seeds 42 + rank), so all ranks
    agree on the global order. With one shard and grad_accum = world_size = 1 this is exactly llm.c's
    train_gpt2.c order.
    """

    def __init__(self, tokens, B: int, T: int, shuffle: bool = True, seed: int = 42,
                 grad_accum: int = 1, rank: int = 0, world_size: int = 1):
        _check_positive(B=B, T=T, grad_accum=grad_accum, world_size=world_size)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r} must be an integer in 0..{world_size - 1}")
        self.B, self.T, self.shuffle, self.seed = B, T, shuffle, seed
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.rows = B * grad_accum * world_size  # rows of one total batch (one optimizer step)
        self.shards = _as_shards(tokens)
        self.names = [name for name, _ in self.shards]
        unit = "one batch of B*T+1" if self.rows == B else "one total batch of B*grad_accum*world_size*T+1"
        self.shard_samples = [_count_samples(t, self.rows, T, _describe(name, i, len(self.shards)), unit)
                              for i, (name, t) in enumerate(self.shards)]
        self.num_samples = sum(self.shard_samples)  # total batches (optimizer steps) per epoch
        self._rng = mt19937(seed)  # init_genrand(seed): the stream of llm.c's and torch's mt19937
        self.epoch = 0
        self.shard_order = list(range(len(self.shards)))  # permuted in place at every epoch, as llm.c
        self._start_epoch()

    # the position: epoch, shard (index into shard_order), sample (index into order), micro (of this step)

    def _start_epoch(self) -> None:
        """llm.c's dataloader_reset: permute the shard order, then load the first shard."""
        if self.shuffle:
            _fisher_yates(self.shard_order, self._rng)
        self.shard = 0
        self._load_shard()

    def _load_shard(self) -> None:
        """Draw the current shard's sample order; the RNG state before the draws is kept to redraw it on resume."""
        self._shard_rng_state = self._rng.state
        n = self.shard_samples[self.shard_order[self.shard]]
        order = list(range(n))
        self.order = np.array(_fisher_yates(order, self._rng) if self.shuffle else order, dtype=np.int64)
        self.sample = 0  # index into self.order of the total batch being served
        self.micro = 0   # micro-batches of that total batch this loader has served

    @property
    def position(self) -> int:
        """Index into the current shard's order of the next total batch (llm.c's current_sample_idx)."""
        return self.sample

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's next micro-batch (inputs, targets), int32 arrays of shape (B, T)."""
        if self.sample >= len(self.order):  # shard exhausted: next shard, or a new epoch after the last
            if self.shard + 1 < len(self.shards):
                self.shard += 1
                self._load_shard()
            else:
                self.epoch += 1
                self._start_epoch()
        tokens = self.shards[self.shard_order[self.shard]][1]
        row = (self.micro * self.world_size + self.rank) * self.B
        start = (int(self.order[self.sample]) * self.rows + row) * self.T
        self.micro += 1
        if self.micro == self.grad_accum:
            self.sample, self.micro = self.sample + 1, 0
        return _window(tokens, start, self.B, self.T)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable; the same for every rank and for every split of the same total batch.

        "row" counts the rows of the current total batch already consumed by all ranks together
        (micro * world_size * B): 0 at every optimizer-step boundary, where checkpoints are taken.
        """
        state = self._shard_rng_state["state"]
        return {
            "version": LOADER_STATE_VERSION, "T": self.T, "total_rows": self.rows,
            "shuffle": self.shuffle, "seed": self.seed,
            "num_shards": len(self.shards), "num_samples": self.num_samples,
            "epoch": self.epoch, "shard_order": list(self.shard_order),
            "shard": self.shard, "shard_file": self.names[self.shard_order[self.shard]],
            "shard_samples": len(self.order), "sample": self.sample, "row": self.micro * self.world_size * self.B,
            "shard_rng": {"key": [int(k) for k in state["key"]], "pos": int(state["pos"])},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced `state` stopped (any split of the same total batch).

        Every field is checked (types and ranges) before anything changes: a bad state is a DataError.
        """
        from tui_llm.engine.data.loader_state import check_loader_state  # here: loader_state imports DataError from this module

        s = check_loader_state(state, self)
        before = self._rng.state
        try:
            self._rng.state = {"bit_generator": "MT19937",
                               "state": {"key": np.array(s["shard_rng"]["key"], dtype=np.uint32), "pos": s["shard_rng"]["pos"]}}
        except (ValueError, TypeError, OverflowError) as e:
            self._rng.state = before
            raise DataError(f"loader state: bad shard_rng ({e})") from None
        self.seed, self.epoch = s["seed"], s["epoch"]
        self.shard_order, self.shard = list(s["shard_order"]), s["shard"]
        self._load_shard()  # redraws the same order and leaves the RNG where the original's is
        self.sample, self.micro = s["sample"], s["row"] // (self.world_size * self.B)


class ValLoader:
    """Validation batches: B*T+1-token samples 0, 1, 2, ... in order over the shards, from the start on
    every evaluation (as llm.c), whatever the number of ranks.

    With world_size N, global batch g goes to rank g % N (round robin). Shares are ragged when the
    number of batches is not a multiple of N (some ranks get one batch fewer, possibly none), so ranks
    must not average their means: each rank sums its batch losses, then allreduce_sum_ of
    [loss_sum, count] gives sum/count, exactly the single-process mean over the same batches.
    """

    def __init__(self, tokens, B: int, T: int, rank: int = 0, world_size: int = 1):
        _check_positive(B=B, T=T, world_size=world_size)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r} must be an integer in 0..{world_size - 1}")
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        self.shards = _as_shards(tokens)
        self.shard_samples = [_count_samples(t, B, T, _describe(name, i, len(self.shards)))
                              for i, (name, t) in enumerate(self.shards)]
        self.num_samples = sum(self.shard_samples)  # batches over all ranks together

    def count(self, num: int | None = None) -> int:
        """Batches one evaluation uses over all ranks: `num` (all if None), capped at the number available."""
        return self.num_samples if num is None else max(0, min(num, self.num_samples))

    def share(self, num: int | None = None) -> int:
        """How many of those batches this rank gets."""
        return len(range(self.rank, self.count(num), self.world_size))

    def batches(self, num: int | None = None):
        """Yield this rank's share of the first `num` batches (all of them if None)."""
        for g in range(self.rank, self.count(num), self.world_size):
            for i, n in enumerate(self.shard_samples):  # few shards for validation: a linear walk is fine
                if g < n:
                    break
                g -= n
            yield _window(self.shards[i][1], g * self.B * self.T, self.B, self.T)
