"""Batches of rendered conversations for midtraining and SFT (nanochat's two chat collations).

``ConversationStream`` (mid_train): conversations rendered and concatenated into
one token stream, cut into ``rows*T+1`` windows, no loss mask; one epoch.
``PaddedConversations`` (chat_sft): one conversation per row, loss on what the
assistant writes only (targets -1 elsewhere), rows padded to a few fixed length
buckets so the step compiles a bounded number of programs. The stream walks
the dataset with the process stride (``rank, rank+world, ...``); SFT's rows are
the same on every topology. Both resume exactly from a small JSON state.
"""

from __future__ import annotations

import jax
import numpy as np

from nanochat_jax.packing import StreamPacker


def _process_grid() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


class ConversationStream:
    """nanochat's mid_data_generator: rendered conversations through the pretraining ``StreamPacker``.

    Each micro-batch is the stream's next ``rows*T+1`` tokens; the state is the
    conversation and token offset where the stream continues (never tokens).
    ``exhausted`` turns on when the last conversation of the epoch is rendered.
    """

    def __init__(self, dataset, tokenizer, rows: int, seq_len: int, state: dict | None = None, max_tokens: int = 2048):
        if len(dataset) == 0:
            raise ValueError("the midtraining mixture is empty")
        self.dataset, self.tokenizer, self.rows, self.seq_len, self.max_tokens = dataset, tokenizer, rows, seq_len, max_tokens
        self.rank, self.world = _process_grid()
        state = state or {"cursor": self.rank, "offset": 0, "exhausted": False}
        self.cursor, self.exhausted = state["cursor"], state["exhausted"]
        self.packer = StreamPacker(self._chunks())
        self.packer.reset(state["cursor"], state["offset"])

    def _chunks(self):
        while True:
            index = self.cursor
            ids, _ = self.tokenizer.render_conversation(self.dataset[index], max_tokens=self.max_tokens)
            self.cursor += self.world
            if self.cursor >= len(self.dataset):
                self.cursor -= len(self.dataset)
                self.exhausted = True
            yield [index], [ids]

    @property
    def progress(self) -> float:
        return self.cursor / len(self.dataset)

    def next(self) -> dict[str, np.ndarray]:
        inputs, targets = self.packer.next_batch(self.rows, self.seq_len)
        return {"inputs": inputs, "targets": targets}

    def get_state(self) -> dict:
        cursor, offset = self.packer.position() or (self.cursor, 0)
        return {"cursor": int(cursor), "offset": int(offset), "exhausted": self.exhausted}

    def close(self) -> None:
        pass


def length_buckets(max_len: int, smallest: int = 64) -> tuple[int, ...]:
    """Powers of two from ``smallest`` up to ``max_len`` (included): the row lengths SFT compiles for."""
    buckets, b = [], smallest
    while b < max_len:
        buckets.append(b)
        b *= 2
    return (*buckets, max_len)


def sft_rows(rendered: list[tuple[list[int], list[int]]], pad_id: int, buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    """chat_sft's collate: inputs ids[:-1], targets ids[1:] where mask[1:] is 1 else -1, padded to a bucket."""
    longest = max(len(ids) for ids, _ in rendered) - 1
    width = next(b for b in buckets if b >= longest)
    inputs = np.full((len(rendered), width), pad_id, np.int32)
    targets = np.full((len(rendered), width), -1, np.int32)
    for row, (ids, mask) in enumerate(rendered):
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask)
        inputs[row, : len(ids) - 1] = ids[:-1]
        targets[row, : len(ids) - 1] = np.where(mask[1:] == 1, ids[1:], -1)
    return {"inputs": inputs, "targets": targets}


class PaddedConversations:
    """nanochat's sft_data_generator: ``rows`` conversations per micro-batch and process, cycling over the dataset.

    Micro-batch m holds conversations ``m*R .. m*R+R-1`` (R = rows x processes,
    wrapping at the end) on any topology, process p taking its ``rows`` of
    them: the set nanochat's rank stride gives a micro-batch, in another row
    order. The state is that global count, so a run resumes on another layout.
    """

    exhausted = False  # SFT's horizon is a step count (epochs of the dataset), not the data running out

    def __init__(self, dataset, tokenizer, rows: int, max_len: int, state: dict | None = None):
        if len(dataset) == 0:
            raise ValueError("the SFT mixture is empty")
        self.dataset, self.tokenizer, self.rows = dataset, tokenizer, rows
        self.buckets = length_buckets(max_len)
        self.pad_id = tokenizer.encode_special("<|assistant_end|>")
        rank, world = _process_grid()
        self.first, self.global_rows = rank * rows, rows * world
        self.consumed = (state or {"consumed": 0})["consumed"]  # conversations handed out to all processes

    @property
    def progress(self) -> float:
        return self.consumed / len(self.dataset)

    def next(self) -> dict[str, np.ndarray]:
        start = self.consumed + self.first
        conversations = [self.dataset[(start + j) % len(self.dataset)] for j in range(self.rows)]
        self.consumed += self.global_rows
        rendered = [self.tokenizer.render_conversation(c, max_tokens=self.buckets[-1]) for c in conversations]
        return sft_rows(rendered, self.pad_id, self.buckets)

    def get_state(self) -> dict:
        return {"consumed": self.consumed}

    def close(self) -> None:
        pass
