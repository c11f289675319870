"""Pretraining dataloader: parquet row groups → tokens → ``(inputs, targets)``.

A Grain pipeline (custom ``grain.IterDataset`` / ``grain.DatasetIterator`` +
``grain.experimental.ThreadPrefetchIterDataset``) that reproduces nanochat's
two pretraining loaders and resumes *exactly* from a small JSON state.

Public API
----------
``build_pretrain_loader(tokenizer, data_dir, split, batch_size, seq_len, *,
mode="stream", process_index=None, process_count=None, tokenizer_threads=4,
tokenizer_batch_size=128, buffer_size=1000, prefetch=2, state=None)
-> PretrainLoader``

``PretrainLoader`` is a ``grain.DatasetIterator``: ``next(loader)`` returns
``(inputs, targets)``, two numpy ``int32`` arrays of shape ``(batch_size,
seq_len)`` where ``batch_size`` is *this process's* rows (global batch /
process count); ``loader.next_global(mesh)`` returns the same step as two
global ``jax.Array`` built by ``sharding.make_global_batch``;
``iter_global_batches(loader, mesh)`` is the endless generator form
(``iter_global_microbatches(loader, mesh, A)`` stacks A steps for gradient
accumulation);
``get_state()`` / ``set_state()`` give exact resume, by JSON or by Orbax
(``grain.checkpoint.CheckpointSave(loader)`` /
``grain.checkpoint.CheckpointRestore(loader)``); ``close()`` stops the
prefetch thread (also a context manager).

The tokenizer is duck-typed: only ``encode(list_of_str, prepend=bos_id,
num_threads=n) -> list[list[int]]``, ``get_bos_token_id()`` and
``get_vocab_size()`` are used.

Documents
---------
The split's files (``dataset.parquet_files_for_split``: train = all shards but
the last, val = the last) are flattened into one list of ``(file, row group)``
pairs; process ``p`` of ``W`` reads pairs ``p, p+W, p+2W, …`` and starts over
(epoch + 1) after its last one. Empty (or null) documents are skipped; text
that is not valid UTF-8 is decoded with U+FFFD replacement characters; a
shard that cannot be read raises ``CorruptShardError`` naming the file.
Documents are tokenized ``tokenizer_batch_size`` at a time (never across a row
group) with ``tokenizer_threads`` threads, BOS prepended to every document.

Packing
-------
``mode="stream"`` (nanochat classic ``tokenizing_distributed_data_loader``):
the documents form one token stream; each step takes the next ``B*T + 1``
tokens ``buf`` and yields ``inputs = buf[:-1].reshape(B, T)``, ``targets =
buf[1:].reshape(B, T)``. So row ``b`` holds ``buf[b*T : b*T+T]`` (rows start
mid-document), its last target is the next row's first input, and the last
token of a step is a target only — the next step starts with the token after
it. This is nanochat's exact arithmetic, not a ``(B, T+1)`` layout.

``mode="bestfit"`` (nanochat HEAD ``…_bos_bestfit``): a buffer of at least
``buffer_size`` tokenized documents; each row of capacity ``T+1`` is filled by
repeatedly moving the *largest document that fits entirely* into it; when none
fits, the *shortest* document is cropped to fill the rest exactly and its
remainder is discarded. Ties go to the document read first, as in nanochat.
Every row therefore starts with BOS and there is no padding; ``inputs =
rows[:, :-1]``, ``targets = rows[:, 1:]``.

Resume
------
The state never holds tokens. Documents are named by their stream position
``(epoch, row_group, row)`` (``row_group`` = index into this process's list).

- stream: the position of the first unconsumed token = its document and the
  token offset inside it. Restoring re-reads that row group, re-tokenizes
  from that document and skips ``offset`` tokens.
- bestfit: the reader cursor (next row to read) plus the set of documents in
  the buffer, one bitmap per row group (base64 of ``numpy.packbits``; a
  buffer of 1,000 documents spans only a few row groups, so this is a few
  hundred bytes to a few KB). The buffer is always in stream order (documents
  are appended in read order and removed without reordering), so restoring
  re-reads those row groups, re-tokenizes the marked documents in order and
  continues reading at the cursor.

The prefetch thread records the state that goes with each batch it produces
and ``get_state()`` returns the one of the last batch handed out, so batches
waiting in the prefetch queue are never counted as consumed.

A state can be restored with a different ``batch_size``/``seq_len`` (the
stream / buffer simply continues) but not with a different mode, process
layout, split contents or tokenizer: those raise ``ValueError`` saying which
field differs.
"""

from __future__ import annotations

import base64
import copy
import itertools
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import grain
import numpy as np
import pyarrow as pa

from nanochat_jax.dataset import (
    TEXT_COLUMN,
    CorruptShardError,
    parquet_files_for_split,
    validate_shard,
)

MODES = ("stream", "bestfit")
STATE_VERSION = 1

DocKey = tuple[int, int, int]  # (epoch, row_group index in this process's list, row)


# ----------------------------------------------------------------------------- source


@dataclass(frozen=True)
class RowGroupRef:
    """One parquet row group: the unit of reading and of striding across processes."""

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


def process_row_groups(
    files: Sequence[str | os.PathLike], process_index: int, process_count: int,
    refs: Sequence[RowGroupRef] | None = None,
) -> list[RowGroupRef]:
    """Row groups ``process_index, process_index + process_count, …`` of the flattened list.

    ``refs`` = ``split_row_groups(files)`` when the caller already has it.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    refs = split_row_groups(files) if refs is None else list(refs)
    mine = refs[process_index::process_count]
    if not mine:
        raise ValueError(
            f"the split has {len(refs)} row groups but process_count={process_count}: process {process_index} "
            "would read nothing. Use more shards or fewer processes."
        )
    return mine


def _decode_texts(column: pa.ChunkedArray) -> list[str | None]:
    """Column → Python strings; invalid UTF-8 becomes U+FFFD instead of an exception.

    pyarrow does not validate UTF-8 when reading parquet, so a ``string``
    column can hold invalid bytes and ``to_pylist`` then raises
    ``UnicodeDecodeError``; in that case (and for binary columns) the bytes
    are decoded with ``errors="replace"``.
    """
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
    import pyarrow.parquet as pq

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
    """Every non-empty document of ``files`` in order, one row group in memory at a time.

    The same reading rules as the loaders (invalid UTF-8 replaced, a bad
    shard named in ``CorruptShardError``), for one-pass consumers such as
    tokenizer training.
    """
    for ref in split_row_groups(files):
        yield from (text for text in read_row_group_texts(ref) if text)


class DocumentReader:
    """Cursor ``(epoch, row_group, row)`` over this process's documents, epochs forever.

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
            raise ValueError(f"position (epoch={epoch}, row_group={group}, row={row}) is outside this process's "
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
                    raise ValueError("every document of this process's row groups is empty: nothing to train on")
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


# ----------------------------------------------------------------------------- packing


def pack_stream(tokens: np.ndarray, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """nanochat classic: ``B*T+1`` consecutive tokens → inputs/targets ``(B, T)``."""
    if tokens.shape != (batch_size * seq_len + 1,):
        raise ValueError(f"expected {batch_size * seq_len + 1} tokens, got {tokens.shape}")
    inputs = tokens[:-1].reshape(batch_size, seq_len).astype(np.int32, copy=True)
    targets = tokens[1:].reshape(batch_size, seq_len).astype(np.int32, copy=True)
    return inputs, targets


def rows_to_inputs_targets(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(B, T+1)`` rows → inputs ``rows[:, :-1]`` and targets ``rows[:, 1:]`` (contiguous copies)."""
    return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


def best_fit_choice(lengths: np.ndarray, remaining: int) -> tuple[int, bool]:
    """Which buffered document goes next into a row with ``remaining`` free slots.

    Returns ``(index, whole)``: the largest document with length ≤ remaining
    (first one on ties), or, when none fits, the shortest (first on ties) to be
    cropped. ``lengths`` must be non-empty and ≥ 1.
    """
    fitting = np.where(lengths <= remaining, lengths, 0)
    i = int(fitting.argmax())
    if fitting[i] > 0:
        return i, True
    return int(lengths.argmin()), False


class StreamBuffer:
    """Token stream for ``mode="stream"`` with the document of every position."""

    def __init__(self, reader: DocumentReader, encode):
        self.reader, self.encode = reader, encode
        self.tokens = np.empty(0, np.int32)
        self.starts = np.empty(0, np.int64)  # start of each document in ``tokens``
        self.keys: list[DocKey] = []
        self.pos = 0

    def _extend(self) -> None:
        keys, texts = self.reader.next_chunk()
        ids = self.encode(texts)
        lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        new = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lens.sum()))
        # Drop documents that are entirely consumed before appending.
        first = max(int(np.searchsorted(self.starts, self.pos, side="right")) - 1, 0)
        cut = int(self.starts[first]) if len(self.starts) else 0
        base = len(self.tokens) - cut
        self.tokens = np.concatenate([self.tokens[cut:], new])
        self.starts = np.concatenate([self.starts[first:] - cut, base + np.cumsum(lens) - lens])
        self.keys = self.keys[first:] + keys
        self.pos -= cut

    def take(self, n: int) -> np.ndarray:
        while len(self.tokens) - self.pos < n:
            self._extend()
        out = self.tokens[self.pos:self.pos + n]
        self.pos += n
        return out

    def position(self) -> tuple[DocKey, int]:
        """(document, offset) of the next unconsumed token."""
        if self.pos < len(self.tokens):
            i = int(np.searchsorted(self.starts, self.pos, side="right")) - 1
            return self.keys[i], self.pos - int(self.starts[i])
        return self.reader.cursor, 0

    def restore(self, key: DocKey, offset: int) -> None:
        self.reader.seek(*key)
        self.tokens, self.starts, self.keys, self.pos = np.empty(0, np.int32), np.empty(0, np.int64), [], 0
        if offset:
            self._extend()
            doc_len = (self.starts[1] if len(self.starts) > 1 else len(self.tokens)) - self.starts[0]
            if self.keys[0] != tuple(key) or offset >= doc_len:
                raise ValueError(f"state points at token {offset} of document {tuple(key)} but the data has "
                                 f"document {self.keys[0]} of {doc_len} tokens there: the shards changed")
            self.pos = offset


class BestFitBuffer:
    """Document buffer for ``mode="bestfit"`` (nanochat HEAD's BOS-aligned best fit).

    Row filling (``fill_row``) is separate from the buffer bookkeeping so that
    HEAD's SFT variant (pad instead of crop, with a loss mask) can be added as
    another ``fill_row``-like method over the same buffer and ``best_fit_choice``.
    """

    def __init__(self, reader: DocumentReader, encode, buffer_size: int):
        self.reader, self.encode, self.buffer_size = reader, encode, buffer_size
        self.docs: list[np.ndarray] = []
        self.keys: list[DocKey] = []
        self.lengths = np.empty(0, np.int64)

    def _append(self, keys: list[DocKey], ids: list[list[int]]) -> None:
        self.docs.extend(np.asarray(x, np.int32) for x in ids)
        self.keys.extend(keys)
        self.lengths = np.concatenate([self.lengths, np.fromiter((len(x) for x in ids), np.int64, len(ids))])

    def _refill(self) -> None:
        while len(self.docs) < self.buffer_size:
            keys, texts = self.reader.next_chunk()
            self._append(keys, self.encode(texts))

    def _pop(self, i: int) -> np.ndarray:
        self.keys.pop(i)
        self.lengths = np.delete(self.lengths, i)
        return self.docs.pop(i)

    def fill_row(self, row: np.ndarray) -> None:
        """Fill ``row`` (capacity T+1) completely; no padding."""
        cap, pos = len(row), 0
        while pos < cap:
            self._refill()
            remaining = cap - pos
            i, whole = best_fit_choice(self.lengths, remaining)
            doc = self._pop(i)
            n = len(doc) if whole else remaining
            row[pos:pos + n] = doc[:n]
            pos += n

    def fill_rows(self, batch_size: int, seq_len: int) -> np.ndarray:
        rows = np.empty((batch_size, seq_len + 1), np.int32)
        for r in rows:
            self.fill_row(r)
        return rows

    def buffer_state(self) -> list[list]:
        """``[[epoch, row_group, base64 bitmap of rows], …]`` in stream order."""
        out = []
        for (epoch, group), items in itertools.groupby(self.keys, key=lambda k: (k[0], k[1])):
            bits = np.zeros(self.reader.row_groups[group].num_rows, bool)
            bits[[k[2] for k in items]] = True
            out.append([epoch, group, base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")])
        return out

    def restore(self, buffer: list[list]) -> None:
        self.docs, self.keys, self.lengths = [], [], np.empty(0, np.int64)
        keys, texts = [], []
        for epoch, group, bitmap in buffer:
            if not 0 <= group < len(self.reader.row_groups):
                raise ValueError(f"state names row group {group} but this process has {len(self.reader.row_groups)}")
            group_texts = self.reader.texts(group)
            n = len(group_texts)
            bits = np.unpackbits(np.frombuffer(base64.b64decode(bitmap), np.uint8), count=n).astype(bool)
            for r in np.flatnonzero(bits).tolist():
                if not group_texts[r]:
                    raise ValueError(f"state names document {r} of row group {group}, which is empty: the shards changed")
                keys.append((int(epoch), int(group), r))
                texts.append(group_texts[r])
        if keys != sorted(keys):
            raise ValueError("bestfit state buffer is not in stream order: corrupt state")
        if texts:
            self._append(keys, self.encode(texts))


# ----------------------------------------------------------------------------- grain


@dataclass(frozen=True)
class LoaderConfig:
    files: tuple[Path, ...]
    batch_size: int
    seq_len: int
    mode: str
    process_index: int
    process_count: int
    tokenizer_threads: int
    tokenizer_batch_size: int
    buffer_size: int


class PretrainBatchIterator(grain.DatasetIterator):
    """Produces ``(inputs, targets)`` steps; holds the reader and the packing buffer."""

    def __init__(self, tokenizer, config: LoaderConfig):
        super().__init__()
        self.tokenizer, self.config = tokenizer, config
        self.bos = int(tokenizer.get_bos_token_id())
        all_groups = split_row_groups(config.files)
        self.split_info = {
            "files": len(config.files),
            "row_groups": len(all_groups),
            "rows": int(sum(g.num_rows for g in all_groups)),
            "first": config.files[0].name,
            "last": config.files[-1].name,
        }
        mine = process_row_groups(config.files, config.process_index, config.process_count, all_groups)
        self.reader = DocumentReader(mine, config.tokenizer_batch_size)
        if config.mode == "stream":
            self.buffer = StreamBuffer(self.reader, self._encode)
        else:
            self.buffer = BestFitBuffer(self.reader, self._encode, config.buffer_size)
        self.batches = 0

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.config.tokenizer_threads)

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        self._assert_not_closed()
        B, T = self.config.batch_size, self.config.seq_len
        if self.config.mode == "stream":
            out = pack_stream(self.buffer.take(B * T + 1), B, T)
        else:
            out = rows_to_inputs_targets(self.buffer.fill_rows(B, T))
        self.batches += 1
        return out

    def _identity(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "mode": self.config.mode,
            "process_index": self.config.process_index,
            "process_count": self.config.process_count,
            "split": self.split_info,
            "vocab_size": int(self.tokenizer.get_vocab_size()),
            "bos": self.bos,
        }

    def get_state(self) -> dict[str, Any]:
        if self.config.mode == "stream":
            (epoch, group, row), offset = self.buffer.position()
            buffer = []
        else:
            (epoch, group, row), offset = self.reader.cursor, 0
            buffer = self.buffer.buffer_state()
        ref = self.reader.row_groups[group]
        return {
            **self._identity(),
            "batch_size": self.config.batch_size,
            "seq_len": self.config.seq_len,
            "batches": self.batches,
            "epoch": epoch,
            "row_group": group,
            "row": row,
            "offset": offset,
            "buffer": buffer,
            # nanochat's names for where the loader is, for logs and checkpoint metadata only
            "pq_idx": ref.file_index,
            "rg_idx": ref.row_group,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        mine = self._identity()
        for key, value in mine.items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume this loader from the given state: {key!r} is {state.get(key)!r} in the state "
                    f"but {value!r} here. Use the same mode, process layout, shards and tokenizer as the run that "
                    "saved it, or start the loader without a state."
                )
        key = (int(state["epoch"]), int(state["row_group"]), int(state["row"]))
        if self.config.mode == "stream":
            self.buffer.restore(key, int(state["offset"]))
        else:
            self.reader.seek(*key)
            self.buffer.restore(state["buffer"])
        self.batches = int(state["batches"])


class PretrainIterDataset(grain.IterDataset):
    """The Grain dataset whose iterator is ``PretrainBatchIterator``."""

    def __init__(self, tokenizer, config: LoaderConfig):
        super().__init__()
        self.tokenizer, self.config = tokenizer, config

    def __iter__(self) -> PretrainBatchIterator:
        return PretrainBatchIterator(self.tokenizer, self.config)

    def __str__(self) -> str:
        c = self.config
        return f"PretrainIterDataset(mode={c.mode}, B={c.batch_size}, T={c.seq_len}, process={c.process_index}/{c.process_count})"


class PretrainLoader(grain.DatasetIterator):
    """What ``build_pretrain_loader`` returns: the prefetched iterator plus helpers."""

    def __init__(self, iterator: grain.DatasetIterator, config: LoaderConfig):
        super().__init__(iterator)
        self.config = config
        # Close before interpreter shutdown: grain's prefetch iterator cannot close itself from
        # ``__del__`` once modules are torn down (it prints "Exception ignored in __del__").
        weakref.finalize(self, _close_if_alive, weakref.ref(self))

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        self._assert_not_closed()
        return next(self._parent)

    def close(self) -> None:
        """Stop the prefetch thread and release the pipeline (idempotent)."""
        if self._closed:
            return
        super().close()
        self._parents = ()  # drop the prefetch iterator now, while Python is fully alive

    def next_global(self, mesh) -> tuple[Any, Any]:
        """Next step as two global ``jax.Array`` sharded over the mesh's data axis."""
        from nanochat_jax.sharding import make_global_batch

        inputs, targets = next(self)
        return make_global_batch(inputs, mesh), make_global_batch(targets, mesh)

    def get_state(self) -> dict[str, Any]:
        """State after the last batch returned by ``next`` (a copy the caller may keep)."""
        self._assert_not_closed()
        return copy.deepcopy(self._parent.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        self._assert_not_closed()
        self._parent.set_state(state)

    def __enter__(self) -> "PretrainLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __str__(self) -> str:
        c = self.config
        return f"PretrainLoader(mode={c.mode}, B={c.batch_size}, T={c.seq_len}, process={c.process_index}/{c.process_count})"


def _close_if_alive(ref: "weakref.ref[PretrainLoader]") -> None:
    loader = ref()
    if loader is not None:
        loader.close()


def _default_process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def build_pretrain_loader(
    tokenizer,
    data_dir: str | os.PathLike | None,
    split: str,
    batch_size: int,
    seq_len: int,
    *,
    mode: str = "stream",
    process_index: int | None = None,
    process_count: int | None = None,
    tokenizer_threads: int = 4,
    tokenizer_batch_size: int = 128,
    buffer_size: int = 1000,
    prefetch: int = 2,
    state: dict[str, Any] | None = None,
) -> PretrainLoader:
    """Infinite iterator of ``(inputs, targets)`` int32 ``(batch_size, seq_len)`` steps.

    ``data_dir``: ``"sample"`` (embedded corpus), ``None`` (``<base_dir>/base_data``)
    or a directory of ``*.parquet`` shards. ``batch_size`` is this process's
    rows. ``process_index``/``process_count`` default to JAX's. ``prefetch``
    batches are prepared by a background thread (0 = none). ``state`` (from
    ``get_state()``) resumes exactly where that loader was.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be ≥ 1, got {batch_size}, {seq_len}")
    if tokenizer_batch_size < 1 or tokenizer_threads < 1 or buffer_size < 1 or prefetch < 0:
        raise ValueError("tokenizer_batch_size, tokenizer_threads and buffer_size must be ≥ 1 and prefetch ≥ 0")
    if process_index is None or process_count is None:
        pi, pc = _default_process()
        process_index = pi if process_index is None else process_index
        process_count = pc if process_count is None else process_count
    config = LoaderConfig(
        files=tuple(parquet_files_for_split(split, data_dir)),
        batch_size=batch_size, seq_len=seq_len, mode=mode,
        process_index=process_index, process_count=process_count,
        tokenizer_threads=tokenizer_threads, tokenizer_batch_size=tokenizer_batch_size, buffer_size=buffer_size,
    )
    ds: grain.IterDataset = PretrainIterDataset(tokenizer, config)
    if prefetch:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    iterator = iter(ds)
    if state is not None:
        iterator.set_state(state)
    return PretrainLoader(iterator, config)


def iter_global_batches(loader: PretrainLoader, mesh) -> Iterator[tuple[Any, Any]]:
    """Endless ``(inputs, targets)`` global ``jax.Array`` pairs from ``loader``."""
    while True:
        yield loader.next_global(mesh)


def iter_global_microbatches(loader: PretrainLoader, mesh, accum: int) -> Iterator[tuple[Any, Any]]:
    """Endless ``(A, B, T)`` global ``(inputs, targets)`` stacks of ``accum`` steps: one optimizer step's data."""
    from nanochat_jax.sharding import make_global_microbatches

    while True:
        xs, ys = zip(*(next(loader) for _ in range(accum)))
        yield make_global_microbatches(np.stack(xs), mesh), make_global_microbatches(np.stack(ys), mesh)
