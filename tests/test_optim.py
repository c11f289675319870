"""nanochat_jax.optim against an independent torch rendering of nanochat's optimizer math.

The references below are written from nanochat's formulas (commit 8c89661,
``nanochat/muon.py`` and ``torch.optim.AdamW`` as nanochat configures it) on
torch tensors in torch's ``(out, in)`` layout, so they also check the JAX
``(in, out)`` kernel bookkeeping (transposes, rows/cols scaling).

Tolerances:
- AdamW and Muon momentum buffers are fp32 elementwise math: 1e-6.
- Muon updates go through a 5-step Newton-Schulz in bf16. Two bf16
  evaluations of the same iteration that differ only in fp32 accumulation
  order can flip a bf16 rounding, and NS amplifies such flips: measured JAX vs
  torch gaps are 0-2% (relative Frobenius norm), while torch's own bf16 result
  sits ~3% from the exact fp64 polynomial. ``NS_RTOL = 4%`` therefore means
  "as close to torch as bf16 allows"; known mistakes land far outside it
  (coefficients rounded to bf16: 5-7%; a wrong sqrt(3) aspect scale: ~70%).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

from nanochat_jax import optim, schedules, sharding
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.sharding import DATA_AXIS, make_mesh

NS_RTOL = 0.04
TINY = GPTConfig(sequence_len=32, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)


# --------------------------------------------------------------------------- torch reference (nanochat math)

REF_COEFFS = (3.4445, -4.7750, 2.0315)


def ref_newton_schulz(G: torch.Tensor, steps: int = 5, dtype=torch.bfloat16) -> torch.Tensor:
    """Quintic NS as nanochat states it: wide orientation, Frobenius pre-norm + 1e-7."""
    a, b, c = REF_COEFFS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


class RefMuon:
    """nanochat's single-GPU Muon step on torch ``(out, in)`` fp32 weights."""

    def __init__(self, weights: list[torch.Tensor]):
        self.weights = [w.clone() for w in weights]
        self.bufs = [torch.zeros_like(w) for w in weights]

    def step(self, grads: list[torch.Tensor], lr: float, momentum: float) -> None:
        for p, g, buf in zip(self.weights, grads, self.bufs):
            g = g.clone()
            buf.lerp_(g, 1 - momentum)
            g = g.lerp_(buf, momentum)  # Nesterov
            o = ref_newton_schulz(g)
            p.add_(o, alpha=-lr * max(1, p.size(-2) / p.size(-1)) ** 0.5)


def kernel_to_torch(K: np.ndarray) -> list[torch.Tensor]:
    """A JAX kernel ``(in, out)`` or stack ``(L, in, out)`` -> torch weights ``(out, in)`` per layer."""
    K = np.asarray(K, np.float32)
    mats = K.reshape((-1,) + K.shape[-2:])
    return [torch.from_numpy(np.ascontiguousarray(m.T)) for m in mats]


def torch_to_kernel(ws: list[torch.Tensor], shape) -> np.ndarray:
    return np.stack([w.numpy().T for w in ws]).reshape(shape)


def rel_fro(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def random_tree(rng, shapes):
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )


def hyper_sequence(rng, n):
    """Per-step (lr multiplier, momentum) as float32, the values the jitted step sees."""
    lrms = rng.uniform(0.2, 1.0, n).astype(np.float32)
    moms = np.linspace(0.85, 0.95, n).astype(np.float32)
    return lrms, moms


# --------------------------------------------------------------------------- Newton-Schulz

# Jitted once per shape (eager mode would compile every op separately); the
# tests below reuse these shapes so each compiles once: wide, tall, square, stack.
ns = jax.jit(optim.newton_schulz, static_argnames="steps")
NS_SHAPES = [(32, 96), (96, 32), (64, 64), (3, 40, 72)]


@pytest.mark.parametrize("shape", NS_SHAPES)
def test_newton_schulz_matches_torch_bf16(shape):
    G = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = np.asarray(ns(jnp.asarray(G)).astype(jnp.float32))
    ref = ref_newton_schulz(torch.from_numpy(G)).float().numpy()
    exact = ref_newton_schulz(torch.from_numpy(G).double(), dtype=torch.float64).numpy()
    assert rel_fro(got, ref) < NS_RTOL
    # As accurate as torch's own bf16 evaluation of the same polynomial.
    assert rel_fro(got, exact) < 1.5 * rel_fro(ref, exact) + 5e-3


def _with_spectrum(rng, shape):
    """Random matrices with singular values spread over [0.1, 1] x (random scale).

    Random *square* Gaussians can have singular values so small that five NS
    steps cannot lift them into the band (nanochat's gradients never rely on
    that either), so the spectrum is set explicitly.
    """
    *batch, m, n = shape
    k = min(m, n)
    out = []
    for _ in range(int(np.prod(batch, dtype=int))):
        U, _ = np.linalg.qr(rng.standard_normal((m, k)))
        V, _ = np.linalg.qr(rng.standard_normal((n, k)))
        out.append((U * rng.uniform(0.1, 1.0, k)) @ V.T * rng.uniform(0.1, 10.0))
    return np.stack(out).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("shape", NS_SHAPES)
def test_newton_schulz_singular_values_in_quintic_band(shape):
    O = np.asarray(ns(jnp.asarray(_with_spectrum(np.random.default_rng(2), shape))).astype(jnp.float32))
    s = np.linalg.svd(O.astype(np.float64), compute_uv=False)
    assert s.shape[-1] == min(shape[-2:])
    # The quintic's fixed band (it trades exact orthogonality for speed), nanochat's S' ~ (0.7, 1.2).
    assert 0.65 < s.min() and s.max() < 1.2, (s.min(), s.max())


def test_newton_schulz_orientation_is_transpose_equivariant():
    """Non-square: NS(K) and NS(Kᵀ)ᵀ run on the same wide matrix, so they agree bit for bit."""
    K = jnp.asarray(np.random.default_rng(3).standard_normal((32, 96)), jnp.float32)
    a = np.asarray(ns(K).astype(jnp.float32))
    b = np.asarray(ns(K.T).T.astype(jnp.float32))
    np.testing.assert_array_equal(a, b)


def test_newton_schulz_close_to_optax_fp32_oracle():
    """optax's NS rounds its coefficients to the input dtype, so it is only an
    oracle in fp32 (with nanochat's eps): our bf16 result must be within bf16
    error of it, i.e. it is the same iteration."""
    from optax.contrib._muon import orthogonalize_via_newton_schulz

    G = jnp.asarray(np.random.default_rng(4).standard_normal((96, 32)), jnp.float32)
    oracle = jax.jit(orthogonalize_via_newton_schulz)(G, jnp.asarray(REF_COEFFS), ns_steps=5, eps=1e-7)
    assert rel_fro(ns(G).astype(jnp.float32), oracle) < 0.05


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError, match="matrix"):
        optim.newton_schulz(jnp.ones((5,)))


# --------------------------------------------------------------------------- Muon parity

# JAX kernels (in, out): square; torch-wide (out < in); torch-tall (out > in, scale sqrt(3)); bare 2-D.
MUON_SHAPES = {"h": {"sq": (2, 48, 48), "wide": (2, 96, 32), "tall": (2, 32, 96), "mat": (40, 24)}}


def test_muon_matches_nanochat_reference_after_1_and_10_steps():
    rng = np.random.default_rng(10)
    num_steps, lr = 10, 0.02
    params = random_tree(rng, MUON_SHAPES)
    grads_seq = [random_tree(rng, MUON_SHAPES) for _ in range(num_steps)]
    lrms, moms = hyper_sequence(rng, num_steps)

    tx = optim.muon(lr)

    @jax.jit
    def step(p, s, g, lrm, mom):
        u, s = tx.update(g, s, p, lr_multiplier=lrm, muon_momentum=mom)
        return optax.apply_updates(p, u), s

    p, state = params, tx.init(params)
    refs = {name: RefMuon(kernel_to_torch(params["h"][name])) for name in MUON_SHAPES["h"]}
    for i, (g, lrm, mom) in enumerate(zip(grads_seq, lrms, moms), start=1):
        p, state = step(p, state, g, lrm, mom)
        for name, ref in refs.items():
            ref.step(kernel_to_torch(g["h"][name]), lr=lr * float(lrm), momentum=float(mom))
        if i not in (1, num_steps):
            continue
        for name, shape in MUON_SHAPES["h"].items():
            buf_ref = torch_to_kernel(refs[name].bufs, shape)
            np.testing.assert_allclose(np.asarray(state.momentum_buffer["h"][name]), buf_ref, rtol=1e-6, atol=1e-6)
            p0 = np.asarray(params["h"][name])
            moved, moved_ref = np.asarray(p["h"][name]) - p0, torch_to_kernel(refs[name].weights, shape) - p0
            assert rel_fro(moved, moved_ref) < NS_RTOL, (i, name)


# --------------------------------------------------------------------------- AdamW parity


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_after_1_and_10_steps(weight_decay):
    rng = np.random.default_rng(20)
    num_steps, lr = 10, 0.3
    shapes = {"a": (50, 16), "b": (16, 50)}
    params = random_tree(rng, shapes)
    grads_seq = [random_tree(rng, shapes) for _ in range(num_steps)]
    lrms, _ = hyper_sequence(rng, num_steps)

    tx = optim.adamw_group(lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)

    @jax.jit
    def step(p, s, g, lrm):
        u, s = tx.update(g, s, p, lr_multiplier=lrm, muon_momentum=jnp.float32(0.9))  # foreign arg ignored
        return optax.apply_updates(p, u), s

    tp = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(list(tp.values()), lr=lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)
    p, state = params, tx.init(params)
    for i, (g, lrm) in enumerate(zip(grads_seq, lrms), start=1):
        p, state = step(p, state, g, lrm)
        opt.param_groups[0]["lr"] = lr * float(lrm)
        for k, t in tp.items():
            t.grad = torch.from_numpy(np.asarray(g[k]).copy())
        opt.step()
        if i not in (1, num_steps):
            continue
        assert int(state.count) == i
        for k, t in tp.items():
            np.testing.assert_allclose(np.asarray(p[k]), t.detach().numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.asarray(state.mu[k]), opt.state[t]["exp_avg"].numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                np.asarray(state.nu[k]), opt.state[t]["exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-9
            )


# --------------------------------------------------------------------------- full optimizer on the GPT tree


def tiny_gpt_abstract_params():
    """The GPT's parameter tree as the train step sees it, built abstractly (no compute)."""
    model = nnx.eval_shape(lambda: GPT(TINY, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def tiny_setup():
    """Random tiny-GPT params/grads, the optimizer and one jitted step that counts its traces."""
    rng = np.random.default_rng(30)
    abstract = tiny_gpt_abstract_params()
    shapes = jax.tree.map(lambda x: tuple(x.shape), abstract)
    params = random_tree(rng, shapes)
    grads_seq = [random_tree(rng, shapes) for _ in range(3)]
    tx = optim.nanochat_optimizer(TINY)
    traces = {"n": 0}

    @jax.jit
    def step(p, s, g, lrm, mom):
        traces["n"] += 1  # runs only while tracing
        u, s = tx.update(g, s, p, lr_multiplier=lrm, muon_momentum=mom)
        return optax.apply_updates(p, u), s

    return {
        "abstract": abstract,
        "shapes": shapes,
        "params": params,
        "grads_seq": grads_seq,
        "tx": tx,
        "step": step,
        "traces": traces,
    }


def test_param_layout_is_the_documented_one(tiny_setup):
    shapes = tiny_setup["shapes"]
    C, Vp = TINY.n_embd, TINY.padded_vocab_size
    assert shapes["wte"] == (Vp, C) and shapes["lm_head"] == (C, Vp)
    assert shapes["h"] == TINY.block_shapes()
    labels = optim.param_labels(tiny_setup["abstract"])
    assert labels["wte"] == "embedding" and labels["lm_head"] == "unembedding"
    assert set(jax.tree.leaves(labels["h"])) == {"muon"}


def test_nanochat_optimizer_routes_groups_with_nanochat_lrs(tiny_setup):
    params, grads_seq, tx, step = (tiny_setup[k] for k in ("params", "grads_seq", "tx", "step"))
    lrms = np.float32([1.0, 0.6, 0.3])
    moms = np.float32([schedules.muon_momentum_schedule(s) for s in (0, 100, 200)])
    state = tx.init(params)
    assert set(state.inner_states) == {"embedding", "unembedding", "muon"}
    p = params
    for g, lrm, mom in zip(grads_seq, lrms, moms):
        p, state = step(p, state, g, lrm, mom)

    # AdamW groups: lr x (n_embd/768)^-0.5, nanochat's betas/eps, no weight decay.
    dmodel = (TINY.n_embd / 768) ** -0.5
    for name, base_lr in (("wte", 0.2 * dmodel), ("lm_head", 0.004 * dmodel)):
        t = torch.tensor(np.asarray(params[name]), requires_grad=True)
        opt = torch.optim.AdamW([t], lr=base_lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
        for g, lrm in zip(grads_seq, lrms):
            opt.param_groups[0]["lr"] = base_lr * float(lrm)
            t.grad = torch.from_numpy(np.asarray(g[name]).copy())
            opt.step()
        np.testing.assert_allclose(np.asarray(p[name]), t.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=name)

    # Every block matrix: Muon at matrix_lr 0.02, no dmodel scaling.
    for name, shape in TINY.block_shapes().items():
        ref = RefMuon(kernel_to_torch(params["h"][name]))
        for g, lrm, mom in zip(grads_seq, lrms, moms):
            ref.step(kernel_to_torch(g["h"][name]), lr=0.02 * float(lrm), momentum=float(mom))
        moved = np.asarray(p["h"][name]) - np.asarray(params["h"][name])
        moved_ref = torch_to_kernel(ref.weights, shape) - np.asarray(params["h"][name])
        assert rel_fro(moved, moved_ref) < NS_RTOL, name


def test_runtime_hyperparameters_do_not_retrace(tiny_setup):
    params, g, tx, step, traces = (tiny_setup[k] for k in ("params", "grads_seq", "tx", "step", "traces"))
    g = g[0]
    state0 = tx.init(params)
    p_a, s_a = step(params, state0, g, jnp.float32(1.0), jnp.float32(0.85))
    n = traces["n"]
    p_b, _ = step(params, state0, g, jnp.float32(0.5), jnp.float32(0.85))
    _, s_c = step(params, state0, g, jnp.float32(0.5), jnp.float32(0.95))
    assert traces["n"] == n, "changing lr_multiplier / muon_momentum recompiled the step"

    # Every group's step is linear in the lr multiplier (same momentum)...
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
    for path, pa, pb, p0 in zip(paths, *(jax.tree.leaves(t) for t in (p_a, p_b, params))):
        da, db = np.asarray(pa) - np.asarray(p0), np.asarray(pb) - np.asarray(p0)
        assert np.linalg.norm(da) > 0, path
        np.testing.assert_allclose(db, 0.5 * da, rtol=1e-5, atol=1e-6, err_msg=path)  # atol: fp32 ulps of p ~ 1
    # ...and the momentum follows the runtime value: buf = (1 - m) g from a zero buffer.
    for name in TINY.block_shapes():
        gh = np.asarray(g["h"][name])
        for s, m in ((s_a, 0.85), (s_c, 0.95)):
            buf = np.asarray(s.inner_states["muon"].inner_state.momentum_buffer["h"][name])
            np.testing.assert_allclose(buf, (1 - np.float32(m)) * gh, rtol=1e-6, atol=1e-7)


def test_unknown_parameter_path_is_an_error():
    tree = {"wte": jnp.ones((4, 2)), "h": {"attn_c_q": jnp.ones((1, 2, 2))}, "ln_f_scale": jnp.ones((2,))}
    with pytest.raises(ValueError, match="ln_f_scale"):
        optim.param_labels(tree)
    with pytest.raises(ValueError, match="ln_f_scale"):
        optim.nanochat_optimizer(TINY).init(tree)


def test_muon_rejects_vectors_and_needs_mesh_to_shard():
    with pytest.raises(ValueError, match="matrices"):
        optim.muon().init({"v": jnp.ones((3,))})
    with pytest.raises(ValueError, match="mesh"):
        optim.muon(shard_muon=True)


# --------------------------------------------------------------------------- sharded Muon


# Wide-orientation groups: (32, 64) from "a" (torch-tall, used as is) and "b"
# (torch-wide, transposed) = 16 matrices, dividing 8; (24, 40) from the bare
# matrix "e" = 1, zero-padded to 8.
SHARD_SHAPES = {"h": {"a": (8, 32, 64), "b": (8, 64, 32), "e": (40, 24)}}


def test_sharded_muon_equals_unsharded():
    mesh = make_mesh()
    assert mesh.shape[DATA_AXIS] == 8, "conftest should provide 8 host CPU devices"
    rng = np.random.default_rng(40)
    params = random_tree(rng, SHARD_SHAPES)
    grads_seq = [random_tree(rng, SHARD_SHAPES) for _ in range(2)]
    hyper = [(jnp.float32(0.8), jnp.float32(0.86)), (jnp.float32(0.4), jnp.float32(0.9))]

    results = {}
    for shard in (False, True):
        tx = optim.muon(0.02, mesh=mesh, shard_muon=shard)
        state = tx.init(params)
        # The train step's usage: optimizer state placed by sharding.opt_state_shardings.
        state_sh = sharding.opt_state_shardings(state, mesh, shard_muon=shard)
        fn = jax.jit(
            lambda p, s, g, lrm, m, tx=tx: tx.update(g, s, p, lr_multiplier=lrm, muon_momentum=m),
            out_shardings=(None, state_sh),
        )
        step = fn.lower(params, state, grads_seq[0], *hyper[0]).compile()
        for g, (lrm, m) in zip(grads_seq, hyper):
            updates, state = step(params, state, g, lrm, m)
        results[shard] = (updates, state)
        # Sharded: NS ran on per-device slices and was gathered back.
        assert ("all-gather" in step.as_text()) == shard

    (u0, s0), (u1, s1) = results[False], results[True]
    for name in SHARD_SHAPES["h"]:
        np.testing.assert_allclose(np.asarray(u1["h"][name]), np.asarray(u0["h"][name]), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(
            np.asarray(s1.momentum_buffer["h"][name]), np.asarray(s0.momentum_buffer["h"][name]), rtol=1e-6, atol=1e-8
        )
    # ZeRO-style placement: the 8-stacks' momentum is split over devices, the bare matrix replicated.
    specs = {k: v.sharding.spec for k, v in s1.momentum_buffer["h"].items()}
    assert specs == {"a": P(DATA_AXIS), "b": P(DATA_AXIS), "e": P()}


def test_opt_state_shardings_placement(tiny_setup):
    """Placement of the full optimizer's state, computed on the abstract state (no compute)."""
    mesh = make_mesh()
    for cfg, muon_spec in ((TINY, P()), (dataclasses.replace(TINY, n_layer=8), P(DATA_AXIS))):
        abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda cfg=cfg: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param))
        tx = optim.nanochat_optimizer(cfg, mesh=mesh, shard_muon=True)
        state = jax.eval_shape(tx.init, abstract)
        sh = sharding.opt_state_shardings(state, mesh, shard_muon=True)
        assert jax.tree.structure(sh) == jax.tree.structure(state)
        emb = sh.inner_states["embedding"].inner_state
        assert emb.mu["wte"].spec == P() and emb.nu["wte"].spec == P() and emb.count.spec == P()  # AdamW replicated
        bufs = sh.inner_states["muon"].inner_state.momentum_buffer["h"]
        assert {k: v.spec for k, v in bufs.items()} == {k: muon_spec for k in cfg.block_shapes()}
        # Defaults: everything replicated.
        assert all(x.spec == P() for x in jax.tree.leaves(sharding.opt_state_shardings(state, mesh)))
