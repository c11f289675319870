"""Base-model pretraining: ``python -m train.pretrain --config=configs/d20.py``.

nanochat's base_train on the shared stage runner (``nanochat_jax.trainer``):
the same command runs on one CPU, one GPU, several hosts or a TPU VM. Per
step: val bpb every ``loop.eval_every``, CORE every ``loop.core_metric_every``
(``loop.core_metric_max_per_task`` items per task, bundle ``loop.core_bundle_dir``),
greedy samples every ``loop.sample_every``, a checkpoint every
``loop.save_every`` and at the end.
"""

from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from nanochat_jax.common import print0
from nanochat_jax.config import ConfigError, parse_args
from nanochat_jax.data_streams import StreamBatches
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.schedules import base_schedule
from nanochat_jax.trainer import Periodic, Stage, grad_accum_steps, model_config_from, run_config, step_rows, stream_val_bpb

SAMPLE_PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
)


def resolve_num_iterations(cfg, model_config: GPTConfig) -> int:
    """nanochat's precedence: num_iterations > target_flops > target_param_data_ratio."""
    loop = cfg.loop
    if loop.num_iterations > 0:
        return loop.num_iterations
    if loop.target_flops > 0:
        return round(loop.target_flops / (model_config.flops_per_token() * loop.total_batch_size))
    if loop.target_param_data_ratio > 0:
        return int(loop.target_param_data_ratio * model_config.num_params()) // loop.total_batch_size
    raise ConfigError("no training horizon: set loop.num_iterations, loop.target_flops or loop.target_param_data_ratio")


def ensure_tokenizer(cfg):
    """Load the config's tokenizer; train one from the run's data first when none exists (and allowed)."""
    from nanochat_jax.tokenizer import Tokenizer, tokenizer_dir

    tok_dir = tokenizer_dir(cfg.data.tokenizer_dir)
    if (tok_dir / "tokenizer.json").exists() or (tok_dir / "tokenizer.pkl").exists():
        return Tokenizer.from_directory(tok_dir), tok_dir
    if not cfg.data.train_tokenizer_if_missing:
        raise FileNotFoundError(
            f"no tokenizer in {tok_dir}; train the one this config needs with "
            f"`python -m train.tokenizer --config=<this config file>` (same overrides), "
            f"or add --config.data.train_tokenizer_if_missing=True"
        )
    from train.tokenizer import train_from_config

    print0(f"No tokenizer in {tok_dir}: training one (vocab {cfg.data.tokenizer_vocab_size:,})")
    tokenizer, stats = train_from_config(cfg)
    print0(f"Tokenizer trained in {stats['train_time_s']:.1f}s, {stats['bytes_per_token']:.2f} bytes/token on val")
    return tokenizer, tok_dir


def build_stage(cfg, mesh) -> Stage:
    from nanochat_jax.dataloader import build_pretrain_loader, split_stream_count
    from nanochat_jax.dataset import resolve_data_dir

    data_dir = resolve_data_dir(cfg.data.data_dir)
    tokenizer, tok_dir = ensure_tokenizer(cfg)
    model_config = model_config_from(cfg.model, tokenizer.get_vocab_size())
    num_iterations = resolve_num_iterations(cfg, model_config)
    accum = grad_accum_steps(cfg, jax.device_count())
    rows = step_rows(cfg)

    def loader(split: str, streams: int, state=None, prefetch: int | None = None):
        kwargs = {} if prefetch is None else {"prefetch": prefetch}
        return build_pretrain_loader(tokenizer, data_dir, split, rows, cfg.model.max_seq_len, streams=streams,
                                     mode=cfg.data.loader_mode, tokenizer_threads=cfg.data.tokenizer_threads, state=state,
                                     **kwargs)  # fmt: skip

    val_streams = split_stream_count(cfg.data.streams, rows, "val", data_dir)

    def val_bpb(ctx) -> dict:
        val = loader("val", val_streams, prefetch=0)
        try:
            return stream_val_bpb(ctx, val, cfg, accum, mesh, tokenizer.token_bytes())
        finally:
            val.close()

    def samples(ctx) -> dict:
        print_samples(nnx.merge(ctx.graphdef, ctx.params), tokenizer, cfg.loop.sample_max_tokens, ctx)
        return {}

    def core_metric(ctx) -> dict:
        from nanochat_jax.core_eval import evaluate_core

        core = evaluate_core(nnx.merge(ctx.graphdef, ctx.params), tokenizer, cfg.loop.core_bundle_dir or None,
                             cfg.loop.core_metric_max_per_task, mesh=mesh)  # fmt: skip
        return {"core/metric": core["core_metric"], **{f"core/{label}": acc for label, acc in core["results"].items()}}

    tokens = num_iterations * cfg.loop.total_batch_size
    print0(f"Horizon: {num_iterations:,} steps x {cfg.loop.total_batch_size:,} tokens = {tokens:,} tokens "
           f"(ratio {tokens / model_config.num_params():.2f}), grad accumulation {accum}")  # fmt: skip
    o = cfg.optim
    return Stage(
        name="base", tag=cfg.loop.model_tag or f"d{cfg.model.depth}", cfg=cfg, model_config=model_config,
        init_model=lambda mesh: GPT(model_config, rngs=nnx.Rngs(cfg.loop.seed)),
        open_batches=lambda state: StreamBatches(loader("train", cfg.data.streams, state), accum),
        schedule=base_schedule(num_iterations, o.warmup_ratio, o.warmdown_ratio, o.final_lr_frac),
        grad_accum=accum, tokens_per_step=cfg.loop.total_batch_size, num_steps=num_iterations,
        evals=[Periodic(cfg.loop.eval_every, val_bpb), Periodic(cfg.loop.core_metric_every, core_metric, at_start=False),
               Periodic(cfg.loop.sample_every, samples, at_start=False)],
        meta={"tokenizer_dir": str(Path(tok_dir).absolute()), "data_dir": cfg.data.data_dir, "device_batch_size": cfg.loop.device_batch_size,
              "max_seq_len": cfg.model.max_seq_len, "total_batch_size": cfg.loop.total_batch_size, "seed": cfg.loop.seed},
    )  # fmt: skip


def greedy_samples(model, tokenizer, max_tokens: int) -> list[str]:
    """nanochat's fixed prompts, each continued greedily for ``max_tokens`` tokens (prompt included, BOS not)."""
    from nanochat_jax.engine import Engine

    engine, bos = Engine(model, tokenizer), tokenizer.get_bos_token_id()
    lines = []
    for prompt in SAMPLE_PROMPTS:
        sequences, _ = engine.generate_batch(tokenizer.encode(prompt, prepend=bos), num_samples=1, max_tokens=max_tokens, temperature=0.0)
        lines.append(tokenizer.decode(sequences[0][1:]))
    return lines


def print_samples(model, tokenizer, max_tokens: int, ctx) -> None:
    lines = greedy_samples(model, tokenizer, max_tokens)
    print0("\n".join(f"  sample: {line!r}" for line in lines))
    ctx.logger.log_text(ctx.step, "samples", "\n\n".join(lines))


def run(cfg) -> dict:
    """Train; returns the final summary (also printed and logged)."""
    return run_config(build_stage, cfg)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(main)
