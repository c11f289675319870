"""Batched serving: chat requests that arrive together are decoded together, in one Engine call per worker.

A decode step at batch 1 leaves most of the machine idle: its cost is
reading the weights, and 16 rows cost little more than one. So each worker
runs one thread that takes the first waiting request, gathers whoever else
arrives within a short window (up to ``max_batch``), and decodes them all with
``Engine.generate_columns``: prompts of different lengths, each request's own
``max_tokens``, ``temperature``, ``top_k`` and seed. Each row draws from its
own seed and the engine's top-k width is fixed (``k_width``), so a reply does
not depend on which other requests shared its batch. Every row streams as it
goes; a client that hangs up leaves the batch at its next token. Requests that
arrive while a batch is decoding wait for the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import jax

from nanochat_jax.serve_workers import Worker
from nanochat_jax.streaming import TextStream

logger = logging.getLogger("nanochat_jax.serve")
DEFAULT_MAX_BATCH = 16
DEFAULT_WINDOW_S = 0.01


@dataclasses.dataclass
class Job:
    """One request: its prompt, ``Engine`` settings (max_tokens, temperature, top_k, seed) and where its events go.

    ``emit`` receives ``("token", text, n_tokens)``, ``("error", message, 0)`` and finally ``("end", None, n_tokens)``.
    """

    prompt: list[int]
    args: dict
    emit: Callable[[tuple], None]
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


class Batcher:
    """One worker's request queue and the thread that decodes its batches."""

    def __init__(self, worker: Worker, tokenizer, *, max_batch: int = DEFAULT_MAX_BATCH, window_s: float = DEFAULT_WINDOW_S):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.worker, self.tokenizer = worker, tokenizer
        self.max_batch, self.window_s = int(max_batch), float(window_s)
        self.stop_ids = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id())
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.active = 0  # rows of the batch being decoded

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in a batch."""
        return self._queue.qsize()

    @property
    def load(self) -> int:
        return self.waiting + self.active

    def start(self) -> None:
        """A fresh queue and thread (one per serving session)."""
        self._queue = queue.Queue()
        self.active = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"nanochat-batcher-{self.worker.id}")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` plus whatever arrives within the window, up to max_batch; and whether a stop came in."""
        jobs, deadline = [first], time.monotonic() + self.window_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0)) if self.window_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stopping = False
        while not stopping and (job := self._queue.get()) is not None:
            jobs, stopping = self._gather(job)
            live = [j for j in jobs if not j.cancelled.is_set()]
            for j in jobs:
                if j.cancelled.is_set():
                    j.emit(("end", None, 0))
            if live:
                self._run(live)

    def _run(self, jobs: Sequence[Job]) -> None:
        """Decode ``jobs`` as one batch, streaming each row to its job."""
        w, t0 = self.worker, time.perf_counter()
        w.busy, self.active = True, len(jobs)
        w.record_batch(len(jobs))
        streams = [TextStream(self.tokenizer) for _ in jobs]
        open_rows = set(range(len(jobs)))

        def finish(r: int) -> None:
            open_rows.discard(r)
            if tail := streams[r].flush():
                jobs[r].emit(("token", tail, streams[r].count))
            jobs[r].emit(("end", None, streams[r].count))

        gen = None
        try:
            with jax.default_device(w.device) if w.device is not None else contextlib.nullcontext():
                a = [j.args for j in jobs]
                gen = w.engine.generate_columns([j.prompt for j in jobs], 1, max_tokens=[x["max_tokens"] for x in a],
                                                temperature=[x["temperature"] for x in a], top_k=[x["top_k"] for x in a],
                                                seeds=[x["seed"] for x in a])  # fmt: skip
                for column, _ in gen:
                    for r in sorted(open_rows):
                        if column[r] in self.stop_ids or jobs[r].cancelled.is_set():
                            finish(r)
                        elif text := streams[r].push(column[r]):
                            jobs[r].emit(("token", text, streams[r].count))
                    if not open_rows:
                        break
        except Exception as e:  # reported to every client of the batch; the worker stays usable
            logger.exception("generation failed on worker %d", w.id)
            for r in open_rows:
                jobs[r].emit(("error", f"generation failed: {type(e).__name__}: {e}", 0))
        finally:
            if gen is not None:
                gen.close()
            for r in sorted(open_rows):
                finish(r)
            w.busy_seconds += time.perf_counter() - t0
            w.busy, self.active = False, 0


def pick(batchers: Sequence[Batcher]) -> Batcher:
    """The least-loaded worker (waiting + decoding rows); ties go to the lowest id."""
    return min(batchers, key=lambda b: (b.load, b.worker.id))
