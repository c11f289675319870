"""The JAX GPT against nanochat's numbers and an independent PyTorch reference.

Why these tests: the model is the thing every later stage trusts, so it is
checked (a) against the parameter/FLOP counts nanochat reports, (b) against a
PyTorch implementation written separately from the spec (``torch_reference``),
on fully random weights (nanochat zero-inits lm_head and both c_proj, which
would hide bugs in whole sub-networks), with GQA and a padded vocab, and
(c) for internal consistency of its execution switches and input checks.
One parity test builds the JAX params by hand, without ``nanochat_jax.convert``,
so a converter bug cannot mask a model bug (or vice versa).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from nanochat_jax import convert, gpt  # noqa: E402
from nanochat_jax.gpt import GPT, GPTConfig, validate_tokens  # noqa: E402

from bench import torch_reference as tr  # noqa: E402

# Tiny but exercises every feature: GQA (4 query heads over 2 kv heads),
# vocab 300 padded to 320, and sequences beyond sequence_len (rotary rows
# past T, up to nanochat's 10x cache).
TINY = dict(sequence_len=16, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)


def tiny_config(**kw) -> GPTConfig:
    return GPTConfig(**TINY, **kw)


def torch_model(seed: int = 0) -> "tr.GPT":
    torch.manual_seed(seed)
    m = tr.GPT(tr.GPTConfig(**TINY))
    m.init_weights()
    m.randomize_weights(seed=seed)
    return m.eval()


def params_by_hand(tmodel: "tr.GPT") -> dict:
    """torch state dict -> JAX nested params, written out here without convert.py."""
    sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    L = tmodel.config.n_layer

    def stack(suffix):
        return np.stack([sd[f"transformer.h.{i}.{suffix}"].T for i in range(L)])

    return {
        "wte": sd["transformer.wte.weight"],
        "lm_head": sd["lm_head.weight"].T,
        "h": {
            "attn_c_q": stack("attn.c_q.weight"),
            "attn_c_k": stack("attn.c_k.weight"),
            "attn_c_v": stack("attn.c_v.weight"),
            "attn_c_proj": stack("attn.c_proj.weight"),
            "mlp_c_fc": stack("mlp.c_fc.weight"),
            "mlp_c_proj": stack("mlp.c_proj.weight"),
        },
    }


def load_params(model: GPT, params: dict) -> GPT:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def jax_model_by_hand(tmodel, **kw) -> GPT:
    return load_params(GPT(tiny_config(**kw), rngs=nnx.Rngs(123)), params_by_hand(tmodel))


def jax_model_via_convert(tmodel, **kw) -> GPT:
    sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    return convert.build_model(tiny_config(**kw), convert.state_dict_to_params(sd, tiny_config(**kw)))


@nnx.jit
def evaluate(model, idx, targets):
    """Logits, mean and per-token loss, and gradients of the mean loss, in one jit.

    One compiled function per (config, shape) keeps the suite fast on CPU:
    eager JAX dispatches op by op, and every separate jit is another compile.
    Models with the same config share a graphdef, so tests reuse the compile.
    """

    def loss_fn(m):
        return m(idx, targets), (m(idx), m(idx, targets, loss_reduction="none"))

    (loss, (logits, per_token)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return logits, loss, per_token, nnx.to_pure_dict(grads)


def tokens(B: int, T: int, seed: int = 0, vocab: int = TINY["vocab_size"]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T)).astype(np.int32)


def targets_with_ignores(B: int, T: int, seed: int = 1) -> np.ndarray:
    t = tokens(B, T, seed)
    t[0, :3] = -1
    t[-1, -1] = -1
    # Make sure the top of the true vocab (just below the padding) is a target.
    t[0, T // 2 + 1] = TINY["vocab_size"] - 1
    return t


# --------------------------------------------------------------------------- counts


def test_d20_params_and_flops_match_nanochat():
    cfg = GPTConfig.from_depth(20)
    assert cfg.num_params() == 560_988_160
    assert cfg.flops_per_token() == 3_491_758_080
    assert f"{cfg.flops_per_token():e}" == "3.491758e+09"
    ref = tr.build_meta(tr.GPTConfig.from_depth(20))
    assert ref.num_params() == cfg.num_params()
    assert ref.estimate_flops() == cfg.flops_per_token()
    # The JAX module really holds that many parameters (shape-only, no memory).
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 560_988_160


@pytest.mark.parametrize(
    "depth, n_embd, n_head, params",
    [
        (12, 768, 6, None),
        (20, 1280, 10, 560_988_160),
        (26, 1664, 13, 1_081_999_360),
        (32, 2048, 16, 1_879_048_192),
    ],
)
def test_depth_rule(depth, n_embd, n_head, params):
    cfg = GPTConfig.from_depth(depth)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (depth, n_embd, n_head, n_head, 128)
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.sequence_len) == (65536, 65536, 2048)
    if params is not None:
        assert cfg.num_params() == params
    ref = tr.build_meta(tr.GPTConfig.from_depth(depth))
    assert ref.num_params() == cfg.num_params()
    assert ref.estimate_flops() == cfg.flops_per_token()
    # Shapes of every tensor agree with nanochat's (out, in) layout, transposed and stacked.
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ref_shapes == convert.expected_torch_shapes(cfg)


def test_d32_flops():
    assert GPTConfig.from_depth(32).flops_per_token() == 12_079_595_520  # nanochat: 1.20796e10


def test_padded_vocab_counts():
    cfg = tiny_config()
    assert cfg.padded_vocab_size == 320
    assert tr.GPT(tr.GPTConfig(**TINY)).num_params() == cfg.num_params()


# --------------------------------------------------------------------------- init


def test_init_matches_nanochat_rule():
    """Default init: embedding N(0,1), Linear std rule, zero lm_head and c_projs."""
    cfg = GPTConfig(sequence_len=16, vocab_size=512, n_layer=2, n_head=4, n_kv_head=1, n_embd=256)
    m = GPT(cfg, rngs=nnx.Rngs(0))
    assert not np.any(np.asarray(m.lm_head[...]))
    assert not np.any(np.asarray(m.h.attn_c_proj[...]))
    assert not np.any(np.asarray(m.h.mlp_c_proj[...]))
    assert np.std(np.asarray(m.wte[...])) == pytest.approx(1.0, rel=0.02)
    for name in ("attn_c_q", "attn_c_k", "attn_c_v", "mlp_c_fc"):
        w = np.asarray(getattr(m.h, name)[...])
        _, fan_in, fan_out = w.shape
        want = 1 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
        assert np.std(w) == pytest.approx(want, rel=0.05), name
        assert abs(np.mean(w)) < 0.1 * want, name
    # The torch reference's init_weights follows the same rule (sanity of the reference).
    t = tr.GPT(tr.GPTConfig(**cfg.model_config_dict()))
    t.init_weights()
    assert not t.lm_head.weight.any() and not t.transformer.h[0].mlp.c_proj.weight.any()
    std_k = t.transformer.h[0].attn.c_k.weight.std().item()
    assert std_k == pytest.approx(np.std(np.asarray(m.h.attn_c_k[...])), rel=0.1)


# --------------------------------------------------------------------------- parity


def torch_eval(tmodel, idx: np.ndarray, tgt: np.ndarray):
    """Logits, mean loss, per-token loss and mean-loss grads (JAX layout) from the reference."""
    ti, tt = torch.from_numpy(idx).long(), torch.from_numpy(tgt).long()
    with torch.no_grad():
        logits = tmodel(ti).numpy()
        per_token = tmodel(ti, tt, loss_reduction="none").numpy()
    tmodel.zero_grad()
    loss = tmodel(ti, tt)
    loss.backward()
    return logits, loss.item(), per_token, torch_grads(tmodel)


def torch_grads(tmodel) -> dict:
    L = tmodel.config.n_layer
    blocks = tmodel.transformer.h

    def stack(get):
        return np.stack([get(blocks[i]).grad.numpy().T for i in range(L)])

    return {
        "wte": tmodel.transformer.wte.weight.grad.numpy(),
        "lm_head": tmodel.lm_head.weight.grad.numpy().T,
        "h": {
            "attn_c_q": stack(lambda b: b.attn.c_q.weight),
            "attn_c_k": stack(lambda b: b.attn.c_k.weight),
            "attn_c_v": stack(lambda b: b.attn.c_v.weight),
            "attn_c_proj": stack(lambda b: b.attn.c_proj.weight),
            "mlp_c_fc": stack(lambda b: b.mlp.c_fc.weight),
            "mlp_c_proj": stack(lambda b: b.mlp.c_proj.weight),
        },
    }


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", np.asarray(v)


# (2, 16): a full sequence_len batch; (1, 37): odd length past sequence_len,
# so rotary rows beyond T are used (nanochat caches 10 x sequence_len).
SHAPES = [(2, 16), (1, 37)]


@pytest.mark.parametrize("build", [jax_model_by_hand, jax_model_via_convert], ids=["by_hand", "via_convert"])
@pytest.mark.parametrize("B, T", SHAPES)
def test_parity_with_torch(build, B, T):
    """fp32 logits within 1e-4, losses within 1e-5, gradients close, on random weights."""
    tmodel = torch_model(seed=T)
    jmodel = build(tmodel)
    idx = tokens(B, T, seed=T)
    tgt = targets_with_ignores(B, T, seed=T + 1)
    t_logits, t_mean, t_none, t_grads = torch_eval(tmodel, idx, tgt)
    j_logits, j_mean, j_none, j_grads = evaluate(jmodel, jnp.asarray(idx), jnp.asarray(tgt))
    j_logits, j_none = np.asarray(j_logits), np.asarray(j_none)

    assert j_logits.shape == (B, T, TINY["vocab_size"]) and j_logits.dtype == np.float32
    assert np.std(t_logits) > 0.3  # logits are O(1) and spread out, so 1e-4 means something
    np.testing.assert_allclose(j_logits, t_logits, atol=1e-4, rtol=0)
    assert abs(float(j_mean) - t_mean) <= 1e-5
    assert j_none.shape == (B, T)
    np.testing.assert_allclose(j_none.reshape(-1), t_none, atol=1e-5, rtol=0)
    assert np.all(j_none[tgt == -1] == 0)

    flat_t, flat_j = dict(_flatten(t_grads)), dict(_flatten(j_grads))
    assert flat_t.keys() == flat_j.keys()
    for k, want in flat_t.items():
        scale = np.abs(want).max()
        assert scale > 0, k
        np.testing.assert_allclose(flat_j[k], want, atol=1e-4 * scale, rtol=1e-3, err_msg=k)


@pytest.mark.parametrize(
    "jdt, tdt, rtol",
    [(jnp.float32, torch.float32, 1e-6), (jnp.bfloat16, torch.bfloat16, 2**-8), (jnp.float16, torch.float16, 2**-10)],
)
def test_rms_norm_matches_torch_in_every_dtype(jdt, tdt, rtol):
    """torch adds finfo(float32).eps even for bf16/fp16 inputs (it upcasts first).

    Rows span 1e-3 .. 10 in scale: with bf16's own eps (2**-7) the small rows
    would come out shrunk by up to 10x, so this pins the eps, not just the formula.
    """
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 128)) * np.logspace(-3, 1, 64)[:, None]).astype(np.float32)
    want = F.rms_norm(torch.from_numpy(x).to(tdt), (128,)).float().numpy()
    got = np.asarray(gpt.rms_norm(jnp.asarray(x).astype(jdt)).astype(jnp.float32))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6)


def test_bf16_forward_close_to_torch_autocast():
    """Loose end-to-end check of the bf16 path (different rounding points, so ~bf16 noise)."""
    tmodel = torch_model(seed=21)
    jmodel = jax_model_by_hand(tmodel, compute_dtype="bfloat16")
    idx = tokens(2, 16, seed=21)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = tmodel(torch.from_numpy(idx).long()).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(jmodel, jnp.asarray(idx)))
    assert got.dtype == np.float32  # logits are fp32 whatever the compute dtype
    assert np.abs(got - want).max() < 0.1 * np.std(want)


# --------------------------------------------------------------------------- switches


# Every value of each switch, and remat both inside and outside lax.scan. The
# remat wrapper is the same function in both loops, so the full 2x3 product
# would add two more (slow, ~5 s each on CPU) compiles for no new code path.
SWITCHES = [(False, "none"), (True, "none"), (False, "dots"), (True, "full")]


def test_execution_switches_same_logits_and_grads():
    """scan_layers x remat: identical maths, so logits, loss and grads agree."""
    params = params_by_hand(torch_model(seed=16))
    B, T = SHAPES[0]
    idx, tgt = jnp.asarray(tokens(B, T, seed=5)), jnp.asarray(targets_with_ignores(B, T, seed=6))
    results = {}
    for scan, remat in SWITCHES:
        m = load_params(GPT(tiny_config(scan_layers=scan, remat=remat), rngs=nnx.Rngs(0)), params)
        logits, loss, _, grads = evaluate(m, idx, tgt)
        results[scan, remat] = np.asarray(logits), float(loss), dict(_flatten(grads))
    base_logits, base_loss, base_grads = results[False, "none"]
    for (scan, remat), (logits, loss, grads) in results.items():
        what = f"scan_layers={scan} remat={remat}"
        np.testing.assert_allclose(logits, base_logits, atol=1e-5, rtol=0, err_msg=what)
        assert loss == pytest.approx(base_loss, abs=1e-6), what
        for k, g in base_grads.items():
            np.testing.assert_allclose(grads[k], g, atol=1e-6, rtol=1e-5, err_msg=f"{k} {what}")


@pytest.mark.parametrize("chunk", [5, 8], ids=["padded_last_chunk", "exact_chunks"])
def test_chunked_cross_entropy_same_loss_and_grads(chunk):
    """ce_chunk_size only changes where the logits live: mean, per-token losses and grads agree."""
    params = params_by_hand(torch_model(seed=17))
    B, T = SHAPES[0]
    idx, tgt = jnp.asarray(tokens(B, T, seed=7)), jnp.asarray(targets_with_ignores(B, T, seed=8))
    base = evaluate(load_params(GPT(tiny_config(), rngs=nnx.Rngs(0)), params), idx, tgt)
    got = evaluate(load_params(GPT(tiny_config(ce_chunk_size=chunk), rngs=nnx.Rngs(0)), params), idx, tgt)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(base[0]))  # logits: the chunking is loss-only
    assert float(got[1]) == pytest.approx(float(base[1]), abs=1e-6)
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(base[2]), atol=1e-6, rtol=0)
    assert np.all(np.asarray(got[2])[np.asarray(tgt) == -1] == 0)
    base_grads, grads = dict(_flatten(base[3])), dict(_flatten(got[3]))
    for k, g in base_grads.items():
        np.testing.assert_allclose(grads[k], g, atol=1e-6, rtol=1e-5, err_msg=k)


def test_chunked_cross_entropy_does_not_hold_all_logits():
    """The compiled loss+grad's scratch memory drops below one fp32 copy of the logits."""
    B, T, V = 2, 256, 8192
    logits_bytes = B * T * V * 4  # 16 MiB

    def scratch(chunk):
        cfg = GPTConfig(sequence_len=T, vocab_size=V, n_layer=1, n_head=1, n_kv_head=1, n_embd=64, ce_chunk_size=chunk)
        graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        idx = jnp.zeros((B, T), jnp.int32)
        grad = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p)(idx, idx)))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    full, chunked = scratch(0), scratch(32)  # measured: 67.6 MiB vs 11.6 MiB
    assert full > 3 * logits_bytes  # several fp32 B*T*V buffers when unchunked
    assert chunked < logits_bytes and full > 4 * chunked, (full, chunked)  # a few chunk-sized ones when chunked
    with pytest.raises(ValueError, match="ce_chunk_size=-1"):
        tiny_config(ce_chunk_size=-1)


@pytest.mark.parametrize("x_shape", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
def test_linear_value_and_gradients_match_hand_formulas(x_shape):
    """``gpt.linear``'s explicit weight gradient: ``dx = g Wᵀ``, ``dW = Σ x gᵀ`` over every leading axis (float64 numpy)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((5, 7)).astype(np.float32)
    g = rng.standard_normal(x_shape[:-1] + (7,)).astype(np.float32)  # a random cotangent, not all ones
    y, vjp = jax.vjp(gpt.linear, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(g))
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    np.testing.assert_allclose(np.asarray(y), x64 @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), g64 @ w64.T, rtol=1e-5, atol=1e-5)
    want_dw = x64.reshape(-1, 5).T @ g64.reshape(-1, 7)
    np.testing.assert_allclose(np.asarray(dw), want_dw, rtol=1e-5, atol=1e-5)
    assert dx.shape == x.shape and dw.shape == w.shape and dw.dtype == jnp.float32


def test_eager_forward_matches_jitted():
    m = jax_model_by_hand(torch_model(seed=2))
    B, T = SHAPES[0]
    idx, tgt = jnp.asarray(tokens(B, T, seed=9)), jnp.asarray(targets_with_ignores(B, T, seed=10))
    jit_logits = np.asarray(evaluate(m, idx, tgt)[0])
    np.testing.assert_allclose(np.asarray(m(idx)), jit_logits, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    m = jax_model_by_hand(torch_model(seed=4))
    B, T = SHAPES[0]
    idx, tgt = jnp.asarray(tokens(B, T, seed=1)), jnp.asarray(targets_with_ignores(B, T, seed=2))
    grads = dict(_flatten(evaluate(m, idx, tgt)[3]))
    assert set(grads) == {"wte", "lm_head"} | {f"h.{n}" for n in convert.BLOCK_KEY}
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), k
        assert np.any(g != 0), k
    # Every layer of every stacked weight gets signal, not just the stack as a whole.
    for n in convert.BLOCK_KEY:
        assert all(np.any(grads[f"h.{n}"][i] != 0) for i in range(TINY["n_layer"])), n
    # Padded vocab columns never receive gradient: they are sliced away before the loss.
    assert not np.any(grads["lm_head"][:, TINY["vocab_size"]:])


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_model():
    return GPT(tiny_config(), rngs=nnx.Rngs(0))


def test_float_idx_is_type_error(small_model):
    with pytest.raises(TypeError, match="idx"):
        small_model(jnp.zeros((1, 4), jnp.float32))


def test_wrong_rank_is_value_error(small_model):
    with pytest.raises(ValueError, match="idx"):
        small_model(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="idx"):
        small_model(jnp.zeros((1, 2, 4), jnp.int32))


@pytest.mark.parametrize("bad", [300, 12345, -5])
def test_out_of_range_ids_named(small_model, bad):
    idx = np.zeros((2, 4), np.int32)
    idx[1, 2] = bad
    with pytest.raises(ValueError, match=str(bad)):
        small_model(jnp.asarray(idx))


def test_targets_below_minus_one_rejected(small_model):
    idx = jnp.zeros((1, 4), jnp.int32)
    tgt = np.array([[1, -1, -2, 3]], np.int32)
    with pytest.raises(ValueError, match="-2"):
        small_model(idx, jnp.asarray(tgt))
    tgt_big = np.array([[1, 300, 2, 3]], np.int32)
    with pytest.raises(ValueError, match="300"):
        small_model(idx, jnp.asarray(tgt_big))
    # -1 alone is the ignore index and is fine (checked without paying for an eager forward).
    validate_tokens(np.array([[1, -1, 2, 299]], np.int32), small_model.config, "targets", allow_ignore=True)
    with pytest.raises(ValueError, match="-1"):
        validate_tokens(np.array([[1, -1]], np.int32), small_model.config, "idx")


def test_sequence_longer_than_rotary_cache_rejected(small_model):
    max_T = 10 * TINY["sequence_len"]
    validate_tokens(np.zeros((1, max_T), np.int32), small_model.config)  # exactly the cache is fine
    with pytest.raises(ValueError, match=str(max_T)):
        small_model(jnp.zeros((1, max_T + 1), jnp.int32))
