"""A tiny random-weight model for ``serve --demo`` and the server tests: no checkpoint, no download."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.tokenizer import Tokenizer


def demo_model_and_tokenizer(vocab_size: int = 300, sequence_len: int = 128, seed: int = 0):
    """A 2-layer GPT with a random ``lm_head`` and a BPE tokenizer trained on this package's source (well under 1 s).

    Logits have std ~3: peaked but varied. Columns kept at zero (~100x less
    likely) are the special tokens, so replies run to ``max_tokens``, and tokens
    that are not printable text on their own, which would fill replies with U+FFFD.
    """
    docs = [p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.glob("*.py"))]
    tokenizer = Tokenizer.train_from_iterator(docs, vocab_size=vocab_size)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(config, rngs=nnx.Rngs(seed))
    keep = np.zeros(model.lm_head.shape[1], dtype=bool)
    for i in range(tokenizer.get_vocab_size()):
        try:
            text = tokenizer.enc.decode_single_token_bytes(i).decode("utf-8")
            keep[i] = all(c.isprintable() or c in "\n\t" for c in text)
        except (KeyError, UnicodeDecodeError):
            pass
    keep[[tokenizer.encode_special(name) for name in tokenizer.get_special_tokens()]] = False
    head = 0.375 * jax.random.normal(jax.random.key(seed + 1), model.lm_head.shape, jnp.float32)
    model.lm_head[...] = head * jnp.asarray(keep, jnp.float32)[None, :]
    return model, tokenizer
