"""The training loop every stage runs (pretraining, midtraining, SFT, RL), written once.

A ``Stage`` says what differs: where params start, the batches, the loss, the
schedule, the horizon and the periodic evaluations. The loop supplies the
rest: gradient accumulation, eval / save cadence, Ctrl-C save, the NaN stop,
EMA loss / MFU / ETA logging, exact resume and the summary. The host never
waits on the device inside a step: metrics of step s are read while s+1 runs.

Batches are fetched one step ahead (as nanochat prefetches): step s's learning
rate sees the data progress after fetching batch s+1, and a source that runs
out ends the run before the batch that crossed the end is trained, as in
nanochat's mid_train. A checkpoint stores the data state *before* the held
batch, so a resumed run fetches exactly the batch it would have trained next.
An on-policy stage (RL) instead samples each step's batch from the params the
previous step produced, so its batches are fetched just before their step.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import signal
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from nanochat_jax import hardware, sharding
from nanochat_jax.checkpoint import Checkpointer, stage_dir
from nanochat_jax.common import get_base_dir, print0
from nanochat_jax.config import ConfigError
from nanochat_jax.data_streams import iter_global_batches, process_rows
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.loss_eval import evaluate_bpb
from nanochat_jax.metrics_log import MetricsLogger
from nanochat_jax.optim import nanochat_optimizer
from nanochat_jax.schedules import Schedule
from nanochat_jax.train_step import TrainState, init_train_state, make_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class BatchSource(Protocol):
    """This process's share of a stage's data, one micro-batch at a time, resumable."""

    progress: float  # fraction of the data consumed, 0-1, as far as this process sees (the trainer agrees the max)
    exhausted: bool  # the last batch crossed the end of the data (one-epoch stages stop here; agreed likewise)

    def next(self) -> dict[str, np.ndarray]: ...  # {"inputs", "targets"[, "weights"]}: (rows, T) each
    def get_state(self) -> dict: ...  # JSON: enough to regenerate every following batch
    # Optional ``merge_states(list of every process's state) -> the run's state``: a source whose processes
    # hold different positions (pretraining's and mid's data streams) joins them; without it a multi-process
    # checkpoint keeps process 0's state, the run's where it is a global count (SFT's conversations, RL's step).
    def close(self) -> None: ...


class PolicySource(BatchSource, Protocol):
    """An on-policy stage's source: its batches are sampled from the params it was last given."""

    def set_policy(self, graphdef: nnx.GraphDef, params: Any) -> None: ...
    def scalars(self) -> dict[str, float]: ...  # host-side numbers of the last step's batch (e.g. mean reward), logged with it


@dataclasses.dataclass
class EvalContext:
    step: int
    graphdef: nnx.GraphDef
    params: Any
    logger: MetricsLogger


@dataclasses.dataclass
class Periodic:
    """``fn(ctx) -> {name: value}`` every ``every`` steps and at the last step (``every <= 0``: never)."""

    every: int
    fn: Callable[[EvalContext], dict[str, float]]
    at_start: bool = True  # also at step 0 (nanochat samples only from the first interval on)


@dataclasses.dataclass
class Stage:
    name: str  # checkpoint stage: base | mid | sft | rl
    tag: str  # model tag: base_checkpoints/<tag>, runs/base/<tag>
    cfg: ml_collections.ConfigDict  # its optim, loop and log sections drive the loop
    model_config: GPTConfig
    init_model: Callable[[Any], GPT]  # mesh -> the starting model (fresh init or the previous stage)
    open_batches: Callable[[dict | None], BatchSource]  # resume state (None = from the start) -> source
    schedule: Schedule
    grad_accum: int
    tokens_per_step: int
    num_steps: int | None  # None: until the data is exhausted (one epoch)
    evals: Sequence[Periodic] = ()
    loss: str = "lm"
    save_optimizer: bool = True
    on_policy: bool = False  # no prefetch: the source (a PolicySource) samples step s from the params after s-1
    meta: dict = dataclasses.field(default_factory=dict)  # extra fields for every checkpoint's meta


@dataclasses.dataclass
class _Held:
    batch: dict[str, np.ndarray]  # (A, rows, T) stacks
    state_before: dict
    progress: float
    exhausted: bool


class StopRequest:
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


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def gather_states(state: dict) -> list[dict]:
    """Every process's JSON ``state``, in process order (a collective: every process calls it)."""
    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    padded = np.zeros(agree_max(len(data)), np.uint8)  # JSON holds no NUL byte, so zero padding strips cleanly
    padded[: len(data)] = data
    return [json.loads(bytes(row).rstrip(b"\0")) for row in multihost_utils.process_allgather(padded)]


def agree_max(value: int) -> int:
    """The largest value over all processes (nanochat's all-reduce MAX, e.g. of last_step)."""
    return int(agree_maxima(value)[0])


def agree_maxima(*values: float) -> tuple[float, ...]:
    """Each value's largest over all processes, in one collective and exactly (single-process: the values).

    The float64s travel as bytes: JAX runs without x64, and a float32 progress would
    make the LR schedule differ between topologies.
    """
    if jax.process_count() == 1:
        return values
    raw = np.frombuffer(np.asarray(values, np.float64).tobytes(), np.uint8)
    rows = np.ascontiguousarray(multihost_utils.process_allgather(raw))
    return tuple(rows.view(np.float64).max(axis=0).tolist())


# --------------------------------------------------------------------------- resolving a stage's numbers


def execution_overrides(model_cfg) -> dict:
    """The config's execution switches (dtype, attention, remat, scan, chunked CE) as GPTConfig fields."""
    dtype = hardware.default_compute_dtype() if model_cfg.compute_dtype == "auto" else model_cfg.compute_dtype
    return dict(compute_dtype=dtype, attention_impl=model_cfg.attention_impl, remat=model_cfg.remat,
                scan_layers=model_cfg.scan_layers, ce_chunk_size=model_cfg.ce_chunk_size)  # fmt: skip


def model_config_from(model_cfg, vocab_size: int) -> GPTConfig:
    return GPTConfig.from_depth(model_cfg.depth, vocab_size=vocab_size, sequence_len=model_cfg.max_seq_len,
                                **execution_overrides(model_cfg))  # fmt: skip


def accumulation(total: int, per_micro: int, what: str) -> int:
    """Micro-batches per optimizer step: ``total / per_micro``, which must divide exactly."""
    if total % per_micro:
        raise ConfigError(
            f"{what}: {total} is not a multiple of {per_micro}; "
            f"pick one that is (e.g. {per_micro * max(1, round(total / per_micro))})"
        )
    return total // per_micro


def step_rows(cfg) -> int:
    """A token-stream stage's rows per step (``total_batch_size / max_seq_len``), the same on every topology.

    A ``data.streams`` that divides neither them nor the processes fails here, before any data is read.
    """
    rows = cfg.loop.total_batch_size // cfg.model.max_seq_len
    process_rows(rows, cfg.data.streams, jax.process_index(), jax.process_count())
    return rows


def stream_val_bpb(ctx, loader, cfg, accum: int, mesh, token_bytes) -> dict:
    """``val/bpb`` over the first ``eval_tokens`` (whole steps, at least one) of a step loader: one val set on every topology."""
    steps = max(1, cfg.loop.eval_tokens // cfg.loop.total_batch_size) * accum
    return {"val/bpb": evaluate_bpb(ctx.graphdef, ctx.params, iter_global_batches(loader, mesh, accum), steps, token_bytes)}


def epoch_steps(num_iterations: int, items: int, per_step: int, num_epochs: int, what: str) -> int:
    """A chat stage's horizon: ``num_iterations`` when > 0, else ``num_epochs`` passes of ``items // per_step`` steps."""
    steps = num_iterations if num_iterations > 0 else (items // per_step) * num_epochs
    if steps <= 0:
        raise ConfigError(f"{items} {what} make no step of {per_step} examples")
    return steps


def grad_accum_steps(cfg, num_devices: int) -> int:
    """total_batch_size / (device_batch_size * seq * devices), as nanochat's token-batch stages compute it."""
    rows, seq = cfg.loop.device_batch_size, cfg.model.max_seq_len
    what = f"total_batch_size={cfg.loop.total_batch_size} vs device_batch_size*max_seq_len*devices = {rows}*{seq}*{num_devices}"
    return accumulation(cfg.loop.total_batch_size, rows * seq * num_devices, what)


def pad_batch(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Right-pad every ``(rows, T)`` leaf to ``width`` columns (targets with -1, the rest with 0), so the
    micro-batches of one step, and of all hosts, share a shape."""
    return {k: np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=-1 if k == "targets" else 0)
            for k, v in batch.items()}  # fmt: skip


def global_batches(source: BatchSource, mesh):
    """``(inputs, targets)`` global arrays from a batch source, for evaluations (widths agreed across hosts)."""
    while True:
        batch = source.next()
        width = agree_max(batch["targets"].shape[1])
        batch = pad_batch(batch, width)
        yield sharding.make_global_batch(batch["inputs"], mesh), sharding.make_global_batch(batch["targets"], mesh)


class Trainer:
    def __init__(self, stage: Stage, mesh):
        self.stage, self.mesh, cfg = stage, mesh, stage.cfg
        mc = stage.model_config
        print0(f"Devices: {jax.device_count()} x {jax.devices()[0].device_kind} across {jax.process_count()} process(es)")
        print0(f"Model: {mc.num_params():,} params ({mc.n_layer} layers, {mc.n_embd} wide), {mc.flops_per_token():.6e} FLOPs/token, "
               f"vocab {mc.vocab_size:,}, seq {mc.sequence_len}, compute {mc.compute_dtype}")  # fmt: skip
        self.ckpt_dir = stage_dir(stage.name) / stage.tag
        self.run_dir = get_base_dir() / "runs" / stage.name / stage.tag
        o = cfg.optim
        self.tx = nanochat_optimizer(
            stage.model_config, embedding_lr=o.embedding_lr, unembedding_lr=o.unembedding_lr, matrix_lr=o.matrix_lr,
            weight_decay=o.weight_decay, mesh=mesh, shard_muon=o.shard_muon, param_sharding=o.param_sharding,
        )  # fmt: skip
        self.graphdef, self.state, self.shardings = init_train_state(
            stage.init_model(mesh), self.tx, mesh, shard_muon=o.shard_muon, param_sharding=o.param_sharding
        )
        self.step_fn = make_train_step(self.graphdef, self.tx, self.shardings, mesh, grad_clip=o.grad_clip, loss=stage.loss)
        self.checkpointer = Checkpointer(self.ckpt_dir, keep=cfg.loop.keep_checkpoints)
        self.loop = {"smooth_train_loss": 0.0, "total_training_time": 0.0, "mfu_sum": 0.0, "mfu_count": 0, "min": {}, "last": {}}
        self.start_step, data_state = self._restore()
        self.source = stage.open_batches(data_state)
        self.held: _Held | None = None  # the prefetched next batch (always None for an on-policy stage)
        if not stage.on_policy:
            self.held = self._fetch()
        self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.log.tensorboard)
        self.pending = None  # (step, metrics on device, lrm, source scalars) of the last dispatched step
        self.last_time = time.time()

    # -- state ------------------------------------------------------------------
    def _restore(self) -> tuple[int, dict | None]:
        loop = self.stage.cfg.loop
        if not (loop.resume or loop.resume_step >= 0):
            return 0, None
        step, meta = self.checkpointer.restore_meta(loop.resume_step if loop.resume_step >= 0 else None)
        if not meta.get("has_opt_state"):
            raise ValueError(f"checkpoint step {step} in {self.ckpt_dir} holds no optimizer state, so it cannot be resumed")
        # Checkpoints hold whole arrays: they restore onto this run's layout, whichever layout saved them.
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.state, self.shardings)
        restored = self.checkpointer.restore(step, abstract_params=abstract.params, abstract_opt_state=abstract.opt_state)
        self.state, step, meta = TrainState(restored["params"], restored["opt_state"]), restored["step"], restored["meta"]
        self.loop.update(meta["loop_state"])
        print0(f"Resumed from {self.ckpt_dir} step {step}")
        return step, meta["data_state"]

    def _save(self, step: int) -> None:
        meta = {
            **self.stage.meta,
            "step": step,
            "stage": self.stage.name,
            "model_config": self.stage.model_config.model_config_dict(),
            "user_config": self.stage.cfg.to_dict(),
            "evals": self.loop["last"],
            "data_state": self._data_state(),
            "loop_state": self.loop,
            "has_opt_state": self.stage.save_optimizer,
        }
        opt_state = self.state.opt_state if self.stage.save_optimizer else None
        self.checkpointer.save(step, params=self.state.params, opt_state=opt_state, meta=meta)
        print0(f"Checkpoint step {step} -> {self.ckpt_dir}")

    def _data_state(self) -> dict:
        """The state to resume the data from: with several processes, every process's merged (a collective)."""
        state = self.held.state_before if self.held else self.source.get_state()
        if jax.process_count() > 1 and hasattr(self.source, "merge_states"):
            state = self.source.merge_states(gather_states(state))
        return state

    def _fetch(self) -> _Held:
        state_before = self.source.get_state()
        micro = [self.source.next() for _ in range(self.stage.grad_accum)]
        # One collective agrees the step's width and the data progress (each process sees only its streams).
        width, progress = agree_maxima(max(m["targets"].shape[1] for m in micro), float(self.source.progress))
        micro = [pad_batch(m, int(width)) for m in micro]
        batch = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
        progress = max(progress, self.held.progress if self.held else 0.0)
        return _Held(batch, state_before, progress, bool(self.source.exhausted))  # progress never goes back (nanochat)

    # -- one step ---------------------------------------------------------------
    def _train_one(self, step: int) -> None:
        if self.stage.on_policy:
            self.source.set_policy(self.graphdef, self.state.params)
            held = self._fetch()
            extra = self.source.scalars()
        else:
            held, self.held, extra = self.held, self._fetch(), {}
        lrm, momentum = self.stage.schedule(step, (self.held or held).progress)
        batch = {k: sharding.make_global_microbatches(v, self.mesh) for k, v in held.batch.items()}
        self.state, metrics = self.step_fn(self.state, batch, np.float32(lrm), np.float32(momentum))
        self._read_pending()
        self.pending = (step, metrics, lrm, extra)

    def _read_pending(self) -> None:
        """Read the previous step's metrics (already computed), check them and log them."""
        if self.pending is None:
            return
        step, metrics, lrm, extra = self.pending
        self.pending = None
        loss = float(metrics["loss"])
        now = time.time()
        dt, self.last_time = now - self.last_time, now
        if not math.isfinite(loss):
            self.checkpointer.wait()
            raise TrainingDiverged(
                f"loss is {loss} at step {step}; stopping without saving. "
                f"Last good checkpoint: step {self.checkpointer.latest_step()} in {self.ckpt_dir}"
            )
        loop = self.loop
        loop["smooth_train_loss"] = 0.9 * loop["smooth_train_loss"] + 0.1 * loss
        debiased = loop["smooth_train_loss"] / (1 - 0.9 ** (step + 1))
        tokens = self.stage.tokens_per_step
        mfu = hardware.mfu(self.stage.model_config.flops_per_token(), tokens, dt, jax.device_count())
        if step > self.start_step + 10:  # like nanochat: skip compile/warm-up steps in timings
            loop["total_training_time"] += dt
            if mfu is not None:
                loop["mfu_sum"] += mfu
                loop["mfu_count"] += 1
        scalars = {"train/loss": debiased, "train/raw_loss": loss, "train/lrm": lrm, "train/dt": dt,
                   "train/tok_per_sec": tokens / dt, "train/grad_norm": float(metrics["grad_norm"])}  # fmt: skip
        if mfu is not None:
            scalars["train/mfu"] = mfu
        scalars.update(extra)
        self.logger.log(step, scalars)
        if step % self.stage.cfg.log.log_every == 0 or step + 1 == self.stage.num_steps:
            self._print_step(step, scalars, dt)

    def _print_step(self, step: int, scalars: dict, dt: float) -> None:
        n = self.stage.num_steps
        done = (step + 1) / n if n else (self.held or self.source).progress
        remaining = (n - step - 1) * dt if n else (step + 1 - self.start_step) * dt * (1 - done) / max(done, 1e-9)
        mfu = f"{100 * scalars['train/mfu']:.2f}%" if "train/mfu" in scalars else "n/a"
        extra = "".join(f" | {k} {v:.4f}" for k, v in scalars.items() if not k.startswith("train/"))  # e.g. RL's mean reward
        print0(
            f"step {step:05d}/{f'{n:05d}' if n else 'epoch'} ({100 * done:5.1f}%) | loss {scalars['train/loss']:.6f} | "
            f"lrm {scalars['train/lrm']:.3f} | dt {1000 * dt:.1f}ms | tok/s {scalars['train/tok_per_sec']:,.0f} | "
            f"mfu {mfu} | eta {format_eta(remaining)}{extra}"
        )

    # -- cadence ----------------------------------------------------------------
    def _evaluate(self, step: int, last: bool) -> None:
        for periodic in self.stage.evals:
            due = periodic.every > 0 and (last or (step % periodic.every == 0 and (periodic.at_start or step > 0)))
            if not due:
                continue
            self._read_pending()
            scalars = periodic.fn(EvalContext(step, self.graphdef, self.state.params, self.logger))
            for name, value in scalars.items():
                self.loop["last"][name] = value
                self.loop["min"][name] = min(value, self.loop["min"].get(name, math.inf))
                print0(f"step {step:05d} | {name} {value:.4f}")
            if scalars:
                self.logger.log(step, scalars)
            self.last_time = time.time()  # evaluation time is not training time

    def _save_or_stop(self, step: int, last: bool, stop: StopRequest) -> bool:
        """Save when due; True when a Ctrl-C asks the loop to end here."""
        every = self.stage.cfg.loop.save_every
        due = every > 0 and step > self.start_step and step % every == 0
        if not (last or due or stop.requested):
            return False
        self._read_pending()  # never save after an unchecked (possibly NaN) step
        if not (last and step == self.start_step and self.start_step > 0):
            self._save(step)
        if stop.requested and not last:
            self.checkpointer.wait()
            print0(f"Stopped at step {step}; resume with --config.loop.resume=True")
            return True
        return False

    def _is_last(self, step: int) -> bool:
        if self.stage.num_steps is not None:
            return step >= self.stage.num_steps
        return bool(agree_max(int((self.held or self.source).exhausted)))

    def run(self) -> dict:
        """Train to the horizon (or a Ctrl-C); returns the summary (also printed)."""
        run_start = time.time()
        step = self.start_step
        try:
            with StopRequest() as stop:
                for step in itertools.count(self.start_step):
                    last = self._is_last(step)
                    self._evaluate(step, last)
                    if self._save_or_stop(step, last, stop) or last:
                        break
                    self._train_one(step)
        finally:
            # Whatever ends the loop (finish, Ctrl-C, divergence, a crash), saves
            # already started complete, so the last good checkpoint survives.
            self.checkpointer.close()
            self.source.close()
            self.logger.close()
        return self._summary(step, time.time() - run_start)

    def _summary(self, last_step: int, wall: float) -> dict:
        tokens = self.stage.tokens_per_step
        loop = self.loop
        summary = {
            "stage": self.stage.name,
            "params": self.stage.model_config.num_params(),
            "iterations": last_step,
            "tokens": last_step * tokens,
            "wall_time_s": wall,
            "training_time_s": loop["total_training_time"],
            "tokens_per_s": (last_step - self.start_step) * tokens / wall if wall > 0 else float("nan"),
            "mean_mfu": loop["mfu_sum"] / loop["mfu_count"] if loop["mfu_count"] else None,
            "compiled_programs": getattr(self.step_fn, "_cache_size", lambda: None)(),  # one per batch shape
            "checkpoint_dir": str(self.ckpt_dir),
            "run_dir": str(self.run_dir),
        }
        for name in loop["last"]:
            key = name.replace("/", "_")
            summary[f"min_{key}"], summary[f"final_{key}"] = loop["min"][name], loop["last"][name]
        print_summary(summary)
        return summary


def print_summary(summary: dict) -> None:
    mfu = summary["mean_mfu"]
    lines = [
        f"  parameters        {summary['params']:,}",
        f"  iterations        {summary['iterations']:,}",
        f"  tokens            {summary['tokens']:,}",
        f"  wall time         {summary['wall_time_s']:.1f}s (training {summary['training_time_s']:.1f}s)",
        f"  throughput        {summary['tokens_per_s']:,.0f} tok/s (whole run, evals included)",
        f"  mean MFU          {'n/a' if mfu is None else f'{100 * mfu:.2f}%'}",
        f"  step programs     {summary['compiled_programs']} compiled",
    ]
    lines += [f"  {k:<17} {v:.4f}" for k, v in summary.items() if k.startswith(("min_", "final_"))]
    lines += [f"  checkpoints       {summary['checkpoint_dir']}",
              f"  logs              {summary['run_dir']} (tensorboard --logdir {summary['run_dir']})"]  # fmt: skip
    print0(f"\nSummary ({summary['stage']})\n" + "\n".join(lines))


def run_stage(stage: Stage, mesh) -> dict:
    return Trainer(stage, mesh).run()


def run_config(build_stage: Callable[[Any, Any], Stage], cfg) -> dict:
    """A stage's whole run from its config: join the processes, build the mesh and the stage, train."""
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh()
    return run_stage(build_stage(cfg, mesh), mesh)
