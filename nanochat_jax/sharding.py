"""The one place that decides how arrays are laid out across devices.

Policy (classic nanochat is pure data parallelism, so is this):
- one 1-D mesh over every device of every process, axis ``"data"``;
- parameters replicated;
- batches sharded over ``"data"`` on their leading axis;
- optimizer state replicated, or (``opt_state_shardings``) Muon's stacked
  momentum and its Newton–Schulz work sharded over ``"data"`` on their
  leading axis, the GSPMD analogue of nanochat's DistMuon.

The mesh uses ``AxisType.Auto`` (classic GSPMD: ``jit`` in/out shardings plus
``with_sharding_constraint``) everywhere; ``jax.make_mesh`` would default to
Explicit axes, so the mesh is built from ``jax.sharding.Mesh`` directly.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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


def muon_buffer_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Where a Muon momentum buffer lives when Muon is sharded.

    Stacks ``(L, in, out)`` split on the layer axis when L divides by the data
    axis (``stacked_sharding``), else replicated; bare matrices replicated.
    """
    if len(shape) >= 3:
        return stacked_sharding(mesh, shape[0])
    return replicated(mesh)


def opt_state_shardings(opt_state, mesh: Mesh, shard_muon: bool = False):
    """A pytree of ``NamedSharding`` matching ``opt_state`` (real or abstract) for jit in/out shardings.

    Replicated, except that ``shard_muon`` places Muon momentum
    (``momentum_buffer`` leaves) per ``muon_buffer_sharding`` (ZeRO-style).
    """

    def place(path, leaf):
        names = {getattr(k, "name", None) for k in path}
        shape = tuple(getattr(leaf, "shape", ()))
        if shard_muon and "momentum_buffer" in names:
            return muon_buffer_sharding(shape, mesh)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, opt_state)


def make_global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble one process's rows into the global batch sharded over ``"data"``.

    Every process passes its own ``(B_local, ...)`` rows; the result is a
    ``(B_local * process_count, ...)`` array. Works on one CPU and on pods.
    """
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def make_global_microbatches(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Like ``make_global_batch`` for ``(A, B_local, T)`` stacks of micro-batches."""
    return jax.make_array_from_process_local_data(microbatch_sharding(mesh), local)
