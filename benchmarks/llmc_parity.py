"""Loss-for-loss parity with llm.c's C trainer (train_gpt2.c) from the same random d12 init.

    python benchmarks/llmc_parity.py                 # 41 steps of train_gpt2.c (a few minutes)
    python benchmarks/llmc_parity.py --debug-batch   # test_gpt2.c's 10 steps on the val batch

The reference numbers are llm.c's, measured on the d12 random init that train_gpt2.py
`--model d12` writes (docs: /work/shared/docs/llmc-formats.md, sections 4.4 and 5.1). We rebuild
that init bit for bit with tui_llm.engine.models.torch_init.llmc_random_init (no file, no torch), prepare
Tiny Shakespeare exactly as llm.c (32,768 val + 305,260 train tokens) and run llm.c's loop with the
engine pieces (GPT, AdamW, TrainLoader, ValLoader):

  train_gpt2.c: B=4, T=64, 41 steps (0..40); at step % 10 == 0 the val loss = mean over the first 5
  sequential val batches; then one step on the next batch of the MT19937(42)-shuffled train loader;
  AdamW lr 1e-4, betas 0.9/0.999, eps 1e-8, no weight decay, no clipping, t = step + 1.
  (Its sampling at steps 20 and 40 does not touch weights or loaders, so it is skipped.)

  test_gpt2.c: x = val[0:256], y = val[1:257] (B=4, T=64), 10 steps of forward, backward, AdamW
  with weight decay 0.01 on *every* parameter (llm.c's CPU update has no decay mask; our AdamW
  decays only the matrix tensors, so this script widens its decay range to the whole buffer;
  --decay matrix shows the engine's own behaviour).

Prints ours vs llm.c's per printed loss and the max abs difference; exits 1 if any differs by more
than --tol (1e-3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tui_llm.engine.data.loader import TrainLoader, ValLoader
from tui_llm.engine.data.prepare import prepare_tinyshakespeare
from tui_llm.engine.data.tokens import open_tokens
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import preset_config
from tui_llm.engine.models.torch_init import llmc_random_init, torch_kernel
from tui_llm.engine.training.optim import AdamW, AdamWConfig

DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# llm.c train_gpt2.c on the d12 init (section 5.1): ("val", loss) before steps 0, 10, 20, 30, 40.
LLMC_TRAIN = [
    ("val", 11.004473), 11.020570, 10.017307, 9.738237, 9.786600, 9.677317, 9.398763, 9.333736, 9.236387,
    9.368864, 9.344717,
    ("val", 9.007449), 8.903372, 8.872856, 8.926947, 8.889278, 8.846312, 8.590706, 8.417929, 8.618948,
    8.449874, 8.639768,
    ("val", 8.396199), 8.531317, 8.419384, 8.282356, 8.060186, 8.272241, 8.152151, 7.804204, 8.195610,
    7.896630, 8.065359,
    ("val", 7.863893), 7.989599, 8.203827, 8.045155, 7.706654, 7.768500, 7.416212, 7.327904, 7.262179,
    7.152408, 7.394734,
    ("val", 7.424022), 7.359357,
]
# test_gpt2.c's 10 losses on the d12 debug batch (section 4.4).
LLMC_DEBUG = [10.987529, 9.045354, 7.959266, 10.209311, 7.055228, 6.476670, 6.323227, 5.167185, 4.637856, 4.074733]

B, T = 4, 64


def build_model(kernel: str) -> GPT:
    cfg = preset_config("d12")
    t0 = time.perf_counter()
    flat = llmc_random_init(cfg, seed=42, kernel=kernel)
    print(f"d12 llm.c init ({cfg.num_layers}L {cfg.num_heads}H {cfg.channels}C, {flat.size:,} params, "
          f"torch kernel {kernel}) built in {time.perf_counter() - t0:.1f} s", flush=True)
    return GPT(cfg, flat)


def prepare(source: Path, out_dir: Path):
    ds = prepare_tinyshakespeare(out_dir, source=source, log=lambda msg: None)
    train, val = open_tokens(ds.train_path), open_tokens(ds.val_path)
    print(f"Tiny Shakespeare: {train.num_tokens:,} train + {val.num_tokens:,} val tokens", flush=True)
    return train, val


def compare(rows: list[tuple[str, float, float]], tol: float) -> int:
    print(f"\n{'':>10} {'ours':>10} {'llm.c':>10} {'diff':>10}")
    worst = 0.0
    for label, ours, ref in rows:
        diff = ours - ref
        worst = max(worst, abs(diff))
        print(f"{label:>10} {ours:10.6f} {ref:10.6f} {diff:+10.6f}{'  <-- over tolerance' if abs(diff) > tol else ''}")
    ok = worst <= tol
    print(f"\nmax |diff| = {worst:.2e} over {len(rows)} losses (tolerance {tol:g}): {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def run_train(args, train, val) -> int:
    model = build_model(args.kernel)
    opt = AdamW(model, AdamWConfig(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0))
    loader = TrainLoader(train, B, T, shuffle=True, seed=42)
    val_loader = ValLoader(val, B, T)
    refs = iter(LLMC_TRAIN)
    rows = []
    t_start = time.perf_counter()
    for step in range(args.steps):
        if step % 10 == 0:
            losses = [model.forward(x, y) for x, y in val_loader.batches(5)]
            val_loss = float(np.float32(sum(np.float32(v) for v in losses)) / np.float32(5))  # float, as C
            ref = next(refs)
            rows.append((f"val@{step}", val_loss, ref[1]))
            print(f"val loss {val_loss:.6f}   (llm.c {ref[1]:.6f})", flush=True)
        t0 = time.perf_counter()
        x, y = loader.next_batch()
        loss = model.forward(x, y, training=True)
        model.backward()
        opt.update(1e-4)
        ref = next(refs)
        rows.append((f"step {step}", loss, ref))
        print(f"step {step}: train loss {loss:.6f} (took {(time.perf_counter() - t0) * 1e3:.0f} ms)   "
              f"(llm.c {ref:.6f})", flush=True)
    print(f"\n{args.steps} steps in {time.perf_counter() - t_start:.0f} s")
    return compare(rows, args.tol)


def run_debug_batch(args, val) -> int:
    model = build_model(args.kernel)
    opt = AdamW(model, AdamWConfig(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=0.0))
    if args.decay == "all":  # test_gpt2.c's gpt2_update decays every parameter
        opt.decay_starts = np.array([0], np.int64)
        opt.decay_ends = np.array([model.num_parameters], np.int64)
    window = np.asarray(val.tokens[:B * T + 1], dtype=np.int32)
    x, y = window[:-1].reshape(B, T), window[1:].reshape(B, T)
    rows = []
    t_start = time.perf_counter()
    for step in range(10):
        t0 = time.perf_counter()
        loss = model.forward(x, y, training=True)
        model.backward()
        opt.update(1e-4)
        rows.append((f"step {step}", loss, LLMC_DEBUG[step]))
        print(f"step {step}: loss {loss:.6f} (took {(time.perf_counter() - t0) * 1e3:.0f} ms)   "
              f"(llm.c {LLMC_DEBUG[step]:.6f})", flush=True)
    print(f"\n10 steps in {time.perf_counter() - t_start:.0f} s (weight decay 0.01 on {args.decay} parameters)")
    return compare(rows, args.tol)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--debug-batch", action="store_true", help="test_gpt2.c's 10 steps on the first val batch")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Tiny Shakespeare text (%(default)s)")
    ap.add_argument("--steps", type=int, default=41, help="train steps (41 = all of llm.c's; fewer for a quick look)")
    ap.add_argument("--kernel", default="auto", choices=("auto", "avx2", "scalar"),
                    help=f"torch normal_ kernel of the init (auto = torch's choice on this CPU: {torch_kernel()})")
    ap.add_argument("--decay", default="all", choices=("all", "matrix"),
                    help="--debug-batch: decay every parameter (test_gpt2.c) or only matrices (our AdamW)")
    ap.add_argument("--threads", type=int, default=0, help="numba + BLAS threads (0 = all cores)")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args(argv)
    if not 1 <= args.steps <= len([r for r in LLMC_TRAIN if not isinstance(r, tuple)]):
        ap.error("--steps must be between 1 and 41")
    print(f"threads: {set_threads(args.threads)}")
    with tempfile.TemporaryDirectory(prefix="llmc_parity_") as tmp:
        train, val = prepare(args.source, Path(tmp))
        return run_debug_batch(args, val) if args.debug_batch else run_train(args, train, val)


if __name__ == "__main__":
    sys.exit(main())
