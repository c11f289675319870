"""nanochat's classic optimizer (AdamW + Muon) as optax transforms.

nanochat (commit 8c89661) trains with two optimizers: AdamW for the token
embedding ``wte`` and the ``lm_head``, and Muon for every block matrix. Here
that is one ``optax.partition`` over parameter paths:

  ``wte``     -> AdamW, lr = embedding_lr   * (n_embd/768)**-0.5
  ``lm_head`` -> AdamW, lr = unembedding_lr * (n_embd/768)**-0.5
  ``h/...``   -> Muon,  lr = matrix_lr (no width scaling)

Both follow nanochat's math to the letter (torch's AdamW step order and bias
correction; Muon's lerp-form Nesterov momentum without bias correction and a
quintic Newton-Schulz in bf16), not optax's stock versions, whose momentum
bias correction, NS dtype and eps differ from nanochat's.

Per-step hyperparameters are *runtime* inputs so a jitted train step compiles
once: ``tx.update(grads, state, params, lr_multiplier=..., muon_momentum=...)``.
``optax.partition`` / ``optax.masked`` forward extra keyword arguments to every
inner ``GradientTransformationExtraArgs``; each transform here takes the ones
it uses and ignores the rest.

Layout: JAX kernels are ``(..., in, out)`` while nanochat's torch weights are
``(out, in)``. Muon's ``rows/cols`` and its "transpose when tall" rule are in
torch's convention; ``_to_wide`` maps a kernel to nanochat's working
orientation, so the bf16 Newton-Schulz runs on exactly the matrix nanochat
would use (square matrices included).

Sharded Muon (``shard_muon=True`` with a multi-device mesh) is the GSPMD
analogue of nanochat's DistMuon: same-shape matrices are stacked, the stack is
split over the ``"data"`` axis so each device orthogonalizes its share, and the
result is gathered back. Values are unchanged; only where the work runs moves.
With fsdp params (``param_sharding="fsdp"``) the momentum is laid out like its
parameter, and Newton–Schulz still sees whole matrices: split by layer over
the devices with ``shard_muon``, or whole on every device without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from nanochat_jax.gpt import GPTConfig
from nanochat_jax.schedules import DEFAULT_MUON_MOMENTUM
from nanochat_jax.sharding import (
    DATA_AXIS,
    check_param_sharding,
    fsdp_sharding,
    muon_buffer_sharding,
    replicated,
    stacked_sharding,
)

# Keller Jordan's quintic coefficients, nanochat's zeropower_via_newtonschulz5.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7

# Top-level parameter name -> optimizer group (nanochat's setup_optimizers split).
GROUP_OF_TOP_LEVEL = {"wte": "embedding", "lm_head": "unembedding", "h": "muon"}


# --------------------------------------------------------------------------- small math helpers


def _torch_lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """``torch.lerp`` with its two-branch formula, so fp32 rounding matches torch.

    torch evaluates ``start + w*(end-start)`` for ``|w| < 0.5`` and
    ``end - (end-start)*(1-w)`` otherwise; nanochat's momentum uses both
    branches (weights ``1-m`` and ``m``). ``weight`` may be a traced scalar.
    """
    diff = end - start
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * diff, end - diff * (1 - weight))


def newton_schulz(G: jax.Array, steps: int = 5, dtype: str = "bfloat16") -> jax.Array:
    """nanochat's ``zeropower_via_newtonschulz5`` on the last two axes (torch orientation).

    Cast to bf16, work on the wide orientation (transpose when rows > cols),
    divide by the Frobenius norm + 1e-7, then ``steps`` quintic iterations
    ``A = X Xᵀ; B = b A + (c A) A; X = a X + B X`` with every op in bf16, as
    torch runs them (``c * A @ A`` parses as ``(c*A) @ A``). Leading axes are
    batch (one matrix per layer). Returns bf16, like nanochat.

    ``dtype="float32"`` runs the same iteration without any bf16 rounding: not
    nanochat's numerics, but exact enough to test invariances (e.g. sharded
    vs single-device steps) to fp32 tolerance.
    """
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"newton_schulz dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a stack of them), got shape {G.shape}")
    a, b, c = NS_COEFFS
    bf16, f32 = jnp.bfloat16, jnp.float32

    # torch runs each bf16 op in fp32 (Python scalars kept at fp32 precision)
    # and rounds the result to bf16. Two JAX defaults would differ: a bare
    # ``b * A`` rounds the coefficient itself to bf16 (-4.775 -> -4.78125,
    # a different polynomial), and under jit XLA's excess-precision rewrites
    # drop bf16 round-trips between fused ops. So every op is written in fp32
    # and rounded with ``reduce_precision`` (which XLA keeps), giving torch's
    # values on any backend. Matmuls take bf16 inputs and accumulate in fp32.
    exact = dtype == "float32"

    def rnd(y):
        return y if exact else jax.lax.reduce_precision(y, exponent_bits=8, mantissa_bits=7)

    def mm(Y, Z):
        operand = f32 if exact else bf16
        return rnd(jnp.matmul(Y.astype(operand), Z.astype(operand), preferred_element_type=f32))

    X = rnd(G.astype(f32))
    tall = G.shape[-2] > G.shape[-1]
    if tall:
        X = jnp.swapaxes(X, -1, -2)
    # torch's norm of a bf16 tensor accumulates in fp32 and returns bf16.
    norm = rnd(jnp.sqrt(jnp.sum(jnp.square(X), axis=(-2, -1), keepdims=True)))
    X = rnd(X / rnd(norm + NS_EPS))

    def iteration(_, X):
        A = mm(X, jnp.swapaxes(X, -1, -2))
        B = rnd(rnd(b * A) + mm(rnd(c * A), A))
        return rnd(rnd(a * X) + mm(B, X))

    # A rolled loop: one compiled body instead of `steps` copies (XLA's CPU
    # compile time grows with every bf16 dot; on GPU the loop overhead is nil).
    X = jax.lax.fori_loop(0, steps, iteration, X).astype(f32 if exact else bf16)
    if tall:
        X = jnp.swapaxes(X, -1, -2)
    return X


def _kernel_is_tall_in_torch(shape: tuple[int, ...]) -> bool:
    """True when the torch weight ``(out, in)`` of a ``(..., in, out)`` kernel has rows > cols."""
    return shape[-1] > shape[-2]


def _to_wide(K: jax.Array) -> jax.Array:
    """The matrix nanochat's NS iterates on, from a JAX kernel ``(..., in, out)``.

    torch's weight is ``W = Kᵀ``; nanochat transposes ``W`` when it is tall, so
    the working matrix is ``K`` if out > in, else ``Kᵀ`` (square: ``Kᵀ = W``).
    """
    return K if _kernel_is_tall_in_torch(K.shape) else jnp.swapaxes(K, -1, -2)


def _from_wide(X: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    return X if _kernel_is_tall_in_torch(kernel_shape) else jnp.swapaxes(X, -1, -2)


def _muon_scale(kernel_shape: tuple[int, ...]) -> float:
    """``sqrt(max(1, rows/cols))`` with torch's rows = out = shape[-1], cols = in = shape[-2]."""
    return max(1.0, kernel_shape[-1] / kernel_shape[-2]) ** 0.5


def _orthogonalize(
    mats: list[jax.Array], steps: int, mesh: Mesh | None = None, dtype: str = "bfloat16", split: bool = True,
    fsdp: bool = False,
) -> list[jax.Array]:
    """NS-orthogonalize every kernel ``(..., in, out)``; returns bf16 ``orth(W)ᵀ`` per kernel.

    Kernels are mapped to the wide matrix nanochat iterates on and grouped by
    that ``(a, b)`` shape (``mlp_c_fc`` and ``mlp_c_proj`` share one group); a
    group's matrices are concatenated on one stack axis so NS runs as one
    batched computation per shape, like nanochat HEAD's stacked Muon.

    With a ``mesh`` (sharded Muon, n > 1 devices on ``"data"``) the stack is
    zero-padded to a multiple of n (a zero matrix stays zero: 0 / (0 + 1e-7))
    and constrained to ``P("data")``, so GSPMD gives each device 1/n of the
    matrices, as DistMuon's owner ranks; the result is constrained back to
    replicated (an all-gather, in bf16). Every matrix sees exactly the ops of
    the unsharded path, so the values are identical. ``split=False`` with a
    mesh instead makes the stack whole on every device (fsdp gradients arrive
    split inside each matrix; NS must not run on pieces of one). ``fsdp``
    returns each result in its parameter's fsdp layout instead of gathering
    it whole: each device receives only the part of the update it applies.
    """
    wides = [_to_wide(m).astype(dtype) for m in mats]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(wides):
        groups.setdefault(tuple(w.shape[-2:]), []).append(i)
    out: list[Any] = [None] * len(mats)
    for shape in sorted(groups):
        idx = groups[shape]
        flat = [wides[i].reshape((-1,) + shape) for i in idx]
        sizes = [f.shape[0] for f in flat]
        stack = jnp.concatenate(flat, axis=0) if len(flat) > 1 else flat[0]
        total = stack.shape[0]
        if mesh is not None and not split:
            stack = jax.lax.with_sharding_constraint(stack, replicated(mesh))
        elif mesh is not None:
            pad = (-total) % mesh.shape[DATA_AXIS]
            if pad:
                stack = jnp.concatenate([stack, jnp.zeros((pad,) + shape, stack.dtype)], axis=0)
            stack = jax.lax.with_sharding_constraint(stack, stacked_sharding(mesh, stack.shape[0]))
        orth = newton_schulz(stack, steps, dtype)
        if mesh is not None and split and not fsdp:
            orth = jax.lax.with_sharding_constraint(orth, replicated(mesh))
        orth = orth[:total]
        offset = 0
        for i, size in zip(idx, sizes):
            piece = orth[offset : offset + size].reshape(wides[i].shape)
            out[i] = _from_wide(piece, mats[i].shape)
            if fsdp:
                out[i] = jax.lax.with_sharding_constraint(out[i], fsdp_sharding(out[i].shape, mesh))
            offset += size
    return out


# --------------------------------------------------------------------------- Muon


class MuonState(NamedTuple):
    """One fp32 momentum buffer per matrix, laid out like the parameter."""

    momentum_buffer: Any


def muon(
    learning_rate: float = 0.02,
    *,
    ns_steps: int = 5,
    ns_dtype: str = "bfloat16",
    mesh: Mesh | None = None,
    shard_muon: bool = False,
    param_sharding: str = "replicated",
) -> optax.GradientTransformationExtraArgs:
    """nanochat's classic Muon as an optax transform (returns the full update ``-lr*scale*O``).

    Per step, with runtime ``muon_momentum`` m and ``lr_multiplier``:
      ``buf = lerp(buf, g, 1-m)``; ``g = lerp(g, buf, m)`` (Nesterov, no bias
      correction); ``O = NS5_bf16(g)`` per matrix; ``update = -lr*lrm*sqrt(max(1, rows/cols))*O``.
    No weight decay. Parameters are ``(..., in, out)`` kernels; leading axes
    (the layer stack) are independent matrices.

    ``shard_muon=True`` with a mesh whose ``"data"`` axis has n > 1 devices
    splits NS work over the devices (see ``_orthogonalize``) and keeps
    momentum buffers sharded on their stack axis where it divides by n.
    ``param_sharding="fsdp"`` keeps each buffer in its parameter's fsdp layout.
    """
    if (shard_muon or check_param_sharding(param_sharding) == "fsdp") and mesh is None:
        raise ValueError("shard_muon=True and param_sharding='fsdp' need the device mesh (mesh=...)")
    multi = mesh is not None and mesh.shape[DATA_AXIS] > 1
    sharded = bool(shard_muon) and multi
    fsdp = param_sharding == "fsdp" and multi

    def init_fn(params):
        def zeros(p):
            if p.ndim < 2:
                raise ValueError(f"Muon only takes matrices (or stacks of them); got shape {p.shape}")
            return jnp.zeros(p.shape, jnp.float32)

        return MuonState(momentum_buffer=jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None, *, lr_multiplier=1.0, muon_momentum=DEFAULT_MUON_MOMENTUM, **extra_args):
        del params, extra_args  # Muon has no weight decay; other groups' args are ignored
        m = jnp.asarray(muon_momentum, jnp.float32)
        lr = jnp.asarray(learning_rate, jnp.float32) * jnp.asarray(lr_multiplier, jnp.float32)
        grads, treedef = jax.tree.flatten(updates)
        bufs = treedef.flatten_up_to(state.momentum_buffer)

        new_bufs, blended = [], []
        for g, buf in zip(grads, bufs):
            g = g.astype(jnp.float32)
            buf = _torch_lerp(buf, g, 1 - m)
            if sharded or fsdp:
                buf = jax.lax.with_sharding_constraint(buf, muon_buffer_sharding(buf.shape, mesh, param_sharding))
            new_bufs.append(buf)
            blended.append(_torch_lerp(g, buf, m))

        orth = _orthogonalize(blended, ns_steps, mesh if (sharded or fsdp) else None, ns_dtype, split=sharded, fsdp=fsdp)

        new_updates = []
        for u, o in zip(grads, orth):
            # torch: p.add_(O, alpha=-lr*scale), with O upcast to the fp32 param.
            alpha = -(lr * _muon_scale(u.shape))
            new_updates.append((alpha * o.astype(jnp.float32)).astype(u.dtype))
        return (
            jax.tree.unflatten(treedef, new_updates),
            MuonState(momentum_buffer=jax.tree.unflatten(treedef, new_bufs)),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- AdamW


class AdamWState(NamedTuple):
    count: jax.Array  # int32 step count (torch's ``state['step']``)
    mu: Any  # exp_avg
    nu: Any  # exp_avg_sq


def adamw_group(
    learning_rate: float,
    *,
    betas: tuple[float, float] = (0.8, 0.95),
    eps: float = 1e-10,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.AdamW`` for one param group, with a runtime ``lr_multiplier``.

    Follows torch's single-tensor step: ``p *= 1 - lr*wd`` (decoupled),
    ``m = lerp(m, g, 1-b1)``, ``v = b2*v + (1-b2)*g²``,
    ``p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)`` with ``bc_i = 1 - b_i**t``.
    Written out rather than composed from optax pieces so the lr can be a
    runtime scalar and the op order (hence rounding) is torch's. State is fp32.
    """
    b1, b2 = betas

    def zeros(p):
        return jnp.zeros(p.shape, jnp.float32)

    def init_fn(params):
        return AdamWState(
            count=jnp.zeros((), jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update_fn(updates, state, params=None, *, lr_multiplier=1.0, **extra_args):
        del extra_args  # e.g. muon_momentum, meant for the Muon group
        if weight_decay and params is None:
            raise ValueError("AdamW with weight_decay needs params in tx.update(grads, state, params)")
        count = state.count + 1
        t = count.astype(jnp.float32)
        lr = jnp.asarray(learning_rate, jnp.float32) * jnp.asarray(lr_multiplier, jnp.float32)
        step_size = lr / (1 - jnp.float32(b1) ** t)
        bc2_sqrt = jnp.sqrt(1 - jnp.float32(b2) ** t)

        grads, treedef = jax.tree.flatten(updates)
        mus = treedef.flatten_up_to(state.mu)
        nus = treedef.flatten_up_to(state.nu)
        ps = treedef.flatten_up_to(params) if weight_decay else [None] * len(grads)
        new_u, new_mu, new_nu = [], [], []
        for g, mu, nu, p in zip(grads, mus, nus, ps):
            g32 = g.astype(jnp.float32)
            mu = _torch_lerp(mu, g32, jnp.float32(1 - b1))
            nu = nu * b2 + (1 - b2) * (g32 * g32)
            u = -step_size * (mu / (jnp.sqrt(nu) / bc2_sqrt + eps))
            if weight_decay:
                u = u - (lr * weight_decay) * p.astype(jnp.float32)
            new_u.append(u.astype(g.dtype))
            new_mu.append(mu)
            new_nu.append(nu)
        new_state = AdamWState(count=count, mu=treedef.unflatten(new_mu), nu=treedef.unflatten(new_nu))
        return treedef.unflatten(new_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- routing


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_labels(params) -> Any:
    """Optimizer group per leaf from its top-level name: wte / lm_head / h.

    Works on the nested pure dict and on an ``nnx.State``. Any other name is an
    error rather than a silent default, so a new parameter can't slip into the
    wrong optimizer.
    """

    def label(path, _):
        top = _key_name(path[0]) if path else "<root>"
        if top not in GROUP_OF_TOP_LEVEL:
            raise ValueError(
                f"no optimizer group for parameter {jax.tree_util.keystr(path)}: "
                f"expected it under one of {sorted(GROUP_OF_TOP_LEVEL)}"
            )
        return GROUP_OF_TOP_LEVEL[top]

    return jax.tree_util.tree_map_with_path(label, params)


def nanochat_optimizer(
    config: GPTConfig,
    *,
    embedding_lr: float = 0.2,
    unembedding_lr: float = 0.004,
    matrix_lr: float = 0.02,
    weight_decay: float = 0.0,
    adam_betas: tuple[float, float] = (0.8, 0.95),
    adam_eps: float = 1e-10,
    ns_steps: int = 5,
    ns_dtype: str = "bfloat16",
    mesh: Mesh | None = None,
    shard_muon: bool = False,
    param_sharding: str = "replicated",
) -> optax.GradientTransformationExtraArgs:
    """nanochat's ``setup_optimizers`` as one transform over the GPT param tree.

    AdamW lrs are scaled by ``(n_embd/768)**-0.5`` (nanochat's dmodel_lr_scale);
    Muon's is not. ``weight_decay`` applies to the AdamW groups only, as in
    nanochat. Call ``update(grads, state, params, lr_multiplier=lrm,
    muon_momentum=m)``; both default to 1.0 / 0.95 when omitted. ``ns_dtype``
    is nanochat's bf16 by default; "float32" exists for exactness tests.
    ``param_sharding`` must match the layout ``init_train_state`` is given.
    """
    dmodel_lr_scale = (config.n_embd / 768) ** -0.5
    adam = {"betas": tuple(adam_betas), "eps": adam_eps, "weight_decay": weight_decay}
    transforms = {
        "embedding": adamw_group(embedding_lr * dmodel_lr_scale, **adam),
        "unembedding": adamw_group(unembedding_lr * dmodel_lr_scale, **adam),
        "muon": muon(matrix_lr, ns_steps=ns_steps, ns_dtype=ns_dtype, mesh=mesh, shard_muon=shard_muon,
                     param_sharding=param_sharding),
    }
    return optax.partition(transforms, param_labels)


__all__ = [
    "AdamWState",
    "MuonState",
    "adamw_group",
    "muon",
    "nanochat_optimizer",
    "newton_schulz",
    "param_labels",
]
