"""LoRA, a frozen bf16 base and activation recompute: step times side by side, and peak memory.

    python benchmarks/lora.py step --shape smollm2-360m -t 512            # full vs LoRA, +/- recompute
    python benchmarks/lora.py memory --shape llama-3.2-3b -t 2048 --lora-rank 16 --base-dtype bf16 --recompute
    python benchmarks/lora.py memory --shape smollm2-360m -t 512 --repo /work/main   # another tree's code
    python benchmarks/lora.py table                                        # the README's memory table

`step`: every case is a model of its own in this process (random weights, the named shape), and
the cases take turns step by step (full, LoRA, full + recompute, LoRA + recompute, then again), so
a change of load hits them alike; medians of --repeat steps after one warm-up each. A step is
what the trainer does: forward, backward, the gradient norm and AdamW's update.

`memory`: one case in a subprocess of its own (so its peak RSS is its own, from getrusage),
building the model (a bf16 base is drawn straight into bf16, chunk by chunk), then --steps steps;
it prints the peak RSS, each step's time and the estimate (training/memory.py) the run's header
would print. --repo runs another checkout's engine (e.g. main's, to compare with "today").

Shapes are the Hugging Face models' configs (random weights: the timing and memory depend on the
shape only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import common  # noqa: F401  (puts the repo root on sys.path)
from common import (
    Stats,
    add_markdown_arg,
    command_line,
    emit_markdown,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

SHAPES = {  # Hugging Face config.json values: layers, heads, kv heads, hidden, intermediate, vocab, tied, head_dim
    "smollm2-135m": dict(num_layers=30, num_heads=9, num_kv_heads=3, channels=576, ffn_channels=1536,
                         vocab_size=49152, tied_embeddings=True),
    "smollm2-360m": dict(num_layers=32, num_heads=15, num_kv_heads=5, channels=960, ffn_channels=2560,
                         vocab_size=49152, tied_embeddings=True),
    "qwen2.5-0.5b": dict(num_layers=24, num_heads=14, num_kv_heads=2, channels=896, ffn_channels=4864,
                         vocab_size=151936, tied_embeddings=True, qkv_bias=True),
    "qwen2.5-1.5b": dict(num_layers=28, num_heads=12, num_kv_heads=2, channels=1536, ffn_channels=8960,
                         vocab_size=151936, tied_embeddings=True, qkv_bias=True),
    "llama-3.2-1b": dict(num_layers=16, num_heads=32, num_kv_heads=8, channels=2048, ffn_channels=8192,
                         vocab_size=128256, tied_embeddings=True, head_dim=64),
    "llama-3.2-3b": dict(num_layers=28, num_heads=24, num_kv_heads=8, channels=3072, ffn_channels=8192,
                         vocab_size=128256, tied_embeddings=True, head_dim=128),
    "llama-3.1-8b": dict(num_layers=32, num_heads=32, num_kv_heads=8, channels=4096, ffn_channels=14336,
                         vocab_size=128256, tied_embeddings=False, head_dim=128),
}


def llama_config(shape: str, T: int):
    from tui_llm.engine.models.llama_config import LlamaConfig
    return LlamaConfig(max_seq_len=max(T, 64), **SHAPES[shape])


def build(shape: str, T: int, lora_rank: int, base_dtype: str, recompute: bool, seed: int = 0):
    """A Llama of the shape with random weights (N(0, 0.02) matrices, norms 1), drawn in chunks
    straight into the storage dtype; LoRA adapters (all-linear) with B random too, so every
    product does its real work."""
    import numpy as np

    from tui_llm.engine.kernels.bf16 import narrow_to_bf16
    from tui_llm.engine.models.llama import Llama
    from tui_llm.engine.models.llama_config import LlamaParams
    from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets

    cfg = llama_config(shape, T)
    params = LlamaParams(cfg, dtype=np.uint16 if base_dtype == "bf16" else np.float32)
    rng = np.random.default_rng(seed)
    chunk = np.empty(1 << 22, np.float32)
    for name, view in params.items():
        flat = view.reshape(-1)
        for i in range(0, flat.size, chunk.size):
            part = chunk[:min(chunk.size, flat.size - i)]
            if name.endswith(("ln1w", "ln2w", "lnfw")):
                part[:] = 1.0
            else:
                rng.standard_normal(out=part, dtype=np.float32)
                part *= np.float32(0.02)
            if base_dtype == "bf16":
                narrow_to_bf16(flat[i:i + part.size], part)
            else:
                flat[i:i + part.size] = part
    model = Llama(cfg, params.flat, recompute=recompute)
    if lora_rank:
        model.attach_lora(LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank, targets=resolve_targets(ALL_LINEAR, cfg)))
        rng.standard_normal(out=model.lora.params.flat, dtype=np.float32)
        model.lora.params.flat *= np.float32(0.01)
    return model


def one_step(model, opt, x, y) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = model.forward(x, y, training=True)
    model.backward()
    opt.update(1e-4)
    return time.perf_counter() - t0, loss


def batch(cfg, B: int, T: int, seed: int = 1):
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


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


def worker(args) -> None:
    """The memory case, in its own process: prints one JSON line."""
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.training.optim import AdamW

    set_threads(args.threads)
    t0 = time.perf_counter()
    model = build(args.shape, args.seq_len, args.lora_rank, args.base_dtype, args.recompute)
    build_s = time.perf_counter() - t0
    opt = AdamW(model)
    x, y = batch(model.config, args.batch, args.seq_len)
    times = [one_step(model, opt, x, y)[0] for _ in range(args.steps)]
    out = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "step_s": times, "build_s": build_s}
    try:
        from tui_llm.engine.models.lora import ALL_LINEAR, LoraConfig, resolve_targets
        from tui_llm.engine.training.memory import estimate_memory
        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                          targets=resolve_targets(ALL_LINEAR, model.config)) if args.lora_rank else None
        out["estimate"] = estimate_memory(model.config, args.batch, args.seq_len, lora=lora, base_dtype=args.base_dtype,
                                          recompute=args.recompute).to_dict()
    except ImportError:  # another tree (--repo) without the estimator
        pass
    print(json.dumps(out), flush=True)


def cmd_memory(args) -> None:
    info = print_machine()
    env = dict(os.environ)
    if args.repo:
        env["PYTHONPATH"] = args.repo
    cmd = [sys.executable, __file__, "worker", "--shape", args.shape, "-b", str(args.batch), "-t", str(args.seq_len),
           "--lora-rank", str(args.lora_rank), "--base-dtype", args.base_dtype, "--steps", str(args.steps),
           "--threads", str(args.threads)] + (["--recompute"] if args.recompute else [])
    if args.repo:  # the other tree's engine; this script's helpers come from here (no estimator there)
        cmd[1:2] = ["-c", f"import sys; sys.path.insert(0, {args.repo!r}); sys.argv = {[__file__] + cmd[2:]!r}; "
                          f"exec(open({__file__!r}).read())"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
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
    for name in ("step", "memory", "worker"):
        s = sub.add_parser(name)
        s.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
        s.add_argument("-b", "--batch", type=int, default=1)
        s.add_argument("-t", "--seq-len", type=int, default=512)
        s.add_argument("--lora-rank", type=int, default=16 if name == "step" else 0)
        s.add_argument("--threads", type=int, default=0)
        add_markdown_arg(s)
        if name == "step":
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
    {"step": cmd_step, "memory": cmd_memory, "worker": worker, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
