"""Checkpoints: Orbax, asynchronous and atomic, one directory per stage and model tag.

Layout (nanochat's, under ``$NANOCHAT_JAX_BASE_DIR``)::

    base_checkpoints/<model_tag>/<step>/{params, opt_state, meta}   # Orbax items
    mid_checkpoints/…  chatsft_checkpoints/…  chatrl_checkpoints/…

``<model_tag>`` defaults to ``d<depth>``. ``params`` and ``opt_state`` are
Orbax pytrees (sharded arrays restore onto the current mesh); ``meta`` is JSON:
model config, full user config, step, val bpb, loop state, the data
iterator's state and the seed, so a resumed run continues exactly. The seed
is all the RNG state pretraining has: after the initialisation it draws no
random numbers (no dropout; in-training samples are greedy).

Atomicity comes from Orbax: a step is written into a temporary directory and
renamed into place only once every item is committed, so an interrupted save
never leaves a directory that looks like a valid checkpoint; listing and
restoring only ever see finished steps.

Integrity (``nanochat_jax.integrity``): every array's fingerprint is recorded
in ``meta["checksums"]`` at save and checked after restore, together with
NaN/inf; an unreadable array (truncated or deleted file) is named from
Orbax's error. A failed check names the directory, the step and the arrays.
A step chosen by default (the newest) falls back to the newest intact older
step and says so; an explicitly requested step, and model-only loading for
chat/eval, fail instead, listing the intact steps.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import LatestN

from nanochat_jax import integrity
from nanochat_jax.common import STAGE_DIRS, STAGE_MODULES, get_base_dir, json_safe, print0
from nanochat_jax.errors import CheckpointCorruptError, CheckpointError
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.sharding import make_mesh, replicated

CHECKSUMS = "checksums"  # meta key: {item: {array name: fingerprint}}
# Orbax names the array it failed to read as the OCDBT key path inside its error text.
_ORBAX_ARRAY = re.compile(r"'path': '([^'/][^']*)/'")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No usable checkpoint where one was asked for."""


def _train_first(stage: str) -> str:
    return f"train one first: python -m {STAGE_MODULES[stage]} --config=configs/<config>.py (tiny: configs/tiny*.py)"


def stage_dir(stage: str) -> Path:
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_DIRS)}")
    return get_base_dir() / STAGE_DIRS[stage]


def find_model_tag(stage: str) -> str:
    """The largest ``d<N>`` tag of a stage, else the most recently modified one (nanochat's rule)."""
    root = stage_dir(stage)
    tags = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    if not tags:
        raise CheckpointNotFoundError(f"no {stage} checkpoints under {root}; {_train_first(stage)}")
    depth_tags = [(int(m.group(1)), p.name) for p in tags if (m := re.fullmatch(r"d(\d+)", p.name))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda p: p.stat().st_mtime).name


def abstract_params(config: GPTConfig, sharding: jax.sharding.Sharding | None = None) -> dict:
    """Shape/dtype (and sharding) skeleton of the params, without allocating them."""
    shapes = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    tree = nnx.to_pure_dict(nnx.state(shapes, nnx.Param))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


class Checkpointer:
    """One run directory's Orbax manager: save every N steps, keep the last K."""

    def __init__(self, directory: str | Path, *, keep: int | None = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=LatestN(keep) if keep else None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))
        self._chosen: int | None = None  # the step restore_meta() picked by itself (restore() may fall back from it)

    # -- queries --------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    # -- save -----------------------------------------------------------------
    def save(self, step: int, *, params, meta: dict, opt_state=None) -> None:
        """Start an asynchronous save; returns once the arrays are copied off-device.

        The arrays' fingerprints go into the meta item, committed with them.
        """
        trees = {"params": params} if opt_state is None else {"params": params, "opt_state": opt_state}
        meta = {**meta, CHECKSUMS: {item: integrity.fingerprints(tree)[0] for item, tree in trees.items()}}
        items = {item: ocp.args.StandardSave(tree) for item, tree in trees.items()}
        items["meta"] = ocp.args.JsonSave(json_safe(meta))
        self._mngr.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        """Block until every pending save is committed to disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    # -- restore --------------------------------------------------------------
    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"no finished checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointNotFoundError(f"step {step} not in {self.directory}; available steps: {steps}")
        return step

    def _candidates(self, step: int | None, fallback: bool) -> list[int]:
        """The step to read, then (with fallback) the older ones, newest first."""
        step = self._resolve_step(step)
        return [s for s in reversed(self.all_steps()) if s <= step] if fallback else [step]

    def _first_intact(self, candidates: list[int], read) -> tuple[int, Any]:
        """``(step, read(step))`` for the first candidate that passes its checks, saying so when it is not the first."""
        for step in candidates:
            try:
                out = read(step)
            except CheckpointCorruptError as e:
                if step == candidates[-1]:
                    raise
                print0(f"warning: {e}; falling back to an older step")
                continue
            if step != candidates[0]:
                print0(f"Falling back to step {step} of {self.directory} (the newest intact step)")
            return step, out
        raise AssertionError("unreachable: no candidates")

    def restore_meta(self, step: int | None = None, *, fallback: bool = True) -> tuple[int, dict]:
        """``(step, meta)``; with ``step=None`` the newest step whose meta is readable (unless ``fallback=False``)."""
        step, meta = self._first_intact(self._candidates(step, fallback and step is None), lambda s: self._restore(s)["meta"])
        self._chosen = step if fallback else None
        return step, meta

    def restore(self, step: int | None, *, abstract_params, abstract_opt_state=None, fallback: bool | None = None) -> dict:
        """Restore params (+ optimizer state) onto the shardings in the abstract trees, checked.

        ``fallback`` (default: when ``step`` is None or the step ``restore_meta`` chose
        by itself) moves on to older steps when a step fails its checks; the
        returned ``step`` and ``meta`` are those of the step actually restored.
        """
        if fallback is None:
            fallback = step is None or step == self._chosen
        items = {"params": abstract_params} if abstract_opt_state is None else {"params": abstract_params, "opt_state": abstract_opt_state}
        step, out = self._first_intact(self._candidates(step, fallback), lambda s: self._restore(s, **items))
        return {"step": step, **out}

    def intact_steps(self, abstract_for: Callable[[dict], Any]) -> list[int]:
        """Every step whose meta and params (skeleton ``abstract_for(meta)``) pass their checks; reads each one."""
        intact = []
        for s in self.all_steps():
            try:
                self._restore(s, params=abstract_for(self._restore(s)["meta"]))
                intact.append(s)
            except CheckpointCorruptError:
                pass
        return intact

    def _corrupt(self, step: int, problem: str, arrays: list[str]) -> CheckpointCorruptError:
        names = ", ".join(arrays) if arrays else "an array Orbax did not name"
        return CheckpointCorruptError(f"checkpoint {self.directory} step {step} is corrupt: {problem}: {names}")

    def _restore(self, step: int, **abstract) -> dict:
        """Read the meta (+ the given items) of one step and check every array against its recorded fingerprint."""
        try:
            meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types
            raise self._corrupt(step, f"unreadable ({type(e).__name__}: {e})", ["meta"]) from e
        if not isinstance(meta, dict):
            raise self._corrupt(step, "not a JSON object", ["meta"])
        if not abstract:
            return {"meta": meta}
        try:
            with _quiet_orbax():
                out = self._mngr.restore(step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract.items()}))
        except Exception as e:  # name what Orbax could not read
            cause = str(e.__cause__ or type(e).__name__).splitlines()[0][:300]
            raise self._corrupt(step, f"unreadable ({cause})", sorted(set(_ORBAX_ARRAY.findall(f"{e} {e.__cause__}")))) from e
        recorded = meta.get(CHECKSUMS)
        for item in abstract:
            prints, non_finite = integrity.fingerprints(out[item])
            if recorded is not None:
                bad = integrity.mismatches(recorded.get(item, {}), prints)
                if bad:
                    raise self._corrupt(step, f"{item} checksum mismatch", bad)
            if non_finite:
                raise self._corrupt(step, f"{item} hold NaN/inf", non_finite)
        if recorded is None:
            print0(f"note: {self.directory} step {step} records no checksums (saved before they existed); checked for NaN/inf only")
        return {"meta": meta, **{k: out[k] for k in abstract}}


@contextmanager
def _quiet_orbax():
    """Once one read fails, Orbax abandons the others; asyncio would print each one's traceback when collected."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    log = logging.getLogger("asyncio")
    level, log.level = log.level, logging.CRITICAL
    try:
        yield
    finally:
        gc.collect()  # finalise the abandoned reads while their reports are muted
        sys.unraisablehook, log.level = hook, level


# --------------------------------------------------------------------------- model-only helpers


def save_model_checkpoint(model: GPT, meta: dict, directory: str | Path, step: int) -> None:
    """Write a params-only checkpoint (e.g. a converted nanochat model) synchronously."""
    meta = {**meta, "step": step, "model_config": model.config.model_config_dict()}
    ckpt = Checkpointer(directory, keep=None, async_save=False)
    ckpt.save(step, params=nnx.to_pure_dict(nnx.state(model, nnx.Param)), meta=meta)
    ckpt.close()


def load_params(directory: str | Path, step: int | None, mesh) -> tuple[dict, dict]:
    """``(params, meta)`` of a checkpoint, replicated over ``mesh``.

    Every process restores onto the global mesh it passes (Orbax reads each
    process's shards), so a stage can start from the previous stage's params
    on any number of hosts.
    """
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    ckpt = Checkpointer(directory, keep=None, async_save=False)
    try:
        def abstract(meta: dict) -> dict:
            return abstract_params(GPTConfig(**meta["model_config"]), replicated(mesh))

        try:
            step, meta = ckpt.restore_meta(step, fallback=False)
            restored = ckpt.restore(step, abstract_params=abstract(meta), fallback=False)
        except CheckpointCorruptError as e:
            raise CheckpointCorruptError(f"{e}. Intact steps: {ckpt.intact_steps(abstract)} (pick one with -s/--step)") from e
    finally:
        ckpt.close()
    return restored["params"], meta


def load_model_checkpoint(directory: str | Path, step: int | None = None, **config_overrides) -> tuple[GPT, dict]:
    """Rebuild the model stored in a checkpoint directory (latest step by default) on this process's first device.

    ``config_overrides`` are execution switches such as ``compute_dtype``.
    """
    return _model_on(directory, step, make_mesh(jax.local_devices()[:1]), config_overrides)


def _model_on(directory, step: int | None, mesh, config_overrides: dict) -> tuple[GPT, dict]:
    """The checkpoint's model with its params replicated over ``mesh``."""
    params, meta = load_params(directory, step, mesh)
    config = GPTConfig(**meta["model_config"], **config_overrides)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, params), meta


def stage_tokenizer(meta: dict, vocab_size: int):
    """The tokenizer a checkpoint was trained with, checked against its vocabulary."""
    from nanochat_jax.tokenizer import Tokenizer, get_tokenizer

    tok_dir = meta.get("tokenizer_dir")
    tokenizer = Tokenizer.from_directory(tok_dir) if tok_dir else get_tokenizer()
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"tokenizer vocab {tokenizer.get_vocab_size()} != model vocab {vocab_size} "
            f"(tokenizer from {tok_dir or 'the default directory'}): the tokenizer there was retrained after this model; "
            f"restore the one it was trained with, or retrain the model from `python -m train.pretrain`"
        )
    return tokenizer


def load_model(stage: str, model_tag: str | None = None, step: int | None = None, **config_overrides):
    """nanochat's ``load_model``: ``(model, tokenizer, meta)`` for a stage's checkpoint."""
    model_tag = model_tag or find_model_tag(stage)
    model, meta = load_model_checkpoint(stage_dir(stage) / model_tag, step, **config_overrides)
    return model, stage_tokenizer(meta, model.config.vocab_size), meta


def load_stage(stage: str, model_tag: str, step: int | None, mesh, **config_overrides):
    """A later stage's start: ``(model on mesh, tokenizer, meta, tag)`` of a stage's checkpoint."""
    model_tag = model_tag or find_model_tag(stage)
    if not (stage_dir(stage) / model_tag).is_dir():
        raise CheckpointNotFoundError(f"no {stage} checkpoint {model_tag!r} under {stage_dir(stage)}; {_train_first(stage)}")
    model, meta = _model_on(stage_dir(stage) / model_tag, step, mesh, config_overrides)
    return model, stage_tokenizer(meta, model.config.vocab_size), meta, model_tag
