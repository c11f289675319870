"""The one jitted training step: accumulate, clip, update — sharded and donated.

State is a pair of plain pytrees (fp32 params, optimizer state), so the step
is a pure function under plain ``jax.jit``; the model is rebuilt inside the
trace from its static ``graphdef``. A step consumes a batch pytree of
``(A, B, T)`` arrays (A micro-batches, scanned) and the stage's loss. The
learning-rate multiplier and Muon momentum are runtime scalars, so schedules
never recompile; metrics stay on device until the caller reads them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nanochat_jax import sharding
from nanochat_jax.gpt import GPT


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def lm_loss(model: GPT, batch: dict) -> jax.Array:
    """Mean cross-entropy over targets >= 0 (pretraining, midtraining, SFT's masked rows)."""
    return model(batch["inputs"], batch["targets"])


def policy_gradient_loss(model: GPT, batch: dict) -> jax.Array:
    """REINFORCE: ``-sum(logp * weight)`` over targets >= 0, the weights carrying the advantage *and* the normalisation.

    nanochat divides each pass (one rank's ``device_batch_size`` rows) by that
    pass's own valid-token count; a global micro-batch here spans several
    passes, so the batch builder (``nanochat_jax.rl``) folds each pass's count
    into its rows' weights rather than the loss dividing by the micro-batch's.
    """
    nll = model(batch["inputs"], batch["targets"], loss_reduction="none")
    return jnp.sum(jnp.where(batch["targets"] >= 0, nll * batch["weights"], 0.0))


LOSSES: dict[str, Callable[[GPT, dict], jax.Array]] = {"lm": lm_loss, "pg": policy_gradient_loss}


def split_model(model: GPT) -> tuple[nnx.GraphDef, dict]:
    """Static graph + the plain nested dict of fp32 params."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def clip_by_global_norm(grads, max_norm: float):
    """torch.nn.utils.clip_grad_norm_: scale by max_norm/(norm+1e-6) when above it."""
    norm = optax.tree.norm(grads)
    if max_norm <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def accumulated_grads(graphdef, params, batch: dict, loss: str = "lm"):
    """Mean loss and mean gradient over the leading micro-batch axis of every batch leaf."""
    loss_of = LOSSES[loss]
    grad_fn = jax.value_and_grad(lambda p, b: loss_of(nnx.merge(graphdef, p), b))
    num_micro = jax.tree.leaves(batch)[0].shape[0]
    if num_micro == 1:
        return grad_fn(params, jax.tree.map(lambda x: x[0], batch))

    def micro(carry, b):
        loss_sum, grad_sum = carry
        value, grads = grad_fn(params, b)
        return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), batch)
    return loss_sum / num_micro, jax.tree.map(lambda g: g / num_micro, grad_sum)


def make_train_step(graphdef, tx, state_shardings: TrainState, mesh, *, grad_clip: float, loss: str = "lm"):
    """Compile ``step(state, batch, lr_multiplier, muon_momentum) -> (state, metrics)``.

    ``state`` is donated: its buffers are reused for the new state, so a step
    needs one copy of params + optimizer state, not two. Params that are not
    replicated (fsdp) are gathered layer by layer in the forward.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    scalar = sharding.replicated(mesh)
    split_params = not all(s.is_fully_replicated for s in jax.tree.leaves(state_shardings.params))

    def step(state: TrainState, batch, lr_multiplier, muon_momentum):
        with sharding.gathering(mesh if split_params else None):
            value, grads = accumulated_grads(graphdef, state.params, batch, loss)
        grads, grad_norm = clip_by_global_norm(grads, grad_clip)
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, lr_multiplier=lr_multiplier, muon_momentum=muon_momentum
        )
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": value, "grad_norm": grad_norm}

    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.microbatch_sharding(mesh), scalar, scalar),
        out_shardings=(state_shardings, scalar),
        donate_argnums=(0,),
    )


def abstract_train_state(params, tx, mesh, *, shard_muon: bool, param_sharding: str = "replicated") -> TrainState:
    """Shape, dtype and sharding of every state leaf, from real or abstract params; allocates nothing.

    ``param_sharding`` ("replicated" or "fsdp", see ``sharding``) must be the
    one ``tx`` was built with.
    """
    opt = jax.eval_shape(tx.init, params)
    shardings = TrainState(
        sharding.param_shardings(params, mesh, param_sharding),
        sharding.opt_state_shardings(opt, mesh, shard_muon=shard_muon, param_sharding=param_sharding),
    )
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), TrainState(params, opt), shardings)


def init_train_state(
    model: GPT, tx, mesh, *, shard_muon: bool, param_sharding: str = "replicated"
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Place params and a fresh optimizer state on the mesh: ``(graphdef, state, shardings)``."""
    graphdef, params = split_model(model)
    abstract = abstract_train_state(params, tx, mesh, shard_muon=shard_muon, param_sharding=param_sharding)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return graphdef, TrainState(params, opt_state), shardings
