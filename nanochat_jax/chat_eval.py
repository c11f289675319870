"""nanochat's chat evaluation (scripts/chat_eval.py): categorical and generative tasks, and ChatCORE.

Categorical (MMLU, ARC): one forward over each rendered prompt, the prediction
is the answer letter whose token has the highest logit at the last prompt
position. Prompts are right-padded to a few length buckets (bounded compiles;
right padding cannot change a causal model's earlier logits).

Generative (GSM8K, HumanEval, SpellingBee): nanochat samples one problem at a
time; here ``batch_size`` problems of similar prompt length decode together
through ``Engine.generate_multi`` (prompts of different lengths, tool use live), each
with ``num_samples`` samples seeded by ``seed + problem index``, so a problem's
samples repeat whatever batch it lands in. A problem passes if any sample is right.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from nanochat_jax import sharding
from nanochat_jax.chat_batches import length_buckets
from nanochat_jax.engine import Engine

# nanochat's chance accuracies: 4-way multiple choice, and 0 where answers are open.
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}


@functools.partial(jax.jit, static_argnums=0)
def _logits_at(graphdef, params, inputs, positions):
    logits = nnx.merge(graphdef, params)(inputs)
    return logits[np.arange(inputs.shape[0]), positions]


def _num_problems(task, max_problems: int | None) -> int:
    n = len(task) if max_problems is None else min(len(task), max_problems)
    if n <= 0:
        raise ValueError(f"evaluation of {type(task).__name__} has no problems (max_problems={max_problems})")
    return n


def categorical_accuracy(graphdef, params, tokenizer, task, mesh=None, *, max_problems: int | None = None, batch_size: int = 8) -> float:
    """Fraction of ``task``'s first ``max_problems`` conversations whose best-scoring letter is the gold one.

    With a ``mesh``, the rows are split over its data axis when they divide
    evenly, else replicated; without one they go where the params are.
    """
    n = _num_problems(task, max_problems)
    seq_len = nnx.merge(graphdef, params).config.sequence_len
    buckets, correct = length_buckets(seq_len), 0
    put = lambda a: a
    if mesh is not None:
        rows = sharding.batch_sharding(mesh) if batch_size % mesh.shape[sharding.DATA_AXIS] == 0 else sharding.replicated(mesh)
        put = functools.partial(jax.device_put, device=rows)
    for start in range(0, n, batch_size):
        conversations = [task[i] for i in range(start, min(n, start + batch_size))]
        prompts = [tokenizer.render_for_completion(c)[-seq_len:] for c in conversations]
        width = next(b for b in buckets if b >= max(map(len, prompts)))
        inputs = np.zeros((batch_size, width), np.int32)
        for row, prompt in enumerate(prompts):
            inputs[row, : len(prompt)] = prompt
        positions = np.asarray([len(p) - 1 for p in prompts] + [0] * (batch_size - len(prompts)), np.int32)
        logits = np.asarray(_logits_at(graphdef, params, put(inputs), put(positions)))
        for row, conversation in enumerate(conversations):
            letters = conversation["letters"]
            ids = [tokenizer.encode(letter)[0] for letter in letters]
            prediction = letters[int(np.argmax(logits[row, ids]))]
            correct += bool(task.evaluate(conversation, prediction))
    return correct / n


def generative_outcomes(task, model, tokenizer, *, num_samples: int, max_new_tokens: int, temperature: float, top_k: int | None,
                        max_problems: int | None = None, batch_size: int = 8, seed: int = 0, mesh=None) -> np.ndarray:
    """``(problems, num_samples)`` bool: whether sample j of problem i is correct (pass@k = any of the first k)."""
    n = _num_problems(task, max_problems)
    engine = Engine(model, tokenizer, mesh=mesh)
    conversations = [task[i] for i in range(n)]
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding, smaller cache
    outcomes = np.zeros((n, num_samples), bool)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        results, _ = engine.generate_multi([prompts[i] for i in index], num_samples, max_tokens=max_new_tokens,
                                           temperature=temperature, top_k=top_k, seeds=[seed + i for i in index])  # fmt: skip
        for i, samples in zip(index, results):
            completions = [tokenizer.decode(s[len(prompts[i]) :]) for s in samples]
            outcomes[i] = [task.evaluate(conversations[i], c) for c in completions]
    return outcomes


def pass_at_k(outcomes: np.ndarray, k: int) -> float:
    """Fraction of problems (rows) with a correct answer among their first ``k`` samples (columns)."""
    if not 1 <= k <= outcomes.shape[1]:
        raise ValueError(f"pass@{k} needs 1 <= k <= {outcomes.shape[1]} samples per problem")
    return float(np.asarray(outcomes)[:, :k].any(axis=1).mean())


def evaluate_task(task, model, tokenizer, *, batch_size: int = 8, num_samples: int = 1, max_new_tokens: int = 512, temperature: float = 0.0,
                  top_k: int | None = 50, max_problems: int | None = None, seed: int = 0, mesh=None) -> float:
    """nanochat's ``run_chat_eval``: accuracy (categorical) or pass@num_samples (generative) on ``task``."""
    if task.eval_type == "categorical":
        graphdef, params = nnx.split(model)
        return categorical_accuracy(graphdef, params, tokenizer, task, mesh, max_problems=max_problems, batch_size=batch_size)
    if task.eval_type == "generative":
        outcomes = generative_outcomes(task, model, tokenizer, num_samples=num_samples, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_k=top_k, max_problems=max_problems, batch_size=batch_size,
                                       seed=seed, mesh=mesh)  # fmt: skip
        return pass_at_k(outcomes, num_samples)
    raise ValueError(f"{type(task).__name__}.eval_type is {task.eval_type!r}; expected 'categorical' or 'generative'")


def chatcore(accuracies: dict[str, float]) -> float:
    """Mean over the tasks of ``(acc - baseline) / (1 - baseline)``: 0 at chance, 1 when perfect."""
    unknown = sorted(set(accuracies) - set(BASELINES))
    if unknown or not accuracies:
        raise ValueError(f"ChatCORE needs accuracies of tasks among {sorted(BASELINES)}; got {sorted(accuracies)}")
    return float(np.mean([(acc - BASELINES[name]) / (1.0 - BASELINES[name]) for name, acc in accuracies.items()]))
