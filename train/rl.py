"""RL on GSM8K: ``python -m train.rl --config=configs/rl.py`` (nanochat 8c89661's chat_rl).

Starts from the SFT (or ``--config.source.stage=mid``) checkpoint. Every step
samples ``rollout.num_samples`` completions for ``rollout.examples_per_step``
problems from the current params (on-policy: no prefetch), rewards the exact
``#### N`` answer and trains REINFORCE with a group-mean baseline through the
runner's ``pg`` loss; ``--config.objective=best_of_n`` instead fine-tunes on
each problem's best sample. pass@1..k on the test split every ``eval_every``
steps; saves ``chatrl_checkpoints/<tag>``; results to ``eval/rl/<tag>/rl.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import nnx

from nanochat_jax import cli
from nanochat_jax.chat_eval import generative_outcomes, pass_at_k
from nanochat_jax.checkpoint import load_stage
from nanochat_jax.common import print0, process_index
from nanochat_jax.config import ConfigError, parse_args
from nanochat_jax.results import save_results, write_section
from nanochat_jax.rl import OBJECTIVES, Rollouts
from nanochat_jax.schedules import decay_schedule
from nanochat_jax.tasks.gsm8k import GSM8K
from nanochat_jax.trainer import Periodic, Stage, accumulation, epoch_steps, execution_overrides, run_config


def tasks(cfg):
    """(train, test) splits of the configured GSM8K subset."""
    where = {"data_dir": cfg.data.task_dir} if cfg.data.task_dir else {}
    return GSM8K(cfg.data.subset, "train", **where), GSM8K(cfg.data.subset, "test", **where)


def pass_at_ks(outcomes) -> dict[str, float]:
    """``rl/pass@k`` for k = 1..samples: a problem passes when any of its first k samples is correct."""
    return {f"rl/pass@{k}": pass_at_k(outcomes, k) for k in range(1, outcomes.shape[1] + 1)}


def build_stage(cfg, mesh) -> Stage:
    src, loop, r = cfg.source, cfg.loop, cfg.rollout
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    model, tokenizer, meta, tag = load_stage(
        src.stage, src.model_tag, src.step if src.step >= 0 else None, mesh, **execution_overrides(cfg.model)
    )
    max_len = min(cfg.model.max_seq_len, model.config.sequence_len)
    if r.max_new_tokens >= max_len:
        raise ConfigError(f"rollout.max_new_tokens={r.max_new_tokens} leaves no room for a prompt in {max_len} positions")
    train, test = tasks(cfg)
    rows = r.examples_per_step * r.num_samples
    what = f"examples_per_step*num_samples = {rows} vs device_batch_size*devices = {loop.device_batch_size}*{jax.device_count()}"
    num_micro = accumulation(rows, loop.device_batch_size * jax.device_count(), what)
    num_steps = epoch_steps(loop.num_iterations, len(train), r.examples_per_step, loop.num_epochs, "training problems")
    print0(f"RL ({cfg.objective}) on GSM8K {cfg.data.subset}: {len(train):,} problems, {num_steps:,} steps x {r.examples_per_step} "
           f"problems x {r.num_samples} samples, {num_micro} passes of {loop.device_batch_size * jax.device_count()} rows")  # fmt: skip

    def evaluate(ctx) -> dict:
        outcomes = generative_outcomes(test, nnx.merge(ctx.graphdef, ctx.params), tokenizer, num_samples=loop.eval_samples,
                                       max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
                                       max_problems=loop.eval_examples, batch_size=r.examples_per_step, seed=loop.seed,
                                       mesh=mesh)  # fmt: skip
        return pass_at_ks(outcomes)

    def open_batches(state):
        return Rollouts(train, tokenizer, r, objective=cfg.objective, pass_rows=loop.device_batch_size, num_micro=num_micro,
                        num_steps=num_steps, max_len=max_len, seed=loop.seed, mesh=mesh, process_index=jax.process_index(),
                        process_count=jax.process_count(), state=state)  # fmt: skip

    return Stage(
        name="rl", tag=loop.model_tag or tag, cfg=cfg, model_config=model.config, init_model=lambda mesh: model,
        open_batches=open_batches, schedule=decay_schedule(num_steps, cfg.optim.init_lr_frac), grad_accum=num_micro,
        tokens_per_step=rows * r.max_new_tokens, num_steps=num_steps, evals=[Periodic(loop.eval_every, evaluate)],
        loss="pg", on_policy=True,
        meta={"tokenizer_dir": meta.get("tokenizer_dir"), "source": f"{src.stage}/{tag}/{meta['step']}", "objective": cfg.objective},
    )  # fmt: skip


def curves(metrics_file: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's ``metrics.jsonl`` by step (a resumed run's later records win)."""
    out: dict[str, dict[int, float]] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("step", "time"):
                out.setdefault(name, {})[record["step"]] = value
    return out


def record_results(cfg, summary: dict) -> dict:
    """Final pass@k, the pass@1 curve and the reward curve to ``eval/rl/<tag>/rl.json`` and the report's "Chat RL"."""
    tag = Path(summary["checkpoint_dir"]).name
    logged = curves(Path(summary["run_dir"]) / "metrics.jsonl")
    reward = [logged["rl/reward"][s] for s in sorted(logged.get("rl/reward", {}))]
    head = reward[: max(1, len(reward) // 10)]
    tail = reward[-len(head) :]
    data = {
        "objective": cfg.objective, "subset": cfg.data.subset, "steps": summary["iterations"], "wall_time_s": summary["wall_time_s"],
        **{k.removeprefix("final_rl_"): v for k, v in summary.items() if k.startswith("final_rl_pass")},
        "pass@1_by_step": logged.get("rl/pass@1", {}),
        "reward_first_10pct": sum(head) / len(head) if reward else None, "reward_last_10pct": sum(tail) / len(tail) if reward else None,
        "reward_by_step": reward,
    }  # fmt: skip
    save_results("rl", tag, "rl", data)
    write_section("Chat RL", [{k: v for k, v in data.items() if not isinstance(v, (dict, list))}])
    return data


def run(cfg) -> dict:
    summary = run_config(build_stage, cfg)
    if process_index() == 0:
        record_results(cfg, summary)
    return summary


if __name__ == "__main__":
    cli.main(lambda: run(parse_args()))
