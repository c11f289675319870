"""The one jitted training step: accumulate, clip, update — sharded and donated.

State is a pair of plain pytrees, ``params`` (fp32 masters, replicated) and
``opt_state`` (optionally sharded), so the step is a pure function compiled
with plain ``jax.jit`` (no NNX graph traversal per call). The model is
rebuilt inside the trace from its static ``graphdef``.

A step consumes ``(A, B, T)`` inputs/targets: A micro-batches (gradient
accumulation, a ``lax.scan``) of B rows sharded over the data axis. Loss is
the mean over micro-batches of each micro-batch's mean loss, as nanochat
computes it. Learning-rate multiplier and Muon momentum are runtime scalars,
so schedules never recompile. Metrics stay on device; callers read them when
they choose (no host sync inside the step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nanochat_jax import sharding
from nanochat_jax.gpt import GPT


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def split_model(model: GPT) -> tuple[nnx.GraphDef, dict]:
    """Static graph + the plain nested dict of fp32 params."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def loss_fn(graphdef: nnx.GraphDef, params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params)(inputs, targets)


def clip_by_global_norm(grads, max_norm: float):
    """torch.nn.utils.clip_grad_norm_: scale by max_norm/(norm+1e-6) when above it."""
    norm = optax.tree.norm(grads)
    if max_norm <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def accumulated_grads(graphdef, params, inputs, targets):
    """Mean loss and mean gradient over the leading micro-batch axis."""
    grad_fn = jax.value_and_grad(lambda p, x, y: loss_fn(graphdef, p, x, y))
    num_micro = inputs.shape[0]
    if num_micro == 1:
        return grad_fn(params, inputs[0], targets[0])

    def micro(carry, xy):
        loss_sum, grad_sum = carry
        loss, grads = grad_fn(params, *xy)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (inputs, targets))
    return loss_sum / num_micro, jax.tree.map(lambda g: g / num_micro, grad_sum)


def make_train_step(graphdef, tx: optax.GradientTransformationExtraArgs, state_shardings: TrainState, mesh, *, grad_clip: float):
    """Compile ``step(state, inputs, targets, lr_multiplier, muon_momentum) -> (state, metrics)``.

    ``state`` is donated: its buffers are reused for the new state, so a
    step needs one copy of params + optimizer state, not two.
    """
    micro_sharding = sharding.microbatch_sharding(mesh)
    scalar = sharding.replicated(mesh)

    def step(state: TrainState, inputs, targets, lr_multiplier, muon_momentum):
        loss, grads = accumulated_grads(graphdef, state.params, inputs, targets)
        grads, grad_norm = clip_by_global_norm(grads, grad_clip)
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, lr_multiplier=lr_multiplier, muon_momentum=muon_momentum
        )
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": loss, "grad_norm": grad_norm}

    return jax.jit(
        step,
        in_shardings=(state_shardings, micro_sharding, micro_sharding, scalar, scalar),
        out_shardings=(state_shardings, scalar),
        donate_argnums=(0,),
    )


def init_train_state(model: GPT, tx, mesh, *, shard_muon: bool) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Place params (replicated) and a freshly initialised optimizer state on the mesh.

    Returns ``(graphdef, state, state_shardings)``; the shardings are what the
    train step and checkpoint restore use.
    """
    graphdef, params = split_model(model)
    param_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), params)
    params = jax.device_put(params, param_shardings)
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_sh = sharding.opt_state_shardings(abstract_opt, mesh, shard_muon=shard_muon)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    shardings = TrainState(param_shardings, opt_sh)
    return graphdef, TrainState(params, opt_state), shardings
