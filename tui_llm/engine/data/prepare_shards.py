"""`tui-llm prepare FILES --shard-size TOKENS`: a corpus of any size into llm.c shards, streaming.

Files are read in blocks of READ_BYTES and tokenized piece by piece (same tokens as prepare.py: EOT +
encode_ordinary per document, documents cut only where the tokens do not change), and tokens go
straight into shards, so memory holds about one and a half shards, never the corpus text or its
token list.

Layout (llm.c's fineweb naming, numbered per split from 0):
  <name>_val_000000.bin, ...    the first `val_tokens` tokens of the stream (default: one shard, as
                                llm.c's fineweb.py makes shard 0 the validation shard)
  <name>_train_000000.bin, ...  the rest
Each split is cut into shards of `shard_size` tokens; its last shard takes the remainder, which is
between half and one and a half shard sizes (unless the split has a single shard), so no shard is
too small to hold a batch. Train with `tui-llm "data/<name>_train_*.bin"`.
All shards appear together at the end (DatasetWriter); a failure leaves the previous dataset as it was.

With a model's own tokenizer (`--tokenizer`, hf_tokenizer.HFTokenizer) each document is framed as
its family does ([BOS] text [EOS], encode_document) and encoded whole, because cutting a document
changes what some tokenizers make of it (SentencePiece-style ones mark each text's start): memory
then holds one document at a time, plus a batch of short ones. Token files are uint32 beyond a
65,536-token vocabulary, and the tokenizer's sidecar (<name>.tokenizer.json) is written with the
shards.
"""

from __future__ import annotations

import codecs
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tui_llm.engine.data.inputs import dataset_name, output_dir
from tui_llm.engine.data.prepare import (
    _SAFE_CUT,
    PIECE_CHARS,
    PreparedDataset,
    PrepareError,
    _pieces,
    _plural,
    _real_name,
    collect_text_files,
)
from tui_llm.engine.data.writer import DatasetWriter
from tui_llm.engine.models.gpt2_config import EOT_TOKEN
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer

READ_BYTES = 1 << 22          # read text files 4 MB at a time
MAX_LLMC_SHARD = 2**31 - 1    # llm.c's header holds the token count as an int32


def _text_blocks(path: Path, errors: str, log):
    """The file's text in blocks: UTF-8 decoded incrementally, BOM dropped, "\\r\\n" made "\\n"."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, first, held, warned = 0, True, "", False
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; opening has its own error)
    except OSError as e:
        raise PrepareError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        while True:
            data = f.read(READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                f.seek(at)
                raise PrepareError(f"{path}: not valid UTF-8 at byte {at:,} ({f.read(4)!r}); "
                                   "use --errors replace to substitute U+FFFD and go on") from None
            if errors == "replace" and not warned and "\ufffd" in text and b"\xef\xbf\xbd" not in data:
                log(f"warning: {path}: invalid UTF-8 bytes replaced by U+FFFD")
                warned = True
            offset += len(data)
            text = held + text
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            held = "\r" if text.endswith("\r") and data else ""  # its "\n" may start the next block
            text = text[:len(text) - len(held)].replace("\r\n", "\n")
            if text:
                yield text
            if not data:
                return


def _last_safe_cut(text: str, min_start: int) -> int | None:
    """The end of the last point in text[min_start:] where a cut leaves the tokens unchanged, or None."""
    end = None
    for end in (m.end() for m in _SAFE_CUT.finditer(text, min_start)):  # noqa: B007 (the last one is kept)
        pass
    return end


def stream_pieces(files, split_on_blank_lines: bool, errors: str, log, piece_chars: int = PIECE_CHARS):
    """(starts_document, text) for every piece of every document, in order, reading a block at a time.

    Documents are files, or with split_on_blank_lines the "\\n\\n"-separated sections of each file
    (each but the file's last keeping its "\\n\\n"), exactly prepare.split_sections on the whole text.
    A file that is only whitespace is no document (as prepare_corpus).
    """
    def pieces_of(text: str, starts_document: bool):  # pieces of piece_chars for the tokenizing threads
        for k, piece in enumerate(_pieces(text, piece_chars)):
            yield starts_document and k == 0, piece

    for path in files:
        buf, has_text, in_doc = "", False, False  # in_doc: the current document's EOT was already given
        for block in _text_blocks(path, errors, log):
            buf += block
            has_text = has_text or bool(buf.strip())
            if not has_text:
                continue
            if split_on_blank_lines:
                *sections, buf = buf.split("\n\n")  # left-to-right, like str.split on the whole text
                for section in sections:
                    yield from pieces_of(section + "\n\n", not in_doc)
                    in_doc = False
            if len(buf) > piece_chars:  # a long document: give its safe prefix now (cuts are looked for
                cut = _last_safe_cut(buf, max(0, len(buf) - len(block) - 2))  # in the new text only)
                if cut is not None:
                    yield from pieces_of(buf[:cut], not in_doc)
                    buf, in_doc = buf[cut:], True
        if has_text:
            yield from pieces_of(buf, not in_doc)


def documents_of(pieces):
    """Every document's whole text, in order: stream_pieces' (starts_document, text) pieces joined back."""
    document: list[str] = []
    for starts_document, piece in pieces:
        if starts_document and document:
            yield "".join(document)
            document = []
        document.append(piece)
    if document:
        yield "".join(document)


def stream_model_tokens(documents, tokenizer, batch_chars: int = 4 * PIECE_CHARS):
    """Token arrays of documents encoded by a model's tokenizer (encode_documents: framed, in
    parallel inside `tokenizers`), a batch of about batch_chars characters at a time."""
    batch, chars = [], 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if chars >= batch_chars:
            yield tokenizer.encode_documents(batch)
            batch, chars = [], 0
    if batch:
        yield tokenizer.encode_documents(batch)


def _units(pieces, piece_chars: int):
    unit, chars = [], 0
    for piece in pieces:
        unit.append(piece)
        chars += len(piece[1])
        if chars >= piece_chars:
            yield unit
            unit, chars = [], 0
    if unit:
        yield unit


def stream_tokens(pieces, num_threads: int | None = None, piece_chars: int = PIECE_CHARS):
    """uint16 token arrays in order, encoded by a thread pool with a bounded number of units in flight."""
    enc = get_tokenizer()

    def encode(unit) -> np.ndarray:
        ids: list[int] = []
        for starts_document, text in unit:
            if starts_document:
                ids.append(EOT_TOKEN)
            ids.extend(enc.encode_ordinary(text))
        return np.array(ids, dtype=np.uint16)

    threads = num_threads or os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        in_flight: deque[Future] = deque()
        for unit in _units(pieces, piece_chars):
            in_flight.append(pool.submit(encode, unit))
            if len(in_flight) >= 2 * threads:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


class ShardSink:
    """Takes the token stream and writes <name>_val_NNNNNN.bin then <name>_train_NNNNNN.bin shards."""

    def __init__(self, writer: DatasetWriter, name: str, shard_size: int, val_tokens: int, log):
        self.writer, self.name, self.shard_size, self.log = writer, name, shard_size, log
        self.val_left = val_tokens
        self.buffers: dict[str, list[np.ndarray]] = {"val": [], "train": []}
        self.buffered = {"val": 0, "train": 0}
        self.totals = {"val": 0, "train": 0}
        self.paths: dict[str, list[Path]] = {"val": [], "train": []}

    def add(self, ids: np.ndarray) -> None:
        if self.val_left > 0:
            take = ids[:self.val_left]
            self._push("val", take)
            self.val_left -= len(take)
            ids = ids[len(take):]
            if self.val_left == 0:
                self._flush("val")
        if len(ids):
            self._push("train", ids)

    def finish(self) -> None:
        self._flush("val")
        self._flush("train")

    def _push(self, split: str, ids: np.ndarray) -> None:
        self.buffers[split].append(ids)
        self.buffered[split] += len(ids)
        self.totals[split] += len(ids)
        while self.buffered[split] >= self.shard_size + self.shard_size // 2 + 1:  # keeps > half a shard back
            self._write(split, self.shard_size)

    def _flush(self, split: str) -> None:
        if self.buffered[split]:
            self._write(split, self.buffered[split])

    def _write(self, split: str, count: int) -> None:
        tokens = np.concatenate(self.buffers[split])
        path, nbytes = self.writer.write(f"{self.name}_{split}_{len(self.paths[split]):06d}.bin", tokens[:count])
        self.log(f"writing {count:,} tokens to {path} ({nbytes:,} bytes)")
        self.paths[split].append(path)
        rest = tokens[count:]
        self.buffers[split] = [rest] if len(rest) else []
        self.buffered[split] = len(rest)


def prepare_corpus_shards(inputs, out_dir="data", name: str | None = None, shard_size: int = 100_000_000,
                          val_tokens: int | None = None, split_on_blank_lines: bool = False, fmt: str = "llmc",
                          errors: str = "strict", log=print, tokenizer=None) -> PreparedDataset:
    """Tokenize UTF-8 text files, streaming, into <name>_val_NNNNNN.bin and <name>_train_NNNNNN.bin shards,
    with GPT-2's tokenizer or (`tokenizer`, an HFTokenizer) a model's own.

    Returns the two glob patterns (as paths) in PreparedDataset.train_path / val_path.
    """
    from tui_llm.engine.data.sidecar import sidecar_bytes, sidecar_path

    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 0 < shard_size <= MAX_LLMC_SHARD:
        raise PrepareError(f"must be a number of tokens in 1..{MAX_LLMC_SHARD:,}, got {shard_size}", field="shard_size")
    val_tokens = shard_size if val_tokens is None else val_tokens
    if isinstance(val_tokens, bool) or not isinstance(val_tokens, int) or val_tokens < 1:
        raise PrepareError(f"must be a positive number of tokens, got {val_tokens}", field="val_tokens")
    files = collect_text_files(inputs)
    name = dataset_name(name, Path(inputs[0]).resolve().stem or "corpus", PrepareError)
    out_dir = output_dir(out_dir, PrepareError)

    wide = tokenizer is not None and tokenizer.vocab_size > 65536
    if wide and fmt == "uint16":
        raise PrepareError(f"uint16 cannot hold this tokenizer's {tokenizer.vocab_size:,} token ids; "
                           f"use llmc (uint32 tokens) or int32", field="data_format")
    if tokenizer is None:
        get_tokenizer()  # build it before the clock starts
    start = time.perf_counter()
    try:
        with DatasetWriter(out_dir, fmt, wide) as writer:  # every shard appears at commit(), or none does
            sink = ShardSink(writer, name, shard_size, val_tokens, log)
            documents = 0

            def counted(pieces):
                nonlocal documents
                for piece in pieces:
                    documents += piece[0]
                    yield piece

            pieces = counted(stream_pieces(files, split_on_blank_lines, errors, log))
            if tokenizer is None:
                token_arrays = stream_tokens(pieces)
            else:
                token_arrays = stream_model_tokens(documents_of(pieces), tokenizer)
            for ids in token_arrays:
                sink.add(ids)
            total = sink.totals["val"] + sink.totals["train"]
            if total == 0:
                raise PrepareError(f"the corpus is empty: {_plural(len(files), 'file')} with no text")
            if sink.totals["train"] == 0:
                raise PrepareError(f"the split leaves the training set empty ({total:,} tokens in all, up to "
                                   f"{val_tokens:,} for validation; use a smaller --val-tokens)")
            sink.finish()
            if tokenizer is not None:
                writer.write_bytes(sidecar_path(out_dir / f"{name}_train_000000.bin").name, sidecar_bytes(tokenizer))
            writer.commit(stale_shards_of=name)
        if tokenizer is None:  # GPT-2's tokens: an older sidecar of this name would mislabel them
            sidecar_path(out_dir / f"{name}_train_000000.bin").unlink(missing_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot write {_real_name(e.filename) or out_dir}: {e.strerror}") from None
    seconds = time.perf_counter() - start
    val, train = sink.totals["val"], sink.totals["train"]
    rate = (val + train) / max(seconds, 1e-9) / 1e6
    log(f"read {_plural(len(files), 'file')}, {_plural(documents, 'document')}: {val + train:,} tokens "
        f"({rate:.2f}M tokens/s)")
    log(f"train {train:,} tokens in {_plural(len(sink.paths['train']), 'shard')}, "
        f"val {val:,} tokens in {_plural(len(sink.paths['val']), 'shard')}")
    return PreparedDataset(out_dir / f"{name}_train_*.bin", out_dir / f"{name}_val_*.bin",
                           f"{name} ({_plural(len(files), 'file')}, sharded)", documents, train, val)
