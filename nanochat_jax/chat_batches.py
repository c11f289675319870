"""Batches of rendered conversations for midtraining and SFT (nanochat's two chat collations).

``MidBatches`` (mid_train): conversations rendered and concatenated into token
streams, cut into rows, no loss mask; one epoch. It follows ``data_streams``'
scheme, as pretraining does: stream ``k`` of ``S`` renders conversations ``k, k+S,
…`` (nanochat's mid_data_generator on rank ``k``), so a step's rows are the same
on every topology. ``PaddedConversations`` (chat_sft): one conversation per row,
loss on what the assistant writes only (targets -1 elsewhere), rows padded to a
few fixed length buckets so the step compiles a bounded number of programs;
micro-batch m is the same conversations on every topology. Both resume exactly
from a small JSON state, also on another process layout.
"""

from __future__ import annotations

import jax
import numpy as np

from nanochat_jax.data_streams import StepStreams
from nanochat_jax.packing import StreamPacker

MID_STATE_VERSION = 1  # per-stream conversation positions (the process-strided stream's states had no version)


def _process_grid() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


class ConversationStream:
    """Data stream ``k`` of ``S``: conversations ``k, k+S, …`` rendered into one ``StreamPacker`` stream, cycling.

    ``cursor`` counts on past the end instead of wrapping (conversation ``cursor % size``
    is rendered next), so the state ``{cursor, offset}`` (where the packer's next token
    is) also says whether the stream went past the end of the epoch.
    """

    def __init__(self, render, size: int, first: int, stride: int):
        self.render, self.size, self.first, self.stride = render, size, first, stride
        self.cursor = first
        self.packer = StreamPacker(self._chunks())

    def _chunks(self):
        while True:  # reads the cursor at every chunk, so a ``set_state`` takes effect at once
            key = self.cursor
            self.cursor += self.stride
            yield [key], [self.render(key % self.size)]

    @property
    def progress(self) -> float:
        """nanochat's ``cursor / dataset_size``, the cursor wrapped (the trainer keeps the maximum)."""
        return (self.cursor % self.size) / self.size

    @property
    def wrapped(self) -> bool:
        """The stream rendered its last conversation of the epoch (nanochat's ``last_step``)."""
        return self.cursor >= self.size

    def get_state(self) -> dict:
        cursor, offset = self.packer.position() or (self.cursor, 0)
        return {"cursor": int(cursor), "offset": int(offset)}

    def set_state(self, state: dict) -> None:
        cursor = int(state["cursor"])
        if cursor < 0 or cursor % self.stride != self.first % self.stride:
            raise ValueError(f"state puts data stream {self.first} at conversation {cursor}, which is not one of its "
                             f"conversations {self.first}, {self.first + self.stride}, …: a corrupt state")
        self.cursor = cursor
        self.packer.reset(cursor, int(state["offset"]))


class MidBatches(StepStreams):
    """nanochat's mid_data_generator on ``S`` streams: this process's rows of each step (``StepStreams``).

    Each stream packs its ``R/S`` rows of a step as its next ``R/S·T+1`` tokens, so
    with ``S`` = ``P`` = nanochat's ranks and one micro-batch per step the rows are
    nanochat's. ``progress`` (max over this process's streams) and ``exhausted`` (any
    of them wrapped) are agreed over processes by the trainer (max), which makes them
    the same on every topology.
    """

    def __init__(self, dataset, tokenizer, step_rows: int, seq_len: int, *, streams: int, process_index: int,
                 process_count: int, state: dict | None = None, max_tokens: int = 2048):
        if len(dataset) == 0:
            raise ValueError("the midtraining mixture is empty")
        if len(dataset) < streams:
            raise ValueError(f"the midtraining mixture has {len(dataset)} conversations, fewer than its {streams} "
                             "data streams (data.streams): some stream would have none of its own")
        super().__init__(step_rows, seq_len, streams, process_index, process_count)
        self.identity = {"version": MID_STATE_VERSION, "mode": "conversations", "streams": streams,
                         "conversations": len(dataset), "vocab_size": int(tokenizer.get_vocab_size()),
                         "bos": int(tokenizer.get_bos_token_id())}  # fmt: skip

        def render(index: int) -> list[int]:
            return tokenizer.render_conversation(dataset[index], max_tokens=max_tokens)[0]

        self.streams = {k: ConversationStream(render, len(dataset), k, streams) for k in self.owned}
        if state is not None:
            self.set_state(state)

    @property
    def progress(self) -> float:
        return max(s.progress for s in self.streams.values())

    @property
    def exhausted(self) -> bool:
        return any(s.wrapped for s in self.streams.values())

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
