"""Where a LoRA step's time goes: the SmolLM2-360M-shaped step of `peft_roundtrip.py speed`, with
each part of the engine timed in place (wall clock, summed over the step's calls).

    python benchmarks/lora_step_parts.py                    # 2 threads, 3 steps after a warm-up
    python benchmarks/lora_step_parts.py --threads 1 --matmul-dtype bf16

Parts: the products with the frozen base's matrices (`Weights.linear`, `linear_dx`; the output
head's `head_forward`, `head_backward`), the adapters' own products (`Adapters.forward`,
`backward`), attention, and the numba kernels; what is left of the step is Python between them.
The first group is the floor no kernel work can go below: it is the same number of fp32
multiply-adds that transformers + PEFT does, through numpy's BLAS.
"""

from __future__ import annotations

import argparse
import collections
import time

import common  # noqa: F401  (puts the repo root on sys.path)
from common import command_line, print_machine
from lora_worker import batch, build, one_step

BASE_PRODUCTS = ("Weights.linear", "Weights.linear_dx", "Weights.head_forward", "Weights.head_backward")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-t", "--seq-len", type=int, default=512)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--matmul-dtype", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args()
    print_machine()
    print(f"\ncommand: {command_line()}\n")

    import tui_llm.engine.models.llama as llama
    from tui_llm.engine.kernels import common as kernels
    from tui_llm.engine.kernels import llama as llama_kernels
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.models.lora import Adapters
    from tui_llm.engine.models.weights import Weights
    from tui_llm.engine.training.optim import AdamW

    set_threads(args.threads)
    seconds: dict[str, float] = collections.defaultdict(float)

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def part(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                seconds[label] += time.perf_counter() - t0
        setattr(owner, name, part)

    for name in ("linear", "linear_dx", "head_forward", "head_backward"):
        timed(Weights, name, f"Weights.{name}")
    for name in ("forward", "backward"):
        timed(Adapters, name, f"Adapters.{name}")
    for name in ("attention_forward", "attention_backward"):
        timed(llama, name, name)
    for name in ("rmsnorm_forward", "rmsnorm_backward", "rope_rotate", "swiglu_forward", "swiglu_backward"):
        timed(llama_kernels, name, name)
    timed(kernels, "softmax_crossentropy", "softmax_crossentropy")

    model = build("smollm2-360m", args.seq_len, args.lora_rank, "fp32", False)
    model.w.matmul_dtype = args.matmul_dtype
    opt = AdamW(model)
    timed(opt, "update", "AdamW")
    x, y = batch(model.config, 1, args.seq_len)
    one_step(model, opt, x, y)  # compile, first touches
    seconds.clear()
    step = sum(one_step(model, opt, x, y)[0] for _ in range(args.steps)) / args.steps
    per_step = {name: s / args.steps for name, s in seconds.items()}
    base = sum(per_step.get(name, 0.0) for name in BASE_PRODUCTS)
    print(f"SmolLM2-360M shape, B=1, T={args.seq_len}, LoRA r={args.lora_rank} all-linear, {args.threads} threads, "
          f"products {args.matmul_dtype}: step {step:.3f} s (mean of {args.steps})\n")
    print("| part | s per step | share |\n|---|---:|---:|")
    for name, s in sorted(per_step.items(), key=lambda item: -item[1]):
        print(f"| {name} | {s:.3f} | {s / step:.1%} |")
    print(f"| the rest (Python between the parts) | {step - sum(per_step.values()):.3f} | |")
    print(f"\nproducts with the frozen base: {base:.3f} s, {base / step:.1%} of the step")


if __name__ == "__main__":
    main()
