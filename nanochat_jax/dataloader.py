"""Pretraining loader: parquet documents → tokens → packed ``(inputs, targets)``, resumable exactly.

nanochat's two pretraining loaders (``stream``: classic concatenation, ``bestfit``:
HEAD's BOS-aligned rows, see ``packing``), with grain's prefetch thread in front.
Unlike nanochat, whose data order depends on the world size, a step's rows follow
``data_streams``' scheme: ``S`` data streams (stream ``k`` reads row groups ``k, k+S,
…``) each pack ``R/S`` rows per step and process ``p`` runs only the streams behind
its rows, so any topology trains on the same rows. The JSON state holds document
positions per stream, never tokens; the states of all processes merge
(``data_streams.merge_states``) into the run's, which resumes on any topology.
"""

from __future__ import annotations

import base64
import itertools
import os
import sys
from typing import Any, Iterator

import grain
import numpy as np

from nanochat_jax.data_streams import StepStreams, fit_streams, micro_batches
from nanochat_jax.dataset import parquet_files_for_split
from nanochat_jax.packing import BestFitPacker, StreamPacker
from nanochat_jax.parquet_docs import DocKey, DocumentReader, strided_row_groups, split_row_groups

MODES = ("stream", "bestfit")
STATE_VERSION = 2  # 1: one process's row groups; 2: per-stream positions, topology-free
DEFAULT_STREAMS = 8  # configs' data.streams; the evaluations and benchmarks without a config use it


def split_stream_count(streams: int, step_rows: int, split: str, data_dir) -> int:
    """``fit_streams`` for a split's row groups (read from the shard footers)."""
    return fit_streams(streams, step_rows, len(split_row_groups(parquet_files_for_split(split, data_dir))))


class DocStream:
    """One data stream: a reader over row groups ``k, k+S, …`` and its packer; resumable by document position.

    Documents are tokenized ``tokenizer_batch_size`` at a time, never across a row
    group, BOS first (nanochat's rule).
    """

    def __init__(self, encode, row_groups, mode: str, tokenizer_batch_size: int, buffer_size: int):
        self.encode, self.mode = encode, mode
        self.reader = DocumentReader(row_groups, tokenizer_batch_size)
        chunks = self._chunks()
        self.packer = StreamPacker(chunks) if mode == "stream" else BestFitPacker(chunks, buffer_size)

    def _chunks(self) -> Iterator[tuple[list[DocKey], list[list[int]]]]:
        while True:  # reads the reader's cursor at every chunk, so a ``seek`` takes effect at once
            keys, texts = self.reader.next_chunk()
            yield keys, self.encode(texts)

    def get_state(self) -> dict[str, Any]:
        position = self.packer.position() if self.mode == "stream" else None
        (epoch, group, row), offset = position or (self.reader.cursor, 0)
        ref = self.reader.row_groups[group]
        buffer = [] if self.mode == "stream" else self._bitmaps(self.packer.keys)
        return {"epoch": epoch, "row_group": group, "row": row, "offset": offset, "buffer": buffer,
                "pq_idx": ref.file_index, "rg_idx": ref.row_group}  # nanochat's names, for logs only

    def set_state(self, state: dict[str, Any]) -> None:
        key = (int(state["epoch"]), int(state["row_group"]), int(state["row"]))
        self.reader.seek(*key)
        if self.mode == "stream":
            self.packer.reset(key, int(state["offset"]))
        else:
            keys, texts = self._buffered(state["buffer"])
            self.packer.reset(keys, self.encode(texts) if texts else [])

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
                raise ValueError(f"state names row group {group} but this stream has {len(self.reader.row_groups)}")
            group_texts = self.reader.texts(group)
            bits = np.unpackbits(np.frombuffer(base64.b64decode(bitmap), np.uint8), count=len(group_texts))
            for r in np.flatnonzero(bits).tolist():
                if not group_texts[r]:
                    raise ValueError(f"state names document {r} of row group {group}, which is empty: the shards changed")
                keys.append((int(epoch), int(group), r))
                texts.append(group_texts[r])
        return keys, texts


class PretrainBatches(StepStreams):
    """This process's rows of each step (``StepStreams``), produced on the prefetch thread; resumable exactly.

    The tokenizer is duck-typed: ``encode(texts, prepend=bos, num_threads=n)``,
    ``get_bos_token_id()`` and ``get_vocab_size()``.
    """

    def __init__(self, tokenizer, files, step_rows: int, seq_len: int, *, mode: str, streams: int, process_index: int,
                 process_count: int, tokenizer_threads: int, tokenizer_batch_size: int, buffer_size: int):
        super().__init__(step_rows, seq_len, streams, process_index, process_count)
        self.tokenizer, self.threads = tokenizer, tokenizer_threads
        self.bos = int(tokenizer.get_bos_token_id())
        groups = split_row_groups(files)
        self.identity = {  # what a saved state must match: same mode, streams, shards and tokenizer
            "version": STATE_VERSION, "mode": mode, "streams": streams,
            "split": {"files": len(files), "row_groups": len(groups), "rows": int(sum(g.num_rows for g in groups)),
                      "first": files[0].name, "last": files[-1].name},
            "vocab_size": int(tokenizer.get_vocab_size()), "bos": self.bos,
        }
        self.streams = {k: DocStream(self._encode, strided_row_groups(groups, k, streams), mode, tokenizer_batch_size,
                                     buffer_size) for k in self.owned}  # fmt: skip

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.threads)


class PretrainLoader(grain.experimental.ThreadPrefetchDatasetIterator):
    """``next`` → this process's ``(inputs, targets)`` of a step; exact resume by JSON or by Orbax (``grain.checkpoint``)."""

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
    step_rows: int,
    seq_len: int,
    *,
    streams: int,
    mode: str = "stream",
    process_index: int | None = None,
    process_count: int | None = None,
    tokenizer_threads: int = 4,
    tokenizer_batch_size: int = 128,
    buffer_size: int = 1000,
    prefetch: int = 2,
    state: dict[str, Any] | None = None,
) -> PretrainLoader:
    """Infinite iterator of this process's ``(inputs, targets)``, int32 ``(step_rows / process_count, seq_len)``.

    ``data_dir``: ``"sample"`` (embedded corpus), ``None`` (``<base_dir>/base_data``)
    or a directory of ``*.parquet`` shards; train = all shards but the last, val =
    the last. ``step_rows``: rows of one step over all processes; ``streams`` must
    divide it (see the module doc; process defaults: JAX's); ``buffer_size`` (bestfit)
    is per stream. ``prefetch`` steps are prepared by a background thread (0 = none).
    ``state`` (``get_state()``, or ``data_streams.merge_states`` of every process's) resumes exactly,
    also with another batch shape or process layout, but not another mode, stream
    count, split or tokenizer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if step_rows < 1 or seq_len < 1 or streams < 1:
        raise ValueError(f"step_rows, seq_len and streams must be ≥ 1, got {step_rows}, {seq_len}, {streams}")
    if tokenizer_batch_size < 1 or tokenizer_threads < 1 or buffer_size < 1 or prefetch < 0:
        raise ValueError("tokenizer_batch_size, tokenizer_threads and buffer_size must be ≥ 1 and prefetch ≥ 0")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    batches = PretrainBatches(
        tokenizer, parquet_files_for_split(split, data_dir), step_rows, seq_len, mode=mode, streams=streams,
        process_index=process_index, process_count=process_count, tokenizer_threads=tokenizer_threads,
        tokenizer_batch_size=tokenizer_batch_size, buffer_size=buffer_size,
    )
    if state is not None:
        batches.set_state(state)
    return PretrainLoader(batches, prefetch)


def iter_global_microbatches(loader: PretrainLoader, mesh, accum: int) -> Iterator[tuple[Any, Any]]:
    """Endless ``(A, B, T)`` global ``(inputs, targets)`` stacks: one optimizer step's data."""
    from nanochat_jax.sharding import make_global_microbatches

    while True:
        xs, ys = (micro_batches(a, accum) for a in next(loader))
        yield make_global_microbatches(xs, mesh), make_global_microbatches(ys, mesh)
