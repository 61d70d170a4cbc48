"""Training attention, forward + backward: the blocked version that keeps only row statistics
(attention.py) against the one that kept the T x T probabilities (commit 8523bad), side by side.

    python benchmarks/attention.py                       # GPT-2 d12 and SmolLM2-135M shapes, T = 64..2048
    python benchmarks/attention.py --seqs 64,512 --repeats 7
    python benchmarks/attention.py --memory              # also peak RSS of a d12-shaped model step at T=2048, B=1
    python benchmarks/attention.py --threads 1           # one thread: CPU time, robust to other jobs on the machine

For each shape and T, one round times (in this order, alternating, `--repeats` rounds; medians):
  old       the kept-probabilities attention, each layer with its own (B, H, T, T) buffer
  new       attention.py, causal (rows of one block, T <= BLOCK, keep their probabilities as the models do)
  new docs  attention.py with doc_starts, every row one document (must cost <= 1.05x `new`)
  packed    attention.py with doc_starts, rows packed with documents of 1..T/4 tokens (random)
Times are wall-clock medians, and the medians of the process's CPU time beside them (with one
thread the CPU time is the robust number on a shared machine: it does not count the time other
jobs hold the core). Each pass runs the forward over all layers, then the backward over them in reverse, as a
training step does (so each layer's kept buffers are as cold as there). Where the old version's
probabilities for all layers would not fit in --old-gib, fewer layers are timed and the time
is scaled to all of them (marked ~).

--memory runs one forward + backward of a d12-shaped GPT-2 (max_seq_len 2048) at B=1, T=2048
in a fresh child process each for the old tree (git archive of the old commit) and this one,
and reports each child's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import REPO_ROOT, command_line, fmt_bytes, print_machine

import tui_llm.engine.kernels.attention as A

OLD_COMMIT = "8523bad"  # the last commit with the (B, H, T, T) probabilities
# name, layers, heads, key/value heads, head dim
SHAPES = [("GPT-2 d12", 12, 12, 12, 64), ("SmolLM2-135M", 30, 9, 3, 64)]


def git_show(path: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{OLD_COMMIT}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def load_module(name: str, source: str, folder: Path):
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def old_attention():
    """attention.py and its softmax kernels as of OLD_COMMIT, loaded from git."""
    folder = Path(tempfile.mkdtemp(prefix="old_attention_"))
    load_module("old_kernels", git_show("tui_llm/engine/kernels.py"), folder)
    source = git_show("tui_llm/engine/attention.py").replace("from tui_llm.engine.kernels import",
                                                             "from old_kernels import")
    return load_module("old_attention", source, folder)


def packed_starts(B: int, T: int, rng) -> np.ndarray:
    """Rows packed with documents of 1..T/4 tokens."""
    is_start = np.zeros((B, T), bool)
    for b in range(B):
        t = 0
        while t < T:
            is_start[b, t] = True
            t += int(rng.integers(1, max(T // 4, 2) + 1))
    return A.doc_starts_from_mask(is_start)


class Case:
    """Buffers for L layers of one shape, shared by every variant."""

    def __init__(self, B, T, L, H, KV, hd, old_bytes_budget):
        rng = np.random.default_rng(0)
        W = (H + 2 * KV) * hd
        self.full_layers = L
        self.layers = max(2, min(L, int(old_bytes_budget // (4 * B * H * T * T))))
        L = self.layers
        self.B, self.T, self.H, self.KV, self.hd = B, T, H, KV, hd
        self.qkv = rng.standard_normal((L, B, T, W), dtype=np.float32)
        self.datty = rng.standard_normal((B, T, H * hd), dtype=np.float32)
        self.atty = np.empty((L, B, T, H * hd), np.float32)
        self.dqkv = np.empty((B, T, W), np.float32)
        self.lse = np.empty((L, B, H, T), np.float32)
        self.scratch = A.AttentionScratch(B, T, H, KV, hd)
        # rows of one block keep their probabilities, as the models do
        self.probs = np.zeros((L, B, H, T, T), np.float32) if A.keeps_probabilities(T) else None
        self.one_doc = np.zeros((B, T), np.int32)
        self.packed = packed_starts(B, T, rng)
        # the old version's buffers: every layer's probabilities, one layer's d scores
        self.att = np.zeros((L, B, H, T, T), np.float32)
        self.dscores = np.zeros((B, H, T, T), np.float32)
        self.per_head = np.zeros((B, T, H * hd), np.float32) if KV < H else None

    def run_new(self, doc_starts) -> None:
        H, KV = self.H, self.KV
        for l in range(self.layers):
            A.attention_forward(self.atty[l], self.lse[l], self.qkv[l], H, KV, self.scratch, doc_starts,
                                self.kept(l))
        for l in reversed(range(self.layers)):
            A.attention_backward(self.dqkv, self.datty, self.atty[l], self.lse[l], self.qkv[l], H, KV, self.scratch,
                                 doc_starts, self.kept(l))

    def kept(self, l: int) -> np.ndarray | None:
        return None if self.probs is None else self.probs[l]

    def run_old(self, old) -> None:
        H, KV = self.H, self.KV
        for l in range(self.layers):
            old.attention_forward(self.atty[l], self.att[l], self.qkv[l], H, KV)
        for l in reversed(range(self.layers)):
            old.attention_backward(self.dqkv, self.datty, self.att[l], self.qkv[l], H, KV, self.dscores, self.per_head)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_case(case: Case, old, repeats: int) -> dict[str, tuple[float, float]]:
    """(median wall, median CPU) seconds over all layers (scaled to all of them) per variant, alternating."""
    variants = {
        "old": lambda: timed(lambda: case.run_old(old)),
        "new": lambda: timed(lambda: case.run_new(None)),
        "new docs": lambda: timed(lambda: case.run_new(case.one_doc)),
        "packed": lambda: timed(lambda: case.run_new(case.packed)),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up: compile, touch the buffers
        run()
    for _ in range(repeats):
        for name, run in variants.items():
            samples[name].append(run())
    scale = case.full_layers / case.layers
    return {name: (statistics.median(w for w, _ in s) * scale, statistics.median(c for _, c in s) * scale)
            for name, s in samples.items()}


# ---------------------------------------------------------------------------------------
# Peak memory of one d12-shaped training step at T=2048

MEMORY_CHILD = """
import json, sys
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
import numpy as np
try:  # this tree's layout, or the old commit's
    from tui_llm.engine.models.gpt2 import GPT, GPTConfig
except ImportError:
    from tui_llm.engine.config import GPTConfig
    from tui_llm.engine.model import GPT
B, T = 1, int(sys.argv[1])
cfg = GPTConfig(max_seq_len=T, vocab_size=50257, num_layers=12, num_heads=12, channels=768)
model = GPT.random_init(cfg, seed=1)
model.allocate_grads()
rng = np.random.default_rng(1)
x, y = (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32) for _ in range(2))
before = hwm()
model.forward(x, y, training=True)
model.backward()
print(json.dumps({"before_step": before, "peak": hwm(), "activations": model.acts.nbytes()}))
"""


def peak_memory(tree: Path, T: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(T)], capture_output=True, text=True, check=True,
                         cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_1b_activations(T: int, B: int = 1) -> tuple[int, int]:
    """Llama-3.2-1B's training activations at (B, T), (old, new) bytes: new from
    Activations.nbytes_for; old = new without the row statistics and the attention scratch, with
    the (L+1) (B, H, T, T) probabilities and d scores and the per-query-head dK/dV buffer back."""
    from tui_llm.engine.models.llama import Activations
    from tui_llm.engine.models.llama_config import LlamaConfig
    cfg = LlamaConfig(vocab_size=128256, max_seq_len=T, num_layers=16, num_heads=32, num_kv_heads=8, channels=2048,
                      ffn_channels=8192, head_dim=64, rope_theta=500000.0)
    L, H = cfg.num_layers, cfg.num_heads
    new = Activations.nbytes_for(cfg, B, T)
    scratch = A.AttentionScratch.nbytes_for(B, T, H, cfg.num_kv_heads, cfg.head_dim)
    old = new - 4 * L * B * H * T - scratch + 4 * (L + 1) * B * H * T * T + 4 * B * T * cfg.q_dim
    return old, new


def memory_report(T: int) -> None:
    old, new = llama_1b_activations(T)
    print(f"Llama-3.2-1B shape, B=1 T={T}: training activations {fmt_bytes(old)} old, {fmt_bytes(new)} new "
          "(Activations.nbytes_for, computed)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), OLD_COMMIT], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "old", filter="data")
        for label, tree in (("old", Path(tmp) / "old"), ("new", REPO_ROOT)):
            m = peak_memory(tree, T)
            print(f"d12-shaped GPT-2, B=1 T={T}, one forward + backward, {label}: peak RSS {fmt_bytes(m['peak'])} "
                  f"(params + grads before the step {fmt_bytes(m['before_step'])}; "
                  f"activations {fmt_bytes(m['activations'])})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqs", default="64,256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old-gib", type=float, default=3.0, help="most memory for the old version's probabilities")
    ap.add_argument("--block", type=int, default=None, help="attention.BLOCK to use (default: the module's)")
    ap.add_argument("--threads", type=int, default=0, help="threads for numba and BLAS (0 = all cores)")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    from tui_llm.engine.machine import set_threads
    threads = set_threads(args.threads)
    print_machine()
    print(f"command: {command_line()}  ({threads} threads)\n")
    if args.block:
        A.BLOCK = args.block
    print(f"attention.BLOCK = {A.BLOCK}; medians of {args.repeats} alternating rounds, all layers forward + backward;"
          " wall ms [CPU ms]\n")
    if not args.memory_only:
        old = old_attention()
        for name, L, H, KV, hd in SHAPES:
            for T in (int(t) for t in args.seqs.split(",")):
                case = Case(args.batch, T, L, H, KV, hd, args.old_gib * 2**30)
                r = bench_case(case, old, args.repeats)
                approx = "~" if case.layers < L else " "

                def cell(k, versus=None, r=r):
                    (w, c), text = r[k], f"{r[k][0] * 1e3:7.0f} [{r[k][1] * 1e3:7.0f}]"
                    if versus:
                        (vw, vc) = r[versus]
                        text += f" {w / vw:4.2f}x [{c / vc:4.2f}x]"
                    return text

                print(f"{name:13s} B={args.batch} T={T:5d} {L} layers{approx}  old {cell('old')}  "
                      f"new {cell('new', 'old')} of old  one-doc {cell('new docs', 'new')} of new  "
                      f"packed {cell('packed', 'new')} of new", flush=True)
                del case
    if args.memory or args.memory_only:
        print()
        memory_report(2048)


if __name__ == "__main__":
    sys.exit(main())
