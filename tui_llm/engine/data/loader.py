"""The loaders that turn token files into (inputs, targets) batches, resumably.

Batching follows llm.c's DataLoader (llmc/dataloader.h) exactly, so losses can be compared with it:
a "sample" is one whole total batch, R*T+1 consecutive tokens starting at k*R*T (R = B rows for one
process without accumulation); the train loader visits the samples in an order shuffled by MT19937
seeded with 42 (the same generator as torch.manual_seed(42)). With gradient accumulation and several
ranks, each micro-batch is a fixed slice of the total batch's rows (TrainLoader), so the rows of every
optimizer step, and their order, do not depend on how the total batch is split. The checks of a
saved loader position are in loader_state.py.

Packed data (a token file with its .mask beside it, data/packed.py: conversations laid into rows of T
tokens) is read by PackedTrainLoader and PackedValLoader: the same order over total batches of R rows,
but a row is exactly one row of the file (its targets are the same row shifted by one; nothing crosses
into the next row), and each micro-batch comes with the weight of every position (the LOSS bit of its
target) and where each position's document starts (attention and positions restart there). Every
loader's `next_micro()` gives a Batch; `TrainLoader(..., doc_start_token=EOT)` adds document starts at
every end-of-text token of plain text (--document-attention).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tui_llm.engine.data.loader_state import LOADER_STATE_VERSION, check_loader_state
from tui_llm.engine.data.packed import PackedFile
from tui_llm.engine.data.tokens import DataError, _as_shards, _check_positive, _count_samples, _describe, _window
from tui_llm.engine.kernels.attention import doc_starts_from_mask
from tui_llm.engine.mt19937 import mt19937


class Batch(NamedTuple):
    """One micro-batch, (B, T) each."""

    inputs: np.ndarray              # int32 token ids
    targets: np.ndarray             # int32: the token each position predicts
    weights: np.ndarray | None      # float32 1 where that prediction counts in the loss, else 0 (None: all count)
    doc_starts: np.ndarray | None   # int32: where each position's document starts (None: one document a row)

    @property
    def loss_tokens(self) -> int:
        """Predictions that count in the loss."""
        return self.inputs.size if self.weights is None else int(np.count_nonzero(self.weights))


def documents_at(inputs: np.ndarray, token: int | None) -> np.ndarray | None:
    """doc_starts for rows of plain text whose documents begin at each `token` (GPT-2's end-of-text)."""
    return None if token is None else doc_starts_from_mask(inputs == token)


def _fisher_yates(items: list, rng: np.random.MT19937) -> list:
    """llm.c's random_permutation, in place: for i = n-1 down to 1, j = randint32 % (i+1), swap."""
    n = len(items)
    if n > 1:
        draws = rng.random_raw(n - 1)  # one raw uint32 per swap
        js = (draws % np.arange(n, 1, -1, dtype=np.uint64)).tolist()
        for i, j in zip(range(n - 1, 0, -1), js):  # plain lists: a sequential swap loop is fastest there
            items[i], items[j] = items[j], items[i]
    return items


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
                 grad_accum: int = 1, rank: int = 0, world_size: int = 1, doc_start_token: int | None = None):
        _check_positive(B=B, T=T, grad_accum=grad_accum, world_size=world_size)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r} must be an integer in 0..{world_size - 1}")
        self.B, self.T, self.shuffle, self.seed = B, T, shuffle, seed
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.doc_start_token = doc_start_token
        self.rows = B * grad_accum * world_size  # rows of one total batch (one optimizer step)
        self.shards = self._open_shards(tokens)
        self.names = [name for name, _ in self.shards]
        self.shard_samples = [self._count(i) for i in range(len(self.shards))]
        self.num_samples = sum(self.shard_samples)  # total batches (optimizer steps) per epoch
        self._rng = mt19937(seed)  # init_genrand(seed): the stream of llm.c's and torch's mt19937
        self.epoch = 0
        self.shard_order = list(range(len(self.shards)))  # permuted in place at every epoch, as llm.c
        self._start_epoch()

    def _open_shards(self, tokens) -> list:
        return _as_shards(tokens)

    def _count(self, i: int) -> int:
        """Total batches in shard i."""
        name, tokens = self.shards[i]
        unit = "one batch of B*T+1" if self.rows == self.B else "one total batch of B*grad_accum*world_size*T+1"
        return _count_samples(tokens, self.rows, self.T, _describe(name, i, len(self.shards)), unit)

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
        shard, row = self._advance()
        return _window(self.shards[shard][1], row * self.T, self.B, self.T)

    def next_micro(self) -> Batch:
        """This rank's next micro-batch as a Batch (document starts at doc_start_token, if given)."""
        x, y = self.next_batch()
        return Batch(x, y, None, documents_at(x, self.doc_start_token))

    def _advance(self) -> tuple[int, int]:
        """(shard index, first row within the shard) of this rank's next micro-batch; moves past it."""
        if self.sample >= len(self.order):  # shard exhausted: next shard, or a new epoch after the last
            if self.shard + 1 < len(self.shards):
                self.shard += 1
                self._load_shard()
            else:
                self.epoch += 1
                self._start_epoch()
        row = (self.micro * self.world_size + self.rank) * self.B
        first = int(self.order[self.sample]) * self.rows + row
        self.micro += 1
        if self.micro == self.grad_accum:
            self.sample, self.micro = self.sample + 1, 0
        return self.shard_order[self.shard], first

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
        s = check_loader_state(state, self)
        before = self._rng.state
        try:
            self._rng.state = {"bit_generator": "MT19937",
                               "state": {"key": np.array(s["shard_rng"]["key"], dtype=np.uint32),
                                         "pos": s["shard_rng"]["pos"]}}
        except (ValueError, TypeError, OverflowError) as e:
            self._rng.state = before
            raise DataError(f"loader state: bad shard_rng ({e})") from None
        self.seed, self.epoch = s["seed"], s["epoch"]
        self.shard_order, self.shard = list(s["shard_order"]), s["shard"]
        self._load_shard()  # redraws the same order and leaves the RNG where the original's is
        self.sample, self.micro = s["sample"], s["row"] // (self.world_size * self.B)


class PackedTrainLoader(TrainLoader):
    """TrainLoader over packed rows (PackedFile shards): total batches of R whole rows of the file, in the
    same shuffled order; next_micro() gives the rows with their loss weights and document starts."""

    def __init__(self, packed: list[PackedFile], B: int, T: int, shuffle: bool = True, seed: int = 42,
                 grad_accum: int = 1, rank: int = 0, world_size: int = 1, pad_id: int = 0):
        self.pad_id = pad_id
        super().__init__(packed, B, T, shuffle, seed, grad_accum, rank, world_size)

    def _open_shards(self, packed) -> list:
        shards = []
        for f in packed:
            if f.row_tokens != self.T:
                raise DataError(f"{f.tokens.path}: packed in rows of {f.row_tokens} tokens, but training uses -t "
                                f"{self.T}; train with -t {f.row_tokens} (or prepare again with --seq-len {self.T})")
            shards.append((f.tokens.path.name, f))
        if not shards:
            raise DataError("no token data given")
        return shards

    def _count(self, i: int) -> int:
        name, f = self.shards[i]
        n = f.num_rows // self.rows
        if n < 1:
            raise DataError(f"{_describe(name, i, len(self.shards))}: {f.num_rows:,} packed rows are too few for one "
                            f"total batch of {self.rows:,} rows (use a smaller batch, or more conversations)")
        return n

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, _, _ = self.next_micro()
        return x, y

    def next_micro(self) -> Batch:
        shard, row = self._advance()
        return packed_batch(self.shards[shard][1], range(row, row + self.B), self.pad_id)


def packed_batch(f: PackedFile, rows, pad_id: int = 0) -> Batch:
    x, y, weights, _, pos = f.batch(rows, pad_id)
    return Batch(x, y, weights, np.arange(x.shape[1], dtype=np.int32) - pos)


class PackedValLoader:
    """Validation over packed rows: batches of B whole rows from the start, in order over the shards, dealt
    round robin to the ranks (as ValLoader)."""

    def __init__(self, packed: list[PackedFile], B: int, T: int, rank: int = 0, world_size: int = 1,
                 pad_id: int = 0):
        _check_positive(B=B, T=T, world_size=world_size)
        self.B, self.T, self.rank, self.world_size, self.pad_id = B, T, rank, world_size, pad_id
        self.files = list(packed)
        for f in self.files:
            if f.row_tokens != T:
                raise DataError(f"{f.tokens.path}: packed in rows of {f.row_tokens} tokens, but training uses -t {T}")
        self.shard_samples = [f.num_rows // B for f in self.files]
        self.num_samples = sum(self.shard_samples)

    def count(self, num: int | None = None) -> int:
        return self.num_samples if num is None else max(0, min(num, self.num_samples))

    def micros(self, num: int | None = None):
        """This rank's share of the first `num` batches, as Batches."""
        for g in range(self.rank, self.count(num), self.world_size):
            for i, n in enumerate(self.shard_samples):  # noqa: B007 (i is the shard)
                if g < n:
                    break
                g -= n
            yield packed_batch(self.files[i], range(g * self.B, (g + 1) * self.B), self.pad_id)


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
            for i, n in enumerate(self.shard_samples):  # noqa: B007 (i is the shard): few shards, a linear walk is fine
                if g < n:
                    break
                g -= n
            yield _window(self.shards[i][1], g * self.B * self.T, self.B, self.T)

    def micros(self, num: int | None = None, doc_start_token: int | None = None):
        """batches() as Batches (document starts at doc_start_token, if given)."""
        for x, y in self.batches(num):
            yield Batch(x, y, None, documents_at(x, doc_start_token))
