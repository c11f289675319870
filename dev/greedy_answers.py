"""Greedy answers of a chat checkpoint to the first embedded synthetic arithmetic test problems.

    python dev/greedy_answers.py --source sft --model_tag tiny --n 3

Prints each question, the model's reply (calculator calls included) and whether
its ``#### N`` is right: the before/after-SFT rows of bench/RESULTS.md.
"""

import argparse

from nanochat_jax.checkpoint import load_model
from nanochat_jax.engine import Engine
from nanochat_jax.tasks import GSM8K


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="sft", help="checkpoint stage: base, mid, sft, rl")
    p.add_argument("--model_tag", default=None)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--max_tokens", type=int, default=96)
    args = p.parse_args(argv)
    model, tokenizer, meta = load_model(args.source, args.model_tag)
    engine, task = Engine(model, tokenizer), GSM8K("synthetic", "test")
    for i in range(args.n):
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        (row,), _ = engine.generate_batch(prompt, max_tokens=args.max_tokens, temperature=0.0)
        reply = tokenizer.decode(row[len(prompt):])
        print(f"Q{i}: {conversation['messages'][0]['content']}\nA{i} ({args.source} step {meta['step']}): {reply!r} "
              f"-> {'correct' if task.evaluate(conversation, reply) else 'wrong'}\n")


if __name__ == "__main__":
    main()
