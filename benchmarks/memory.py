"""Peak memory (RSS) of a training run, measured in a fresh child process.

    python benchmarks/memory.py                        # d12 B=4 T=64, 3 steps + a checkpoint save
    python benchmarks/memory.py --model d6 --batch 8 --seq 256 --steps 2

The child builds the model and AdamW, runs the steps as the trainer does (forward, backward,
grad_norm, update), saves a training checkpoint (params, adam_m, adam_v) into a temporary
directory with save_training_checkpoint, and reports its VmHWM (peak RSS) after each phase.
The parent also reads the child's ru_maxrss (RUSAGE_CHILDREN). Target for d12 B=4 T=64: 2.4 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import (
    add_markdown_arg,
    command_line,
    emit_markdown,
    fmt_bytes,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

TARGET_BYTES = 2.4e9  # d12 B=4 T=64


def proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    return 0


# ---------------------------------------------------------------------------------------
# The child: one training run, printing JSON

def child(args) -> None:
    phases = []

    def mark(name):
        phases.append((name, proc_status_bytes("VmRSS"), proc_status_bytes("VmHWM")))

    mark("python started")
    import numpy as np

    from tui_llm.engine.formats import save_training_checkpoint
    from tui_llm.engine.kernels.compile import compile_kernels
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import preset_config
    from tui_llm.engine.training.optim import AdamW, AdamWConfig
    set_threads(args.threads)
    compile_kernels()
    mark("engine imported, kernels loaded")

    cfg = preset_config(args.model)
    model = GPT.random_init(cfg, seed=1)
    opt = AdamW(model, AdamWConfig(lr=3e-4, weight_decay=0.1, grad_clip=1.0))
    mark("params + AdamW m, v")
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1), dtype=np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for i in range(args.steps):
        model.forward(x, y, training=True)
        model.backward()
        opt.update(3e-4, opt.grad_norm())
        mark(f"step {i + 1}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save_training_checkpoint(Path(tmp) / "ckpt.safetensors",
                                 {"params": model.params.flat, "adam_m": opt.m, "adam_v": opt.v},
                                 {"step": args.steps, "model_config": cfg.to_dict()})
        save_s = time.perf_counter() - t0
        size = (Path(tmp) / "ckpt.safetensors").stat().st_size
    mark("checkpoint saved")
    n = model.num_parameters
    print(json.dumps({
        "phases": phases, "num_parameters": n, "state_bytes": 4 * 4 * n,  # params, grads, m, v
        "activation_bytes": model.acts.nbytes(), "checkpoint_bytes": size, "save_seconds": save_s,
    }))


# ---------------------------------------------------------------------------------------
# The parent

def run_child(args) -> tuple[dict, int]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO_ROOT)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    return report, max_rss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_markdown_arg(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    info = print_machine(machine_info())
    report, max_rss = run_child(args)
    n = report["num_parameters"]
    rows = [[name, fmt_bytes(rss), fmt_bytes(hwm)] for name, rss, hwm in report["phases"]]
    print(f"{args.model} B={args.batch} T={args.seq}, {args.steps} steps + checkpoint save, in a child process")
    print(text_table(["after", "RSS", "peak RSS (VmHWM)"], rows))
    peak = max(max_rss, report["phases"][-1][2])
    sizes = (f"params+grads+m+v: {report['state_bytes'] / 1e9:.3f} GB ({n:,} params x 4 tensors x 4 bytes); "
             f"activations: {report['activation_bytes'] / 1e9:.3f} GB; "
             f"checkpoint file: {report['checkpoint_bytes'] / 1e9:.3f} GB "
             f"saved in {report['save_seconds']:.2f} s")
    verdict = (f"peak RSS {peak / 1e9:.3f} GB ({fmt_bytes(peak)}; ru_maxrss of the child {max_rss / 1e9:.3f} GB)"
               + (f" vs target {TARGET_BYTES / 1e9:.1f} GB: {'OK' if peak <= TARGET_BYTES else 'OVER'}"
                  if (args.model, args.batch, args.seq) == ("d12", 4, 64) else ""))
    print(sizes)
    print(verdict)
    md = "\n".join([f"## Peak memory ({info['date']})", "", f"`{command_line()}`", "", machine_markdown(info), "",
                    markdown_table(["after", "RSS", "peak RSS (VmHWM)"], rows), "", sizes, "", verdict, ""])
    emit_markdown(md, args.markdown)


if __name__ == "__main__":
    main()
