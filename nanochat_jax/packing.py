"""Pack tokenized documents into training batches, resumably, whatever the documents are.

A packer pulls chunks ``(keys, token_lists)`` from any iterator: tokenized parquet
documents in pretraining, rendered conversations in midtraining. A key names one
document (an ordered tuple, e.g. ``(epoch, row_group, row)`` or ``(epoch, index)``).
Packers keep keys and offsets, never tokens, in their state, so whoever owns the
source can resume exactly: move the source back to its cursor, then ``reset`` the
packer with what its state said.
"""

from __future__ import annotations

import itertools
from typing import Hashable, Iterator, Sequence

import numpy as np

Key = Hashable
Chunk = tuple[Sequence[Key], Sequence[Sequence[int]]]  # keys and token ids of consecutive documents


def best_fit_choice(lengths: np.ndarray, remaining: int) -> tuple[int, bool]:
    """Which buffered document goes next into a row with ``remaining`` free slots.

    ``(index, whole)``: the largest document with length ≤ remaining (first on
    ties), else the shortest (first on ties), to be cropped. ``lengths`` ≥ 1.
    """
    fitting = np.where(lengths <= remaining, lengths, 0)
    i = int(fitting.argmax())
    if fitting[i] > 0:
        return i, True
    return int(lengths.argmin()), False


class StreamPacker:
    """nanochat classic: documents concatenated into one stream, each step the next ``B*T + 1`` tokens.

    Row ``b`` is ``buf[b*T : b*T+T]`` (rows start mid-document) and the last token
    of a step is a target only, the next step starting after it: nanochat's exact
    arithmetic, not a ``(B, T+1)`` layout.
    """

    def __init__(self, chunks: Iterator[Chunk]):
        self.chunks = chunks
        self.reset()

    def reset(self, key: Key | None = None, offset: int = 0) -> None:
        """Empty the stream; with ``offset``, the source is at document ``key`` and its first ``offset`` tokens are skipped."""
        self.tokens, self.starts, self.keys, self.pos = np.empty(0, np.int32), np.empty(0, np.int64), [], 0
        if offset:
            self._extend()
            doc_len = (self.starts[1] if len(self.starts) > 1 else len(self.tokens)) - self.starts[0]
            if self.keys[0] != key or offset >= doc_len:
                raise ValueError(f"state points at token {offset} of document {key} but the data has "
                                 f"document {self.keys[0]} of {doc_len} tokens there: the data changed")
            self.pos = offset

    def _extend(self) -> None:
        keys, ids = next(self.chunks)
        lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        new = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lens.sum()))
        # Drop documents that are entirely consumed before appending.
        first = max(int(np.searchsorted(self.starts, self.pos, side="right")) - 1, 0)
        cut = int(self.starts[first]) if len(self.starts) else 0
        base = len(self.tokens) - cut
        self.tokens = np.concatenate([self.tokens[cut:], new])
        self.starts = np.concatenate([self.starts[first:] - cut, base + np.cumsum(lens) - lens])
        self.keys = self.keys[first:] + list(keys)
        self.pos -= cut

    def take(self, n: int) -> np.ndarray:
        while len(self.tokens) - self.pos < n:
            self._extend()
        out = self.tokens[self.pos:self.pos + n]
        self.pos += n
        return out

    def next_batch(self, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)``, int32 ``(batch_size, seq_len)`` each."""
        tokens = self.take(batch_size * seq_len + 1)
        return (tokens[:-1].reshape(batch_size, seq_len).astype(np.int32, copy=True),
                tokens[1:].reshape(batch_size, seq_len).astype(np.int32, copy=True))

    def position(self) -> tuple[Key, int] | None:
        """(document, offset) of the next unconsumed token; None when it is in a chunk not read yet."""
        if self.pos < len(self.tokens):
            i = int(np.searchsorted(self.starts, self.pos, side="right")) - 1
            return self.keys[i], self.pos - int(self.starts[i])
        return None


class BestFitPacker:
    """nanochat HEAD's BOS-aligned best fit: every row of ``T+1`` slots is filled with whole documents.

    A buffer of at least ``buffer_size`` documents, refilled by whole chunks; each
    row repeatedly takes the largest document that fits entirely, and when none
    fits, the shortest is cropped to fill the row (its rest is dropped). No
    padding. The buffer stays in stream order, so its state is just ``keys``.
    Another ``fill_row`` (e.g. SFT's pad-instead-of-crop) can reuse the buffer.
    """

    def __init__(self, chunks: Iterator[Chunk], buffer_size: int):
        self.chunks, self.buffer_size = chunks, buffer_size
        self.reset([], [])

    def reset(self, keys: Sequence[Key], ids: Sequence[Sequence[int]]) -> None:
        """Set the buffer to these documents (a saved state's ``keys``, re-read), in stream order."""
        if list(keys) != sorted(keys):
            raise ValueError("best-fit buffer is not in stream order: corrupt state")
        self.docs, self.keys, self.lengths = [], [], np.empty(0, np.int64)
        self._append(keys, ids)

    def _append(self, keys: Sequence[Key], ids: Sequence[Sequence[int]]) -> None:
        self.docs.extend(np.asarray(x, np.int32) for x in ids)
        self.keys.extend(keys)
        self.lengths = np.concatenate([self.lengths, np.fromiter((len(x) for x in ids), np.int64, len(ids))])

    def _pop(self, i: int) -> np.ndarray:
        self.keys.pop(i)
        self.lengths = np.delete(self.lengths, i)
        return self.docs.pop(i)

    def fill_row(self, row: np.ndarray) -> None:
        cap, pos = len(row), 0
        while pos < cap:
            while len(self.docs) < self.buffer_size:
                self._append(*next(self.chunks))
            remaining = cap - pos
            i, whole = best_fit_choice(self.lengths, remaining)
            doc = self._pop(i)
            n = len(doc) if whole else remaining
            row[pos:pos + n] = doc[:n]
            pos += n

    def next_batch(self, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` = ``rows[:, :-1]``, ``rows[:, 1:]`` of ``(batch_size, seq_len + 1)`` rows."""
        rows = np.empty((batch_size, seq_len + 1), np.int32)
        for r in rows:
            self.fill_row(r)
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
