"""Test-side references for generation: a scripted random model and nanochat's decode loop done naively.

``scripted_gpt`` is ``random_gpt`` (attention and MLP matter: the next token
depends on the whole context) except for a few scripted tokens, which reach
their successors with a saturated logit: that is how a random model is made
to call the calculator or stop. ``naive_chat_greedy`` is nanochat's
``generate`` for one row written from the spec: a full forward over the whole
sequence every step, greedy, stop on ``<|assistant_end|>``/``<|bos|>``, and
the calculator's reply forced (mask 0) after ``<|python_end|>``.
"""

import jax
import numpy as np
from flax import nnx

from model_helpers import random_gpt
from nanochat_jax import calculator
from nanochat_jax.gpt import GPTConfig


def scripted_gpt(config: GPTConfig, transitions: dict[int, list[int]], seed: int = 0, gain: float = 1.0):
    """Token t in ``transitions`` gets its own embedding dimension (no other token and no block writes there),
    and lm_head maps that dimension to t's successors with logit 10 (saturating the softcap).

    ``gain`` scales random_gpt's output projections and lm_head: more makes the next token depend more on the context.
    """
    model = random_gpt(config, seed)
    n = len(transitions)
    wte, lm = np.array(model.wte[...]), gain * np.array(model.lm_head[...])
    wte[:, :n] = 0.0
    lm[:n] = 0.0
    for slot, (token, successors) in enumerate(transitions.items()):
        wte[token] = 0.0
        wte[token, slot] = 1.0
        lm[slot, successors] = 10.0
    model.wte[...], model.lm_head[...] = wte, lm
    for name in ("attn_c_proj", "mlp_c_proj"):
        p = getattr(model.h, name)
        p[...] = (gain * p[...]).at[..., :n].set(0.0)
    return model


_forward = jax.jit(lambda graphdef, state, idx: nnx.merge(graphdef, state)(idx), static_argnums=0)


def last_logits(model, ids) -> np.ndarray:
    """The full forward's logits after ``ids`` (right-padded to sequence_len, which causality makes invisible)."""
    buf = np.zeros((1, model.config.sequence_len), np.int32)
    buf[0, : len(ids)] = ids
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, buf))[0, len(ids) - 1]


def naive_chat_greedy(model, tok, prompt, max_tokens):
    """(sequence, mask) as ``Engine.generate_batch`` returns them for one greedy row."""
    special = tok.encode_special
    stop = (special("<|assistant_end|>"), tok.get_bos_token_id())
    ids, mask, forced, expr, in_python = list(prompt), [0] * len(prompt), [], [], False
    for _ in range(max_tokens):
        token, sampled = (forced.pop(0), 0) if forced else (int(np.argmax(last_logits(model, ids))), 1)
        if token in stop:
            break
        ids.append(token)
        mask.append(sampled)
        if token == special("<|python_start|>"):
            in_python, expr = True, []
        elif token == special("<|python_end|>") and in_python:
            in_python = False
            result = calculator.evaluate(tok.decode(expr)) if expr else None
            if result is not None:
                forced = [special("<|output_start|>"), *tok.encode(str(result)), special("<|output_end|>")]
        elif in_python:
            expr.append(token)
    return ids, mask
