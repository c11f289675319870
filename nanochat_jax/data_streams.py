"""Topology-invariant steps from ``S`` data streams: the scheme pretraining and midtraining share.

nanochat's rank ``r`` of ``W`` reads its own share of the data, so the rows of a step
depend on the world size. Here a step's ``R`` rows are a function of the data, the
config and the step alone: ``S`` data streams each pack ``R/S`` rows per step (one
packer call), the step's canonical rows are their concatenation (stream 0's rows,
then stream 1's, …), and process ``p`` of ``P`` runs only the streams behind its
rows ``[p·R/P, (p+1)·R/P)``, which ``StreamBatches`` cuts into the trainer's
``accum`` micro-batches. A state holds each stream's position; the states of all
processes merge (``merge_states``) into the run's, which resumes on any topology.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from nanochat_jax.config import ConfigError


def process_rows(step_rows: int, streams: int, process_index: int, process_count: int) -> tuple[int, int, range]:
    """``(lo, hi, streams)``: process ``p``'s canonical rows ``[lo, hi)`` of a step and the streams that hold them."""
    if step_rows % streams or step_rows % process_count:
        raise ConfigError(f"a step's {step_rows} rows must divide into {streams} data streams and {process_count} "
                          f"processes; set data.streams to a divisor of {step_rows} (total_batch_size / max_seq_len)")
    per_stream, per_process = step_rows // streams, step_rows // process_count
    lo, hi = process_index * per_process, (process_index + 1) * per_process
    return lo, hi, range(lo // per_stream, -(-hi // per_stream))


def fit_streams(streams: int, step_rows: int, items: int) -> int:
    """The largest stream count ≤ ``streams`` and ≤ ``items`` (row groups, conversations) that divides ``step_rows``.

    For a val split too small to give every one of ``streams`` streams something to read
    (1 when it is empty, for the loader to refuse with its own message).
    """
    return max((d for d in range(1, min(streams, items) + 1) if step_rows % d == 0), default=1)


def micro_batches(rows: np.ndarray, accum: int) -> np.ndarray:
    """A process's ``(R/P, …)`` rows of a step as ``accum`` consecutive micro-batches ``(accum, R/(P·accum), …)``."""
    if len(rows) % accum:
        raise ConfigError(f"{len(rows)} rows per process do not split into {accum} micro-batches")
    return rows.reshape(accum, len(rows) // accum, *rows.shape[1:])


def iter_global_batches(loader: Iterator[tuple[np.ndarray, np.ndarray]], mesh, accum: int = 1) -> Iterator[tuple[Any, Any]]:
    """Endless ``(inputs, targets)`` global ``jax.Array`` pairs: each step's ``accum`` micro-batches in turn.

    ``loader``: any iterator of a process's rows of whole steps (pretraining's ``PretrainLoader``, midtraining's ``MidBatches``).
    """
    from nanochat_jax.sharding import make_global_batch

    while True:
        xs, ys = (micro_batches(a, accum) for a in next(loader))
        for x, y in zip(xs, ys):
            yield make_global_batch(x, mesh), make_global_batch(y, mesh)


class StepStreams:
    """This process's ``(inputs, targets)`` rows of each step, from the data streams behind them; resumable.

    A subclass sets ``identity`` (what a saved state must match) and ``streams``
    (``{k: stream}`` for ``k`` in ``owned``), each stream with a ``packer``
    (``next_batch(rows, T)``) and a JSON ``get_state``/``set_state``. Each stream
    packs its ``R/S`` rows of a step in one call, so its tokens do not depend on
    how the step is split into processes or micro-batches.
    """

    identity: dict[str, Any]
    streams: dict[int, Any]

    def __init__(self, step_rows: int, seq_len: int, streams: int, process_index: int, process_count: int):
        self.lo, self.hi, self.owned = process_rows(step_rows, streams, process_index, process_count)
        self.seq_len, self.per_stream = seq_len, step_rows // streams
        self.batches = 0  # steps handed out; the same on every process, so merge_states checks it

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [s.packer.next_batch(self.per_stream, self.seq_len) for s in self.streams.values()]
        start = self.lo - min(self.streams) * self.per_stream
        self.batches += 1
        return tuple(np.ascontiguousarray(np.concatenate(p)[start:start + self.hi - self.lo]) for p in zip(*parts))

    def get_state(self) -> dict[str, Any]:
        return {**self.identity, "batches": self.batches,
                "stream_states": {str(k): s.get_state() for k, s in self.streams.items()}}  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        check_identity(state, self.identity)
        states = state["stream_states"]
        missing = [k for k in self.streams if str(k) not in states]
        if missing:
            raise ValueError(f"the state has no position for data stream(s) {missing}: it is one process's state, "
                             "not the run's (merge every process's state with merge_states)")
        for k, stream in self.streams.items():
            stream.set_state(states[str(k)])
        self.batches = int(state["batches"])


def check_identity(state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse a state from another format, mode, stream count, data set or tokenizer, naming the field."""
    for key, value in identity.items():
        if state.get(key) != value:
            raise ValueError(
                f"cannot resume this loader from the given state: {key!r} is {state.get(key)!r} in the state "
                f"but {value!r} here. Use the same data (mode, shards or conversations), data.streams and tokenizer "
                "as the run that saved it (and a state of this version), or start the loader without a state."
            )


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's state from every process's ``get_state`` at the same step: the union of their streams."""
    first = states[0]
    for s in states[1:]:
        check_identity(s, {k: v for k, v in first.items() if k != "stream_states"})
    merged = {}
    for s in states:  # a stream run by two processes (S not a multiple of P) has the same position in both
        merged.update(s["stream_states"])
    if len(merged) != first["streams"]:
        raise ValueError(f"the processes' states cover {len(merged)} of {first['streams']} data streams")
    return {**first, "stream_states": dict(sorted(merged.items(), key=lambda kv: int(kv[0])))}


class StreamBatches:
    """A loader of whole steps (pretraining's, midtraining's) as a batch source: ``accum`` micro-batches per step.

    The loader hands out this process's rows of a step; they are split here, so the
    loader's state is only read between steps, and ``merge_states`` joins every
    process's state into the run's (resumable on any topology). A loader that ends
    (midtraining's) has ``progress`` and ``exhausted``; pretraining's never ends.
    """

    def __init__(self, loader, accum: int):
        self.loader, self.accum, self.pending = loader, accum, []

    @property
    def progress(self) -> float:
        return getattr(self.loader, "progress", 0.0)

    @property
    def exhausted(self) -> bool:
        return getattr(self.loader, "exhausted", False)

    def next(self) -> dict:
        if not self.pending:
            xs, ys = (micro_batches(a, self.accum) for a in next(self.loader))
            self.pending = [{"inputs": x, "targets": y} for x, y in zip(xs, ys)]
        return self.pending.pop(0)

    def get_state(self) -> dict:
        if self.pending:
            raise RuntimeError("the data state was read in the middle of a step")
        return self.loader.get_state()

    merge_states = staticmethod(merge_states)  # the trainer's hook: every process's state -> the run's

    def close(self) -> None:
        self.loader.close()
