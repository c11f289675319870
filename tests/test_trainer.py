"""The stage runner with two different stages: an LM loss over a packed token stream that
runs one epoch, and a weighted policy-gradient loss over padded rows with a fixed horizon.

Each is run whole, interrupted and resumed (bit-identical), stopped by a NaN (last good
checkpoint kept) and logged (metrics.jsonl). Runs use the 8 host CPU devices.
"""

import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.base import log_section, loop_section, optim_section
from nanochat_jax import checkpoint, sharding, trainer
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.schedules import decay_schedule, mid_schedule
from model_helpers import random_gpt

MC = GPTConfig(sequence_len=16, vocab_size=128, n_layer=1, n_head=1, n_kv_head=1, n_embd=64)
ROWS, T = 8, 16


class PackedStream:
    """Windows of ROWS*T+1 tokens stepping by ROWS*T; exhausted when a window would run past the end."""

    def __init__(self, tokens, state):
        self.tokens, self.cursor, self.exhausted = tokens, (state or {"cursor": 0})["cursor"], False

    @property
    def progress(self):
        return self.cursor / len(self.tokens)

    def next(self):
        n = ROWS * T + 1
        if self.cursor + n > len(self.tokens):
            self.cursor, self.exhausted = 0, True
        window = self.tokens[self.cursor : self.cursor + n]
        self.cursor += ROWS * T
        return {"inputs": window[:-1].reshape(ROWS, T), "targets": window[1:].reshape(ROWS, T)}

    def get_state(self):
        return {"cursor": self.cursor}

    def close(self):
        pass


class PaddedRows:
    """One sequence per row, padded with targets -1; per-token weights (advantages) from the row's own seed."""

    progress, exhausted = 0.0, False

    def __init__(self, state, poison_row=None):
        self.index, self.poison_row = (state or {"index": 0})["index"], poison_row

    def next(self):
        inputs, targets = np.zeros((ROWS, T), np.int32), np.full((ROWS, T), -1, np.int32)
        weights = np.zeros((ROWS, T), np.float32)
        for r in range(ROWS):
            rng = np.random.default_rng(self.index)
            n = int(rng.integers(4, T + 1))
            seq = rng.integers(0, MC.vocab_size, n + 1)
            inputs[r, :n], targets[r, :n] = seq[:-1], seq[1:]
            targets[r, : n // 3] = -1  # the "prompt" part carries no loss
            weights[r, :n] = rng.normal(size=n)
            if self.index == self.poison_row:
                weights[r, :n] = np.nan
            self.index += 1
        return {"inputs": inputs, "targets": targets, "weights": weights}

    def get_state(self):
        return {"index": self.index}

    def close(self):
        pass


def random_model(mesh):
    return random_gpt(MC, 0)


def param_norm(ctx):
    return {"val/param_norm": float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(ctx.params)))}


def make_stage(kind, tag, *, save_every=-1, resume=False, poison_row=None, param_sharding="replicated"):
    loop = loop_section()
    loop.save_every, loop.resume = save_every, resume
    cfg = ml_collections.ConfigDict(dict(optim=optim_section(), loop=loop, log=log_section()))
    cfg.optim.param_sharding = param_sharding
    cfg.log.tensorboard = False
    common = dict(cfg=cfg, model_config=MC, init_model=random_model, tokens_per_step=2 * ROWS * T,
                  evals=[trainer.Periodic(3, param_norm)])  # fmt: skip
    if kind == "lm":
        tokens = np.random.default_rng(7).integers(0, MC.vocab_size, 10 * ROWS * T + 1).astype(np.int32)
        return trainer.Stage(name="mid", tag=tag, open_batches=lambda s: PackedStream(tokens, s), schedule=mid_schedule,
                             grad_accum=2, num_steps=None, **common)  # fmt: skip
    return trainer.Stage(name="rl", tag=tag, open_batches=lambda s: PaddedRows(s, poison_row), loss="pg",
                         schedule=decay_schedule(6, 0.05), grad_accum=2, num_steps=6, **common)  # fmt: skip


def logged(base_dir, stage, tag, key):
    recs = [json.loads(line) for line in (base_dir / "runs" / stage / tag / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs if key in r}


def final_params(base_dir, stage, tag):
    model, meta = checkpoint.load_model_checkpoint(base_dir / checkpoint.STAGE_DIRS[stage] / tag)
    return jax.tree.leaves(nnx.state(model, nnx.Param)), meta


def keep_only_step(base_dir, stage, tag, step):
    """Delete every checkpoint but ``step`` and the run's log, as if the run had stopped there."""
    import shutil

    ckpt = checkpoint.Checkpointer(base_dir / checkpoint.STAGE_DIRS[stage] / tag)
    assert step in ckpt.all_steps()
    for s in ckpt.all_steps():
        if s != step:
            shutil.rmtree(base_dir / checkpoint.STAGE_DIRS[stage] / tag / str(s))
    (base_dir / "runs" / stage / tag / "metrics.jsonl").unlink()


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("kind,stage", [("lm", "mid"), ("pg", "rl")])
def test_two_stages_run_resume_and_log_through_one_runner(base_dir, kind, stage):
    mesh = sharding.make_mesh()
    full = trainer.run_stage(make_stage(kind, "full"), mesh)
    # One epoch of 10 windows at 2 per step: 5 steps, the 6th fetch crosses the end and is not trained.
    assert full["iterations"] == (5 if kind == "lm" else 6)
    losses = logged(base_dir, stage, "full", "train/raw_loss")
    assert sorted(losses) == list(range(full["iterations"])) and all(np.isfinite(list(losses.values())))
    assert sorted(logged(base_dir, stage, "full", "val/param_norm")) == [0, 3, full["iterations"]]
    lrm = logged(base_dir, stage, "full", "train/lrm")
    if kind == "lm":  # step s's LR sees the progress after fetching batch s+1: 2*(s+2) windows, never going back
        for s, value in lrm.items():
            p = min(2 * (s + 2), 10) * ROWS * T / (10 * ROWS * T + 1)
            assert value == pytest.approx(1.0 if p < 0.8 else 1 - (p - 0.8) / 0.2, abs=1e-6)
    else:
        assert [lrm[s] for s in range(6)] == pytest.approx([0.05 * (1 - s / 6) for s in range(6)])

    trainer.run_stage(make_stage(kind, "half", save_every=2), mesh)
    keep_only_step(base_dir, stage, "half", 2)
    resumed = trainer.run_stage(make_stage(kind, "half", save_every=2, resume=True), mesh)
    assert resumed["iterations"] == full["iterations"]
    resumed_losses = logged(base_dir, stage, "half", "train/raw_loss")
    assert sorted(resumed_losses) == list(range(2, full["iterations"]))
    assert all(resumed_losses[s] == losses[s] for s in resumed_losses)
    (a, meta), (b, _) = final_params(base_dir, stage, "full"), final_params(base_dir, stage, "half")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert meta["stage"] == stage and meta["evals"]["val/param_norm"] == full["final_val_param_norm"]


def test_fsdp_run_resumes_replicated_and_continues_the_same_run(base_dir):
    """optim.param_sharding=fsdp through the runner; its checkpoint (whole arrays) resumes in the replicated layout.

    The resumed steps run replicated, so they match the all-fsdp run up to the
    gradient reduction order (tests/test_fsdp.py), not bit for bit.
    """
    mesh = sharding.make_mesh()
    full = trainer.run_stage(make_stage("lm", "run", save_every=2, param_sharding="fsdp"), mesh)
    losses, (final, _) = logged(base_dir, "mid", "run", "train/raw_loss"), final_params(base_dir, "mid", "run")
    keep_only_step(base_dir, "mid", "run", 2)
    resumed = trainer.run_stage(make_stage("lm", "run", save_every=2, resume=True), mesh)
    assert resumed["iterations"] == full["iterations"] == 5
    resumed_losses = logged(base_dir, "mid", "run", "train/raw_loss")
    assert sorted(resumed_losses) == [2, 3, 4]
    np.testing.assert_allclose([resumed_losses[s] for s in (2, 3, 4)], [losses[s] for s in (2, 3, 4)], rtol=1e-5)
    for x, y in zip(final, final_params(base_dir, "mid", "run")[0]):
        assert np.linalg.norm(x - y) <= 1e-4 * np.linalg.norm(y)


@pytest.mark.parametrize("kind,stage", [("lm", "mid"), ("pg", "rl")])
def test_nan_stops_both_stages_and_keeps_the_last_good_checkpoint(base_dir, monkeypatch, kind, stage):
    if kind == "lm":  # a NaN from the step itself
        real = trainer.make_train_step

        def poisoned(*args, **kwargs):
            fn, calls = real(*args, **kwargs), {"n": 0}

            def wrapped(state, *rest):
                state, metrics = fn(state, *rest)
                calls["n"] += 1
                return state, ({**metrics, "loss": metrics["loss"] * np.nan} if calls["n"] == 4 else metrics)

            return wrapped

        monkeypatch.setattr(trainer, "make_train_step", poisoned)
        stage_def = make_stage(kind, "nan", save_every=2)
    else:  # a NaN in the data: the advantages of the rows of step 3
        stage_def = make_stage(kind, "nan", save_every=2, poison_row=3 * 2 * ROWS)
    with pytest.raises(trainer.TrainingDiverged, match="loss is nan at step 3.*Last good checkpoint: step 2"):
        trainer.run_stage(stage_def, sharding.make_mesh())
    assert checkpoint.Checkpointer(base_dir / checkpoint.STAGE_DIRS[stage] / "nan").all_steps() == [2]
    params, _ = final_params(base_dir, stage, "nan")
    assert all(np.isfinite(x).all() for x in params)


def test_processes_agree_on_exact_float64_maxima(monkeypatch):
    """The step's width and data progress in one all-gather, without the float32 rounding JAX's default would add."""
    other = np.asarray([100.0, 0.25], np.float64)  # another process's width and progress (its first n for n values)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(trainer.multihost_utils, "process_allgather",
                        lambda x: np.stack([x, np.frombuffer(other[: len(x) // 8].tobytes(), np.uint8)]))  # fmt: skip
    assert trainer.agree_maxima(64, 1 / 3) == (100.0, 1 / 3)  # 1/3 is not a float32
    assert trainer.agree_max(200) == 200 and trainer.agree_max(7) == 100
