"""LoRA, a frozen bf16 base and activation recompute: step times side by side, and peak memory.

    python benchmarks/lora.py step --shape smollm2-360m -t 512            # full vs LoRA, +/- recompute
    python benchmarks/lora.py memory --shape llama-3.2-3b -t 2048 --lora-rank 16 --base-dtype bf16 --recompute
    python benchmarks/lora.py memory --shape smollm2-360m -t 512 --repo /work/main   # another tree's code
    python benchmarks/lora.py table                                        # the README's memory table

`step`: every case is a model of its own in this process (random weights, the named shape), and
the cases take turns step by step (full, LoRA, full + recompute, LoRA + recompute, then again), so
a change of load hits them alike; medians of --repeat steps after one warm-up each. A step is
what the trainer does: forward, backward, the gradient norm and AdamW's update.

`memory`: one case in a subprocess of its own (lora_worker.py; its peak RSS is its own, from
getrusage), building the model (a bf16 base is drawn straight into bf16, chunk by chunk), then
--steps steps; it prints the peak RSS, each step's time and the estimate (training/memory.py) the
run's header would print. --repo runs another checkout's engine (e.g. main's, for "today").

Shapes are the Hugging Face models' configs (random weights: the timing and memory depend on the
shape only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
from common import (
    REPO_ROOT,
    Stats,
    add_markdown_arg,
    command_line,
    emit_markdown,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)
from lora_worker import SHAPES, batch, build, llama_config, one_step

# ---------------------------------------------------------------------------------------

def cmd_step(args) -> None:
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.training.optim import AdamW

    set_threads(args.threads)
    info = print_machine()
    cases = {"full": (0, False), "lora": (args.lora_rank, False), "full + recompute": (0, True),
             "lora + recompute": (args.lora_rank, True)}
    cases = {k: v for k, v in cases.items() if k in args.cases}
    runs = {}
    for name, (rank, recompute) in cases.items():
        model = build(args.shape, args.seq_len, rank, "fp32", recompute)
        runs[name] = (model, AdamW(model), [])
    x, y = batch(runs[next(iter(runs))][0].config, args.batch, args.seq_len)
    for model, opt, _ in runs.values():  # warm-up: compile, first-touch the buffers
        one_step(model, opt, x, y)
    losses = {}
    for _ in range(args.repeat):
        for name, (model, opt, times) in runs.items():
            seconds, losses[name] = one_step(model, opt, x, y)
            times.append(seconds)
            print(f"  {name}: {seconds:.2f} s", flush=True)
    stats = {name: Stats(times) for name, (_, _, times) in runs.items()}
    rows = []
    for name, s in stats.items():
        base = "full" if name.startswith("full") else "lora"
        vs_full = f"{s.median / stats['full'].median:.2f}x" if "full" in stats else "-"
        vs_plain = f"{s.median / stats[base].median:.2f}x" if "recompute" in name and base in stats else "-"
        rows.append([name, f"{s.median:.2f} s", f"{s.min:.2f}-{s.max:.2f}", vs_full, vs_plain])
    headers = ["step", "median", "min-max", "vs full", "recompute vs without"]
    title = f"{args.shape}, B={args.batch}, T={args.seq_len}, LoRA r={args.lora_rank} all-linear, {args.repeat} steps each"
    print("\n" + title + "\n" + text_table(headers, rows))
    emit_markdown(f"### LoRA and recompute step time: {title}\n\n`{command_line()}`\n\n{machine_markdown(info)}\n\n"
                  f"{markdown_table(headers, rows)}\n\nload average after: {os.getloadavg()[0]:.2f}", args.markdown)


def cmd_memory(args) -> None:
    info = print_machine()
    repo = args.repo or str(REPO_ROOT)
    cmd = [sys.executable, str(Path(__file__).with_name("lora_worker.py")), "--shape", args.shape, "-b", str(args.batch),
           "-t", str(args.seq_len), "--lora-rank", str(args.lora_rank), "--base-dtype", args.base_dtype,
           "--steps", str(args.steps), "--threads", str(args.threads)] + (["--recompute"] if args.recompute else [])
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=repo), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the worker failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    what = (f"{args.shape}, B={args.batch}, T={args.seq_len}, " +
            (f"LoRA r={args.lora_rank} all-linear, {args.base_dtype} base" if args.lora_rank else "full fine-tuning") +
            (", --recompute" if args.recompute else "") + (f", engine of {args.repo}" if args.repo else ""))
    est = result.get("estimate", {}).get("total")
    rows = [[what, f"{result['peak_rss'] / 2**30:.2f} GiB", f"{est / 2**30:.2f} GiB" if est else "-",
             ", ".join(f"{s:.1f}" for s in result["step_s"]) + " s", f"{result['build_s']:.0f} s"]]
    headers = ["run", "peak RSS", "estimate", "step times", "build"]
    print(text_table(headers, rows))
    emit_markdown(f"`{command_line()}`\n\n{machine_markdown(info)}\n\n{markdown_table(headers, rows)}", args.markdown)


def cmd_bf16(args) -> None:
    """The loss of a bf16 base against the fp32 base it was rounded from (random weights of the
    shape, --batches batches), and the time the base fingerprint takes on each storage."""
    import numpy as np

    from tui_llm.engine.kernels.bf16 import fingerprint, narrow_to_bf16
    from tui_llm.engine.machine import set_threads

    set_threads(args.threads)
    info = print_machine()
    if args.init_from:  # a trained model on real text: its validation tokens, consecutive windows
        from tui_llm.engine.data.tokens import open_dataset
        from tui_llm.engine.models.build import build_model
        from tui_llm.engine.training.model_source import load_model_source
        config, flat, name, _ = load_model_source(args.init_from)
        fp32 = build_model(config, flat)
        tokens = open_dataset(args.data, "auto", vocab_size=config.vocab_size).files[0].tokens
        windows = [np.asarray(tokens[i * args.seq_len * args.batch:(i + 1) * args.seq_len * args.batch + 1], np.int32)
                   for i in range(args.batches)]
        batches = [(w[:-1].reshape(args.batch, -1), w[1:].reshape(args.batch, -1)) for w in windows]
        what = f"{name}, {args.data}"
    else:
        fp32 = build(args.shape, args.seq_len, 0, "fp32", False)
        batches = [batch(fp32.config, args.batch, args.seq_len, seed=10 + i) for i in range(args.batches)]
        what = f"{args.shape} (random N(0, 0.02) weights)"
    bits = np.empty(fp32.num_parameters, np.uint16)
    narrow_to_bf16(bits, fp32.params.flat)
    bf16 = type(fp32)(fp32.config, bits)
    rows, worst = [], 0.0
    for i, (x, y) in enumerate(batches):
        a, b = fp32.forward(x, y), bf16.forward(x, y)
        worst = max(worst, abs(a - b) / a)
        rows.append([str(i), f"{a:.6f}", f"{b:.6f}", f"{b - a:+.2e}", f"{(b - a) / a:+.2e}"])
    times = {}
    for name, flat in (("fp32", fp32.params.flat), ("bf16", bits)):
        fingerprint(flat)
        t0 = time.perf_counter()
        fingerprint(flat)
        times[name] = time.perf_counter() - t0
    headers = ["batch", "loss, fp32 base", "loss, bf16 base", "difference", "relative"]
    title = f"{what}, B={args.batch}, T={args.seq_len}"
    print(f"{title}\n{text_table(headers, rows)}\nlargest relative difference {worst:.2e} (bf16 keeps 8 mantissa "
          f"bits: a weight moves by at most 2^-9 = {2**-9:.2e} of itself)")
    n = fp32.num_parameters
    fp_line = (f"fingerprint of {n / 1e9:.2f}B weights: {times['fp32']:.2f} s as fp32, {times['bf16']:.2f} s as bf16 "
               f"({n * 4 / times['fp32'] / 1e9:.1f} / {n * 2 / times['bf16'] / 1e9:.1f} GB/s)")
    print(fp_line)
    emit_markdown(f"### bf16 base: {title}\n\n`{command_line()}`\n\n{machine_markdown(info)}\n\n"
                  f"{markdown_table(headers, rows)}\n\nlargest relative difference {worst:.2e}\n\n{fp_line}",
                  args.markdown)


def cmd_table(args) -> None:
    """The memory table by model size (the estimator's numbers)."""
    from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets
    from tui_llm.engine.training.memory import estimate_memory

    headers = ["model (B=1)", "params", "T", "full", "full + recompute", "LoRA r=16, fp32 base", "LoRA, bf16 base",
               "LoRA, bf16 base + recompute"]
    rows = []
    for shape in SHAPES:
        for T in (512, 2048):
            cfg = llama_config(shape, T)
            lora = LoraConfig(rank=16, alpha=32.0, targets=resolve_targets(ALL_LINEAR, cfg))
            cases = [dict(), dict(recompute=True), dict(lora=lora), dict(lora=lora, base_dtype="bf16"),
                     dict(lora=lora, base_dtype="bf16", recompute=True)]
            gib = [f"{estimate_memory(cfg, 1, T, **case).total / 2**30:.1f}" for case in cases]
            from tui_llm.engine.models.llama_config import num_parameters
            rows.append([shape, f"{num_parameters(cfg) / 1e9:.2f}B", str(T), *gib])
    print(text_table(headers, rows))
    emit_markdown(markdown_table(headers, rows), args.markdown)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("step", "memory", "bf16"):
        s = sub.add_parser(name)
        s.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
        s.add_argument("-b", "--batch", type=int, default=1)
        s.add_argument("-t", "--seq-len", type=int, default=512)
        s.add_argument("--lora-rank", type=int, default=16 if name == "step" else 0)
        s.add_argument("--threads", type=int, default=0)
        add_markdown_arg(s)
        if name == "bf16":
            s.add_argument("--batches", type=int, default=4)
            s.add_argument("--init-from", help="a trained model instead of random weights (with --data)")
            s.add_argument("--data", help="token file the trained model is evaluated on")
        elif name == "step":
            s.add_argument("--repeat", type=int, default=3)
            s.add_argument("--cases", nargs="+", default=["full", "lora", "full + recompute", "lora + recompute"])
        else:
            s.add_argument("--base-dtype", choices=("fp32", "bf16"), default="fp32")
            s.add_argument("--recompute", action="store_true")
            s.add_argument("--steps", type=int, default=1)
            s.add_argument("--repo", help="run this checkout's engine instead (memory only)")
    t = sub.add_parser("table")
    add_markdown_arg(t)
    args = p.parse_args()
    {"step": cmd_step, "memory": cmd_memory, "table": cmd_table, "bf16": cmd_bf16}[args.cmd](args)


if __name__ == "__main__":
    main()
