"""Bits per byte: the tokenizer-independent validation metric (nanochat's evaluate_bpb).

Per-token cross-entropy is summed in fp32 over targets whose token has a
byte length > 0 (special tokens and ignored -1 positions excluded) and
divided by ln 2 times the number of bytes those targets decode to. Sums are
taken over the global (all devices, all hosts) batch inside jit, so the
reduction across devices and processes is GSPMD's, not a host loop.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@partial(jax.jit, static_argnums=0)
def _nats_and_bytes(graphdef, params, token_bytes, inputs, targets):
    model = nnx.merge(graphdef, params)
    nll = model(inputs, targets, loss_reduction="none")
    nbytes = jnp.where(targets >= 0, token_bytes[jnp.maximum(targets, 0)], 0)
    counted = nbytes > 0
    return jnp.sum(jnp.where(counted, nll, 0.0)), jnp.sum(nbytes.astype(jnp.float32))


def evaluate_bpb(graphdef, params, batches, steps: int, token_bytes: np.ndarray) -> float:
    """Average bits per byte over ``steps`` global ``(inputs, targets)`` batches.

    Returns ``inf`` when the batches contain no byte-bearing targets.
    """
    token_bytes = jnp.asarray(token_bytes, jnp.int32)
    total_nats = jnp.zeros((), jnp.float32)
    total_bytes = jnp.zeros((), jnp.float32)
    for _ in range(steps):
        inputs, targets = next(batches)
        nats, nbytes = _nats_and_bytes(graphdef, params, token_bytes, inputs, targets)
        total_nats, total_bytes = total_nats + nats, total_bytes + nbytes
    total_nats, total_bytes = float(total_nats), float(total_bytes)
    if total_bytes == 0:
        return float("inf")
    return total_nats / (math.log(2) * total_bytes)


@partial(jax.jit, static_argnums=0)
def _mean_loss(graphdef, params, inputs, targets):
    return nnx.merge(graphdef, params)(inputs, targets)


def evaluate_loss(graphdef, params, batches, steps: int) -> float:
    """chat_sft's validation loss: the mean over ``steps`` global batches of each batch's mean loss."""
    total = jnp.zeros((), jnp.float32)
    for _ in range(steps):
        inputs, targets = next(batches)
        total = total + _mean_loss(graphdef, params, inputs, targets)
    return float(total) / steps
