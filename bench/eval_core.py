"""Time CORE: ``evaluate_core``'s cross-example batches against nanochat's one-forward-per-example loop, same run.

    python -m bench.eval_core --depth 4 --seq_len 256 --max_per_task 30          # CPU, embedded slice
    python -m bench.eval_core --depth 20 --bundle_dir "" --max_per_task 500     # GPU, the DCLM bundle

The baseline is nanochat's ``evaluate_task`` algorithm: per example, its
choices (LM: one sequence) right-padded with BOS into one batch, one forward
returning per-position CE and argmax, then host-side spans and argmin. Its
batches are padded to ``engine.bucket`` lengths (4 per octave) so JAX compiles
a bounded set of shapes, and both paths run once untimed first: the medians
over ``--repeats`` are compiled steady state. Same prompts, same tokenizer,
same random model; the accuracies are printed side by side.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import add_model_flags, load_tokenizer, resolve_dtype
from nanochat_jax import core_eval, sharding
from nanochat_jax.engine import bucket
from nanochat_jax.eval_bundle import load_tasks, resolve_bundle
from nanochat_jax.gpt import GPT, GPTConfig, token_nll


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, ids):
    """nanochat's ``forward_model``: per-position CE against the next token, and argmax predictions."""
    logits = nnx.merge(graphdef, params)(ids)
    targets = jnp.concatenate([ids[:, 1:], jnp.full_like(ids[:, :1], -1)], axis=1)
    return token_nll(logits, targets), jnp.argmax(logits, axis=-1)


def one_at_a_time(model, tokenizer, tasks) -> dict[str, float]:
    """nanochat's loop: one example, one forward."""
    graphdef, params = nnx.split(model)
    max_len, bos = model.config.sequence_len, tokenizer.get_bos_token_id()
    accuracies = {}
    for spec, rows in tasks:
        correct = 0
        for idx in range(len(rows)):
            prompts = core_eval.example_prompts(rows, idx, spec)
            seqs, starts, ends = core_eval.continuation_spans([tokenizer.encode(p, prepend=bos) for p in prompts], spec, max_len, idx)
            ids = np.full((len(seqs), bucket(max(map(len, seqs)), 16, max_len)), bos, np.int32)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = s
            losses, preds = (np.asarray(a) for a in _forward(graphdef, params, jnp.asarray(ids)))
            if spec.task_type == "language_modeling":
                s, e = starts[0], ends[0]
                correct += bool(np.all(preds[0, s - 1 : e - 1] == ids[0, s:e]))
            else:
                means = [float(losses[r, s - 1 : e - 1].mean()) for r, (s, e) in enumerate(zip(starts, ends))]
                correct += means.index(min(means)) == rows[idx]["gold"]
        accuracies[spec.label] = correct / len(rows)
    return accuracies


def batched(model, tokenizer, tasks, batch_tokens: int | None, mesh) -> dict[str, float]:
    """What ``evaluate_core`` runs per task (bundle reading excluded, as for the baseline)."""
    return {spec.label: float(np.mean(core_eval.task_outcomes(model, tokenizer, rows, spec, mesh=mesh, batch_tokens=batch_tokens)))
            for spec, rows in tasks}  # fmt: skip


def random_model(config: GPTConfig) -> GPT:
    """A GPT whose zero-initialised matrices are random too: with a zero lm_head every choice ties."""
    graphdef, params = nnx.split(GPT(config, rngs=nnx.Rngs(0)))
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda x: x if x.any() else 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), params)
    return nnx.merge(graphdef, params)


def timed(fn, repeats: int) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    out = fn()  # compiles
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.set_defaults(depth=4, seq_len=256)
    p.add_argument("--bundle_dir", default="slice", help='"slice" (embedded), "" (downloaded DCLM bundle) or a directory')
    p.add_argument("--tokenizer_dir", default=None, help="default: a 4,096-token BPE trained here on the bundle's text")
    p.add_argument("--max_per_task", type=int, default=30)
    p.add_argument("--batch_tokens", type=int, default=None, help="default: core_eval.default_batch_tokens")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    bundle = resolve_bundle(args.bundle_dir)
    tasks = [(spec, core_eval.task_rows(bundle, spec, args.max_per_task)) for spec in load_tasks(bundle)]
    if args.tokenizer_dir is None:
        from nanochat_jax.tokenizer import Tokenizer

        text = [open(f).read() for f in sorted((bundle / "eval_data").rglob("*.jsonl"))]
        tokenizer = Tokenizer.train_from_iterator(iter(text), 4096)
    else:
        tokenizer = load_tokenizer(args.tokenizer_dir)
    config = GPTConfig.from_depth(args.depth, vocab_size=tokenizer.get_vocab_size(), sequence_len=args.seq_len,
                                  compute_dtype=resolve_dtype(args.compute_dtype), scan_layers=args.scan_layers)  # fmt: skip
    model, mesh = random_model(config), sharding.make_mesh()
    items = sum(len(rows) for _, rows in tasks)
    print(f"{len(tasks)} tasks, {items} items, depth {args.depth}, seq_len {args.seq_len}, {jax.device_count()} {jax.default_backend()} device(s)")
    rows = []
    for name, fn in [("nanochat loop", lambda: one_at_a_time(model, tokenizer, tasks)),
                     ("evaluate_core batched", lambda: batched(model, tokenizer, tasks, args.batch_tokens, mesh))]:  # fmt: skip
        first, median, acc = timed(fn, args.repeats)
        rows.append((name, first, median, acc))
        print(f"| {name} | first (compiles) {first:.2f} s | median {median:.2f} s | {items / median:.1f} items/s |")
    same = [label for label in rows[0][3] if abs(rows[0][3][label] - rows[1][3][label]) < 1e-9]
    print(f"speed-up (median): {rows[0][2] / rows[1][2]:.2f}x; accuracies agree on {len(same)}/{len(tasks)} tasks")
    for label in sorted(set(rows[0][3]) - set(same)):
        print(f"  {label}: loop {rows[0][3][label]:.4f} vs batched {rows[1][3][label]:.4f} (a near-tie rounded apart)")


if __name__ == "__main__":
    main()
