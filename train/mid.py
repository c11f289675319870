"""Midtraining: ``python -m train.mid --config=configs/mid.py`` (nanochat 8c89661's mid_train).

Starts from a base checkpoint, trains on one epoch of a conversation mixture
rendered into ``data.streams`` token streams (no loss mask; the same rows on any
topology, see ``chat_batches.MidBatches``), LR flat for 80% of the epoch then
linear to 0, Muon momentum ramped; val bpb every ``loop.eval_every``; saves
``mid_checkpoints/<tag>`` with optimizer state.
"""

from __future__ import annotations

import jax

from nanochat_jax.chat_batches import MidBatches
from nanochat_jax.checkpoint import load_stage
from nanochat_jax.common import print0
from nanochat_jax.config import ConfigError, parse_args
from nanochat_jax.data_streams import StreamBatches, fit_streams
from nanochat_jax.schedules import mid_schedule
from nanochat_jax.trainer import Periodic, Stage, execution_overrides, grad_accum_steps, run_config, step_rows, stream_val_bpb
from nanochat_jax.tasks.mixtures import mixture


def build_stage(cfg, mesh) -> Stage:
    src = cfg.source
    model, tokenizer, meta, tag = load_stage(
        src.stage, src.model_tag, src.step if src.step >= 0 else None, mesh, **execution_overrides(cfg.model)
    )
    model_config = model.config
    seq = cfg.model.max_seq_len
    if seq > model_config.sequence_len:
        raise ConfigError(f"model.max_seq_len={seq} exceeds the {src.stage} model's sequence_len {model_config.sequence_len}")
    accum = grad_accum_steps(cfg, jax.device_count())
    rows = step_rows(cfg)
    train, val = mixture(cfg.data.train, cfg.data.task_dir), mixture(cfg.data.val, cfg.data.task_dir)
    print0(f"Midtraining on {len(train):,} conversations ({cfg.data.train}), val {len(val):,}; grad accumulation {accum}")

    def batches(dataset, streams: int, state=None) -> MidBatches:
        return MidBatches(dataset, tokenizer, rows, seq, streams=streams, process_index=jax.process_index(),
                          process_count=jax.process_count(), state=state)  # fmt: skip

    val_streams = fit_streams(cfg.data.streams, rows, len(val))

    def val_bpb(ctx) -> dict:
        return stream_val_bpb(ctx, batches(val, val_streams), cfg, accum, mesh, tokenizer.token_bytes())

    return Stage(
        name="mid", tag=cfg.loop.model_tag or tag, cfg=cfg, model_config=model_config,
        init_model=lambda mesh: model,
        open_batches=lambda state: StreamBatches(batches(train, cfg.data.streams, state), accum),
        schedule=mid_schedule, grad_accum=accum, tokens_per_step=cfg.loop.total_batch_size,
        num_steps=cfg.loop.num_iterations if cfg.loop.num_iterations > 0 else None,
        evals=[Periodic(cfg.loop.eval_every, val_bpb)],
        meta={"tokenizer_dir": meta.get("tokenizer_dir"), "source": f"{src.stage}/{tag}/{meta['step']}",
              "device_batch_size": cfg.loop.device_batch_size, "max_seq_len": seq},
    )  # fmt: skip


def run(cfg) -> dict:
    return run_config(build_stage, cfg)


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(lambda: run(parse_args()))
