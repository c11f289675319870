"""Test-side model helpers shared by several test files."""

import jax
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
