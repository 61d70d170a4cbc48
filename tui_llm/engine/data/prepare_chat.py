"""`tui-llm prepare FILE.jsonl --chat --seq-len T`: conversations into packed rows and their loss mask.

    records (conversations.py) -> ids + reply mask (tokenizers/chat_template.py, or the document
    framing for {"text"} records) -> rows of T tokens (packed.RowPacker) -> <name>_{val,train}.bin
    and .mask (packed.py: the format), or with shard_size their _NNNNNN shards, plus the tokenizer
    sidecar <name>.tokenizer.json for a model's own tokenizer.

Validation is the first rows (the first conversations), as text prepare takes the first tokens:
`val_fraction` of all rows (the rows are held in memory until the split is known), or with
`shard_size` the first `val_tokens` tokens rounded up to whole rows, streaming, memory about one and
a half shards. All files appear together at the end or none do (DatasetWriter).

Bad records (conversations.BadLine, or a template that refuses a conversation) stop the run with
their file and line (errors="stop") or are counted, the first few shown, and left out ("skip").
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tui_llm.engine.data.conversations import (
    SHAPE_KEYS,
    BadLine,
    ConversationError,
    Example,
    collect_jsonl_files,
    read_examples,
)
from tui_llm.engine.data.inputs import dataset_name, output_dir
from tui_llm.engine.data.packed import ON_LONG, LongDocument, RowPacker, mask_bytes
from tui_llm.engine.data.prepare import PrepareError, _plural, _real_name
from tui_llm.engine.data.writer import DatasetWriter
from tui_llm.engine.tokenizers.chat_template import TRAIN_ON, ChatEncoder, ChatTemplateError, special_tokens_of

ERRORS = ("stop", "skip")
SHOWN_BAD_LINES = 10
MAX_SHARD_TOKENS = 2**31 - 1  # llm.c's header holds the count as an int32


@dataclass
class PreparedChat:
    train_path: Path              # a file, or the shards' glob pattern
    val_path: Path
    description: str
    row_tokens: int
    train_rows: int
    val_rows: int
    examples: int = 0             # records encoded and packed
    skipped: int = 0              # bad records left out
    truncated: int = 0
    dropped: int = 0              # too long, on_long="drop"
    emptied: int = 0              # nothing left to train on after truncation
    padding: int = 0              # pad tokens
    loss_tokens: int = 0
    shapes: dict = field(default_factory=dict)  # path -> shape

    @property
    def train_tokens(self) -> int:
        return self.train_rows * self.row_tokens

    @property
    def val_tokens(self) -> int:
        return self.val_rows * self.row_tokens


class _Encoder:
    """ids + loss mask of an Example; the chat template is loaded on the first conversation."""

    def __init__(self, tokenizer, chat_template, train_on, template_kwargs):
        self.tokenizer, self.chat_template, self.train_on = tokenizer, chat_template, train_on
        self.template_kwargs = template_kwargs or {}
        self._chat: ChatEncoder | None = None

    def chat(self) -> ChatEncoder:
        if self._chat is None:
            try:
                self._chat = ChatEncoder(self.tokenizer, self.chat_template, **self.template_kwargs)
            except ChatTemplateError as e:
                raise PrepareError(str(e)) from None
        return self._chat

    def __call__(self, ex: Example) -> tuple[list[int], list[int]]:
        if ex.shape == "text":
            ids = _document_ids(self.tokenizer, ex.text or "")
            return ids, [1] * len(ids)
        if ex.prompt_len is not None:
            return self.chat().encode_prompt_completion(ex.messages[:ex.prompt_len], ex.messages[ex.prompt_len:],
                                                        self.train_on)
        return self.chat().encode(ex.messages, self.train_on)


def _document_ids(tokenizer, text: str) -> list[int]:
    """A plain document: the family's framing (HFTokenizer.encode_document), or GPT-2's text then its EOT
    (at the end, so the model learns to stop; documents are told apart by the mask, not by the EOT)."""
    if hasattr(tokenizer, "encode_document"):
        return tokenizer.encode_document(text)
    from tui_llm.engine.tokenizers.gpt2 import EOT_TOKEN, get_tokenizer
    return get_tokenizer().encode_ordinary(text) + [EOT_TOKEN]


def _pad_id(tokenizer) -> int:
    """The pad token (tokenizer_config's pad_token), else the EOS, else 0; GPT-2: its EOT."""
    if not hasattr(tokenizer, "encode_document"):
        from tui_llm.engine.tokenizers.gpt2 import EOT_TOKEN
        return EOT_TOKEN
    pad = special_tokens_of(tokenizer.path.parent).get("pad_token")
    pad_id = tokenizer.tokenizer.token_to_id(pad) if pad else None
    for candidate in (pad_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class _RowSink:
    """Rows in, files out: <name>_val / <name>_train (.bin + .mask), whole or in shards of shard_rows."""

    def __init__(self, writer: DatasetWriter, name: str, T: int, dtype, val_rows: int | None,
                 shard_rows: int | None, log):
        self.writer, self.name, self.T, self.dtype, self.log = writer, name, T, dtype, log
        self.val_left = val_rows          # None: split at the end (val_fraction)
        self.shard_rows = shard_rows      # None: one file per split
        self.buffers: dict[str, list] = {"val": [], "train": []}
        self.rows = {"val": 0, "train": 0}
        self.written = {"val": 0, "train": 0}
        self.paths: dict[str, list[Path]] = {"val": [], "train": []}

    def add(self, tokens: np.ndarray, flags: np.ndarray) -> None:
        if self.val_left:  # None (split at the end: all waits as train) or 0: train
            split, self.val_left = "val", self.val_left - 1
        else:
            split = "train"
        self.buffers[split].append((tokens.astype(self.dtype), flags))
        self.rows[split] += 1
        if self.shard_rows is not None:
            if split == "train" and self.buffers["val"]:
                self._write("val", len(self.buffers["val"]))  # validation is complete: its last shard
            while len(self.buffers[split]) >= self.shard_rows + self.shard_rows // 2 + 1:  # keep > half a shard
                self._write(split, self.shard_rows)

    def finish(self, val_fraction: float | None) -> None:
        if val_fraction is not None:
            rows = self.buffers["train"]
            num_val = max(1, round(len(rows) * val_fraction))
            if num_val >= len(rows):
                raise PrepareError(f"the split leaves the training set empty ({_plural(len(rows), 'row')} of "
                                   f"{self.T:,} tokens in all; give more data or a smaller --seq-len)")
            self.buffers = {"val": rows[:num_val], "train": rows[num_val:]}
            self.rows = {"val": num_val, "train": len(rows) - num_val}
        if self.rows["train"] == 0:
            raise PrepareError(f"the split leaves the training set empty ({_plural(self.rows['val'], 'row')} in all, "
                               f"all for validation; use a smaller --val-tokens)")
        for split in ("val", "train"):
            if self.buffers[split]:
                self._write(split, len(self.buffers[split]))

    def _write(self, split: str, count: int) -> None:
        rows, self.buffers[split] = self.buffers[split][:count], self.buffers[split][count:]
        tokens = np.concatenate([t for t, _ in rows])
        flags = np.concatenate([f for _, f in rows])
        stem = f"{self.name}_{split}" if self.shard_rows is None else f"{self.name}_{split}_{len(self.paths[split]):06d}"
        path, nbytes = self.writer.write(f"{stem}.bin", tokens)
        self.writer.write_bytes(f"{stem}.mask", mask_bytes(flags, self.T, tokens))
        self.log(f"writing {_plural(count, 'row')} ({len(tokens):,} tokens) to {path} ({nbytes:,} bytes) and its .mask")
        self.paths[split].append(path)
        self.written[split] += count


def prepare_chat(inputs, out_dir="data", name: str | None = None, seq_len: int = 1024, tokenizer=None,
                 chat_template=None, train_on: str = "assistant", on_long: str = "truncate", errors: str = "stop",
                 val_fraction: float | None = 0.1, shard_size: int | None = None, val_tokens: int | None = None,
                 log=print, template_kwargs: dict | None = None, open_rows: int = 16) -> PreparedChat:
    """Conversations (JSONL files or folders of them) into packed rows of seq_len tokens with a loss mask.

    tokenizer: an HFTokenizer (model_tokenizer.load_tokenizer) or None for GPT-2's, which needs
    chat_template ("chatml" or a file) for conversations. Returns a PreparedChat with the counts.
    PrepareError (one line) on bad input.
    """
    from tui_llm.engine.data.sidecar import sidecar_bytes, sidecar_path

    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= MAX_SHARD_TOKENS:
        raise PrepareError(f"--seq-len must be a number of tokens of at least 2, got {seq_len}")
    if train_on not in TRAIN_ON:
        raise PrepareError(f"--train-on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if on_long not in ON_LONG:
        raise PrepareError(f"--on-long must be one of {', '.join(ON_LONG)}, got {on_long!r}")
    if errors not in ERRORS:
        raise PrepareError(f"--errors must be one of {', '.join(ERRORS)} for chat data, got {errors!r}")
    val_rows = shard_rows = None
    if shard_size is not None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not seq_len <= shard_size <= MAX_SHARD_TOKENS:
            raise PrepareError(f"--shard-size must be a number of tokens in {seq_len:,}..{MAX_SHARD_TOKENS:,} "
                               f"(at least one row), got {shard_size}")
        shard_rows = shard_size // seq_len
        val_tokens = shard_rows * seq_len if val_tokens is None else val_tokens
        if isinstance(val_tokens, bool) or not isinstance(val_tokens, int) or val_tokens < 1:
            raise PrepareError(f"--val-tokens must be a positive number of tokens, got {val_tokens}")
        val_rows, val_fraction = math.ceil(val_tokens / seq_len), None
    elif val_fraction is None or not 0.0 < val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    try:
        files = collect_jsonl_files(inputs)
    except ConversationError as e:
        raise PrepareError(str(e)) from None
    stem = re.sub(r"\.jsonl(\.gz)?$", "", Path(inputs[0]).resolve().name, flags=re.IGNORECASE)
    name = dataset_name(name, stem or "chat", PrepareError)
    out_dir = output_dir(out_dir, PrepareError)

    hf = hasattr(tokenizer, "encode_document")
    if tokenizer is None:
        from tui_llm.engine.tokenizers.gpt2 import get_tokenizer
        tokenizer = get_tokenizer()
    vocab = tokenizer.vocab_size if hf else tokenizer.n_vocab
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    encode = _Encoder(tokenizer, chat_template, train_on, template_kwargs)
    packer = RowPacker(seq_len, _pad_id(tokenizer), on_long, open_rows)
    result = PreparedChat(Path(), Path(), "", seq_len, 0, 0)
    records = 0
    start = time.perf_counter()

    def on_shape(path, shape):
        result.shapes[str(path)] = shape
        log(f"{path}: {shape} records ({SHAPE_KEYS[shape]})")

    def bad(line: BadLine) -> None:
        if errors == "stop":
            raise PrepareError(f"{line}; use --errors skip to leave out bad records and go on")
        result.skipped += 1
        if result.skipped <= SHOWN_BAD_LINES:
            log(f"skipped {line}")

    try:
        with DatasetWriter(out_dir, "llmc", wide=dtype == np.uint32) as writer:
            sink = _RowSink(writer, name, seq_len, dtype, val_rows, shard_rows, log)
            for path in files:
                try:
                    for item in read_examples(path, need_reply=train_on == "assistant", on_shape=on_shape):
                        records += 1
                        if isinstance(item, BadLine):
                            bad(item)
                            continue
                        try:
                            ids, mask = encode(item)
                        except ChatTemplateError as e:
                            bad(BadLine(item.path, item.line, str(e)))
                            continue
                        if not any(mask):
                            bad(BadLine(item.path, item.line, "the template rendered no reply tokens to train on"))
                            continue
                        try:
                            rows = packer.add(ids, mask)
                        except LongDocument as e:
                            raise PrepareError(f"{item.where}: {e}") from None
                        result.examples += 1
                        for tokens, flags in rows:
                            result.loss_tokens += int(np.count_nonzero(flags & 1))
                            sink.add(tokens, flags)
                except ConversationError as e:
                    raise PrepareError(str(e)) from None
            for tokens, flags in packer.finish():
                result.loss_tokens += int(np.count_nonzero(flags & 1))
                sink.add(tokens, flags)
            if packer.rows == 0:
                raise PrepareError(f"nothing to train on: {_plural(records, 'record')} in {_plural(len(files), 'file')}, "
                                   f"{_plural(result.skipped, 'bad one')}, {packer.dropped + packer.emptied:,} too long")
            sink.finish(val_fraction)
            if hf:
                stem = f"{name}_train.bin" if shard_rows is None else f"{name}_train_000000.bin"
                writer.write_bytes(sidecar_path(out_dir / stem).name, sidecar_bytes(tokenizer))
            finals = writer.commit(stale_shards_of=name if shard_rows is not None else None)
        if shard_rows is not None:  # older mask shards of this name that the new dataset does not have
            stale = re.compile(re.escape(name) + r"_(train|val)_\d{6}\.mask")
            for p in out_dir.iterdir():
                if stale.fullmatch(p.name) and p not in finals:
                    p.unlink(missing_ok=True)
        if not hf:  # GPT-2's tokens: an older sidecar of this name would mislabel them
            sidecar_path(out_dir / f"{name}_train.bin").unlink(missing_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot write {_real_name(e.filename) or out_dir}: {e.strerror}") from None

    seconds = time.perf_counter() - start
    result.truncated, result.dropped, result.emptied, result.padding = (packer.truncated, packer.dropped,
                                                                        packer.emptied, packer.padding)
    result.train_rows, result.val_rows = sink.written["train"], sink.written["val"]
    total = (result.train_rows + result.val_rows) * seq_len
    log(f"read {_plural(len(files), 'file')}, {_plural(records, 'record')}: {result.examples:,} packed, "
        f"{result.skipped:,} skipped as bad"
        + (f" (first {SHOWN_BAD_LINES} shown)" if result.skipped > SHOWN_BAD_LINES else "")
        + f" ({records / max(seconds, 1e-9):,.0f} records/s)")
    if packer.truncated or packer.dropped or packer.emptied:
        log(f"longer than a row of {seq_len:,} tokens: {packer.truncated:,} truncated, {packer.dropped:,} dropped; "
            f"{packer.emptied:,} left out with nothing to train on after truncation")
    log(f"packed into {_plural(packer.rows, 'row')} of {seq_len:,} tokens: {100 * packer.padding / total:.1f}% padding, "
        f"{100 * result.loss_tokens / total:.1f}% of tokens in the loss (--train-on {train_on})")
    log(f"train {_plural(result.train_rows, 'row')} ({result.train_tokens:,} tokens), "
        f"val {_plural(result.val_rows, 'row')} ({result.val_tokens:,} tokens)")
    if shard_rows is None:
        result.train_path, result.val_path = out_dir / f"{name}_train.bin", out_dir / f"{name}_val.bin"
    else:
        result.train_path, result.val_path = out_dir / f"{name}_train_*.bin", out_dir / f"{name}_val_*.bin"
    result.description = f"{name} (chat, {_plural(len(files), 'file')}, rows of {seq_len:,})"
    return result
