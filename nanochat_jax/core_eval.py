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

Where nanochat runs one forward per example, here many examples' sequences
are sorted by length and packed into a few fixed shapes (``engine.bucket``
widths, rows ~ ``batch_tokens / width``); one jitted forward per batch,
sharded over the mesh's data axis, puts only the continuation positions
through the head and returns just each span's mean CE and all-match flag.
A multiple-choice item's choices share one row: its few-shot prefix once,
then each choice's tail attending to the prefix and to itself at its own
positions (``shared_row``), so the prefix is computed once, not per choice.
Right padding with BOS cannot change a causal model's scores on the real
positions. A sequence longer than the model's
``sequence_len`` keeps its last ``sequence_len`` tokens (nanochat does this for
models with a ``max_seq_len``), its span shifted accordingly; where even the
continuation does not fit (where nanochat would stop on an assert) its last
``sequence_len - 1`` tokens are scored.
"""

from __future__ import annotations

import functools
import random
from typing import Callable, NamedTuple, Sequence

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


class Row(NamedTuple):
    """One batch row: tokens with their rotary positions and attention segments, and the spans scored in it."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0: seen by every token after it; j > 0: seen only by segment j
    spans: list[tuple[list[int], list[int]]]  # (predicting indices, target tokens)


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


def single_row(seq: list[int], start: int, end: int) -> Row:
    """One causal sequence whose span ``seq[start:end]`` is predicted from positions ``start-1 .. end-2``."""
    return Row(seq, list(range(len(seq))), [0] * len(seq), [(list(range(start - 1, end - 1)), seq[start:end])])


def shared_row(seqs: list[list[int]], prefix: int) -> Row:
    """Sequences sharing their first ``prefix`` tokens, in one row: the prefix once, then each tail as a segment.

    A tail token sees the prefix and its own tail only, at the positions it has
    in its own sequence, so every score is that of the sequence's own forward,
    while the (few-shot) prefix is computed once instead of once per choice.
    """
    tokens, positions, segments, spans = list(seqs[0][:prefix]), list(range(prefix)), [0] * prefix, []
    for j, s in enumerate(seqs, 1):
        tail = s[prefix:]
        spans.append(([prefix - 1, *range(len(tokens), len(tokens) + len(tail) - 1)][: len(tail)], tail))
        tokens, positions, segments = tokens + tail, positions + list(range(prefix, len(s))), segments + [j] * len(tail)
    return Row(tokens, positions, segments, spans)


def item_rows(seqs: list[list[int]], starts: list[int], ends: list[int], spec: TaskSpec) -> list[Row]:
    """One item's rows: its choices share a row when they share the prefix up to the continuation (MC, uncropped)."""
    prefix = starts[0]
    if spec.task_type == "multiple_choice" and len(seqs) > 1 and all(a == prefix and s[:prefix] == seqs[0][:prefix] for s, a in zip(seqs, starts)):
        return [shared_row(seqs, prefix)]
    return [single_row(s, a, b) for s, a, b in zip(seqs, starts, ends)]


@functools.partial(jax.jit, static_argnums=(0, 6))
def _span_scores(graphdef, params, inputs, positions, segments, spans, shared: bool):
    """Per row and span: mean CE of the span's targets and whether greedy argmax predicts them all.

    ``spans (3, R, K, S)``: predicting index, target and validity. Only those
    positions go through the final norm and the head. ``shared`` rows attend
    within their segment (or the shared segment 0), causally.
    """
    model = nnx.merge(graphdef, params)
    if shared:
        order = jnp.arange(inputs.shape[1])
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]
        x = model.hidden_states(inputs, positions, (order[:, None] >= order[None, :]) & ((seg_k == 0) | (seg_k == seg_q)))
    else:
        x = model.hidden_states(inputs)
    index, targets, valid = spans[0], spans[1], spans[2] > 0
    R, K, S = index.shape
    logits = model.logits_from_hidden(jnp.take_along_axis(x, index.reshape(R, K * S, 1), axis=1)).reshape(R, K, S, -1)
    nll, match = token_nll(logits, targets), jnp.argmax(logits, axis=-1) == targets
    mean = jnp.sum(jnp.where(valid, nll, 0.0), axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1)
    return mean, jnp.all(match | ~valid, axis=-1)


def _global(arr: np.ndarray, mesh, axis: int = 0) -> jax.Array:
    """A host array every process holds whole, as one batch sharded over ``"data"`` on ``axis``."""
    spec = sharding.batch_sharding(mesh) if axis == 0 else sharding.microbatch_sharding(mesh)
    return jax.make_array_from_callback(arr.shape, spec, lambda index: arr[index])


def _pow2(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def score_rows(graphdef, params, rows: list[Row], *, max_len: int, pad_id: int, mesh, batch_tokens: int):
    """``(mean CE, all-match)`` of every span of ``rows``, in row then span order.

    Shapes: widths ``engine.bucket`` (4 per octave, <= 25% padding; capped at
    ``max_len`` for rows that fit it); rows ``batch_tokens / width``, or the
    next power of two above what is left, a multiple of the data axis; spans
    per row and span lengths powers of two.
    """
    devices = mesh.shape[sharding.DATA_AXIS]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    first = np.cumsum([0] + [len(r.spans) for r in rows])
    means, matches = np.zeros(first[-1], np.float32), np.zeros(first[-1], bool)
    at = 0
    while at < len(order):
        longest = len(rows[order[at]].tokens)
        width = bucket(longest, 16, max_len if longest <= max_len else None)
        left = 1 << (len(order) - at - 1).bit_length()
        n = -(-min(max(1, batch_tokens // width), left) // devices) * devices
        chunk = [rows[i] for i in order[at : at + n]]
        k = _pow2(max(len(r.spans) for r in chunk), 1)
        s = _pow2(max(len(t) for r in chunk for _, t in r.spans), 8)
        inputs, segments = np.full((n, width), pad_id, np.int32), np.full((n, width), -1, np.int32)
        positions, spans = np.zeros((n, width), np.int32), np.zeros((3, n, k, s), np.int32)
        for i, row in enumerate(chunk):
            inputs[i, : len(row.tokens)], positions[i, : len(row.tokens)] = row.tokens, row.positions
            segments[i, : len(row.tokens)] = row.segments
            for j, (index, targets) in enumerate(row.spans):
                spans[:, i, j, : len(targets)] = index, targets, np.ones(len(targets), np.int32)
        shared = bool(segments.max() > 0)
        args = [_global(a, mesh) for a in (inputs, positions, segments)] + [_global(spans, mesh, axis=1)]
        mean, match = (np.asarray(a) for a in _span_scores(graphdef, params, *args, shared))
        for i, r in zip(order[at : at + n], range(len(chunk))):
            means[first[i] : first[i + 1]], matches[first[i] : first[i + 1]] = mean[r, : len(rows[i].spans)], match[r, : len(rows[i].spans)]
        at += n
    return means, matches


def default_batch_tokens(mesh) -> int:
    """Tokens per scoring batch: 2,048 per device on CPU (cache-sized; 8,192 ran 1.4x slower, bench/RESULTS.md), 8,192 elsewhere."""
    return (2048 if jax.default_backend() == "cpu" else 8192) * mesh.shape[sharding.DATA_AXIS]


def task_outcomes(model, tokenizer, rows: list[dict], spec: TaskSpec, *, mesh, batch_tokens: int | None = None,
                  chunk_examples: int = 1024) -> np.ndarray:  # fmt: skip
    """Per item of ``rows`` (already shuffled and capped): correct or not; ``chunk_examples`` items per packing round."""
    batch_tokens = batch_tokens or default_batch_tokens(mesh)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, sharding.replicated(mesh))
    max_len, pad_id = model.config.sequence_len, tokenizer.get_bos_token_id()
    correct = np.zeros(len(rows), bool)
    for first in range(0, len(rows), chunk_examples):
        items = range(first, min(len(rows), first + chunk_examples))
        prompts = [example_prompts(rows, idx, spec) for idx in items]
        flat = tokenizer.encode([p for ps in prompts for p in ps], prepend=pad_id)
        packed, bounds = [], []
        for idx, ps in zip(items, prompts):
            seqs, starts, ends = continuation_spans(flat[: len(ps)], spec, max_len, idx)
            del flat[: len(ps)]
            bounds.append(sum(len(r.spans) for r in packed))
            packed += item_rows(seqs, starts, ends, spec)
        means, matches = score_rows(graphdef, params, packed, max_len=max_len, pad_id=pad_id, mesh=mesh, batch_tokens=batch_tokens)
        for idx, lo, hi in zip(items, bounds, bounds[1:] + [len(means)]):
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


def evaluate_core(model, tokenizer, bundle_dir=None, max_per_task: int = -1, *, mesh=None, batch_tokens: int | None = None,
                  log: Callable[[str], None] = print0, tasks: Sequence[str] | None = None) -> dict:  # fmt: skip
    """nanochat's ``evaluate_model``: ``{"results", "centered_results", "core_metric"}`` (+ ``bundle``, ``slice``).

    ``bundle_dir``: None = the downloaded DCLM bundle, ``"slice"`` = the
    embedded slice (not CORE), or a directory holding an unzipped bundle.
    ``tasks``: only these labels (a quick look, e.g. the notebook on CPU; the
    mean is then over those tasks, not CORE); None = every task.
    """
    bundle = resolve_bundle(bundle_dir)
    mesh = sharding.make_mesh() if mesh is None else mesh
    specs = load_tasks(bundle)
    if tasks is not None:
        unknown = set(tasks) - {spec.label for spec in specs}
        if unknown:
            raise BundleError(f"unknown CORE task(s) {sorted(unknown)}; {bundle} has {[spec.label for spec in specs]}")
        specs = [spec for spec in specs if spec.label in tasks]
    results, centered_results = {}, {}
    for spec in specs:
        rows = task_rows(bundle, spec, max_per_task)
        accuracy = float(np.mean(task_outcomes(model, tokenizer, rows, spec, mesh=mesh, batch_tokens=batch_tokens)))
        results[spec.label], centered_results[spec.label] = accuracy, centered(accuracy, spec.baseline)
        log(f"{spec.label:<36} accuracy {accuracy:.4f} | centered {centered_results[spec.label]:.4f} ({len(rows)} items)")
    core = sum(centered_results.values()) / len(centered_results)
    return {"results": results, "centered_results": centered_results, "core_metric": core, "bundle": str(bundle), "slice": is_slice(bundle)}
