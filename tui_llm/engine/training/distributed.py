"""Several training processes on one or more machines, through MPI (mpi4py + mpich, optional).

    mpiexec -n 2 tui-llm --no-ui ...        # two ranks; each trains on its slice of every total batch

`World.detect()` is the entry point. A plain `tui-llm` run is a single-process world and never
imports MPI, so the package works without the `mpi` extra. Only when the process was started by an
MPI launcher (its PMI/PMIx/Open MPI environment variables are set) is mpi4py imported; if it is
missing, the error says to `pip install "tui-llm[mpi]"`.

Everything here is a thin, explicit wrapper over MPI.COMM_WORLD, in the style of llm.c's
zero.cuh / train_gpt2.cu multi-process code:

* gradients: `allreduce_mean_(grads)` sums the flat float32 buffer in place over all ranks
  (MPI.IN_PLACE) and divides by the number of ranks, so every rank holds the same mean gradient;
* ZeRO-1 (`--zero 1`, as llm.c's zero.cuh): `shard(n)` is this rank's slice of the n parameters;
  `reduce_scatter_mean_(grads)` leaves only this rank's slice of the mean gradient (in place),
  `allgather_shards_(params)` gives every rank the slices the others updated, and
  `gather_shards(part, n)` assembles a sharded buffer (AdamW's m or v) on rank 0 for a checkpoint;
* small statistics (loss sums, counts, norms): `allreduce_sum_` on float64 arrays;
* weights at start-up: `bcast_(params)` makes every rank hold rank 0's buffer;
* control: `agree(commands)` broadcasts rank 0's list of commands (pause, save, stop, ...) so every
  rank applies the same commands at the same step boundary; `bcast_obj` / `allgather_obj` for
  other small picklable objects;
* failures: `abort(message)` prints one line and ends the whole job (MPI_Abort), and
  `install_excepthook()` makes an uncaught exception in any rank (main thread or another thread)
  do that, so one failing rank never leaves the others waiting forever in a collective.

A single-process world has the same methods; they do nothing (or return their argument), so the
trainer can call them unconditionally.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from tui_llm.engine.errors import TuiLlmError

# Set by the MPI launchers for every process they start: MPICH/Hydra (PMI_*), PMIx-based launchers
# (Open MPI 5, Slurm with PMIx), Open MPI's own (OMPI_COMM_WORLD_*).
LAUNCHER_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
INSTALL_HINT = 'pip install "tui-llm[mpi]"'
ABORT_GRACE_SECONDS = 0.5  # before MPI_Abort, for the launcher to forward the error line


class DistributedError(TuiLlmError):
    """MPI cannot be used as asked; the message is one line meant for the user."""


def launched_by_mpi(environ=None) -> str | None:
    """The launcher variable that is set in the environment, or None for a plain process."""
    environ = os.environ if environ is None else environ
    return next((name for name in LAUNCHER_ENV_VARS if name in environ), None)


def _affinity() -> set[int]:
    """The cores this process may run on."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


class World:
    """The processes of one training job: this process is `rank` of `size` (rank 0 is the root).

    local_rank / local_size: this process's place among the ranks on the same machine (shared memory),
    used to divide the machine's cores among them (threads_per_rank()).
    """

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, local_size: int = 1, comm=None, mpi=None):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self.comm = comm  # mpi4py's COMM_WORLD, or None for a single process
        self._mpi = mpi   # the mpi4py.MPI module, or None
        self.cores_are_shared = True  # False when the launcher bound each local rank to its own cores

    @classmethod
    def single(cls) -> World:
        return cls()

    @classmethod
    def detect(cls) -> World:
        """A single-process world, unless started by an MPI launcher: then MPI.COMM_WORLD."""
        variable = launched_by_mpi()
        if variable is None:
            return cls.single()
        try:
            from mpi4py import MPI  # initialises MPI (MPI_Init_thread) on first import
        except ImportError:
            raise DistributedError(
                f"started by an MPI launcher ({variable} is set), but mpi4py is not installed: {INSTALL_HINT}"
            ) from None
        comm = MPI.COMM_WORLD
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine's memory
        local_rank, local_size = node.Get_rank(), node.Get_size()
        # Did the launcher bind each rank to its own cores (mpiexec -bind-to core)? Then the cores a
        # rank may use are already its share; otherwise the ranks of this machine divide them.
        affinities = node.allgather(sorted(_affinity()))
        node.Free()
        world = cls(comm.Get_rank(), comm.Get_size(), local_rank, local_size, comm, MPI)
        world.cores_are_shared = all(a == affinities[0] for a in affinities)
        return world

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.comm is not None

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, local_size={self.local_size})"

    def threads_per_rank(self, cores: int | None = None) -> int:
        """Threads for this rank: the machine's cores divided among the ranks running on it (at least 1).

        cores: the cores to divide (default: those this process may use). When the launcher bound every
        rank to cores of its own, those cores are already this rank's share and are not divided again.
        """
        if cores is None:
            cores = len(_affinity())
            if not self.cores_are_shared:
                return max(1, cores)
        return max(1, cores // max(1, self.local_size))

    # ------------------------------------------------------------------------------------------
    # collectives: every rank must call each of them, in the same order

    def allreduce_mean_(self, buf: np.ndarray) -> np.ndarray:
        """In place: buf = (sum of buf over all ranks) / size. A contiguous float32 array (the flat grads)."""
        _check_buffer(buf, np.float32, "allreduce_mean_")
        if self.comm is not None and self.size > 1:
            self.comm.Allreduce(self._mpi.IN_PLACE, buf.reshape(-1), op=self._mpi.SUM)
            buf /= np.float32(self.size)
        return buf

    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        """In place: buf = sum of buf over all ranks. A contiguous float64 array of small statistics."""
        _check_buffer(buf, np.float64, "allreduce_sum_")
        if self.comm is not None and self.size > 1:
            self.comm.Allreduce(self._mpi.IN_PLACE, buf.reshape(-1), op=self._mpi.SUM)
        return buf

    def shard_bounds(self, n: int) -> list[tuple[int, int]]:
        """[start, end) of every rank's slice of n elements: contiguous, sizes differ by at most 1."""
        return [(r * n // self.size, (r + 1) * n // self.size) for r in range(self.size)]

    def shard(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's slice of n elements."""
        return self.shard_bounds(n)[self.rank]

    def _counts(self, n: int) -> tuple[list[int], list[int]]:
        bounds = self.shard_bounds(n)
        return [e - s for s, e in bounds], [s for s, _ in bounds]

    def reduce_scatter_mean_(self, buf: np.ndarray) -> np.ndarray:
        """This rank's shard of (sum of buf over all ranks) / size, as a view of buf: in place, the
        result is the first shard-size elements of buf (MPI.IN_PLACE puts it there); the rest of
        buf is left undefined. buf: the flat float32 gradients."""
        _check_buffer(buf, np.float32, "reduce_scatter_mean_")
        flat = buf.reshape(-1)
        start, end = self.shard(flat.size)
        if self.comm is None or self.size == 1:
            return flat
        counts, _ = self._counts(flat.size)
        self.comm.Reduce_scatter(self._mpi.IN_PLACE, [flat, self._mpi.FLOAT], counts, op=self._mpi.SUM)
        part = flat[:end - start]
        part /= np.float32(self.size)
        return part

    def allgather_shards_(self, buf: np.ndarray) -> np.ndarray:
        """In place: every rank's slice of buf (shard(buf.size)) reaches every other rank."""
        _check_buffer(buf, None, "allgather_shards_")
        if self.comm is not None and self.size > 1:
            counts, displs = self._counts(buf.size)
            self.comm.Allgatherv(self._mpi.IN_PLACE, [buf.reshape(-1), counts, displs, self._mpi.FLOAT])
        return buf

    def gather_shards(self, part: np.ndarray, n: int, into: np.ndarray | None = None) -> np.ndarray | None:
        """Rank 0: the n-element float32 buffer whose slices are every rank's `part` (written into
        `into` when given, else a new one); other ranks: None."""
        _check_buffer(part, np.float32, "gather_shards")
        if self.comm is None or self.size == 1:
            return part
        counts, displs = self._counts(n)
        full = (np.empty(n, np.float32) if into is None else into.reshape(-1)[:n]) if self.is_root else None
        self.comm.Gatherv(part, [full, counts, displs, self._mpi.FLOAT] if self.is_root else None, root=0)
        return full

    def bcast_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """In place: every rank's buf becomes root's (any contiguous numeric array, same shape everywhere)."""
        _check_buffer(buf, None, "bcast_")
        if self.comm is not None and self.size > 1:
            self.comm.Bcast(buf.reshape(-1), root=root)
        return buf

    def bcast_obj(self, obj=None, root: int = 0):
        """root's (small, picklable) object, on every rank."""
        if self.comm is None or self.size == 1:
            return obj
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...] on every rank."""
        if self.comm is None or self.size == 1:
            return [obj]
        return self.comm.allgather(obj)

    def agree(self, obj_from_root=None):
        """Rank 0's control commands for this step boundary, on every rank (other ranks' argument is ignored).

        Call it once per optimizer step on every rank, e.g. `commands = world.agree(ui_commands)`, then
        apply `commands` on every rank: all ranks pause, save or stop at the same step.
        """
        return self.bcast_obj(obj_from_root if self.is_root else None, root=0)

    def barrier(self) -> None:
        if self.comm is not None and self.size > 1:
            self.comm.Barrier()

    # ------------------------------------------------------------------------------------------
    # failures

    def abort(self, message: str, code: int = 1) -> None:
        """Print one line on stderr and end the whole job (every rank) with exit status `code`. Never returns."""
        where = f" (rank {self.rank} of {self.size})" if self.size > 1 else ""
        message = " ".join(str(message).splitlines())
        try:
            sys.stderr.write(f"error{where}: {message}\n")
            sys.stderr.flush()
        finally:
            if self.comm is not None:
                # The line sits in the pipe to the launcher's proxy; MPI_Abort makes the launcher kill
                # every proxy, which can drop what it has not forwarded yet (seen in CI: an empty
                # stderr). A moment's grace lets the proxy forward the line first.
                time.sleep(ABORT_GRACE_SECONDS)
                self.comm.Abort(code)  # the launcher kills the other ranks
            os._exit(code)

    def install_excepthook(self, describe=None) -> None:
        """Make an uncaught exception in any thread of this rank abort the whole job with one line.

        describe(exc) -> str gives the line (default: the message of the error, prefixed by its type
        unless it is one of ours). A single-process world keeps Python's normal behaviour.
        """
        if self.comm is None or self.size == 1:
            return
        describe = describe or _describe_exception

        def hook(exc_type, exc, tb):
            if issubclass(exc_type, KeyboardInterrupt):
                self.abort("interrupted", 130)
            self.abort(describe(exc), 1)

        sys.excepthook = hook
        threading.excepthook = lambda args: hook(args.exc_type, args.exc_value, args.exc_traceback)


def _describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__module__.startswith("tui_llm"):  # our errors are already one line for the user
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_buffer(buf, dtype, what: str) -> None:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(buf).__name__}")
    if dtype is not None and buf.dtype != dtype:
        raise TypeError(f"{what}: expected {np.dtype(dtype).name}, got {buf.dtype.name}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{what}: the buffer must be C-contiguous (one flat block of memory)")
