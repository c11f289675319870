"""Supervised finetuning: ``python -m train.sft --config=configs/sft.py`` (nanochat 8c89661's chat_sft).

Starts from the mid (or ``--config.source.stage=base``) checkpoint; one
conversation per row, loss on what the assistant writes only, rows padded to
a few length buckets (a bounded number of compiled programs);
``loop.target_examples_per_step`` sets gradient accumulation; every LR starts at
``optim.init_lr_frac`` of its base value and decays linearly to 0.
"""

from __future__ import annotations

import jax

from nanochat_jax.chat_batches import PaddedConversations
from nanochat_jax.chat_eval import categorical_accuracy
from nanochat_jax.checkpoint import load_stage
from nanochat_jax.common import print0
from nanochat_jax.config import parse_args
from nanochat_jax.loss_eval import evaluate_loss
from nanochat_jax.schedules import decay_schedule
from nanochat_jax.tasks.mixtures import eval_tasks, mixture
from nanochat_jax.trainer import Periodic, Stage, accumulation, epoch_steps, execution_overrides, global_batches, run_config


def build_stage(cfg, mesh) -> Stage:
    src, loop = cfg.source, cfg.loop
    model, tokenizer, meta, tag = load_stage(
        src.stage, src.model_tag, src.step if src.step >= 0 else None, mesh, **execution_overrides(cfg.model)
    )
    model_config = model.config
    max_len = min(cfg.model.max_seq_len, model_config.sequence_len)
    rows = loop.device_batch_size * jax.local_device_count()
    what = f"target_examples_per_step vs device_batch_size*devices = {loop.device_batch_size}*{jax.device_count()}"
    accum = accumulation(loop.target_examples_per_step, loop.device_batch_size * jax.device_count(), what)
    train, val = mixture(cfg.data.train, cfg.data.task_dir), mixture(cfg.data.val, cfg.data.task_dir)
    num_steps = epoch_steps(loop.num_iterations, len(train), loop.target_examples_per_step, loop.num_epochs, "SFT conversations")
    print0(f"SFT on {len(train):,} conversations ({cfg.data.train}): {num_steps:,} steps x {loop.target_examples_per_step} "
           f"examples, grad accumulation {accum}; val {len(val):,}")  # fmt: skip

    def val_loss(ctx) -> dict:
        batches = global_batches(PaddedConversations(val, tokenizer, rows, max_len), mesh)
        return {"val/loss": evaluate_loss(ctx.graphdef, ctx.params, batches, loop.eval_steps)}

    metric_tasks = eval_tasks(cfg.data.metrics, cfg.data.task_dir)

    def chat_metrics(ctx) -> dict:  # nanochat's in-training MMLU / ARC-Easy accuracy
        return {f"chat/{name}": categorical_accuracy(ctx.graphdef, ctx.params, tokenizer, task, mesh, max_problems=loop.eval_metrics_max_problems)
                for name, task in metric_tasks.items()}  # fmt: skip

    return Stage(
        name="sft", tag=loop.model_tag or tag, cfg=cfg, model_config=model_config,
        init_model=lambda mesh: model,
        open_batches=lambda state: PaddedConversations(train, tokenizer, rows, max_len, state),
        schedule=decay_schedule(num_steps, cfg.optim.init_lr_frac), grad_accum=accum,
        tokens_per_step=loop.target_examples_per_step * max_len, num_steps=num_steps,
        evals=[Periodic(loop.eval_every, val_loss), Periodic(loop.eval_metrics_every, chat_metrics)],
        meta={"tokenizer_dir": meta.get("tokenizer_dir"), "source": f"{src.stage}/{tag}/{meta['step']}"},
    )  # fmt: skip


def run(cfg) -> dict:
    return run_config(build_stage, cfg)


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(lambda: run(parse_args()))
