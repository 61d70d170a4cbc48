"""`tui-llm prepare`: make token files from Tiny Shakespeare or from your own text.

    tui-llm prepare tinyshakespeare [--from FILE] [--out-dir DIR]
    tui-llm prepare my_corpus.txt [more.txt | a_folder ...] [--split-on-blank-lines] [--val-fraction 0.1]
                    [--out-dir DIR] [--name NAME] [--format llmc|int32|uint16] [--errors strict|replace]
    tui-llm prepare big_corpus/ --shard-size 100000000 [--val-tokens N] ...   # streaming, llm.c shards

`python -m tui_llm.cli.prepare ...` runs the same command on its own. Bad input, bad arguments
included, is one "error: ..." line on stderr and exit status 2, never a usage block.
"""

from __future__ import annotations

import argparse
import math
import sys

from tui_llm.cli.parser import EXIT_OK, Parser
from tui_llm.engine.data.prepare import PrepareError, prepare_corpus, prepare_shakespeare, prepare_tinyshakespeare
from tui_llm.engine.data.prepare_shards import prepare_corpus_shards
from tui_llm.engine.data.tokens import FORMATS

TINY_SHAKESPEARE = "tinyshakespeare"
DEFAULT_VAL_FRACTION = 0.1


def _tokens(text: str) -> int:
    """A token count: 100000000, 100_000_000, 1e8, 100M or 64k."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number.replace("_", "")) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens (e.g. 100000000, 1e8, 100M)")
    return int(value)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"'{TINY_SHAKESPEARE}', or UTF-8 text files and folders (a folder gives its "
                             "*.txt/*.md/*.text/*.rst files)")
    parser.add_argument("--out-dir", default="data", help="where the .bin files go (default: data)")
    parser.add_argument("--format", choices=FORMATS, default="llmc",
                        help="llmc: llm.c's header + uint16 (default); int32: headerless, for llm.rust; "
                             "uint16: headerless, like nanoGPT")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help=f"{TINY_SHAKESPEARE} only: use this local copy of the text instead of downloading it")
    parser.add_argument("--name", help="output names <NAME>_train.bin / <NAME>_val.bin (default: the first input's name)")
    parser.add_argument("--split-on-blank-lines", action="store_true",
                        help="every blank-line-separated section is a document (gets its own EOT), as llm.c "
                             "does for Tiny Shakespeare; default: one document per file")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help=f"fraction of the tokens, taken from the start, that becomes validation "
                             f"(default {DEFAULT_VAL_FRACTION}; not with --shard-size)")
    parser.add_argument("--shard-size", type=_tokens, metavar="TOKENS",
                        help="stream the corpus into llm.c shards of this many tokens: <NAME>_val_000000.bin, ..., "
                             "<NAME>_train_000000.bin, ... (train with 'data/<NAME>_train_*.bin')")
    parser.add_argument("--val-tokens", type=_tokens, metavar="TOKENS",
                        help="with --shard-size: the first this many tokens become validation (default: one shard)")
    parser.add_argument("--tokenizer", metavar="DIR|NAME",
                        help="tokenize with this Hugging Face tokenizer (a model dir with tokenizer.json, or a "
                             "cached name), framing documents as its family does, instead of GPT-2's; writes "
                             "<NAME>.tokenizer.json beside the token files")
    parser.add_argument("--errors", choices=("strict", "replace"), default="strict",
                        help="invalid UTF-8: stop with an error (strict, default) or substitute U+FFFD (replace)")


def prepare_parser() -> Parser:
    parser = Parser(prog="tui-llm prepare",
                    description="Tokenize text with GPT-2's tokenizer (or a model's own, --tokenizer) into llm.c "
                                "token files <name>_train.bin / <name>_val.bin.")
    _add_arguments(parser)
    return parser


def cmd_prepare(argv) -> int:
    _run(prepare_parser().parse_args(argv))
    return EXIT_OK


def _run(args) -> None:
    if args.inputs == [TINY_SHAKESPEARE]:
        used = [flag for flag, value in (("--name", args.name), ("--split-on-blank-lines", args.split_on_blank_lines),
                                         ("--val-fraction", args.val_fraction is not None),
                                         ("--errors", args.errors != "strict"), ("--shard-size", args.shard_size),
                                         ("--val-tokens", args.val_tokens), ("--tokenizer", args.tokenizer))
                if value]
        if used:
            raise PrepareError(f"{' and '.join(used)}: only for your own text files, not for {TINY_SHAKESPEARE}")
        if args.source is not None:
            prepare_tinyshakespeare(args.out_dir, source=args.source, fmt=args.format)
        else:
            prepare_shakespeare(args.out_dir, fmt=args.format)
        return
    if args.source is not None:
        raise PrepareError(f"--from only applies to '{TINY_SHAKESPEARE}'; give your files as inputs instead")
    tokenizer = None
    if args.tokenizer is not None:
        from tui_llm.engine.tokenizers.lookup import load_tokenizer
        tokenizer = load_tokenizer(args.tokenizer)
    if args.shard_size is not None:
        if args.val_fraction is not None:
            raise PrepareError("--val-fraction needs the whole corpus in memory; with --shard-size give --val-tokens")
        prepare_corpus_shards(args.inputs, out_dir=args.out_dir, name=args.name, shard_size=args.shard_size,
                              val_tokens=args.val_tokens, split_on_blank_lines=args.split_on_blank_lines,
                              fmt=args.format, errors=args.errors, tokenizer=tokenizer)
        return
    if args.val_tokens is not None:
        raise PrepareError("--val-tokens only applies with --shard-size (otherwise use --val-fraction)")
    val_fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
    prepare_corpus(args.inputs, out_dir=args.out_dir, name=args.name, split_on_blank_lines=args.split_on_blank_lines,
                   val_fraction=val_fraction, fmt=args.format, errors=args.errors, tokenizer=tokenizer)


def main(argv=None) -> int:
    """`python -m tui_llm.cli.prepare ...`: the same as `tui-llm prepare ...`."""
    from tui_llm.cli import main as tui_llm_main

    return tui_llm_main(["prepare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
