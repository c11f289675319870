"""RL rollout throughput: generated tokens/s of one RL step's rollouts on the engine.

``python -m bench.rollouts --config=configs/tiny_rl.py`` times ``Rollouts.sample``
(the whole step's problems x samples decoded together, calculator live) on the
stage's source checkpoint, with the stage's own config; the first step includes
compilation and is reported apart from the median of the rest.
"""

from __future__ import annotations

import statistics
import sys
import time

from nanochat_jax import cli, sharding
from nanochat_jax.checkpoint import load_stage
from nanochat_jax.config import parse_args
from nanochat_jax.rl import Rollouts
from nanochat_jax.train_step import split_model
from train.rl import tasks


def main(argv: list[str], steps: int = 5) -> None:
    cfg = parse_args(argv)
    mesh = sharding.make_mesh()
    src = cfg.source
    model, tokenizer, _, tag = load_stage(src.stage, src.model_tag, src.step if src.step >= 0 else None, mesh)
    train, _ = tasks(cfg)
    rows = cfg.rollout.examples_per_step * cfg.rollout.num_samples
    source = Rollouts(train, tokenizer, cfg.rollout, objective="reinforce", pass_rows=rows, num_micro=1, num_steps=steps,
                      max_len=model.config.sequence_len, seed=cfg.loop.seed, mesh=mesh)  # fmt: skip
    graphdef, params = split_model(model)
    rates = []
    for step in range(steps):
        source.set_policy(graphdef, params)
        t0 = time.perf_counter()
        _, prompts, seqs, _, rewards = source.sample(step)
        dt = time.perf_counter() - t0
        new = sum(map(len, seqs)) - cfg.rollout.num_samples * sum(map(len, prompts))
        rates.append(new / dt)
        print(f"step {step}: {len(seqs)} rows, {new} generated tokens in {dt:.2f} s = {new / dt:,.0f} tok/s, mean reward {rewards.mean():.3f}")
    print(f"{src.stage}/{tag}: first step {rates[0]:,.0f} tok/s (compiles); median of the rest {statistics.median(rates[1:]):,.0f} tok/s")


if __name__ == "__main__":
    cli.main(lambda: main(sys.argv[1:]))
