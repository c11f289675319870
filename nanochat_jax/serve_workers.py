"""Model replicas for the server, one per device, and the pool each request takes one from.

Chat decoding is latency-bound at batch 1, so sharding one model over devices
buys little; a full copy per device serves N conversations at once (nanochat's
``WorkerPool``). Jitted calls run where their committed inputs live, so a
replica per device is all it takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from nanochat_jax.engine import Engine

# Decode steps per compiled Engine chunk = streaming granularity. The Engine's default (32,
# tuned for batch throughput) would hold back each reply's first words; 8 streams smoothly.
SERVE_CHUNK_SIZE = 8


@dataclasses.dataclass
class Worker:
    """One model replica on one device, with its own Engine and counters."""

    id: int
    device: Any  # jax.Device, or None for "wherever the engine's arrays live"
    engine: Any
    model_config: Any = None
    busy: bool = False
    requests_served: int = 0
    tokens_generated: int = 0
    busy_seconds: float = 0.0

    def info(self) -> dict:
        return {
            "id": self.id,
            "device": None if self.device is None else str(self.device),
            "busy": self.busy,
            "requests_served": self.requests_served,
            "tokens_generated": self.tokens_generated,
            "busy_seconds": round(self.busy_seconds, 3),
        }


def build_workers(model, tokenizer, devices: Sequence | None = None, chunk_size: int = SERVE_CHUNK_SIZE) -> list[Worker]:
    """One ``Worker`` (a replica committed to the device + its Engine) per device; default: the first local one."""
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    if not devices:
        raise ValueError("no devices to place workers on")
    graphdef, state = nnx.split(model)
    return [
        Worker(i, dev, Engine(nnx.merge(graphdef, jax.device_put(state, dev)), tokenizer, chunk_size=chunk_size), model.config)
        for i, dev in enumerate(devices)
    ]


class WorkerPool:
    """Free workers in an ``asyncio.Queue``: ``acquire`` waits for one, ``release`` returns it.

    The queue is made on first use (or ``reset``) so it binds to the serving
    event loop; apps may be built before any loop exists.
    """

    def __init__(self, workers: Sequence[Worker]):
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self._queue: asyncio.Queue | None = None

    def reset(self) -> None:
        """All workers free, in a new queue (for a new serving loop)."""
        self._queue = asyncio.Queue()
        for w in self.workers:
            w.busy = False
            self._queue.put_nowait(w)

    def _q(self) -> asyncio.Queue:
        if self._queue is None:
            self.reset()
        return self._queue

    async def acquire(self) -> Worker:
        worker = await self._q().get()
        worker.busy = True
        return worker

    def release(self, worker: Worker) -> None:
        worker.busy = False
        self._q().put_nowait(worker)

    @property
    def available(self) -> int:
        return sum(not w.busy for w in self.workers)
