"""Test-side model helpers shared by several test files."""

import jax
import numpy as np
from flax import nnx

from nanochat_jax.gpt import GPT, GPTConfig


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT whose zero-initialised matrices (output projections, lm_head) are random too, as parity needs."""
    model = GPT(config, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 100)
    for name in ("attn_c_proj", "mlp_c_proj"):
        p = getattr(model.h, name)
        key, sub = jax.random.split(key)
        p[...] = 0.02 * jax.random.normal(sub, p[...].shape)
    model.lm_head[...] = 0.02 * jax.random.normal(key, model.lm_head[...].shape)
    return model


def greedy_decode(model: GPT, ids, n: int, stop=()) -> list[int]:
    """Reference decoder: up to ``n`` argmax steps of the full, uncached forward (stops before a ``stop`` token)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    ids, out = list(ids), []
    T = model.config.sequence_len
    for _ in range(n):
        buf = np.zeros((1, T), np.int32)
        buf[0, : len(ids)] = ids
        t = int(np.argmax(np.asarray(forward(state, buf))[0, len(ids) - 1]))
        if t in stop:
            break
        ids.append(t)
        out.append(t)
    return out
