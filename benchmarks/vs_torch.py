"""Our training step against the same GPT-2 step in PyTorch (CPU, fp32, eager or torch.compile).

PyTorch is only a benchmark dependency; keep it out of the product's environment:

    python -m venv /tmp/benchvenv --system-site-packages
    /tmp/benchvenv/bin/pip install torch==2.13.0      # the CPU build; never a plain `pip install torch`
    /tmp/benchvenv/bin/python benchmarks/vs_torch.py [--compile] [--config d6:8:256] [--threads N]

The torch model below is a small nanoGPT-style module written here (independent of tui_llm):
same shapes, GELU (tanh), tied lm-head, GPT-2 init, the same padded vocabulary (50304 rows, as
ours; --torch-vocab 50257 for the unpadded one), AdamW with the same hyper-parameters and
weight decay on the 2-D tensors only, gradient clipping at 1.0 (ours computes the norm every
step too). Attention is F.scaled_dot_product_attention(is_causal=True), as nanoGPT. With the
padded vocabulary torch's cross-entropy runs over all 50304 logits (nanoGPT's way); ours over
the 50257 real ones (the padded logits are exactly 0 in both, so the work is the same).

In each configuration our steps run first, then torch's, in the same process. With --bf16 both
models live at once and their steps alternate (ours with --matmul-dtype bf16's products, torch's
forward under torch.autocast("cpu", dtype=torch.bfloat16), its backward following it), so a
change in the machine's load hits both alike. tui_llm sets
OMP_WAIT_POLICY=PASSIVE for its own thread pools on import; torch gets its default (the variable
is removed before torch loads its OpenMP runtime) unless you set OMP_WAIT_POLICY yourself.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import sys
import time
from collections import defaultdict

import common
import numpy as np
from common import (
    Stats,
    add_markdown_arg,
    command_line,
    emit_markdown,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)
from step import DEFAULT_RUNS, HPARAMS, PHASES, Bench, RunSpec, time_steps

from tui_llm.engine.machine import set_threads

TORCH_INSTALL = "python -m venv /tmp/benchvenv --system-site-packages && /tmp/benchvenv/bin/pip install torch==2.13.0"


# ---------------------------------------------------------------------------------------
# nanoGPT-style GPT-2 in PyTorch (built inside a function so torch is imported only when needed)

def build_torch_gpt(torch, cfg, vocab_rows: int, seed: int):
    nn, F = torch.nn, torch.nn.functional
    C, NH, L, maxT = cfg.channels, cfg.num_heads, cfg.num_layers, cfg.max_seq_len

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(C, 4 * C)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(C), SelfAttention()
            self.ln_2, self.mlp = nn.LayerNorm(C), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab_rows, C)
            self.wpe = nn.Embedding(maxT, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.lm_head = nn.Linear(C, vocab_rows, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            self.register_buffer("pos", torch.arange(maxT), persistent=False)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(self.pos[:T])
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    torch.manual_seed(seed)
    model = GPT()
    residual_std = 0.02 / math.sqrt(2 * L)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, residual_std if name.endswith("c_proj.weight") else 0.02)
            elif name.endswith(".bias"):
                p.zero_()
        model.wte.weight[cfg.vocab_size:] = 0.0  # padded rows, as ours
    return model


def make_torch_optimizer(torch, model, impl: str):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": HPARAMS["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=HPARAMS["lr"], betas=(HPARAMS["beta1"], HPARAMS["beta2"]), eps=HPARAMS["eps"])
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    elif impl == "for-loop":
        kwargs["foreach"] = False
    return torch.optim.AdamW(groups, **kwargs)


class TorchBench:
    def __init__(self, torch, bench: Bench, vocab_rows: int, adamw: str, compile_: bool, autocast: bool = False):
        self.torch = torch
        self.autocast = autocast
        self.model = build_torch_gpt(torch, bench.config, vocab_rows, seed=1337)
        self.optimizer = make_torch_optimizer(torch, self.model, adamw)
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.inputs = torch.from_numpy(bench.inputs.astype(np.int64))
        self.targets = torch.from_numpy(bench.targets.astype(np.int64))
        self.params = list(self.model.parameters())
        self.last_loss = float("nan")

    def step(self) -> tuple[float, float, float]:
        torch = self.torch
        t0 = time.perf_counter()
        if self.autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = self.forward(self.inputs, self.targets)
        else:
            loss = self.forward(self.inputs, self.targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, HPARAMS["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        self.last_loss = loss.item()
        return t1 - t0, t2 - t1, t3 - t2


def time_torch(tb: TorchBench, steps: int, warmup: int) -> dict[str, Stats]:
    for _ in range(warmup):
        tb.step()
    samples = defaultdict(list)
    for _ in range(steps):
        f, b, o = tb.step()
        for name, s in zip(PHASES + ("step",), (f, b, o, f + b + o)):
            samples[name].append(s)
    return {k: Stats(v) for k, v in samples.items()}


def adamw_impl_name(optimizer) -> str:
    d = optimizer.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach"):
        return "foreach"
    return "torch default (single-tensor for-loop on CPU)" if d.get("foreach") is None else "for-loop"


def torch_environment() -> str:
    """Give torch its own OpenMP defaults: drop the OMP_WAIT_POLICY that tui_llm set for our pools
    (unless the user set it), before torch loads its OpenMP runtime. Ours has already read it."""
    if common.USER_THREAD_ENV.get("OMP_WAIT_POLICY") is None and "OMP_WAIT_POLICY" in os.environ:
        del os.environ["OMP_WAIT_POLICY"]
        return "OMP_WAIT_POLICY unset for torch (its default)"
    return f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} for torch"


# ---------------------------------------------------------------------------------------

def time_alternating(bench: Bench, tb: TorchBench, steps: int, warmup: int) -> tuple[dict, dict]:
    """(ours, torch's) Stats by phase, their steps alternating."""
    samples: tuple[dict, dict] = (defaultdict(list), defaultdict(list))
    for i in range(warmup + steps):
        for side, step in zip(samples, (bench.step, tb.step)):
            f, b, o = step()
            if i >= warmup:
                for name, s in zip(PHASES + ("step",), (f, b, o, f + b + o)):
                    side[name].append(s)
    return tuple({k: Stats(v) for k, v in side.items()} for side in samples)  # type: ignore[return-value]


def run_bf16(torch, spec: RunSpec, args) -> str:
    """Ours with bf16 products against torch eager under autocast(bfloat16), alternating."""
    bench = Bench(spec)
    bench.model.w.matmul_dtype = "bf16"
    vocab_rows = args.torch_vocab or bench.config.padded_vocab_size
    print(f"== {spec}: {bench.model.num_parameters / 1e6:.2f}M params, ours --matmul-dtype bf16 vs torch eager "
          f"autocast(bfloat16), alternating, {args.steps} steps after {args.warmup} warm-up, {args.threads_used} threads")
    tb = TorchBench(torch, bench, vocab_rows, args.adamw, args.compile, autocast=True)
    ours, theirs = time_alternating(bench, tb, args.steps, args.warmup)
    rows = [[name, ours[name].ms(), theirs[name].ms(), f"{theirs[name].median / ours[name].median:.2f}"]
            for name in PHASES + ("step",)]
    headers = ["", "ours bf16 median (min-max)", "torch autocast bf16 median (min-max)", "torch/ours"]
    print(text_table(headers, rows))
    notes = (f"torch/ours {theirs['step'].median / ours['step'].median:.2f} for the whole step; tokens/s ours "
             f"{bench.tokens / ours['step'].median:,.0f}, torch {bench.tokens / theirs['step'].median:,.0f}; "
             f"last losses ours {bench.model.forward(bench.inputs, bench.targets):.3f}, torch {tb.last_loss:.3f}")
    print(notes)
    print()
    return "\n".join([f"### {spec}, ours bf16 products vs torch eager autocast(bfloat16), {args.threads_used} threads",
                      "", markdown_table(headers, rows), "", notes, ""])


def run_one(torch, spec: RunSpec, args) -> str:
    if args.bf16:
        return run_bf16(torch, spec, args)
    bench = Bench(spec)
    cfg = bench.config
    vocab_rows = args.torch_vocab or cfg.padded_vocab_size
    print(f"== {spec}: {bench.model.num_parameters / 1e6:.2f}M params, {args.steps} steps after {args.warmup} "
          f"warm-up, {args.threads_used} threads")
    ours = time_steps(bench, args.steps, args.warmup)
    our_loss = bench.model.forward(bench.inputs, bench.targets)
    del bench.model, bench.optimizer
    gc.collect()

    tb = TorchBench(torch, bench, vocab_rows, args.adamw, args.compile)
    theirs = time_torch(tb, args.steps, args.warmup)
    mode = "torch.compile" if args.compile else "eager"
    rows = []
    for name in PHASES + ("step",):
        o, t = ours[name], theirs[name]
        rows.append([name, o.ms(), t.ms(), f"{t.median / o.median:.2f}"])
    headers = ["", "ours median (min-max)", f"torch {mode} median (min-max)", "torch/ours"]
    print(text_table(headers, rows))
    ratio = theirs["step"].median / ours["step"].median
    notes = (f"torch/ours {ratio:.2f} for the whole step; tokens/s ours {bench.tokens / ours['step'].median:,.0f}, "
             f"torch {bench.tokens / theirs['step'].median:,.0f}; loss after the timed steps (same batch each step): "
             f"ours {our_loss:.3f}, torch {tb.last_loss:.3f} (different init draws)")
    print(notes)
    print()
    return "\n".join([f"### {spec}, torch {mode}, vocab rows {vocab_rows}, {args.threads_used} threads", "",
                      markdown_table(headers, rows), "", notes, ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", type=RunSpec.parse, metavar="MODEL:B:T",
                   help=f"configuration(s) (repeatable; default {' and '.join(DEFAULT_RUNS)})")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="threads for both (default: all cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the torch model (needs a C++ compiler)")
    p.add_argument("--torch-vocab", type=int, default=0,
                   help="rows of torch's wte/lm-head (default: our padded 50304; 50257 for the unpadded vocabulary)")
    p.add_argument("--adamw", choices=["default", "for-loop", "foreach", "fused"], default="default",
                   help="torch AdamW implementation (default: torch's own choice)")
    p.add_argument("--bf16", action="store_true",
                   help="ours with bf16 products (--matmul-dtype bf16) against torch eager under "
                        "autocast(bfloat16), steps alternating")
    add_markdown_arg(p)
    args = p.parse_args(argv)
    args.runs = args.config or [RunSpec.parse(s) for s in DEFAULT_RUNS]
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1 (the first step compiles)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        sys.exit(f"PyTorch is not installed in this interpreter ({sys.executable}). "
                 f"Use a separate venv:\n  {TORCH_INSTALL}\n"
                 f"then run this script with /tmp/benchvenv/bin/python")
    args.threads_used = set_threads(args.threads)
    info = machine_info()
    torch_env = torch_environment()
    import torch  # after machine_info, so its BLAS does not show up as ours
    torch.set_num_threads(args.threads_used)
    info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads, MKL {torch.backends.mkl.is_available()}, " \
                    f"mkldnn {torch.backends.mkldnn.is_available()}; {torch_env})"
    print_machine(info)
    sections = []
    for spec in args.runs:
        sections.append(run_one(torch, spec, args))
    probe = make_torch_optimizer(torch, torch.nn.Linear(1, 1), args.adamw)
    extra = f"torch AdamW: {adamw_impl_name(probe)}; clip_grad_norm_ {HPARAMS['grad_clip']}; {HPARAMS}"
    print(extra)
    md = "\n".join([f"## Ours vs PyTorch ({info['date']})", "", f"`{command_line()}`", "",
                    machine_markdown(info), "", extra, ""] + sections)
    emit_markdown(md, args.markdown)


if __name__ == "__main__":
    main()
