"""Pretraining loader: parquet documents → tokens → packed ``(inputs, targets)``, resumable exactly.

nanochat's two pretraining loaders (``stream``: classic concatenation, ``bestfit``:
HEAD's BOS-aligned rows, see ``packing``) over this process's strided row groups
(``parquet_docs``), with grain's prefetch thread in front. The JSON state holds
document positions, never tokens, and is the one of the last batch handed out, so
batches waiting in the prefetch queue are not counted as consumed.
"""

from __future__ import annotations

import base64
import itertools
import os
import sys
from typing import Any, Iterator

import grain
import numpy as np

from nanochat_jax.dataset import parquet_files_for_split
from nanochat_jax.packing import BestFitPacker, StreamPacker
from nanochat_jax.parquet_docs import DocKey, DocumentReader, process_row_groups, split_row_groups

MODES = ("stream", "bestfit")
STATE_VERSION = 1


class PretrainBatches:
    """This process's batches, produced on the prefetch thread; ``get_state``/``set_state`` resume exactly.

    The tokenizer is duck-typed: ``encode(texts, prepend=bos, num_threads=n)``,
    ``get_bos_token_id()`` and ``get_vocab_size()``. Documents are tokenized
    ``tokenizer_batch_size`` at a time, never across a row group, BOS first.
    """

    def __init__(self, tokenizer, files, batch_size: int, seq_len: int, *, mode: str, process_index: int,
                 process_count: int, tokenizer_threads: int, tokenizer_batch_size: int, buffer_size: int):
        self.tokenizer, self.batch_size, self.seq_len, self.mode = tokenizer, batch_size, seq_len, mode
        self.bos, self.threads = int(tokenizer.get_bos_token_id()), tokenizer_threads
        groups = split_row_groups(files)
        self.identity = {  # what a saved state must match: same mode, process layout, shards and tokenizer
            "version": STATE_VERSION, "mode": mode, "process_index": process_index, "process_count": process_count,
            "split": {"files": len(files), "row_groups": len(groups), "rows": int(sum(g.num_rows for g in groups)),
                      "first": files[0].name, "last": files[-1].name},
            "vocab_size": int(tokenizer.get_vocab_size()), "bos": self.bos,
        }
        self.reader = DocumentReader(process_row_groups(groups, process_index, process_count), tokenizer_batch_size)
        chunks = self._chunks()
        self.packer = StreamPacker(chunks) if mode == "stream" else BestFitPacker(chunks, buffer_size)
        self.batches = 0

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.threads)

    def _chunks(self) -> Iterator[tuple[list[DocKey], list[list[int]]]]:
        while True:  # reads the reader's cursor at every chunk, so a ``seek`` takes effect at once
            keys, texts = self.reader.next_chunk()
            yield keys, self._encode(texts)

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        out = self.packer.next_batch(self.batch_size, self.seq_len)
        self.batches += 1
        return out

    def get_state(self) -> dict[str, Any]:
        position = self.packer.position() if self.mode == "stream" else None
        (epoch, group, row), offset = position or (self.reader.cursor, 0)
        ref = self.reader.row_groups[group]
        buffer = [] if self.mode == "stream" else self._bitmaps(self.packer.keys)
        return {**self.identity, "batch_size": self.batch_size, "seq_len": self.seq_len, "batches": self.batches,
                "epoch": epoch, "row_group": group, "row": row, "offset": offset, "buffer": buffer,
                "pq_idx": ref.file_index, "rg_idx": ref.row_group}  # nanochat's names, for logs only

    def set_state(self, state: dict[str, Any]) -> None:
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume this loader from the given state: {key!r} is {state.get(key)!r} in the state "
                    f"but {value!r} here. Use the same mode, process layout, shards and tokenizer as the run that "
                    "saved it, or start the loader without a state."
                )
        key = (int(state["epoch"]), int(state["row_group"]), int(state["row"]))
        self.reader.seek(*key)
        if self.mode == "stream":
            self.packer.reset(key, int(state["offset"]))
        else:
            keys, texts = self._buffered(state["buffer"])
            self.packer.reset(keys, self._encode(texts) if texts else [])
        self.batches = int(state["batches"])

    def _bitmaps(self, keys: list[DocKey]) -> list[list]:
        """Buffered documents as ``[[epoch, row_group, base64 bitmap of rows], …]`` in stream order."""
        out = []
        for (epoch, group), items in itertools.groupby(keys, key=lambda k: (k[0], k[1])):
            bits = np.zeros(self.reader.row_groups[group].num_rows, bool)
            bits[[k[2] for k in items]] = True
            out.append([epoch, group, base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")])
        return out

    def _buffered(self, bitmaps: list[list]) -> tuple[list[DocKey], list[str]]:
        """The keys and texts that ``_bitmaps`` wrote, re-read from the shards."""
        keys, texts = [], []
        for epoch, group, bitmap in bitmaps:
            if not 0 <= group < len(self.reader.row_groups):
                raise ValueError(f"state names row group {group} but this process has {len(self.reader.row_groups)}")
            group_texts = self.reader.texts(group)
            bits = np.unpackbits(np.frombuffer(base64.b64decode(bitmap), np.uint8), count=len(group_texts))
            for r in np.flatnonzero(bits).tolist():
                if not group_texts[r]:
                    raise ValueError(f"state names document {r} of row group {group}, which is empty: the shards changed")
                keys.append((int(epoch), int(group), r))
                texts.append(group_texts[r])
        return keys, texts


class PretrainLoader(grain.experimental.ThreadPrefetchDatasetIterator):
    """``next`` → this process's ``(inputs, targets)``; exact resume by JSON or by Orbax (``grain.checkpoint``)."""

    def next_global(self, mesh) -> tuple[Any, Any]:
        """Next step as two global ``jax.Array`` sharded over the mesh's data axis."""
        from nanochat_jax.sharding import make_global_batch

        inputs, targets = next(self)
        return make_global_batch(inputs, mesh), make_global_batch(targets, mesh)

    def __enter__(self) -> "PretrainLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self, _finalizing=sys.is_finalizing) -> None:  # bound now: at exit module globals are gone
        if not _finalizing():  # at exit grain's modules are half torn down, and its daemon thread dies anyway
            super().__del__()


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
    or a directory of ``*.parquet`` shards; train = all shards but the last, val =
    the last. ``batch_size`` is this process's rows; process ``p`` of ``W`` reads row
    groups ``p, p+W, …`` (defaults: JAX's). ``prefetch`` batches are prepared by a
    background thread (0 = none). ``state`` (from ``get_state()``) resumes exactly,
    also with another batch shape, but not another mode, process layout, split or tokenizer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be ≥ 1, got {batch_size}, {seq_len}")
    if tokenizer_batch_size < 1 or tokenizer_threads < 1 or buffer_size < 1 or prefetch < 0:
        raise ValueError("tokenizer_batch_size, tokenizer_threads and buffer_size must be ≥ 1 and prefetch ≥ 0")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    batches = PretrainBatches(
        tokenizer, parquet_files_for_split(split, data_dir), batch_size, seq_len, mode=mode,
        process_index=process_index, process_count=process_count, tokenizer_threads=tokenizer_threads,
        tokenizer_batch_size=tokenizer_batch_size, buffer_size=buffer_size,
    )
    if state is not None:
        batches.set_state(state)
    return PretrainLoader(batches, prefetch)


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
