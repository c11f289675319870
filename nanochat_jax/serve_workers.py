"""Model replicas for the server, one per device, each decoding batches of requests (``serve_batcher``).

Chat decoding is latency-bound, so sharding one model over devices buys
little; a full copy per device (nanochat's ``WorkerPool``) decodes its own
batches. Jitted calls run where their committed inputs live, so a replica per
device is all it takes.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from nanochat_jax.engine import Engine
from nanochat_jax.serve_request import MAX_TOP_K

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
    batch_sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # rows -> batches decoded

    def record_batch(self, rows: int) -> None:
        self.batch_sizes[rows] += 1

    def info(self) -> dict:
        return {
            "id": self.id,
            "device": None if self.device is None else str(self.device),
            "busy": self.busy,
            "requests_served": self.requests_served,
            "tokens_generated": self.tokens_generated,
            "busy_seconds": round(self.busy_seconds, 3),
            "batches": sum(self.batch_sizes.values()),
            "largest_batch": max(self.batch_sizes, default=0),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


def build_workers(model, tokenizer, devices: Sequence | None = None, chunk_size: int = SERVE_CHUNK_SIZE) -> list[Worker]:
    """One ``Worker`` (a replica committed to the device + its Engine) per device; default: the first local one.

    The engines' top-k width is fixed at the request limit, so a reply's draws do not depend on its batch.
    """
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    if not devices:
        raise ValueError("no devices to place workers on")
    graphdef, state = nnx.split(model)
    return [
        Worker(i, dev, Engine(nnx.merge(graphdef, jax.device_put(state, dev)), tokenizer, chunk_size=chunk_size, k_width=MAX_TOP_K),
               model.config)
        for i, dev in enumerate(devices)
    ]
