"""engine/distributed.py: real two-rank jobs under mpiexec (mpi4py + mpich come with the test extra).

Each MPI test starts `mpiexec -n 2 python script.py` with a timeout, so a collective that hangs
fails the test instead of hanging the suite.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import run as run_command
from tui_llm.engine.training import distributed
from tui_llm.engine.training.distributed import DistributedError, World

ROOT = Path(__file__).resolve().parents[1]


def _plain_env() -> dict:
    """This environment without any MPI launcher variables, with our tree first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_ENV_VARS
           and not k.startswith(("PMI", "OMPI_", "MPI_LOCAL", "HYDRA"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _mpiexec() -> str:
    exe = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    assert Path(exe).exists(), "mpiexec not found: install the test extra (mpi4py, mpich)"
    return exe


def run_ranks(tmp_path, body: str, n: int = 2) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text("import numpy as np\nfrom tui_llm.engine.training.distributed import World\n"
                      "world = World.detect()\nworld.install_excepthook()  # a failed assert ends the job at once\n"
                      + textwrap.dedent(body))
    return run_command([_mpiexec(), "-n", str(n), sys.executable, script], env=_plain_env())


@pytest.mark.mpi
@pytest.mark.slow
def test_allreduce_mean_and_sum(tmp_path):
    done = run_ranks(tmp_path, """
        assert (world.size, world.is_root) == (2, world.rank == 0) and world.is_distributed
        grads = np.arange(6, dtype=np.float32).reshape(2, 3) * (world.rank + 1)   # rank 0: g, rank 1: 2g
        same = world.allreduce_mean_(grads)
        assert same is grads
        assert np.array_equal(grads, np.arange(6, dtype=np.float32).reshape(2, 3) * 1.5), grads
        stats = world.allreduce_sum_(np.array([world.rank + 1.0, 10.0]))
        assert stats.tolist() == [3.0, 20.0], stats
        with open(f"{out}/rank{world.rank}.txt", "w") as f:  # own files: the ranks' stdout lines interleave
            f.write(f"{world.local_size} {world.threads_per_rank(cores=8)} {world.threads_per_rank()}")
    """.replace("{out}", str(tmp_path)))
    assert done.returncode == 0, done.stderr
    cores = len(os.sched_getaffinity(0))  # not bound by mpiexec: the two local ranks share these
    share = str(max(1, cores // 2))
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["2 4 " + share] * 2  # 8 cores, 2 ranks


@pytest.mark.mpi
@pytest.mark.slow
def test_zero_collectives_scatter_gather_and_gather_to_root(tmp_path):
    """reduce_scatter_mean leaves each rank its slice of the mean; allgather_shards_ fills in the
    others' slices; gather_shards assembles a sharded buffer on rank 0 only (n = 7: uneven slices)."""
    done = run_ranks(tmp_path, """
        n = 7
        start, end = world.shard(n)
        assert world.shard_bounds(n) == [(0, 3), (3, 7)] and (start, end) == world.shard_bounds(n)[world.rank]
        grads = np.arange(n, dtype=np.float32) * (world.rank + 1)              # rank 0: g, rank 1: 2g
        part = world.reduce_scatter_mean_(grads)
        assert np.shares_memory(part, grads) and part.size == end - start
        assert np.array_equal(part, (np.arange(n, dtype=np.float32) * 1.5)[start:end]), part
        params = np.full(n, -1.0, np.float32)
        params[start:end] = 10 * world.rank + np.arange(start, end)           # each rank updated its slice
        world.allgather_shards_(params)
        assert params.tolist() == [0, 1, 2, 13, 14, 15, 16], params
        full = world.gather_shards(params[start:end].copy(), n)
        assert (full.tolist() == params.tolist()) if world.is_root else full is None
        into = np.zeros(n + 2, np.float32)
        full = world.gather_shards(params[start:end].copy(), n, into=into)
        assert (np.shares_memory(full, into) and into[:n].tolist() == params.tolist()) if world.is_root else full is None
    """)
    assert done.returncode == 0, done.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_bcast_makes_every_rank_hold_roots_values(tmp_path):
    done = run_ranks(tmp_path, """
        params = np.full(5, world.rank, dtype=np.float32)
        world.bcast_(params)
        assert params.tolist() == [0.0] * 5, params
        cfg = world.bcast_obj({"lr": 3e-4} if world.is_root else None)
        assert cfg == {"lr": 3e-4}
        assert world.allgather_obj(world.rank * 10) == [0, 10]
        commands = world.agree(["pause", "save"] if world.rank == 0 else ["ignored"])
        assert commands == ["pause", "save"], commands
        world.barrier()
        print("ok", flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok") == 2


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_rank_that_raises_ends_the_whole_job(tmp_path, where):
    start = time.monotonic()
    done = run_ranks(tmp_path, f"""
        import threading
        def fail():
            raise ValueError("bad shard on rank 1\\nsecond line")
        if world.rank == 1:
            if "{where}" == "thread":  # e.g. the training thread under the UI
                worker = threading.Thread(target=fail)
                worker.start()
                worker.join()
                threading.Event().wait()  # the main thread would go on forever: the hook must end the job
            else:
                fail()
        world.barrier()  # rank 0 waits here forever unless the job is aborted
        print(f"rank {{world.rank}} passed the barrier", flush=True)
    """)
    assert time.monotonic() - start < 20  # ended by the abort, not by the test's timeout
    assert done.returncode != 0
    assert "passed the barrier" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines == ["error (rank 1 of 2): ValueError: bad shard on rank 1"], done
    assert "Traceback" not in done.stderr


def test_detect_outside_mpiexec_is_single_and_imports_no_mpi():
    code = ("import sys\nfrom tui_llm.engine.training.distributed import World\nw = World.detect()\n"
            "print(w.rank, w.size, w.is_root, w.is_distributed, 'mpi4py' in sys.modules)")
    done = run_command([sys.executable, "-c", code], env=_plain_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", "True", "False", "False"]


def test_single_process_world_methods_are_identities():
    world = World.single()
    g = np.ones(3, dtype=np.float32)
    assert world.allreduce_mean_(g) is g and g.tolist() == [1, 1, 1]
    assert world.allreduce_sum_(np.array([2.0])).tolist() == [2.0]
    assert world.bcast_obj("x") == "x" and world.allgather_obj(7) == [7] and world.agree(["stop"]) == ["stop"]
    world.barrier()
    assert world.shard(10) == (0, 10) and world.gather_shards(g, 3) is g
    assert world.reduce_scatter_mean_(np.arange(3, dtype=np.float32)).tolist() == [0, 1, 2]
    assert world.allgather_shards_(g) is g
    assert World(rank=2, size=3).shard_bounds(10) == [(0, 3), (3, 6), (6, 10)]
    assert world.threads_per_rank(cores=3) == 3
    assert World(local_size=4).threads_per_rank(cores=2) == 1  # never 0 threads
    with pytest.raises(TypeError, match="expected float32, got float64"):
        world.allreduce_mean_(np.ones(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        world.allreduce_sum_(np.ones((3, 2))[:, 0])


def test_launcher_without_mpi4py_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if the extra were not installed
    with pytest.raises(DistributedError, match=r'PMI_RANK is set.*pip install "tui-llm\[mpi\]"'):
        World.detect()


@pytest.mark.mpi
@pytest.mark.slow
def test_loaders_under_mpi_split_the_single_process_batches(tmp_path):
    done = run_ranks(tmp_path, """
        from tui_llm.engine.data.loader import TrainLoader, ValLoader
        tokens = np.random.default_rng(0).integers(0, 50257, size=7 * 8 * 4 + 1).astype(np.uint16)
        single = TrainLoader(tokens, B=8, T=4)
        mine = TrainLoader(tokens, B=2, T=4, grad_accum=2, rank=world.rank, world_size=world.size)
        for step in range(10):
            parts = world.allgather_obj([mine.next_batch()[0] for _ in range(2)])  # [rank][micro]
            total = np.concatenate([parts[r][m] for m in range(2) for r in range(2)])  # rows (m*N + r)*B
            assert np.array_equal(total, single.next_batch()[0]), step
        assert world.allgather_obj(mine.state_dict()) == [single.state_dict()] * 2
        val = ValLoader(tokens, B=8, T=4, rank=world.rank, world_size=world.size)
        stats = np.array([sum(float(x.mean()) for x, _ in val.batches(5)), val.share(5)])
        world.allreduce_sum_(stats)
        expected = np.mean([float(x.mean()) for x, _ in ValLoader(tokens, B=8, T=4).batches(5)])
        assert abs(stats[0] / stats[1] - expected) < 1e-9 and stats[1] == 5
    """)
    assert done.returncode == 0, done.stderr
