"""Benchmark the generative chat eval on GSM8K problems: problems batched together vs nanochat's one at a time.

    python -m bench.eval_chat                                                  # CPU: random d4, 16 shipped GSM8K test rows
    python -m bench.eval_chat --source sft --problems 64 --max_new_tokens 512  # a trained checkpoint

Both run on the same model and Engine, in the same process, over the same
problems (the shipped GSM8K test rows, real prompts of different lengths):
  nanochat  its algorithm: for each problem in turn, ``engine.generate_batch(prompt,
            num_samples)``, decode the completions, score them (scripts/chat_eval.py)
  batched   ``chat_eval.generative_outcomes``: ``--batch_size`` problems decode
            together through ``Engine.generate_multi``
Medians over ``--repeats`` timed runs after one untimed run (compiles). Both
use the same per-problem seeds, so their outcomes must agree (printed). A
random model rarely emits ``<|assistant_end|>``, so every row runs to
``--max_new_tokens``: both do the same work, and batching never waits for a
long row, which a trained model's varied lengths would make it do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
from flax import nnx

from bench.common import add_model_flags, resolve_dtype
from nanochat_jax.chat_eval import generative_outcomes
from nanochat_jax.checkpoint import STAGE_DIRS, load_model
from nanochat_jax.engine import Engine
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.tasks import GSM8K
from nanochat_jax.tokenizer import Tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.set_defaults(depth=4, vocab_size=2048, seq_len=1024)
    p.add_argument("--source", default=None, choices=tuple(STAGE_DIRS), help="benchmark a checkpoint instead of a random model")
    p.add_argument("--model_tag", default=None)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--task_dir", default="embedded", help="GSM8K main/test rows from here ('embedded': the shipped 500)")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8, help="problems per generate_multi call")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def build(args, task):
    """(model, tokenizer, description): a checkpoint's, or a random GPT with a tokenizer trained on the problems."""
    dtype = resolve_dtype(args.compute_dtype)
    if args.source:
        model, tokenizer, _ = load_model(args.source, args.model_tag, args.step, compute_dtype=dtype, scan_layers=args.scan_layers)
        return model, tokenizer, f"{args.source} checkpoint"
    rows = GSM8K("main", "test", data_dir=args.task_dir)
    texts = [json.dumps(rows[i]["messages"]) for i in range(len(rows))]
    tokenizer = Tokenizer.train_from_iterator(iter(texts), args.vocab_size)
    config = GPTConfig.from_depth(args.depth, vocab_size=tokenizer.get_vocab_size(), sequence_len=args.seq_len, compute_dtype=dtype,
                                  scan_layers=args.scan_layers)  # fmt: skip
    model = GPT(config, rngs=nnx.Rngs(0))
    key = jax.random.PRNGKey(1)  # nanochat zero-inits lm_head: a random one makes the logits depend on the context
    model.lm_head[...] = 0.02 * jax.random.normal(key, model.lm_head.shape)
    return model, tokenizer, f"random d{args.depth}"


def nanochat_outcomes(task, engine, tokenizer, args) -> np.ndarray:
    """scripts/chat_eval.py's generative loop: one problem at a time, its samples as one batch."""
    outcomes = np.zeros((args.problems, args.num_samples), bool)
    for i in range(args.problems):
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        rows, _ = engine.generate_batch(prompt, args.num_samples, max_tokens=args.max_new_tokens, temperature=args.temperature,
                                        top_k=args.top_k, seed=i)  # fmt: skip
        outcomes[i] = [task.evaluate(conversation, tokenizer.decode(r[len(prompt) :])) for r in rows]
    return outcomes


def timed(fns, repeats: int):
    """(results, median seconds) of each function; the repeats alternate, so load from others hits both alike."""
    results = [fn() for fn in fns]  # compiles every shape the timed runs will use
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return results, [statistics.median(t) for t in times]


def main(argv=None):
    args = parse_args(argv)
    task = GSM8K("main", "test", data_dir=args.task_dir, stop=args.problems)
    args.problems = len(task)
    model, tokenizer, what = build(args, task)
    engine = Engine(model, tokenizer)
    sampling = dict(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
    (ref, got), (ref_s, got_s) = timed([lambda: nanochat_outcomes(task, engine, tokenizer, args),
                                        lambda: generative_outcomes(task, model, tokenizer, batch_size=args.batch_size, **sampling)],
                                       args.repeats)  # fmt: skip

    cfg = model.config
    lengths = [len(tokenizer.render_for_completion(task[i])) for i in range(args.problems)]
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: {what}, L={cfg.n_layer} C={cfg.n_embd} V={cfg.vocab_size} {cfg.compute_dtype}; {args.problems} GSM8K problems "
          f"(prompts {min(lengths)}-{max(lengths)} tokens), {args.num_samples} sample(s), {args.max_new_tokens} new tokens, "
          f"temperature {args.temperature}, top_k {args.top_k}; outcomes agree: {bool((ref == got).all())}")  # fmt: skip
    rows = [("nanochat (one problem at a time)", 1, ref_s, "1.00x"),
            ("batched (generate_multi)", args.batch_size, got_s, f"{ref_s / got_s:.2f}x")]  # fmt: skip
    head = ("method", "problems/batch", "median s", "problems/s", "speedup")
    table = [(m, b, f"{s:.2f}", f"{args.problems / s:.2f}", r) for m, b, s, r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in (head, *table):
        print("| " + " | ".join(str(x).rjust(w) for x, w in zip(line, widths)) + " |")
    return {"nanochat_s": ref_s, "batched_s": got_s, "speedup": ref_s / got_s, "agree": bool((ref == got).all())}


if __name__ == "__main__":
    main()
