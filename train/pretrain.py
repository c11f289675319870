"""Base-model pretraining: ``python -m train.pretrain --config=configs/d20.py``.

The same command runs on one CPU, one GPU, all GPUs of a host, several hosts
or a TPU VM: every local device joins one global ``("data",)`` mesh, and
``jax.distributed.initialize`` is called when the launch is multi-process.

Per step (nanochat's base_train loop): eval val bpb every ``eval_every``,
greedy samples every ``sample_every``, checkpoint every ``save_every`` and at
the end, then one optimizer step over ``grad_accum`` micro-batches. The host
never waits on the device inside a step: metrics of step s are read while
step s+1 runs.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from nanochat_jax import hardware, sharding
from nanochat_jax.checkpoint import Checkpointer, abstract_params, stage_dir
from nanochat_jax.common import get_base_dir, print0
from nanochat_jax.config import ConfigError, parse_args
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.loss_eval import evaluate_bpb
from nanochat_jax.metrics_log import MetricsLogger
from nanochat_jax.optim import lr_multiplier_schedule, muon_momentum_schedule, nanochat_optimizer
from nanochat_jax.train_step import TrainState, init_train_state, make_train_step

SAMPLE_PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- resolution of the run


def model_config_from(cfg, vocab_size: int) -> GPTConfig:
    dtype = hardware.default_compute_dtype() if cfg.compute_dtype == "auto" else cfg.compute_dtype
    return GPTConfig.from_depth(
        cfg.depth,
        vocab_size=vocab_size,
        sequence_len=cfg.max_seq_len,
        compute_dtype=dtype,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        scan_layers=cfg.scan_layers,
        ce_chunk_size=cfg.ce_chunk_size,
    )


def resolve_num_iterations(cfg, model_config: GPTConfig) -> int:
    """nanochat's precedence: num_iterations > target_flops > target_param_data_ratio."""
    if cfg.num_iterations > 0:
        return cfg.num_iterations
    if cfg.target_flops > 0:
        return round(cfg.target_flops / (model_config.flops_per_token() * cfg.total_batch_size))
    if cfg.target_param_data_ratio > 0:
        return int(cfg.target_param_data_ratio * model_config.num_params()) // cfg.total_batch_size
    raise ConfigError("no training horizon: set num_iterations, target_flops or target_param_data_ratio")


def grad_accum_steps(cfg, num_devices: int) -> int:
    """total_batch_size / (device_batch_size * seq * devices); it must divide exactly."""
    per_step = cfg.device_batch_size * cfg.max_seq_len * num_devices
    if cfg.total_batch_size % per_step:
        raise ConfigError(
            f"total_batch_size={cfg.total_batch_size} is not a multiple of device_batch_size*max_seq_len*devices "
            f"= {cfg.device_batch_size}*{cfg.max_seq_len}*{num_devices} = {per_step}; "
            f"pick a total_batch_size that is (e.g. {per_step * max(1, round(cfg.total_batch_size / per_step))})"
        )
    return cfg.total_batch_size // per_step


def resolve_paths(cfg) -> dict[str, Path]:
    from nanochat_jax.dataset import resolve_data_dir
    from nanochat_jax.tokenizer import tokenizer_dir

    tag = cfg.model_tag or f"d{cfg.depth}"
    return {
        "data": resolve_data_dir(cfg.data_dir),
        "tokenizer": tokenizer_dir(cfg.tokenizer_dir),
        "checkpoints": stage_dir("base") / tag,
        "run": get_base_dir() / "runs" / "base" / tag,
        "tag": tag,
    }


def ensure_tokenizer(cfg, paths):
    """Load the tokenizer; train one from the run's data first when none exists (and allowed)."""
    from nanochat_jax.tokenizer import Tokenizer

    tok_dir = paths["tokenizer"]
    if (tok_dir / "tokenizer.json").exists() or (tok_dir / "tokenizer.pkl").exists():
        return Tokenizer.from_directory(tok_dir)
    if not cfg.train_tokenizer_if_missing:
        raise FileNotFoundError(
            f"no tokenizer in {tok_dir}; train the one this config needs with "
            f"`python -m train.tokenizer --config=<this config file>` (same overrides), "
            f"or add --config.train_tokenizer_if_missing=True"
        )
    from train.tokenizer import train_from_config

    print0(f"No tokenizer in {tok_dir}: training one (vocab {cfg.tokenizer_vocab_size:,}) on {paths['data']}")
    tokenizer, stats = train_from_config(cfg)
    print0(f"Tokenizer trained in {stats['train_time_s']:.1f}s, {stats['bytes_per_token']:.2f} bytes/token on val")
    return tokenizer


# --------------------------------------------------------------------------- the run


class _StopRequest:
    """First Ctrl-C: finish the current step, save, exit. Second: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print0("\nInterrupt: saving a checkpoint after this step (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _local_rows(cfg) -> int:
    return cfg.device_batch_size * jax.local_device_count()


def run(cfg) -> dict:
    """Train; returns the final summary (also printed and logged)."""
    from nanochat_jax.dataloader import build_pretrain_loader, iter_global_batches, iter_global_microbatches

    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh()
    paths = resolve_paths(cfg)
    tokenizer = ensure_tokenizer(cfg, paths)
    token_bytes = tokenizer.token_bytes()
    model_config = model_config_from(cfg, tokenizer.get_vocab_size())
    num_devices = jax.device_count()
    accum = grad_accum_steps(cfg, num_devices)
    num_iterations = resolve_num_iterations(cfg, model_config)
    flops_per_token = model_config.flops_per_token()
    tokens_per_step = cfg.total_batch_size

    print0(f"Devices: {num_devices} x {jax.devices()[0].device_kind} across {jax.process_count()} process(es)")
    print0(
        f"Model d{cfg.depth}: {model_config.num_params():,} params, {flops_per_token:.6e} FLOPs/token, "
        f"vocab {model_config.vocab_size:,}, seq {model_config.sequence_len}, compute {model_config.compute_dtype}"
    )
    print0(
        f"Horizon: {num_iterations:,} steps x {tokens_per_step:,} tokens = {num_iterations * tokens_per_step:,} tokens "
        f"(ratio {num_iterations * tokens_per_step / model_config.num_params():.2f}), grad accumulation {accum}"
    )

    model = GPT(model_config, rngs=nnx.Rngs(cfg.seed))
    tx = nanochat_optimizer(
        model_config,
        embedding_lr=cfg.embedding_lr,
        unembedding_lr=cfg.unembedding_lr,
        matrix_lr=cfg.matrix_lr,
        weight_decay=cfg.weight_decay,
        mesh=mesh,
        shard_muon=cfg.shard_muon,
    )
    graphdef, state, state_shardings = init_train_state(model, tx, mesh, shard_muon=cfg.shard_muon)
    del model
    train_step = make_train_step(graphdef, tx, state_shardings, mesh, grad_clip=cfg.grad_clip)

    checkpointer = Checkpointer(paths["checkpoints"], keep=cfg.keep_checkpoints)
    loop = {"min_val_bpb": float("inf"), "smooth_train_loss": 0.0, "total_training_time": 0.0, "mfu_sum": 0.0, "mfu_count": 0}
    start_step, loader_state = 0, None
    if cfg.resume or cfg.resume_step >= 0:
        _, meta = checkpointer.restore_meta(cfg.resume_step if cfg.resume_step >= 0 else None)
        abstract_opt = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state.opt_state, state_shardings.opt_state
        )
        restored = checkpointer.restore(
            meta["step"],
            abstract_params=abstract_params(model_config, sharding.replicated(mesh)),
            abstract_opt_state=abstract_opt,
        )
        state = TrainState(restored["params"], restored["opt_state"])
        loader_state = meta["dataloader_state"]
        loop.update(meta["loop_state"])
        start_step = meta["step"]
        print0(f"Resumed from {paths['checkpoints']} step {start_step}")
    loader = build_pretrain_loader(
        tokenizer, paths["data"], "train", _local_rows(cfg), cfg.max_seq_len,
        mode=cfg.loader_mode, tokenizer_threads=cfg.tokenizer_threads, state=loader_state,
    )
    logger = MetricsLogger(paths["run"], tensorboard=cfg.tensorboard)

    def save(step: int, val_bpb: float | None) -> None:
        meta = {
            "step": step,
            "val_bpb": val_bpb,
            "model_config": model_config.model_config_dict(),
            "user_config": cfg.to_dict(),
            "device_batch_size": cfg.device_batch_size,
            "max_seq_len": cfg.max_seq_len,
            "total_batch_size": cfg.total_batch_size,
            "dataloader_state": loader.get_state(),
            "loop_state": loop,
            "tokenizer_dir": str(paths["tokenizer"].absolute()),
            "seed": cfg.seed,
        }
        checkpointer.save(step, params=state.params, opt_state=state.opt_state, meta=meta)
        print0(f"Checkpoint step {step} -> {paths['checkpoints']}")

    batches = iter_global_microbatches(loader, mesh, accum)
    eval_steps = max(1, cfg.eval_tokens // (cfg.device_batch_size * cfg.max_seq_len * num_devices))
    val_bpb = None
    pending = None  # (step, metrics on device, lrm) of the last dispatched step
    last_time = time.time()
    run_start = time.time()

    def read_pending():
        """Read the previous step's metrics (already computed) and log them."""
        nonlocal pending, last_time
        if pending is None:
            return
        step, metrics, lrm = pending
        pending = None
        loss = float(metrics["loss"])
        now = time.time()
        dt, last_time = now - last_time, now
        if not math.isfinite(loss):
            checkpointer.wait()
            raise TrainingDiverged(
                f"loss is {loss} at step {step}; stopping without saving. "
                f"Last good checkpoint: step {checkpointer.latest_step()} in {paths['checkpoints']}"
            )
        loop["smooth_train_loss"] = 0.9 * loop["smooth_train_loss"] + 0.1 * loss
        debiased = loop["smooth_train_loss"] / (1 - 0.9 ** (step + 1))
        if step > start_step + 10:  # like nanochat: skip compile/warm-up steps in timings
            loop["total_training_time"] += dt
        mfu = hardware.mfu(flops_per_token, tokens_per_step, dt, num_devices)
        if mfu is not None and step > start_step + 10:
            loop["mfu_sum"] += mfu
            loop["mfu_count"] += 1
        tok_per_s = tokens_per_step / dt
        remaining = (num_iterations - step - 1) * dt
        if step % cfg.log_every == 0 or step == num_iterations - 1:
            mfu_text = f"{100 * mfu:.2f}%" if mfu is not None else "n/a"
            print0(
                f"step {step:05d}/{num_iterations:05d} ({100 * (step + 1) / num_iterations:5.1f}%) | "
                f"loss {debiased:.6f} | lrm {lrm:.3f} | dt {1000 * dt:.1f}ms | tok/s {tok_per_s:,.0f} | "
                f"mfu {mfu_text} | eta {_format_eta(remaining)}"
            )
        scalars = {"train/loss": debiased, "train/raw_loss": loss, "train/lrm": lrm, "train/dt": dt,
                   "train/tok_per_sec": tok_per_s, "train/grad_norm": float(metrics["grad_norm"])}
        if mfu is not None:
            scalars["train/mfu"] = mfu
        logger.log(step, scalars)

    try:
        with _StopRequest() as stop:
            for step in range(start_step, num_iterations + 1):
                last_step = step == num_iterations
                if cfg.eval_every > 0 and (last_step or step % cfg.eval_every == 0):
                    read_pending()
                    val_loader = build_pretrain_loader(
                        tokenizer, paths["data"], "val", _local_rows(cfg), cfg.max_seq_len,
                        mode=cfg.loader_mode, tokenizer_threads=cfg.tokenizer_threads, prefetch=0,
                    )
                    try:
                        val_bpb = evaluate_bpb(graphdef, state.params, iter_global_batches(val_loader, mesh), eval_steps, token_bytes)
                    finally:
                        val_loader.close()
                    loop["min_val_bpb"] = min(loop["min_val_bpb"], val_bpb)
                    print0(f"step {step:05d} | val bpb {val_bpb:.4f}")
                    logger.log(step, {"val/bpb": val_bpb})
                    last_time = time.time()
                if cfg.sample_every > 0 and (last_step or (step > 0 and step % cfg.sample_every == 0)):
                    read_pending()
                    _print_samples(graphdef, state.params, tokenizer, cfg, logger, step)
                    last_time = time.time()
                save_due = cfg.save_every > 0 and step > start_step and step % cfg.save_every == 0
                if last_step or save_due or stop.requested:
                    read_pending()  # never save after an unchecked (possibly NaN) step
                    if not (last_step and step == start_step and start_step > 0):
                        save(step, val_bpb)
                    if stop.requested and not last_step:
                        checkpointer.wait()
                        print0(f"Stopped at step {step}; resume with --config.resume=True")
                        break
                if last_step:
                    break

                lrm = lr_multiplier_schedule(step, num_iterations, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
                momentum = muon_momentum_schedule(step)
                inputs, targets = next(batches)
                state, metrics = train_step(state, inputs, targets, np.float32(lrm), np.float32(momentum))
                read_pending()
                pending = (step, metrics, lrm)
    finally:
        # Whatever ends the loop (finish, Ctrl-C, divergence, a crash), saves
        # already started are completed so the last good checkpoint survives.
        checkpointer.close()
        loader.close()
        logger.close()
    wall = time.time() - run_start
    steps_done = num_iterations - start_step
    summary = {
        "params": model_config.num_params(),
        "flops_per_token": flops_per_token,
        "iterations": num_iterations,
        "tokens": num_iterations * tokens_per_step,
        "wall_time_s": wall,
        "training_time_s": loop["total_training_time"],
        "tokens_per_s": (steps_done * tokens_per_step / wall) if wall > 0 else float("nan"),
        "min_val_bpb": loop["min_val_bpb"],
        "final_val_bpb": val_bpb,
        "mean_mfu": loop["mfu_sum"] / loop["mfu_count"] if loop["mfu_count"] else None,
        "checkpoint_dir": str(paths["checkpoints"]),
        "run_dir": str(paths["run"]),
    }
    _print_summary(summary)
    return summary


def _print_samples(graphdef, params, tokenizer, cfg, logger, step: int) -> None:
    from nanochat_jax.engine import Engine

    engine = Engine(nnx.merge(graphdef, params), tokenizer)
    bos = tokenizer.get_bos_token_id()
    lines = []
    for prompt in SAMPLE_PROMPTS:
        tokens = tokenizer.encode(prompt, prepend=bos)
        sequences, _ = engine.generate_batch(tokens, num_samples=1, max_tokens=cfg.sample_max_tokens, temperature=0.0)
        lines.append(tokenizer.decode(sequences[0][1:]))
    print0("\n".join(f"  sample: {line!r}" for line in lines))
    logger.log_text(step, "samples", "\n\n".join(lines))


def _print_summary(summary: dict) -> None:
    mfu = summary["mean_mfu"]
    print0(
        "\nSummary\n"
        f"  parameters        {summary['params']:,}\n"
        f"  iterations        {summary['iterations']:,}\n"
        f"  tokens            {summary['tokens']:,}\n"
        f"  wall time         {summary['wall_time_s']:.1f}s (training {summary['training_time_s']:.1f}s)\n"
        f"  throughput        {summary['tokens_per_s']:,.0f} tok/s (whole run, evals included)\n"
        f"  min val bpb       {summary['min_val_bpb']:.4f}\n"
        f"  mean MFU          {'n/a' if mfu is None else f'{100 * mfu:.2f}%'}\n"
        f"  checkpoints       {summary['checkpoint_dir']}\n"
        f"  logs              {summary['run_dir']} (tensorboard --logdir {summary['run_dir']})"
    )


def main(argv=None) -> None:
    cfg = parse_args(argv)
    run(cfg)


if __name__ == "__main__":
    main()
