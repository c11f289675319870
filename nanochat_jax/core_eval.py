"""CORE (DCLM's 22-task in-context-learning ensemble), scored exactly as nanochat's core_eval.

Per task (nanochat's ``evaluate_model``): rows shuffled with ``Random(1337)``,
capped at ``max_per_task``; item ``idx`` gets ``num_fewshot`` examples drawn by
``Random(1234 + idx).sample`` from the other items; prompts rendered as below
and tokenized with BOS prepended.

- multiple choice: one sequence per choice; the continuation is what follows
  the choices' common token prefix; prediction = lowest mean CE over it.
- schema: one sequence per context option; the continuation is the common
  token suffix; lowest mean CE.
- language modeling: correct iff the greedy argmax reproduces every token of
  the continuation.

Centered accuracy = (acc - b) / (1 - b) with b the random baseline (a
fraction); CORE = the mean of the centered accuracies.

Where nanochat runs one forward per example, here the sequences of many
examples are sorted by length and packed, one per row, into a few fixed
shapes (``engine.bucket`` widths, rows ~ ``batch_tokens / width``); one jitted
forward per batch, sharded over the mesh's data axis, puts only the
continuation positions through the head and returns just each row's mean CE
and all-match flag. Right padding with BOS cannot change a causal
model's scores on the real positions. A sequence longer than the model's
``sequence_len`` keeps its last ``sequence_len`` tokens (nanochat does this for
models with a ``max_seq_len``), its span shifted accordingly; where even the
continuation does not fit (where nanochat would stop on an assert) its last
``sequence_len - 1`` tokens are scored.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nanochat_jax import sharding
from nanochat_jax.common import print0
from nanochat_jax.engine import bucket
from nanochat_jax.eval_bundle import BundleError, TaskSpec, is_slice, load_rows, load_tasks, resolve_bundle
from nanochat_jax.gpt import token_nll

SHUFFLE_SEED, FEWSHOT_SEED = 1337, 1234


# --------------------------------------------------------------------------- prompts


def render_mc(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
    return [f"{shots}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]


def render_lm(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """``[prompt without the continuation (stripped), prompt with it]``; contexts are stripped as nanochat's ``| trim``."""
    shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
    prompt = f"{shots}{item['context'].strip()}{delimiter}"
    return [prompt.strip(), prompt + item["continuation"]]


RENDER = {"multiple_choice": render_mc, "schema": render_schema, "language_modeling": render_lm}


def fewshot_indices(n: int, idx: int, k: int) -> list[int]:
    """``Random(1234 + idx).sample([i for i in range(n) if i != idx], k)`` without building the list."""
    if k == 0:
        return []
    return [j + (j >= idx) for j in random.Random(FEWSHOT_SEED + idx).sample(range(n - 1), k)]


def common_length(seqs: list[list[int]], from_end: bool = False) -> int:
    """Length of the token prefix (or suffix) every sequence shares."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        pos = -1 - i if from_end else i
        if any(s[pos] != seqs[0][pos] for s in seqs):
            return i
    return n


def example_prompts(rows: list[dict], idx: int, spec: TaskSpec) -> list[str]:
    """Item ``idx``'s prompts with its few-shot examples (LM: without, then with the continuation)."""
    fewshot = [rows[j] for j in fewshot_indices(len(rows), idx, spec.num_fewshot)]
    return RENDER[spec.task_type](rows[idx], spec.delimiter, fewshot)


def continuation_spans(seqs: list[list[int]], spec: TaskSpec, max_len: int, idx: int):
    """``(sequences, starts, ends)`` from one item's tokenized prompts: sequence i's continuation is ``seq[start:end]``."""
    if spec.task_type == "language_modeling":
        without, seqs = seqs[0], seqs[1:]
        if len(without) >= len(seqs[0]) or seqs[0][: len(without)] != without:
            raise ValueError(f"{spec.label} item {idx}: the prompt's tokens are not a prefix of prompt + continuation")
        starts, ends = [len(without)], [len(seqs[0])]
    elif spec.task_type == "multiple_choice":
        ends = [len(s) for s in seqs]
        starts = [common_length(seqs)] * len(seqs)
    else:
        ends = [len(s) for s in seqs]
        starts = [e - common_length(seqs, from_end=True) for e in ends]
    crops = [max(0, len(s) - max_len) for s in seqs]
    return [s[c:] for s, c in zip(seqs, crops)], [max(1, s - c) for s, c in zip(starts, crops)], [e - c for e, c in zip(ends, crops)]


# --------------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnums=(0, 5))
def _row_scores(graphdef, params, inputs, starts, ends, span_width: int):
    """Per row: mean CE of the tokens ``[start, end)`` and whether greedy argmax predicts them all.

    Only the ``span_width`` positions from ``start - 1`` on go through the final
    norm and the head: the continuation is a small part of a few-shot prompt.
    """
    model = nnx.merge(graphdef, params)
    x = model.hidden_states(inputs)
    k = jnp.arange(span_width)[None, :]
    pos = jnp.minimum(starts[:, None] - 1 + k, inputs.shape[1] - 2)  # (rows, span_width) predicting positions
    logits = model.logits_from_hidden(jnp.take_along_axis(x, pos[..., None], axis=1))
    targets = jnp.take_along_axis(inputs, pos + 1, axis=1)
    nll, match = token_nll(logits, targets), jnp.argmax(logits, axis=-1) == targets
    span = k < (ends - starts)[:, None]
    mean = jnp.sum(jnp.where(span, nll, 0.0), axis=1) / jnp.maximum(jnp.sum(span, axis=1), 1)
    return mean, jnp.all(match | ~span, axis=1)


def _global(arr: np.ndarray, mesh) -> jax.Array:
    """A host array every process holds whole, as one batch sharded over ``"data"``."""
    return jax.make_array_from_callback(arr.shape, sharding.batch_sharding(mesh), lambda index: arr[index])


def score_sequences(graphdef, params, seqs, starts, ends, *, max_len: int, pad_id: int, mesh, batch_tokens: int):
    """``(mean CE, all-match)`` for every sequence, longest first.

    Shapes: widths ``engine.bucket`` (4 per octave, <= 25% padding) capped at
    ``max_len``; rows ``batch_tokens / width``, or the next power of two above
    what is left, a multiple of the data axis; spans a power of two >= 8.
    """
    devices = mesh.shape[sharding.DATA_AXIS]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    means, matches = np.zeros(len(seqs), np.float32), np.zeros(len(seqs), bool)
    at = 0
    while at < len(order):
        width = bucket(len(seqs[order[at]]), 16, max_len)
        left = 1 << (len(order) - at - 1).bit_length()
        rows = -(-min(max(1, batch_tokens // width), left) // devices) * devices
        chunk = order[at : at + rows]
        inputs = np.full((rows, width), pad_id, np.int32)
        span = np.ones((2, rows), np.int32) * np.array([[1], [2]], np.int32)  # padding rows score a 1-token span
        for r, i in enumerate(chunk):
            inputs[r, : len(seqs[i])] = seqs[i]
            span[:, r] = starts[i], ends[i]
        span_width = max(8, 1 << int(np.max(span[1] - span[0]) - 1).bit_length())
        args = (_global(a, mesh) for a in (inputs, span[0], span[1]))
        mean, match = _row_scores(graphdef, params, *args, min(span_width, width - 1))
        means[chunk], matches[chunk] = np.asarray(mean)[: len(chunk)], np.asarray(match)[: len(chunk)]
        at += rows
    return means, matches


def task_outcomes(model, tokenizer, rows: list[dict], spec: TaskSpec, *, mesh, batch_tokens: int = 8192, chunk_examples: int = 1024) -> np.ndarray:
    """Per item of ``rows`` (already shuffled and capped): correct or not; ``chunk_examples`` items per packing round."""
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, sharding.replicated(mesh))
    max_len, pad_id = model.config.sequence_len, tokenizer.get_bos_token_id()
    correct = np.zeros(len(rows), bool)
    for first in range(0, len(rows), chunk_examples):
        items = range(first, min(len(rows), first + chunk_examples))
        prompts = [example_prompts(rows, idx, spec) for idx in items]
        flat = tokenizer.encode([p for ps in prompts for p in ps], prepend=pad_id)
        seqs, starts, ends, bounds = [], [], [], []
        for idx, ps in zip(items, prompts):
            s, a, b = continuation_spans(flat[: len(ps)], spec, max_len, idx)
            del flat[: len(ps)]
            bounds.append((len(seqs), len(seqs) + len(s)))
            seqs += s
            starts += a
            ends += b
        means, matches = score_sequences(graphdef, params, seqs, starts, ends, max_len=max_len, pad_id=pad_id, mesh=mesh, batch_tokens=batch_tokens)
        for idx, (lo, hi) in zip(items, bounds):
            if spec.task_type == "language_modeling":
                correct[idx] = matches[lo]
            else:
                correct[idx] = int(np.argmin(means[lo:hi])) == rows[idx]["gold"]  # the first minimum, as list.index(min)
    return correct


def centered(accuracy: float, baseline_percent: float) -> float:
    b = 0.01 * baseline_percent
    return (accuracy - b) / (1.0 - b)


def task_rows(bundle, spec: TaskSpec, max_per_task: int) -> list[dict]:
    rows = load_rows(bundle, spec)
    random.Random(SHUFFLE_SEED).shuffle(rows)
    rows = rows[:max_per_task] if max_per_task > 0 else rows
    if len(rows) <= spec.num_fewshot:
        raise BundleError(f"task {spec.label}: max_per_task={max_per_task} leaves too few rows for {spec.num_fewshot} few-shot examples")
    return rows


def evaluate_core(model, tokenizer, bundle_dir=None, max_per_task: int = -1, *, mesh=None, batch_tokens: int = 8192,
                  log: Callable[[str], None] = print0) -> dict:  # fmt: skip
    """nanochat's ``evaluate_model``: ``{"results", "centered_results", "core_metric"}`` (+ ``bundle``, ``slice``).

    ``bundle_dir``: None = the downloaded DCLM bundle, ``"slice"`` = the
    embedded slice (not CORE), or a directory holding an unzipped bundle.
    """
    bundle = resolve_bundle(bundle_dir)
    mesh = sharding.make_mesh() if mesh is None else mesh
    results, centered_results = {}, {}
    for spec in load_tasks(bundle):
        rows = task_rows(bundle, spec, max_per_task)
        accuracy = float(np.mean(task_outcomes(model, tokenizer, rows, spec, mesh=mesh, batch_tokens=batch_tokens)))
        results[spec.label], centered_results[spec.label] = accuracy, centered(accuracy, spec.baseline)
        log(f"{spec.label:<36} accuracy {accuracy:.4f} | centered {centered_results[spec.label]:.4f} ({len(rows)} items)")
    core = sum(centered_results.values()) / len(centered_results)
    return {"results": results, "centered_results": centered_results, "core_metric": core, "bundle": str(bundle), "slice": is_slice(bundle)}
