"""Documents of parquet shards: row groups, their texts, and a resumable cursor over them.

The row group is the unit of reading and of striding across data streams (nanochat
strides across processes); a document is named by ``(epoch, row_group, row)`` so a loader's state can
point at it without holding text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat_jax.dataset import TEXT_COLUMN, CorruptShardError, validate_shard

DocKey = tuple[int, int, int]  # (epoch, row_group index in this stream's list, row)


@dataclass(frozen=True)
class RowGroupRef:
    path: Path
    row_group: int
    num_rows: int
    file_index: int  # index of ``path`` in the split's file list (nanochat's ``pq_idx``)


def split_row_groups(files: Sequence[str | os.PathLike]) -> list[RowGroupRef]:
    """All ``(file, row group)`` pairs of ``files`` in order, from the footers only."""
    refs = []
    for fi, f in enumerate(files):
        md = validate_shard(f)
        refs.extend(RowGroupRef(Path(f), rg, md.row_group(rg).num_rows, fi) for rg in range(md.num_row_groups))
    return refs


def strided_row_groups(refs: Sequence[RowGroupRef], index: int, count: int) -> list[RowGroupRef]:
    """Row groups ``index, index + count, …`` of the flattened list (data stream ``index`` of ``count``)."""
    if not 0 <= index < count:
        raise ValueError(f"stream index must be in [0, {count}), got {index}")
    mine = list(refs[index::count])
    if not mine:
        raise ValueError(
            f"the split has {len(refs)} row groups but {count} data streams: stream {index} would read nothing. "
            "Use more shards or fewer data streams (data.streams)."
        )
    return mine


def _decode_texts(column: pa.ChunkedArray) -> list[str | None]:
    """Column → Python strings. pyarrow does not validate UTF-8 in parquet, so bad bytes become U+FFFD here."""
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return column.to_pylist()
        except UnicodeDecodeError:
            column = column.cast(pa.large_binary() if pa.types.is_large_string(t) else pa.binary())
    elif not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise TypeError(f"the {TEXT_COLUMN!r} column must be string or binary, got {t}")
    return [None if b is None else b.decode("utf-8", errors="replace") for b in column.to_pylist()]


def read_row_group_texts(ref: RowGroupRef) -> list[str | None]:
    """The ``text`` column of one row group; a read failure names the file."""
    try:
        table = pq.ParquetFile(ref.path).read_row_group(ref.row_group, columns=[TEXT_COLUMN])
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CorruptShardError(ref.path, f"reading row group {ref.row_group} failed: {e}") from e
    texts = _decode_texts(table.column(0))
    if len(texts) != ref.num_rows:
        raise CorruptShardError(ref.path, f"row group {ref.row_group} has {len(texts)} rows, footer says {ref.num_rows}")
    return texts


def iter_documents(files: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Every non-empty document of ``files`` in order, one row group in memory at a time (tokenizer training)."""
    for ref in split_row_groups(files):
        yield from (text for text in read_row_group_texts(ref) if text)


class DocumentReader:
    """Cursor ``(epoch, row_group, row)`` over one stream's documents, epochs forever.

    ``next_chunk`` returns up to ``chunk_docs`` non-empty documents of a single
    row group (nanochat tokenizes 128 documents of one row group at a time).
    """

    def __init__(self, row_groups: Sequence[RowGroupRef], chunk_docs: int):
        self.row_groups = list(row_groups)
        self.chunk_docs = chunk_docs
        self.epoch, self.group, self.row = 0, 0, 0
        self._cache: dict[int, list[str | None]] = {}

    def texts(self, group: int) -> list[str | None]:
        """Texts of row group ``group``; the two most recent are cached."""
        if group not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[group] = read_row_group_texts(self.row_groups[group])
        return self._cache[group]

    def seek(self, epoch: int, group: int, row: int) -> None:
        if not (epoch >= 0 and 0 <= group < len(self.row_groups) and 0 <= row <= self.row_groups[group].num_rows):
            raise ValueError(f"position (epoch={epoch}, row_group={group}, row={row}) is outside this stream's "
                             f"{len(self.row_groups)} row groups")
        self.epoch, self.group, self.row = epoch, group, row

    @property
    def cursor(self) -> DocKey:
        return self.epoch, self.group, self.row

    def next_chunk(self) -> tuple[list[DocKey], list[str]]:
        crossed = 0
        while True:
            if self.row >= self.row_groups[self.group].num_rows:
                crossed += 1
                if crossed > len(self.row_groups):
                    raise ValueError("every document of this stream's row groups is empty: nothing to train on")
                self.group, self.row = self.group + 1, 0
                if self.group == len(self.row_groups):
                    self.epoch, self.group = self.epoch + 1, 0
                continue
            texts = self.texts(self.group)
            start, stop = self.row, min(self.row + self.chunk_docs, len(texts))
            self.row = stop
            rows = [r for r in range(start, stop) if texts[r]]
            if rows:
                return [(self.epoch, self.group, r) for r in rows], [texts[r] for r in rows]
