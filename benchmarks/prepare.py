"""Corpus preparation speed: tokens/s, best of 3.

    python benchmarks/prepare.py                         # ../shared/data/tinyshakespeare.txt if present
    python benchmarks/prepare.py --text FILE [--repeats 5] [--threads 1]

Two timings on the same text:
  tokenize  split into llm.c's documents (blank-line sections) + tokenize_documents (the
            threaded tiktoken pass), from the text already in memory;
  prepare   the whole prepare step into a temporary directory, as `tui-llm prepare` runs it:
            read + decode + split + tokenize + write the val/train files
            (prepare_tinyshakespeare for the canonical Tiny Shakespeare file, else prepare_corpus).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import common
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

from tui_llm.engine.data import prepare as P
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer

DEFAULT_TEXT = common.REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def full_prepare(path: Path, canonical: bool, out_dir: Path):
    quiet = lambda *a, **k: None  # noqa: E731
    if canonical:
        return P.prepare_tinyshakespeare(out_dir, source=path, log=quiet)
    return P.prepare_corpus([str(path)], out_dir, name="bench", split_on_blank_lines=True, log=quiet)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=None, help=f"UTF-8 text file (default {DEFAULT_TEXT})")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="tokenizer threads (default: all cores)")
    add_markdown_arg(p)
    args = p.parse_args(argv)
    if args.text is None:
        if not DEFAULT_TEXT.exists():
            p.error(f"{DEFAULT_TEXT} not found: pass --text FILE")
        args.text = DEFAULT_TEXT
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    info = print_machine(machine_info())
    data = args.text.read_bytes()
    text = data.decode("utf-8")
    canonical = hashlib.sha256(data).hexdigest() == P.TINY_SHAKESPEARE_SHA256
    get_tokenizer()  # load the BPE tables before any clock starts
    threads = args.threads or common.available_cores()
    print(f"{args.text}: {len(data):,} bytes, {len(text):,} characters"
          f"{' (canonical Tiny Shakespeare)' if canonical else ''}; best of {args.repeats}, {threads} tokenizer threads")

    tok_s, tokens = best_of(args.repeats, lambda: P.tokenize_documents(P.split_sections(text), num_threads=threads,
                                                                      show_progress=False))
    n = len(tokens)
    with tempfile.TemporaryDirectory() as tmp:
        if args.threads:  # prepare_* use tokenize_documents' default thread count; pin it for this run
            original = P.tokenize_documents
            P.tokenize_documents = lambda docs, **kw: original(docs, num_threads=threads, **kw)
        try:
            prep_s, result = best_of(args.repeats, lambda: full_prepare(args.text, canonical, Path(tmp)))
        finally:
            if args.threads:
                P.tokenize_documents = original
    assert result.train_tokens + result.val_tokens == n, "prepare and tokenize disagree on the token count"

    headers = ["", "seconds (best)", "tokens/s", "MB/s of text"]
    rows = [["tokenize", f"{tok_s:.3f}", f"{n / tok_s / 1e6:.2f}M", f"{len(data) / tok_s / 1e6:.1f}"],
            ["prepare (read..write)", f"{prep_s:.3f}", f"{n / prep_s / 1e6:.2f}M", f"{len(data) / prep_s / 1e6:.1f}"]]
    print(f"{n:,} tokens")
    print(text_table(headers, rows))
    md = "\n".join([f"## Corpus preparation ({info['date']})", "", f"`{command_line()}`", "", machine_markdown(info), "",
                    f"{args.text.name}: {len(data):,} bytes, {n:,} tokens, {threads} tokenizer threads, "
                    f"best of {args.repeats}.",
                    "", markdown_table(headers, rows), ""])
    emit_markdown(md, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
