"""The one place that decides how arrays are laid out across devices.

Policy (classic nanochat is pure data parallelism, so is this by default):
- one 1-D mesh over every device of every process, axis ``"data"``;
- parameters replicated (``param_sharding="replicated"``), or split over
  ``"data"`` (``"fsdp"``, ZeRO-3, see ``fsdp_sharding``) and gathered one
  layer at a time in the forward (``gather``);
- batches sharded over ``"data"`` on their leading axis;
- optimizer state laid out like its parameter under fsdp; otherwise
  replicated, or (``shard_muon``) Muon's stacked momentum and its
  Newton–Schulz work sharded over ``"data"`` on their leading axis, the GSPMD
  analogue of nanochat's DistMuon.

The mesh uses ``AxisType.Auto`` (classic GSPMD: ``jit`` in/out shardings plus
``with_sharding_constraint``) everywhere; ``jax.make_mesh`` would default to
Explicit axes, so the mesh is built from ``jax.sharding.Mesh`` directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nanochat_jax.errors import NanochatError

DATA_AXIS = "data"
PARAM_SHARDINGS = ("replicated", "fsdp")
# Name of the gathered weights in the forward: a remat policy drops them, so
# the backward gathers again instead of keeping every layer's full weights.
GATHERED = "fsdp_gathered"

_GATHER_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("nanochat_jax_gather_mesh", default=None)


class ShardingError(NanochatError, ValueError):
    """An unknown or unusable parameter layout."""


def check_param_sharding(param_sharding: str) -> str:
    if param_sharding not in PARAM_SHARDINGS:
        raise ShardingError(f"param_sharding={param_sharding!r}; expected one of {PARAM_SHARDINGS}")
    return param_sharding


def maybe_initialize_distributed() -> None:
    """Call ``jax.distributed.initialize()`` when launched as several processes.

    Detected launches: SLURM (``srun``) and Open MPI (``mpirun``) jobs of more than
    one task, multi-host Cloud TPU VMs / pods (JAX finds everything itself), and a
    manual launch that sets ``JAX_COORDINATOR_ADDRESS=host:port`` plus
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every host. A single process
    does nothing, so the same command runs on a laptop.
    """
    if getattr(maybe_initialize_distributed, "_done", False):
        return
    env = os.environ
    launched_multi = (
        env.get("JAX_COORDINATOR_ADDRESS")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or int(env.get("MEGASCALE_NUM_SLICES", "1")) > 1
    )
    if launched_multi:
        kwargs = {}
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    maybe_initialize_distributed._done = True


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``("data",)`` mesh over all devices (global across processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def microbatch_sharding(mesh: Mesh) -> NamedSharding:
    """``(micro_batches, batch, ...)`` arrays: the batch axis (1) split over ``"data"``."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def stacked_sharding(mesh: Mesh, leading_dim: int) -> NamedSharding:
    """Shard a stacked tensor's leading axis over ``"data"`` when it divides evenly.

    Used for Muon momentum/work stacked by shape. Falls back to replication
    when the stack does not divide across the devices, so it is always valid.
    """
    n = mesh.shape[DATA_AXIS]
    if n > 1 and leading_dim % n == 0:
        return NamedSharding(mesh, P(DATA_AXIS))
    return replicated(mesh)


def fsdp_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """ZeRO-3 placement of one array: its largest axis that divides by the device count, split over ``"data"``.

    Stacked block weights ``(L, in, out)`` split a matrix axis, not the layer
    axis: every device then holds 1/n of *each* layer, so gathering one layer
    in the scan / loop is a balanced all-gather (a layer-axis split would put
    whole layers on single devices, and L = 20, 26 rarely divides by 8). The
    layer axis is the fallback, then replication (scalars, odd shapes).
    """
    n = mesh.shape[DATA_AXIS]
    if n == 1 or not shape:
        return replicated(mesh)
    axes = list(range(1, len(shape))) if len(shape) >= 3 else list(range(len(shape)))
    fits = [a for a in axes if shape[a] % n == 0] or ([0] if shape[0] % n == 0 else [])
    if not fits:
        return replicated(mesh)
    axis = max(fits, key=lambda a: (shape[a], -a))
    return NamedSharding(mesh, P(*([None] * axis + [DATA_AXIS])))


def _shape(leaf) -> tuple[int, ...]:
    return tuple(getattr(leaf, "shape", ()))


def param_shardings(params, mesh: Mesh, param_sharding: str = "replicated"):
    """A ``NamedSharding`` per parameter leaf: all replicated, or each per ``fsdp_sharding``."""
    if check_param_sharding(param_sharding) == "fsdp":
        return jax.tree.map(lambda leaf: fsdp_sharding(_shape(leaf), mesh), params)
    return jax.tree.map(lambda _: replicated(mesh), params)


def muon_buffer_sharding(shape: tuple[int, ...], mesh: Mesh, param_sharding: str = "replicated") -> NamedSharding:
    """Where a Muon momentum buffer lives when Muon is sharded or params are fsdp.

    fsdp: like its parameter (``fsdp_sharding``). Otherwise stacks ``(L, in,
    out)`` split on the layer axis when L divides by the data axis
    (``stacked_sharding``), else replicated; bare matrices replicated.
    """
    if check_param_sharding(param_sharding) == "fsdp":
        return fsdp_sharding(shape, mesh)
    if len(shape) >= 3:
        return stacked_sharding(mesh, shape[0])
    return replicated(mesh)


def opt_state_shardings(opt_state, mesh: Mesh, shard_muon: bool = False, param_sharding: str = "replicated"):
    """A pytree of ``NamedSharding`` matching ``opt_state`` (real or abstract) for jit in/out shardings.

    fsdp: every leaf (AdamW moments, Muon momentum) per ``fsdp_sharding``, the
    step counts replicated. Otherwise replicated, except that ``shard_muon``
    places Muon momentum (``momentum_buffer`` leaves) per ``muon_buffer_sharding``.
    """
    if check_param_sharding(param_sharding) == "fsdp":
        return jax.tree.map(lambda leaf: fsdp_sharding(_shape(leaf), mesh), opt_state)

    def place(path, leaf):
        names = {getattr(k, "name", None) for k in path}
        if shard_muon and "momentum_buffer" in names:
            return muon_buffer_sharding(_shape(leaf), mesh)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, opt_state)


@contextlib.contextmanager
def gathering(mesh: Mesh | None):
    """While tracing a step under this context, ``gather`` makes weights whole on every device (fsdp).

    A trace-time switch rather than a model argument, so the model, the
    losses and the inference engine keep one signature; ``None`` (replicated
    params) leaves ``gather`` an identity.
    """
    token = _GATHER_MESH.set(mesh)
    try:
        yield
    finally:
        _GATHER_MESH.reset(token)


def is_gathering() -> bool:
    """True while tracing under ``gathering`` with a mesh (the model's remat policy depends on it)."""
    return _GATHER_MESH.get() is not None


def gather(tree, dtype=None):
    """Cast to ``dtype`` and, under ``gathering``, all-gather fsdp-sharded weights where they are used.

    Called per layer inside the layer loop / scan, so one layer's weights are
    whole at a time (gathered after the cast: half the traffic in bf16).
    Each piece is first pinned to its own fsdp layout, so the backward
    reduce-scatters that layer's gradient right here, in fp32, instead of
    holding whole gradients until the loop ends. Tagged ``GATHERED`` for remat.
    """
    cast = (lambda x: x) if dtype is None else (lambda x: x.astype(dtype))
    mesh = _GATHER_MESH.get()
    if mesh is None:
        return jax.tree.map(cast, tree)
    own = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, fsdp_sharding(x.shape, mesh)), tree)
    whole = jax.lax.with_sharding_constraint(jax.tree.map(cast, own), replicated(mesh))
    return jax.tree.map(lambda x: checkpoint_name(x, GATHERED), whole)


def make_global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble one process's rows into the global batch sharded over ``"data"``.

    Every process passes its own ``(B_local, ...)`` rows; the result is a
    ``(B_local * process_count, ...)`` array. Works on one CPU and on pods.
    """
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def make_global_microbatches(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Like ``make_global_batch`` for ``(A, B_local, T)`` stacks of micro-batches."""
    return jax.make_array_from_process_local_data(microbatch_sharding(mesh), local)
