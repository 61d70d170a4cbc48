"""All the token files of one `prepare` appear together or not at all.

Each file is first written in full (through write_tokens, i.e. atomic_write) under a hidden staging
name in the output directory; only when every file is written are they renamed to their real names.
A failure before that removes the staged files and leaves whatever dataset was there untouched.
After the renames, shards of an older dataset of the same name that the new one does not have
(`<name>_train_000007.bin` when the new dataset has 5 train shards) are deleted, so a glob never
mixes two datasets.

    with DatasetWriter(out_dir, "llmc") as writer:
        writer.write("corpus_val.bin", val_tokens)
        writer.write("corpus_train.bin", train_tokens)
        writer.commit(stale_shards_of="corpus")   # the moment the new dataset appears
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from tui_llm.engine.data.tokens import write_tokens
from tui_llm.engine.formats.atomic import atomic_write


class DatasetWriter:
    def __init__(self, out_dir, fmt: str, wide: bool = False):
        self.out_dir, self.fmt, self.wide = Path(out_dir), fmt, wide  # wide: uint32 llm.c tokens
        self._tag = secrets.token_hex(4)
        self.staged: list[tuple[Path, Path]] = []  # (staging path, final path)
        self.committed = False

    def write(self, name: str, tokens) -> tuple[Path, int]:
        """Write tokens under a staging name for `name`; returns (final path, bytes written)."""
        final = self.out_dir / name
        # hidden, and ending in the real name: globs skip it, and tools that look at suffixes still see .bin
        staging = self.out_dir / f".staged-{self._tag}-{name}"
        self.staged.append((staging, final))
        wide = {"wide": True} if self.wide else {}  # uint32 tokens only when the vocabulary needs them
        return final, write_tokens(staging, tokens, self.fmt, **wide)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Stage a small file that belongs to the dataset (the tokenizer sidecar); returns its final path."""
        final, staging = self.out_dir / name, self.out_dir / f".staged-{self._tag}-{name}"
        with atomic_write(staging) as f:
            f.write(data)
        self.staged.append((staging, final))
        return final

    def commit(self, stale_shards_of: str | None = None) -> list[Path]:
        """Rename every staged file into place; then delete `<stale_shards_of>_{train,val}_NNNNNN.bin` not written now."""
        for staging, final in self.staged:
            staging.replace(final)
        self.committed = True
        finals = [final for _, final in self.staged]
        if stale_shards_of is not None:
            shard = re.compile(re.escape(stale_shards_of) + r"_(train|val)_\d{6}\.bin")
            for path in self.out_dir.iterdir():
                if shard.fullmatch(path.name) and path not in finals:
                    path.unlink(missing_ok=True)
        return finals

    def discard(self) -> None:
        for staging, _ in self.staged:
            staging.unlink(missing_ok=True)
        self.staged = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.discard()
