"""nanochat_jax: nanochat's classic pipeline in JAX/Flax NNX with explicit sharding."""

__version__ = "0.1.0"
