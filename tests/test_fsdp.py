"""FSDP (ZeRO-3) params == replicated params: same losses, same updates, really sharded.

Both layouts run on the session's 8 CPU devices (conftest) with the real
optimizer (AdamW + Muon) on a tiny random model. The expected values are the
replicated run's: fsdp only moves where weights live and adds all-gathers /
reduce-scatters, so on the same devices and the same batch the numbers may
differ only by the order of the gradient reduction.
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from nanochat_jax import checkpoint, sharding
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.optim import nanochat_optimizer
from nanochat_jax.train_step import init_train_state, make_train_step
from model_helpers import random_gpt

# n_embd 64, padded vocab 320, 3 layers: every weight has an axis that divides by 8, the layer axis does not.
CFG = GPTConfig(sequence_len=32, vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, n_embd=64)
STEPS = 3


def batch(seed=0, n_micro=2, rows=8, T=32):
    rng = np.random.default_rng(seed)
    shape = (n_micro, rows, T)
    return rng.integers(0, CFG.vocab_size, shape, dtype=np.int32), rng.integers(0, CFG.vocab_size, shape, dtype=np.int32)


@functools.lru_cache(maxsize=None)
def train(param_sharding, *, shard_muon, ns_dtype):
    """``STEPS`` real steps from the same random model and batch; (losses, state). Cached: tests share runs."""
    mesh = sharding.make_mesh()
    tx = nanochat_optimizer(CFG, mesh=mesh, shard_muon=shard_muon, ns_dtype=ns_dtype, param_sharding=param_sharding)
    graphdef, state, shardings = init_train_state(random_gpt(CFG, 0), tx, mesh, shard_muon=shard_muon, param_sharding=param_sharding)
    step_fn = make_train_step(graphdef, tx, shardings, mesh, grad_clip=1.0)
    x, y = batch()
    b = {"inputs": sharding.make_global_microbatches(x, mesh), "targets": sharding.make_global_microbatches(y, mesh)}
    losses = []
    for i in range(STEPS):
        state, metrics = step_fn(state, b, np.float32(1.0 - 0.1 * i), np.float32(0.85 + 0.01 * i))
        losses.append(float(metrics["loss"]))
    return losses, state


def leaves(tree):
    return [np.asarray(a, np.float64) for a in jax.tree.leaves(jax.device_get(tree))]


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_fsdp_matches_replicated_fp32():
    """fp32 Newton–Schulz (sharded Muon), so only the gradient reduction order differs.

    Observed: losses within 2e-7 relative; block weights (Muon) within 9e-7
    absolute; every param and moment within 6e-6 relative (Frobenius). AdamW's
    eps=1e-10 makes a gradient that cancels almost to zero an O(lr) update, so
    ~1% of wte elements differ by up to 7.5e-4 (as 8-device vs 1-device in
    test_train_step); hence the per-leaf norm bound on the embeddings.
    """
    ref_losses, ref = train("replicated", shard_muon=True, ns_dtype="float32")
    losses, got = train("fsdp", shard_muon=True, ns_dtype="float32")
    assert ref_losses[-1] < ref_losses[0] - 0.5  # it trains, so the comparison covers real updates
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6, atol=0)
    for a, b in zip(leaves(got.params["h"]), leaves(ref.params["h"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    for a, b in zip(leaves(got), leaves(ref)):
        if b.ndim:
            assert rel_err(a, b) < 2e-5
        else:
            assert a == b  # AdamW step counts


def test_fsdp_matches_replicated_bf16_newton_schulz():
    """nanochat's bf16 NS, whole matrices on every device (no shard_muon).

    bf16 rounding amplifies last-ulp gradient differences through five NS
    iterations (observed: block params up to 4e-3 relative apart), so, as in
    test_train_step, each param's total update is compared against the ~3%
    that bf16 NS itself sits from exact arithmetic.
    """
    start = leaves(nnx.to_pure_dict(nnx.state(random_gpt(CFG, 0), nnx.Param)))
    ref_losses, ref = train("replicated", shard_muon=False, ns_dtype="bfloat16")
    losses, got = train("fsdp", shard_muon=False, ns_dtype="bfloat16")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for s0, a, b in zip(start, leaves(got.params), leaves(ref.params)):
        assert rel_err(a - s0, b - s0) < 0.03


def test_fsdp_state_is_sharded_over_all_devices():
    """Each device holds 1/8 of every weight and moment, along the axis fsdp_sharding picks (not the layer axis)."""
    _, state = train("fsdp", shard_muon=True, ns_dtype="float32")
    params = state.params
    for name, full, shard in [
        ("wte", (320, 64), (40, 64)),
        ("lm_head", (64, 320), (64, 40)),
        ("attn_c_q", (3, 64, 64), (3, 8, 64)),  # tie between in and out: the first wins
        ("mlp_c_fc", (3, 64, 256), (3, 64, 32)),
        ("mlp_c_proj", (3, 256, 64), (3, 32, 64)),
    ]:
        leaf = params[name] if name in params else params["h"][name]
        assert leaf.shape == full
        assert {s.data.shape for s in leaf.addressable_shards} == {shard}, name
    moments = [a for a in jax.tree.leaves(state.opt_state) if a.ndim >= 2]
    assert len(moments) == 2 * 2 + 6  # AdamW mu, nu for wte and lm_head; Muon momentum per block matrix
    for a in moments:
        assert a.addressable_shards[0].data.size * 8 == a.size


def test_fsdp_checkpoint_restores_replicated(tmp_path):
    """An fsdp state is saved as whole arrays: it restores onto the replicated and the fsdp layout, bit for bit."""
    _, state = train("fsdp", shard_muon=False, ns_dtype="bfloat16")
    mesh = sharding.make_mesh()
    ckpt = checkpoint.Checkpointer(tmp_path / "ck", keep=2, async_save=False)
    ckpt.save(STEPS, params=state.params, opt_state=None, meta={"step": STEPS})
    ckpt.wait()
    for layout in sharding.PARAM_SHARDINGS:
        abstract = checkpoint.abstract_params(CFG)
        shardings = sharding.param_shardings(abstract, mesh, layout)
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)
        restored = ckpt.restore(STEPS, abstract_params=abstract)["params"]
        for a, b in zip(leaves(restored), leaves(state.params)):
            np.testing.assert_array_equal(a, b)
        assert jax.tree.leaves(restored)[0].sharding == jax.tree.leaves(shardings)[0]
    ckpt.close()


def test_unknown_param_sharding_is_one_clear_error():
    with pytest.raises(sharding.ShardingError, match="param_sharding='zero2'"):
        nanochat_optimizer(CFG, mesh=sharding.make_mesh(), param_sharding="zero2")
