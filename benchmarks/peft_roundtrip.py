"""Our LoRA adapters against the real Hugging Face PEFT (issue 17 item 5), and a LoRA step's speed
against transformers + PEFT. Run by hand, never by the tests: torch, transformers and peft live in
a throwaway venv (never a dependency of tui-llm):

    python3 -m venv /work/venvs/ref && /work/venvs/ref/bin/pip install torch transformers peft safetensors numpy
    python benchmarks/peft_roundtrip.py check --ref-python /work/venvs/ref/bin/python
    python benchmarks/peft_roundtrip.py speed --ref-python /work/venvs/ref/bin/python --threads 2 --repeat 5

`check`, for a tiny GPT-2 (fused c_attn, Conv1D), a Llama (GQA) and a Qwen2 (q/k/v biases), each
written as a Hugging Face directory by our exporter:
  1. our adapter (random A, B not zero) exported with write_peft, loaded by
     `PeftModel.from_pretrained` onto transformers' model: its logits against ours (max |diff|),
     and PEFT's `merge_and_unload()` logits against our merged export's;
  2. an adapter made by PEFT (`get_peft_model` + `save_pretrained`, its B set random and not
     zero), given to tui-llm as `--init-from ADAPTER_DIR`: the trainer's step-0 logits against
     PEFT's, then one training step (it continues).

`speed`: one training step (forward with the loss, backward, AdamW) of LoRA r=16 all-linear over a
frozen fp32 SmolLM2-360M-shaped Llama (random weights), B=1, T=512: tui-llm in one process,
transformers + PEFT (eager attention, fp32) in another, both with the same threads; the two
take turns step by step after --warmup steps each (torch's first three steps are 1.3-1.5x its
later ones), medians of --repeat steps. --matmul-dtype bf16 runs our products in bf16 (CPUs with
avx512_bf16); --ref-autocast runs PEFT's step under torch.autocast("cpu", bfloat16), its bf16.
--ref-profile prints where PEFT's step spends its time (torch.profiler, by operator).

The reference side is this same file run by --ref-python with a `ref-*` subcommand: it imports
only the standard library, numpy and torch/transformers/peft (the venv has no numba).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENS = 16          # logits compared over (2, TOKENS) tokens
SMOLLM2_360M = dict(num_layers=32, num_heads=15, num_kv_heads=5, channels=960, ffn_channels=2560, vocab_size=49152)


# =======================================================================================
# The reference side (the venv's python): transformers + PEFT

def ref_our_adapter(work: Path) -> None:
    """PEFT loads our adapter onto transformers' model: logits, and merge_and_unload()'s."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokens = torch.from_numpy(np.load(work / "tokens.npy")).long()
    model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32, attn_implementation="eager")
    peft_model = PeftModel.from_pretrained(model, work / "ours").eval()
    with torch.no_grad():
        np.save(work / "peft_logits.npy", peft_model(tokens).logits.float().numpy())
        merged = peft_model.merge_and_unload()
        np.save(work / "peft_merged_logits.npy", merged(tokens).logits.float().numpy())


def ref_peft_made(work: Path, seed: int = 7) -> None:
    """An adapter made by PEFT (its B random, not zero), saved, and PEFT's logits with it."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokens = torch.from_numpy(np.load(work / "tokens.npy")).long()
    model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=8, lora_alpha=24, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    peft_model.eval()
    with torch.no_grad():
        np.save(work / "peftmade_logits.npy", peft_model(tokens).logits.float().numpy())
    peft_model.save_pretrained(work / "peftmade")


def ref_worker(threads: int, seq_len: int, rank: int, autocast: bool = False, profile: bool = False) -> None:
    """transformers + PEFT training steps on request: reads 'step' lines, answers 'seconds loss'
    (autocast: under torch.autocast("cpu", bfloat16); profile: the last step's operator table on stderr)."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SMOLLM2_360M
    config = LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["channels"], intermediate_size=s["ffn_channels"],
                         num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                         num_key_value_heads=s["num_kv_heads"], max_position_embeddings=max(seq_len, 64),
                         tie_word_embeddings=True, attn_implementation="eager")
    model = get_peft_model(LlamaForCausalLM(config).float(), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, s["vocab_size"], (1, seq_len), generator=gen)
    print("ready", flush=True)
    profiler = None
    for line in sys.stdin:
        if line.strip() != "step":
            break
        if profile:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        t0 = time.perf_counter()
        with profiler or contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        print(f"{time.perf_counter() - t0} {float(loss.detach())}", flush=True)
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)


# =======================================================================================
# Our side (the project's python)

def our_cases(work: Path) -> dict[str, Path]:
    """Tiny bases of each architecture as HF directories (with training data), by case name."""
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    from tests.test_hf_tokenizer import CORPUS
    from tests.test_llama_cli import make_llama_dir
    from tui_llm import cli
    from tui_llm.engine.data.tokens import write_tokens
    from tui_llm.engine.formats import write_hf
    from tui_llm.engine.models.gpt2 import GPT
    from tui_llm.engine.models.gpt2_config import GPTConfig

    cases = {}
    d = work / "gpt2"
    (d / "base").mkdir(parents=True)
    cfg = GPTConfig(max_seq_len=64, num_layers=2, num_heads=2, channels=64)
    write_hf(d / "base", cfg, GPT.random_init(cfg, seed=3).params.flat)
    write_tokens(d / "story_train.bin", np.random.default_rng(5).integers(0, 50257, 4000))
    cases["gpt2"] = d
    for model_type in ("llama", "qwen2"):
        d = work / model_type
        (d / "base").mkdir(parents=True)
        make_llama_dir(d / "base", model_type=model_type, num_key_value_heads=2)
        (d / "story.txt").write_text(CORPUS, encoding="utf-8")
        assert cli.main(["prepare", str(d / "story.txt"), "--tokenizer", str(d / "base"), "--out-dir", str(d),
                         "--val-fraction", "0.2"]) == 0
        cases[model_type] = d
    return cases


def our_logits(model, tokens):
    model.forward(tokens)
    return model.acts.logits[:, :model.config.vocab_size].reshape(*tokens.shape, -1).copy()


def cmd_check(args) -> None:
    import tempfile

    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    import tui_llm
    from tui_llm.engine.api import load_model
    from tui_llm.engine.formats.peft import write_peft
    from tui_llm.engine.models.build import build_model
    from tui_llm.engine.models.lora import LoraConfig, merge_into, resolve_targets
    from tui_llm.engine.training.model_source import load_model_source

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in our_cases(Path(tmp)).items():
            config, flat, _, _ = load_model_source(d / "base")
            tokens = np.random.default_rng(0).integers(0, min(config.vocab_size, 400), (2, TOKENS)).astype(np.int32)
            np.save(d / "tokens.npy", tokens)
            # 1. our adapter -> PEFT
            model = build_model(config, flat.copy())
            targets = "all-linear" if name != "qwen2" else "q_proj,v_proj,down_proj"
            model.attach_lora(LoraConfig(rank=4, alpha=8.0, targets=resolve_targets(targets, config),
                                         use_rslora=name == "qwen2"), seed=1)
            rng = np.random.default_rng(2)
            for _, _, B in model.lora.params.modules():
                B[...] = rng.normal(0, 0.05, B.shape)
            write_peft(d / "ours", model.lora.params, str(d / "base"))
            ours = our_logits(model, tokens)
            merged = build_model(config, flat.copy())
            merge_into(merged.params, model.lora.params)
            ours_merged = our_logits(merged, tokens)
            ref(args, "ref-our-adapter", d)
            peft_logits, peft_merged = np.load(d / "peft_logits.npy"), np.load(d / "peft_merged_logits.npy")
            # 2. PEFT's adapter -> tui-llm, and training continues
            ref(args, "ref-peft-made", d)
            trainer = tui_llm.Trainer(tui_llm.RunConfig(
                train_file=str(d / "story_train.bin"), out_dir=str(d / "run"), init_from=str(d / "peftmade"),
                batch_size=2, seq_len=16, steps=1, threads=args.threads, val_every=0, sample_every=0, save_every=0))
            step0 = our_logits(trainer.model, tokens)
            peftmade = np.load(d / "peftmade_logits.npy")
            events: list = []
            trainer.run(events.append)
            losses = [e.loss for e in events if type(e).__name__ == "TrainStep"]
            continued = load_model(d / "run")
            moved = not np.array_equal(continued.lora.params.flat, load_model(d / "peftmade").lora.params.flat)
            c = trainer.config
            rows.append([name, f"r=4 alpha=8 {targets}{' rsLoRA' if name == 'qwen2' else ''}",
                         f"{np.abs(peft_logits - ours).max():.2e}", f"{np.abs(peft_merged - ours_merged).max():.2e}",
                         f"{np.abs(step0 - peftmade).max():.2e}", f"{np.abs(ours).max():.2f}",
                         f"{c.lora_rank}/{c.lora_alpha:g}/{c.lora_targets}",
                         f"{losses[0]:.4f}{' (adapters moved)' if moved else ''}" if losses else "-"])
    headers = ["model", "our adapter", "ours on PEFT: max abs diff", "merged (PEFT vs ours)",
               "PEFT-made on tui-llm, step 0", "max abs logit", "PEFT-made r/alpha/targets as read", "step 0 loss"]
    print_table(headers, rows)


def ref(args, sub: str, work: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run([args.ref_python, __file__, sub, str(work)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{sub} failed:\n{result.stderr[-3000:]}")


def print_table(headers, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    print("\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def cmd_speed(args) -> None:
    import statistics

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    sys.path.insert(0, str(REPO_ROOT))
    from lora_worker import batch, build, one_step

    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.training.optim import AdamW

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    flags = [flag for flag, on in (("autocast", args.ref_autocast), ("profile", args.ref_profile)) if on]
    peft = subprocess.Popen([args.ref_python, __file__, "ref-worker", str(args.threads), str(args.seq_len),
                             str(args.lora_rank), *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    assert peft.stdin is not None and peft.stdout is not None
    set_threads(args.threads)
    model = build("smollm2-360m", args.seq_len, args.lora_rank, "fp32", False)
    model.w.matmul_dtype = args.matmul_dtype
    opt = AdamW(model)
    x, y = batch(model.config, 1, args.seq_len)
    assert peft.stdout.readline().strip() == "ready"

    def peft_step() -> float:
        peft.stdin.write("step\n")
        peft.stdin.flush()
        return float(peft.stdout.readline().split()[0])

    times: dict[str, list[float]] = {"tui-llm": [], "transformers + PEFT": []}
    for _ in range(args.warmup):   # warm-up each: compile, first touches, torch's allocator
        one_step(model, opt, x, y)
        peft_step()
    for i in range(args.repeat):
        times["tui-llm"].append(one_step(model, opt, x, y)[0])
        times["transformers + PEFT"].append(peft_step())
        print(f"  round {i + 1}: tui-llm {times['tui-llm'][-1]:.2f} s, transformers + PEFT "
              f"{times['transformers + PEFT'][-1]:.2f} s", flush=True)
    peft.stdin.close()
    peft.wait()
    ours, theirs = statistics.median(times["tui-llm"]), statistics.median(times["transformers + PEFT"])
    rows = [[name, f"{statistics.median(t):.2f} s", f"{min(t):.2f}-{max(t):.2f} s"] for name, t in times.items()]
    print_table(["LoRA step", "median", "min-max"], rows)
    print(f"\ntransformers + PEFT / tui-llm = {theirs / ours:.2f}x  (SmolLM2-360M shape, B=1, T={args.seq_len}, "
          f"r={args.lora_rank} all-linear, {args.threads} threads, {args.warmup} warm-up and {args.repeat} steps "
          f"each; our products {args.matmul_dtype}, PEFT's {'bf16 autocast' if args.ref_autocast else 'fp32'}; "
          f"load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "ref-our-adapter":
        return ref_our_adapter(Path(sys.argv[2]))
    if len(sys.argv) > 2 and sys.argv[1] == "ref-peft-made":
        return ref_peft_made(Path(sys.argv[2]))
    if len(sys.argv) > 4 and sys.argv[1] == "ref-worker":
        return ref_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "autocast" in sys.argv[5:],
                          "profile" in sys.argv[5:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("check", "speed"))
    p.add_argument("--ref-python", default="/work/venvs/ref/bin/python",
                   help="python of the throwaway venv with torch, transformers and peft")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-t", "--seq-len", type=int, default=512)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="steps each side runs before the timed ones")
    p.add_argument("--matmul-dtype", choices=("fp32", "bf16"), default="fp32", help="our products' precision")
    p.add_argument("--ref-autocast", action="store_true", help="PEFT's step under torch.autocast(bfloat16)")
    p.add_argument("--ref-profile", action="store_true", help="print PEFT's step by operator (torch.profiler)")
    args = p.parse_args()
    (cmd_check if args.command == "check" else cmd_speed)(args)


if __name__ == "__main__":
    main()
