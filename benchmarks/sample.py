"""Sampling speed: the KV-cache sampler against one full forward per token (llm.c's way).

    python benchmarks/sample.py                       # d12, contexts of 1 and 256 tokens, 64 new tokens
    python benchmarks/sample.py --contexts 1,256,768 --new-tokens 32 --threads 2

A randomly initialised model (speed does not depend on the weights), temperature 1, the same
seed and prompt for both paths. tokens/s counts new tokens over the whole generate() call,
prompt pass included (what a user waits for); ms/token is the same time per new token.
"1st token ms" is a generate() of one token (the prompt pass); "decode tok/s" is the rate of the
following tokens, (n - 1) / (time for n - time for 1).
"""

from __future__ import annotations

import argparse
import statistics

import common  # noqa: F401
import numpy as np
from common import (
    add_markdown_arg,
    command_line,
    emit_markdown,
    machine_info,
    machine_markdown,
    markdown_table,
    print_machine,
    text_table,
)

from tui_llm.engine.machine import set_threads
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import preset_config
from tui_llm.engine.training.sampler import Sampler


def prompt_ids(context: int, vocab_size: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(0, vocab_size, size=context)]


def run_generate(sampler: Sampler, ids: list[int], new_tokens: int, use_cache: bool, seed: int, repeats: int):
    """Median seconds over `repeats` calls, and the tokens of the last one."""
    times, result = [], None
    for _ in range(repeats):
        result = sampler.generate(list(ids), new_tokens, temperature=1.0, seed=seed, use_cache=use_cache)
        times.append(result.seconds)
    return statistics.median(times), result.token_ids


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12")
    p.add_argument("--contexts", default="1,256", help="comma-separated prompt lengths (default 1,256)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="cached runs per context, median (default 3)")
    p.add_argument("--uncached-repeats", type=int, default=1, help="full-forward runs per context (default 1: slow)")
    p.add_argument("--no-uncached", action="store_true", help="skip the full-forward reference")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=1234)
    add_markdown_arg(p)
    args = p.parse_args(argv)
    args.context_list = [int(c) for c in args.contexts.split(",")]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    info = print_machine(machine_info())
    cfg = preset_config(args.model)
    model = GPT.random_init(cfg, seed=args.seed)
    sampler = Sampler(model)
    print(f"{args.model}: {model.num_parameters / 1e6:.2f}M params, {args.new_tokens} new tokens, {threads} threads")

    # warm-up: compile/load the kernels and allocate the buffers of both paths
    sampler.generate([0], 2, seed=0, use_cache=True)
    if not args.no_uncached:
        sampler.generate([0], 2, seed=0, use_cache=False)

    headers = ["context", "KV cache tok/s", "ms/token", "1st token ms", "decode tok/s",
               "full forward tok/s", "ms/token", "cache speed-up", "same tokens"]
    rows = []
    for context in args.context_list:
        ids = prompt_ids(context, cfg.vocab_size, args.seed)
        n = args.new_tokens
        cached_s, cached_ids = run_generate(sampler, ids, n, True, args.seed, args.repeats)
        first_s, _ = run_generate(sampler, ids, 1, True, args.seed, args.repeats)  # prompt pass + 1 token
        decode = f"{(n - 1) / (cached_s - first_s):.1f}" if n > 1 and cached_s > first_s else ""
        row = [str(context), f"{n / cached_s:.1f}", f"{1e3 * cached_s / n:.1f}", f"{1e3 * first_s:.0f}", decode]
        if args.no_uncached:
            row += ["", "", "", ""]
        else:
            full_s, full_ids = run_generate(sampler, ids, n, False, args.seed, args.uncached_repeats)
            row += [f"{n / full_s:.2f}", f"{1e3 * full_s / n:.0f}", f"{full_s / cached_s:.1f}x",
                    "yes" if full_ids == cached_ids else
                    f"no (first {next((i for i, (a, b) in enumerate(zip(full_ids, cached_ids)) if a != b), n)} equal)"]
        rows.append(row)
        print(text_table(headers, rows[-1:]))
    print()
    print(text_table(headers, rows))
    md = "\n".join([f"## Sampling ({info['date']})", "", f"`{command_line()}`", "", machine_markdown(info), "",
                    f"{args.model}, {args.new_tokens} new tokens, temperature 1, {threads} threads; "
                    f"tok/s includes the prompt pass; decode tok/s excludes it.", "", markdown_table(headers, rows), ""])
    emit_markdown(md, args.markdown)


if __name__ == "__main__":
    main()
