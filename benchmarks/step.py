"""Training-step time against its BLAS floor, with an optional per-kernel profile.

    python benchmarks/step.py                        # d12 B=4 T=64 and d6 B=8 T=256
    python benchmarks/step.py --config d4:8:128      # or --model d4 --batch 8 --seq 128
    python benchmarks/step.py --profile --markdown   # + per-kernel breakdown, markdown section
    python benchmarks/step.py --matmul-dtype compare --threads 2   # fp32 vs bf16 products, side by side

Each step is timed in three phases: forward (with the fused softmax/cross-entropy), backward,
optimizer (grad_norm + AdamW update), as the trainer runs them. The floor is the same step's
matrix products alone: every np.matmul call model.py makes in one step is recorded (shapes,
strides, which operands share memory) and replayed through np.matmul on fresh buffers with the
same layout (transposed views where the step used them, same page offsets, same aliasing),
timed the same way. Steps and replays alternate, so load changes hit both alike. step/floor is
what the non-matmul work (kernels, optimizer, glue) costs on top of the products.

--profile then runs --steps more steps with every kernel and matmul wrapped in a timer.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import common  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
from common import (
    Stats,
    add_markdown_arg,
    command_line,
    emit_markdown,
    fmt_ms,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

import tui_llm.engine.kernels.grad_accumulation as GA
import tui_llm.engine.models.base as MB
import tui_llm.engine.models.gpt2 as M
import tui_llm.engine.models.weights as MW
from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import gpt2 as GK
from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.gpt2_config import preset_config
from tui_llm.engine.training.optim import AdamW, AdamWConfig

DEFAULT_RUNS = ["d12:4:64", "d6:8:256"]
# Optimizer hyper-parameters shared with vs_torch.py (nanoGPT's defaults, clipping on).
HPARAMS = dict(lr=6e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
PHASES = ("forward", "backward", "optimizer")


# ---------------------------------------------------------------------------------------
# The step

@dataclass(frozen=True)
class RunSpec:
    model: str
    batch: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        try:
            model, batch, seq = text.split(":")
            return cls(model, int(batch), int(seq))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected MODEL:BATCH:SEQ (e.g. d4:8:128), got {text!r}") from None

    def __str__(self) -> str:
        return f"{self.model} B={self.batch} T={self.seq}"


class Bench:
    """A randomly initialised model, its optimizer and one fixed random batch."""

    def __init__(self, spec: RunSpec, seed: int = 1337):
        self.spec = spec
        self.config = preset_config(spec.model)
        self.model = M.GPT.random_init(self.config, seed=seed)
        self.optimizer = AdamW(self.model, AdamWConfig(**HPARAMS))
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, self.config.vocab_size, size=(spec.batch, spec.seq + 1), dtype=np.int32)
        self.inputs = np.ascontiguousarray(tokens[:, :-1])
        self.targets = np.ascontiguousarray(tokens[:, 1:])
        self.phase = ""  # which phase is running (read by the profiler's matmul wrapper)

    @property
    def tokens(self) -> int:
        return self.spec.batch * self.spec.seq

    clock = staticmethod(time.perf_counter)  # time.thread_time for --clock cpu

    def step(self) -> tuple[float, float, float]:
        """One training step; returns (forward, backward, optimizer) seconds."""
        t0 = self.clock()
        self.phase = "fwd"
        self.model.forward(self.inputs, self.targets, training=True)
        t1 = self.clock()
        self.phase = "bwd"
        self.model.backward()
        t2 = self.clock()
        self.phase = "opt"
        norm = self.optimizer.grad_norm()
        self.optimizer.update(HPARAMS["lr"], norm)
        t3 = self.clock()
        self.phase = ""
        return t1 - t0, t2 - t1, t3 - t2


def time_steps(bench: Bench, steps: int, warmup: int) -> dict[str, Stats]:
    """Per-phase and whole-step Stats over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        bench.step()
    samples = defaultdict(list)
    for _ in range(steps):
        f, b, o = bench.step()
        for name, s in zip(PHASES + ("step",), (f, b, o, f + b + o)):
            samples[name].append(s)
    return {name: Stats(v) for name, v in samples.items()}


# ---------------------------------------------------------------------------------------
# Seeing the model's matrix products. model.py (and grad_accumulation.py, for the weight
# gradients) call np.matmul(a, b, out=out) directly; while a step is recorded or profiled, the
# `np` name in those modules is a stand-in whose matmul is ours. attention.py's products are not
# routed: the floor is the model's weight products alone, attention counts as kernel time.

class _NumpyWithMatmul:
    """numpy, except that matmul is `fn`."""

    def __init__(self, fn):
        self.matmul = fn

    def __getattr__(self, name):
        return getattr(np, name)


@contextlib.contextmanager
def matmuls_through(fn, model_module=M):
    """Route every np.matmul(a, b, out=out) of the model's module (tui_llm.engine.models.gpt2 by
    default), models/base.py and models/weights.py (where the weight products are) and of
    grad_accumulation through fn(a, b, out=out)."""
    stand_in = _NumpyWithMatmul(fn)
    model_module.np = GA.np = MB.np = MW.np = stand_in
    try:
        yield
    finally:
        model_module.np = GA.np = MB.np = MW.np = np


# ---------------------------------------------------------------------------------------
# Which weight a matmul belongs to

WEIGHT_LABELS = {"qkvw": "qkv", "attprojw": "attproj", "fcw": "fc", "fcprojw": "fcproj", "wte": "lm-head"}


def _extent(x: np.ndarray) -> tuple[int, int]:
    """[lo, hi) byte addresses an array view can touch."""
    ptr = x.__array_interface__["data"][0]
    lo = ptr + sum(min(0, (n - 1) * s) for n, s in zip(x.shape, x.strides))
    hi = ptr + sum(max(0, (n - 1) * s) for n, s in zip(x.shape, x.strides)) + x.itemsize
    return lo, hi


class WeightIndex:
    """Maps an operand to the weight (or weight gradient) it lies in, by address."""

    def __init__(self, model: M.GPT):
        self.ranges = []
        for tensors, is_grad in ((model.params, False), (model.grads, True)):
            if tensors is None:
                continue
            for name, label in WEIGHT_LABELS.items():
                lo, hi = _extent(tensors.views[name])
                self.ranges.append((lo, hi, label, is_grad))

    def classify(self, phase: str, a, b, out) -> str:
        """'qkv fwd', 'fc bwd dW', 'lm-head bwd dX', ... ('other' if no weight is involved)."""
        label, writes_grad = "other", False
        for x, is_out in ((a, False), (b, False), (out, True)):
            lo, hi = _extent(x)
            for r_lo, r_hi, r_label, is_grad in self.ranges:
                if r_lo <= lo and hi <= r_hi:
                    label = r_label
                    writes_grad = writes_grad or (is_out and is_grad)
        if phase == "bwd":
            return f"{label} bwd {'dW' if writes_grad else 'dX'}"
        return f"{label} {phase}"


# ---------------------------------------------------------------------------------------
# The BLAS floor: record one step's matmuls, replay them on buffers with the same layout

@dataclass
class Operand:
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    extent: tuple[int, int]


@dataclass
class MatmulCall:
    phase: str
    label: str
    a: Operand
    b: Operand
    out: Operand

    @property
    def flops(self) -> int:
        (m, k), n = self.a.shape, self.b.shape[1]
        return 2 * m * n * k

    def describe(self) -> str:
        def lay(o: Operand) -> str:
            c = o.strides[-1] == o.dtype.itemsize
            return "x".join(map(str, o.shape)) + ("" if c else "(T)")
        return f"{lay(self.a)} @ {lay(self.b)} -> {lay(self.out)}"


def _operand(x: np.ndarray) -> Operand:
    return Operand(x.__array_interface__["data"][0], x.shape, x.strides, x.dtype, _extent(x))


def record_matmuls(bench: Bench) -> list[MatmulCall]:
    """Every matmul of one training step, in order, with its phase and weight label."""
    calls: list[MatmulCall] = []

    def recording(a, b, out):
        phase = bench.phase
        calls.append(MatmulCall(phase, index.classify(phase, a, b, out), _operand(a), _operand(b), _operand(out)))
        np.matmul(a, b, out=out)

    if bench.model.grads is None:
        bench.step()  # the index needs the gradient buffers
    index = WeightIndex(bench.model)
    with matmuls_through(recording):
        bench.step()
    return calls


class Replay:
    """The recorded calls on fresh buffers: each group of overlapping operands becomes one buffer,
    with the same byte offsets between them and the same offset within a 4 KiB page."""

    PAGE = 4096

    def __init__(self, calls: list[MatmulCall], seed: int = 0):
        self.calls = calls
        ops = [op for c in calls for op in (c.a, c.b, c.out)]
        regions = self._merge(sorted(op.extent for op in ops))
        rng = np.random.default_rng(seed)
        self.buffers = []
        region_base = {}
        for lo, hi in regions:
            raw = np.empty(hi - lo + self.PAGE, np.uint8)
            shift = (lo - raw.ctypes.data) % self.PAGE
            buf = raw[shift:shift + hi - lo]
            values = buf.view(np.float32)  # float32 operands: extents are whole floats
            values[:] = rng.random(values.size, dtype=np.float32)
            values -= 0.5
            self.buffers.append(raw)
            region_base[(lo, hi)] = buf
        self.arrays = []
        for c in calls:
            views = []
            for op in (c.a, c.b, c.out):
                (lo, hi), buf = next((r, region_base[r]) for r in regions if r[0] <= op.extent[0] and op.extent[1] <= r[1])
                offset = op.ptr - lo
                views.append(np.ndarray(op.shape, op.dtype, buffer=buf, offset=offset, strides=op.strides))
            self.arrays.append((c.phase, *views))

    @staticmethod
    def _merge(extents):
        merged = []
        for lo, hi in extents:
            if merged and lo < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def run(self) -> dict[str, float]:
        """Replay once; seconds per phase (consecutive calls of a phase timed together)."""
        seconds = defaultdict(float)
        i, n = 0, len(self.arrays)
        while i < n:
            phase = self.arrays[i][0]
            t0 = time.perf_counter()
            while i < n and self.arrays[i][0] == phase:
                _, a, b, out = self.arrays[i]
                np.matmul(a, b, out=out)
                i += 1
            seconds[phase] += time.perf_counter() - t0
        return seconds


def time_step_and_floor(bench: Bench, replay: Replay, steps: int, warmup: int):
    """(step Stats by phase, floor Stats by phase): steps and replays alternate, so a change
    in the machine's load during the run hits both alike."""
    for _ in range(warmup):
        bench.step()
        replay.run()
    step_samples, floor_samples = defaultdict(list), defaultdict(list)
    for _ in range(steps):
        f, b, o = bench.step()
        for name, s in zip(PHASES + ("step",), (f, b, o, f + b + o)):
            step_samples[name].append(s)
        r = replay.run()
        floor_samples["fwd"].append(r.get("fwd", 0.0))
        floor_samples["bwd"].append(r.get("bwd", 0.0))
        floor_samples["all"].append(sum(r.values()))
    return ({k: Stats(v) for k, v in step_samples.items()}, {k: Stats(v) for k, v in floor_samples.items()})


# ---------------------------------------------------------------------------------------
# Per-kernel profile

KERNEL_GROUPS = {
    "encoder_forward": "encoder", "encoder_backward": "encoder",
    "layernorm_forward": "layernorm", "layernorm_backward": "layernorm",
    "attention_forward": "attention", "attention_backward": "attention",
    "bias_gelu_forward": "gelu", "gelu_backward_inplace": "gelu",
    "add_bias": "bias/residual", "residual_bias_forward": "bias/residual", "column_sum": "bias/residual",
    "softmax_crossentropy": "softmax/xent",
    "adamw_update": "AdamW", "sum_of_squares": "grad norm",
}


def profile_steps(bench: Bench, steps: int) -> tuple[list[tuple[str, str, float, int]], float]:
    """Time every kernel and every matmul (grouped by weight and phase) over `steps` steps.

    Returns ([(name, group, seconds per step, calls per step)], step seconds) — the wrappers
    cost ~1 us per call, which lands in the step time, not in the kernels'.
    """
    seconds, calls = defaultdict(float), defaultdict(int)
    index = WeightIndex(bench.model)
    # every numba kernel models/gpt2.py calls through K and GK, and attention.py's two functions
    # (its BLAS products and causal softmax together) as models/gpt2.py imported them
    originals = {(mod, name): getattr(mod, name) for mod in (K, GK) for name in dir(mod)
                 if hasattr(getattr(mod, name), "py_func")}
    originals.update({(M, name): getattr(M, name) for name in ("attention_forward", "attention_backward")})

    def timed_kernel(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            seconds[name] += time.perf_counter() - t0
            calls[name] += 1
            return result
        return wrapper

    def timed_matmul(a, b, out):
        label = "matmul " + index.classify(bench.phase, a, b, out)
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        seconds[label] += time.perf_counter() - t0
        calls[label] += 1

    for (module, name), fn in originals.items():
        setattr(module, name, timed_kernel(name, fn))
    try:
        with matmuls_through(timed_matmul):
            t0 = time.perf_counter()
            for _ in range(steps):
                bench.step()
            total = time.perf_counter() - t0
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    rows = [(name, "matmul" if name.startswith("matmul") else KERNEL_GROUPS.get(name, "?"),
             s / steps, calls[name] // steps) for name, s in seconds.items()]
    other = total / steps - sum(r[2] for r in rows)
    rows.append(("other (python, numpy glue, timer overhead)", "other", other, 0))
    rows.sort(key=lambda r: -r[2])
    return rows, total / steps


def profile_tables(rows, step_s: float) -> tuple[list[list[str]], list[list[str]]]:
    """(per kernel rows, per group rows) as strings, sorted by time."""
    per_kernel = [[name, group, fmt_ms(s), f"{100 * s / step_s:.1f}%", str(n) if n else ""]
                  for name, group, s, n in rows]
    groups = defaultdict(float)
    for _, group, s, _ in rows:
        groups[group] += s
    per_group = [[g, fmt_ms(s), f"{100 * s / step_s:.1f}%"] for g, s in sorted(groups.items(), key=lambda kv: -kv[1])]
    return per_kernel, per_group


# ---------------------------------------------------------------------------------------
# Reporting

def run_one(spec: RunSpec, args) -> str:
    """Benchmark one configuration, print the tables, return its markdown section."""
    bench = Bench(spec)
    cfg = bench.config
    print(f"== {spec}: {cfg.num_layers} layers, C={cfg.channels}, {bench.model.num_parameters / 1e6:.2f}M params, "
          f"{bench.tokens} tokens/step, {args.steps} steps after {args.warmup} warm-up, {args.threads_used} threads")
    calls = record_matmuls(bench)  # (its steps are warm-up too: kernels compiled, buffers allocated)
    flops = sum(c.flops for c in calls)
    replay = Replay(calls)
    step, floor = time_step_and_floor(bench, replay, args.steps, args.warmup)
    del replay

    rows = [[name, fmt_ms(step[name].median), fmt_ms(step[name].min, False), fmt_ms(step[name].max, False)]
            for name in PHASES + ("step",)]
    for key, label in (("fwd", "matmul floor: forward"), ("bwd", "matmul floor: backward"), ("all", "matmul floor: step")):
        s = floor[key]
        rows.append([label, fmt_ms(s.median), fmt_ms(s.min, False), fmt_ms(s.max, False)])
    headers = ["", "median", "min", "max"]
    ratio = step["step"].median / floor["all"].median
    fwd_ratio = step["forward"].median / floor["fwd"].median
    bwd_ratio = step["backward"].median / floor["bwd"].median
    summary = (f"step/floor {ratio:.2f}x (forward {fwd_ratio:.2f}x, backward {bwd_ratio:.2f}x); "
               f"{len(calls)} matmuls, {flops / 1e9:.1f} GFLOP/step: {flops / step['step'].median / 1e9:.1f} GFLOP/s "
               f"in the step, {flops / floor['all'].median / 1e9:.1f} GFLOP/s in the floor; "
               f"{bench.tokens / step['step'].median:,.0f} tokens/s")
    print(text_table(headers, rows))
    print(summary)
    if args.show_matmuls:
        print()
        print(text_table(["matmul", "phase", "shapes", "GFLOP"],
                         [[c.label, c.phase, c.describe(), f"{c.flops / 1e9:.3f}"] for c in calls]))

    md = [f"### {spec} ({bench.model.num_parameters / 1e6:.1f}M params, {args.threads_used} threads)", "",
          markdown_table(["ms", "median", "min", "max"], rows), "", summary, ""]

    if args.profile:
        prows, prof_step = profile_steps(bench, args.steps)
        per_kernel, per_group = profile_tables(prows, prof_step)
        print(f"\nprofile over {args.steps} steps (profiled step {fmt_ms(prof_step)}):")
        print(text_table(["kernel", "group", "ms/step", "% step", "calls"], per_kernel))
        print()
        print(text_table(["group", "ms/step", "% step"], per_group))
        md += [f"Profile (profiled step {fmt_ms(prof_step)}), by group:", "",
               markdown_table(["group", "ms/step", "% of step"], per_group), "",
               "<details><summary>per kernel</summary>", "",
               markdown_table(["kernel", "group", "ms/step", "% of step", "calls"], per_kernel), "", "</details>", ""]
    print()
    return "\n".join(md)


def run_dtypes(spec: RunSpec, args) -> str:
    """--matmul-dtype compare: the same model's step with fp32 and with bf16 products, alternating
    step by step (so load changes hit both alike); medians and the ratio."""
    bench = Bench(spec)
    if args.clock == "cpu":
        bench.clock = time.thread_time  # type: ignore[assignment]
    clock = "calling thread's CPU time" if args.clock == "cpu" else "wall-clock"
    print(f"== {spec}: {bench.model.num_parameters / 1e6:.2f}M params, {bench.tokens} tokens/step, fp32 vs bf16 "
          f"products, {args.steps} steps each after {args.warmup} warm-up, {args.threads_used} threads, {clock}")
    dtypes = ("fp32", "bf16")
    samples: dict[str, dict[str, list[float]]] = {d: defaultdict(list) for d in dtypes}
    for i in range(args.warmup + args.steps):
        for dtype in dtypes:
            bench.model.w.matmul_dtype = dtype
            f, b, o = bench.step()
            if i >= args.warmup:
                for name, s in zip(PHASES + ("step",), (f, b, o, f + b + o)):
                    samples[dtype][name].append(s)
    stats = {d: {name: Stats(v) for name, v in samples[d].items()} for d in dtypes}
    rows = [[name] + [stats[d][name].ms() for d in dtypes]
            + [f"{stats['fp32'][name].median / stats['bf16'][name].median:.2f}"] for name in PHASES + ("step",)]
    headers = ["", "fp32 products", "bf16 products", "fp32/bf16"]
    summary = " ; ".join(f"{d}: {bench.tokens / stats[d]['step'].median:,.0f} tokens/s" for d in dtypes)
    print(text_table(headers, rows))
    print(summary)
    print()
    return "\n".join([f"### {spec} ({bench.model.num_parameters / 1e6:.1f}M params, {args.threads_used} threads, "
                      f"{clock}): --matmul-dtype fp32 vs bf16", "", markdown_table(headers, rows), "", summary, ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", type=RunSpec.parse, metavar="MODEL:B:T",
                   help=f"configuration(s) to run (repeatable; default {' and '.join(DEFAULT_RUNS)})")
    p.add_argument("--model", help="model preset (d2, d4, d6, d12, ...), with --batch and --seq")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, default=0, help="numba + BLAS threads (default: all cores)")
    p.add_argument("--profile", action="store_true", help="per-kernel breakdown of the step")
    p.add_argument("--show-matmuls", action="store_true", help="list every recorded matmul of one step")
    p.add_argument("--matmul-dtype", choices=("fp32", "compare"), default="fp32",
                   help="fp32: the step against its BLAS floor (default); compare: the step with fp32 products "
                        "against the same step with bf16 products (needs avx512_bf16)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="compare's clock: wall (default) or cpu, the calling thread's CPU time (--threads 1 only: "
                        "then every kernel and product runs on that thread; on a loaded machine it leaves out the "
                        "time spent waiting for a core)")
    add_markdown_arg(p)
    args = p.parse_args(argv)
    runs = list(args.config or [])
    if args.model:
        runs.append(RunSpec(args.model, args.batch, args.seq))
    args.runs = runs or [RunSpec.parse(s) for s in DEFAULT_RUNS]
    if args.clock == "cpu" and (args.threads != 1 or args.matmul_dtype != "compare"):
        p.error("--clock cpu needs --threads 1 and --matmul-dtype compare")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.threads_used = set_threads(args.threads)
    info = print_machine(machine_info())
    if args.matmul_dtype == "compare":
        sections = [run_dtypes(spec, args) for spec in args.runs]
        title = "Training step, fp32 vs bf16 products"
    else:
        sections = [run_one(spec, args) for spec in args.runs]
        title = "Training step vs BLAS floor"
    md = "\n".join([f"## {title} ({info['date']})", "", f"`{command_line()}`", "",
                    machine_markdown(info), ""] + sections)
    emit_markdown(md, args.markdown)


if __name__ == "__main__":
    main()
