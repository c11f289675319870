"""Categorical chat evaluation (nanochat's chat_eval for MMLU / ARC): the letter with the highest logit.

Each multiple-choice conversation is rendered for completion (the prompt up to
``<|assistant_start|>``), one forward pass reads the logits at the last prompt
position, and the prediction is the answer letter whose token scores highest
(nanochat restricts the argmax to the letters the same way). Prompts are padded
on the right to a few length buckets, so the forward compiles a bounded number
of programs; right padding cannot change a causal model's earlier logits.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from nanochat_jax import sharding
from nanochat_jax.chat_batches import length_buckets


@functools.partial(jax.jit, static_argnums=0)
def _logits_at(graphdef, params, inputs, positions):
    logits = nnx.merge(graphdef, params)(inputs)
    return logits[np.arange(inputs.shape[0]), positions]


def categorical_accuracy(graphdef, params, tokenizer, task, mesh, *, max_problems: int | None = None, batch_size: int = 8) -> float:
    """Fraction of ``task``'s first ``max_problems`` conversations whose best-scoring letter is the gold one."""
    n = len(task) if max_problems is None else min(len(task), max_problems)
    if n == 0:
        raise ValueError("categorical evaluation of an empty task")
    seq_len = nnx.merge(graphdef, params).config.sequence_len
    buckets, correct = length_buckets(seq_len), 0
    for start in range(0, n, batch_size):
        conversations = [task[i] for i in range(start, min(n, start + batch_size))]
        prompts = [tokenizer.render_for_completion(c)[-seq_len:] for c in conversations]
        width = next(b for b in buckets if b >= max(map(len, prompts)))
        inputs = np.zeros((batch_size, width), np.int32)
        for row, prompt in enumerate(prompts):
            inputs[row, : len(prompt)] = prompt
        positions = np.asarray([len(p) - 1 for p in prompts] + [0] * (batch_size - len(prompts)), np.int32)
        put = functools.partial(jax.device_put, device=sharding.replicated(mesh))
        logits = np.asarray(_logits_at(graphdef, params, put(inputs), put(positions)))
        for row, conversation in enumerate(conversations):
            letters = conversation["letters"]
            ids = [tokenizer.encode(letter)[0] for letter in letters]
            prediction = letters[int(np.argmax(logits[row, ids]))]
            correct += bool(task.evaluate(conversation, prediction))
    return correct / n
