"""nanochat's classic GPT (commit 8c89661) in Flax NNX.

Architecture, exactly as nanochat computes it:
  token embedding -> parameter-free RMSNorm -> L pre-norm blocks
  [x += attn(norm(x)); x += mlp(norm(x))] -> norm -> untied lm_head
  -> logits sliced to the true vocab -> fp32 -> softcap 15 -> cross-entropy.
Attention: rotary (base 10,000, half-split layout, tables rounded to bf16 like
nanochat's buffers) then QK RMSNorm, causal, scale 1/sqrt(head_dim), GQA.
MLP: ReLU^2 at 4x. No biases anywhere.

Parameter layout (JAX convention, kernels are ``(in, out)``):
  ``wte``           (padded_vocab, n_embd)
  ``h.attn_c_q``    (n_layer, n_embd, n_head * head_dim)
  ``h.attn_c_k``    (n_layer, n_embd, n_kv_head * head_dim)
  ``h.attn_c_v``    (n_layer, n_embd, n_kv_head * head_dim)
  ``h.attn_c_proj`` (n_layer, n_embd, n_embd)
  ``h.mlp_c_fc``    (n_layer, n_embd, 4 * n_embd)
  ``h.mlp_c_proj``  (n_layer, 4 * n_embd, n_embd)
  ``lm_head``       (n_embd, padded_vocab)
Block weights are stacked on a leading layer axis so the same parameters run
either under ``lax.scan`` (fast compiles) or as an unrolled loop (peak speed),
and so Muon can treat same-shape matrices as one batch.

Parameters are always fp32 masters; ``compute_dtype`` (bf16 on accelerators)
is what matmuls and activations run in.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from nanochat_jax import sharding

SOFTCAP = 15.0
ROTARY_BASE = 10_000.0
VOCAB_PAD_MULTIPLE = 64
IGNORE_INDEX = -1

# The per-layer matrices, in forward order; all live stacked in GPT.h.
BLOCK_PARAM_NAMES = ("attn_c_q", "attn_c_k", "attn_c_v", "attn_c_proj", "mlp_c_fc", "mlp_c_proj")

REMAT_POLICIES = ("none", "dots", "full")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model shape (nanochat's six fields) plus execution switches.

    Only the first six fields describe the model and go into checkpoints
    (``model_config_dict``); the rest choose how it runs.
    """

    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    # Execution switches (not part of nanochat's model_config).
    compute_dtype: str = "float32"  # "bfloat16" on accelerators
    attention_impl: str = "auto"  # auto | xla | cudnn
    remat: str = "none"  # none | dots | full
    scan_layers: bool = False
    ce_chunk_size: int = 0  # loss over sequence chunks of this many positions; 0 = all logits at once

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head} (GQA)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.ce_chunk_size < 0:
            raise ValueError(f"ce_chunk_size={self.ce_chunk_size} must be >= 0 (0 = no chunking)")
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected auto, xla or cudnn")
        jnp.dtype(self.compute_dtype)  # raises on an unknown dtype name

    @classmethod
    def from_depth(cls, depth: int, *, vocab_size: int = 65536, sequence_len: int = 2048, **kwargs) -> "GPTConfig":
        """nanochat's depth dial: n_embd = 64*depth, head_dim 128, n_kv_head = n_head."""
        n_embd = depth * 64
        n_head = max(1, math.ceil(n_embd / 128))
        return cls(
            sequence_len=sequence_len,
            vocab_size=vocab_size,
            n_layer=depth,
            n_head=n_head,
            n_kv_head=n_head,
            n_embd=n_embd,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    def model_config_dict(self) -> dict[str, int]:
        """The six fields nanochat stores as ``model_config`` in meta.json."""
        return {k: getattr(self, k) for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")}

    def block_shapes(self) -> dict[str, tuple[int, int, int]]:
        C, L, D = self.n_embd, self.n_layer, self.head_dim
        return {
            "attn_c_q": (L, C, self.n_head * D),
            "attn_c_k": (L, C, self.n_kv_head * D),
            "attn_c_v": (L, C, self.n_kv_head * D),
            "attn_c_proj": (L, C, C),
            "mlp_c_fc": (L, C, 4 * C),
            "mlp_c_proj": (L, 4 * C, C),
        }

    def num_params(self) -> int:
        """All parameters, embedding and padded vocab included (nanochat's count)."""
        blocks = sum(math.prod(s) for s in self.block_shapes().values())
        return blocks + 2 * self.padded_vocab_size * self.n_embd

    def flops_per_token(self) -> int:
        """nanochat's estimate: 6*(N - N_wte) + 12*L*H*D*T (PaLM appendix B)."""
        n_wte = self.padded_vocab_size * self.n_embd
        attn = 12 * self.n_layer * self.n_head * self.head_dim * self.sequence_len
        return 6 * (self.num_params() - n_wte) + attn


# --------------------------------------------------------------------------- math


def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm with torch.nn.functional.rms_norm's default eps.

    With eps=None torch upcasts bf16/fp16 to fp32 and adds ``finfo(float32).eps``
    (not the input dtype's eps, which for bf16 is 2**-7), in eager kernels and in
    the decomposition torch.compile uses; the result is cast back.
    """
    eps = jnp.finfo(jnp.float32).eps
    xf = x.astype(jnp.float32)
    out = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return out.astype(x.dtype)


@functools.lru_cache(maxsize=16)
def rotary_tables(num_positions: int, head_dim: int, base: float = ROTARY_BASE) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables ``(num_positions, head_dim/2)`` rounded to bf16.

    Computed on the host in fp32 the way nanochat builds its buffers, then
    rounded to bf16 because nanochat keeps them in bf16 on every device.
    Host-side numpy keeps them compile-time constants.
    """
    channels = np.arange(0, head_dim, 2, dtype=np.float32)
    inv_freq = np.float32(1.0) / (np.float32(base) ** (channels / np.float32(head_dim)))
    t = np.arange(num_positions, dtype=np.float32)
    freqs = np.outer(t, inv_freq).astype(np.float32)
    bf16 = ml_dtypes.bfloat16
    return np.cos(freqs).astype(bf16), np.sin(freqs).astype(bf16)


def rotary_slice(config: GPTConfig, T: int, offset: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
    """Rows ``offset .. offset+T`` of the tables (nanochat precomputes 10*sequence_len)."""
    cos, sin = rotary_tables(10 * config.sequence_len, config.head_dim)
    cos, sin = jnp.asarray(cos), jnp.asarray(sin)
    if isinstance(offset, int) and offset == 0:
        return cos[:T], sin[:T]
    return (
        jax.lax.dynamic_slice_in_dim(cos, offset, T, axis=0),
        jax.lax.dynamic_slice_in_dim(sin, offset, T, axis=0),
    )


def rotary_at(config: GPTConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``(B, T, D/2)`` at per-row rotary positions ``(B, T)``."""
    cos, sin = rotary_tables(10 * config.sequence_len, config.head_dim)
    take = lambda table: jnp.take(jnp.asarray(table), positions, axis=0, mode="clip")  # noqa: E731
    return take(cos), take(sin)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Half-split rotary on ``(B, T, H, D)``; cos/sin ``(T, D/2)`` or ``(B, T, D/2)``."""
    d = x.shape[-1] // 2
    cos = cos.astype(x.dtype)[..., None, :]
    sin = sin.astype(x.dtype)[..., None, :]
    x1, x2 = x[..., :d], x[..., d:]
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


@jax.custom_vjp
def _linear_explicit_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return x @ kernel


def _linear_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _linear_bwd(res, g):
    x, kernel = res
    return g @ kernel.T, jnp.einsum("...i,...o->io", x, g)


_linear_explicit_grad.defvjp(_linear_fwd, _linear_bwd)


def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for ``x (..., in)``, ``kernel (in, out)``; same values and gradients everywhere.

    Why a function: for autodiff's weight gradient (a dot_general followed by a
    transpose) XLA:CPU materialises the *gradient* transposed, fused into its
    elementwise producer, and runs the dot on its slow Eigen path (for the
    tiny config's lm_head a strided copy of the 2048x4096 logits gradient).
    On CPU the weight gradient is therefore written out as
    ``einsum("...i,...o->io", x, g)``, which XLA runs as a fast YNNPACK dot
    with the small activation transposed (bench/NOTES.md, CPU section). Other
    backends keep autodiff's form, which they handle well.
    """
    if jax.default_backend() == "cpu":
        return _linear_explicit_grad(x, kernel)
    return x @ kernel


def resolve_attention_impl(config: GPTConfig) -> str:
    """cuDNN flash attention on NVIDIA GPUs in bf16/fp16, XLA elsewhere."""
    if config.attention_impl != "auto":
        return config.attention_impl
    half = jnp.dtype(config.compute_dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if (jax.default_backend() == "gpu" and half) else "xla"


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
    """Causal self-attention on ``(B, T, H, D)`` / ``(B, T, Hkv, D)``; no mask tensor."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def block_forward(
    x: jax.Array,
    p: dict[str, jax.Array],
    cos: jax.Array,
    sin: jax.Array,
    config: GPTConfig,
    attend=None,
) -> tuple[jax.Array, Any]:
    """One transformer block on ``x (B, T, C)`` with one layer's weights ``p``.

    ``attend(q, k, v) -> (y, aux)`` defaults to causal self-attention; the
    inference engine passes one that reads and writes a KV cache. Under
    fsdp the layer's weights are gathered here (``sharding.gather``).
    """
    B, T, C = x.shape
    H, Hkv, D = config.n_head, config.n_kv_head, config.head_dim
    dt = x.dtype
    w = sharding.gather(p, dt)

    h = rms_norm(x)
    if "attn_c_qkv" in w:  # the engine's fused projection (kv_cache.layer_weights)
        q, k, v = jnp.split(linear(h, w["attn_c_qkv"]), [H * D, (H + Hkv) * D], axis=-1)
    else:
        q, k, v = (linear(h, w[f"attn_c_{n}"]) for n in "qkv")
    q, k, v = q.reshape(B, T, H, D), k.reshape(B, T, Hkv, D), v.reshape(B, T, Hkv, D)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    q, k = rms_norm(q), rms_norm(k)
    if attend is None:
        y, aux = causal_attention(q, k, v, resolve_attention_impl(config)), None
    else:
        y, aux = attend(q, k, v)
    x = x + linear(y.reshape(B, T, C), w["attn_c_proj"])

    h = rms_norm(x)
    h = jnp.square(jax.nn.relu(linear(h, w["mlp_c_fc"])))
    x = x + linear(h, w["mlp_c_proj"])
    return x, aux


def _remat(fn, policy: str):
    """Wrap a layer for rematerialisation; under fsdp even "none" drops the gathered weights (re-gathered in the backward)."""
    if policy == "none" and sharding.is_gathering():
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_anything_except_these_names(sharding.GATHERED))
    if policy == "none":
        return fn
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return jax.checkpoint(fn)


def softcap_logits(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Slice padded vocab away, cast to fp32, then 15*tanh(x/15) (nanochat's order)."""
    logits = logits[..., :vocab_size].astype(jnp.float32)
    return SOFTCAP * jnp.tanh(logits / SOFTCAP)


def hidden_to_logits(x: jax.Array, lm_head: jax.Array, vocab_size: int) -> jax.Array:
    """Final norm, untied head in the activation dtype, then slice + fp32 + softcap."""
    x = rms_norm(x)
    return softcap_logits(linear(x, lm_head.astype(x.dtype)), vocab_size)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood; 0 where the target is the ignore index -1."""
    valid = targets != IGNORE_INDEX
    safe = jnp.where(valid, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, logz - picked, 0.0)


def reduce_nll(nll: jax.Array, targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """Like ``F.cross_entropy``'s reductions with ignore index -1.

    'none' returns the per-token losses (0 at ignored positions); 'mean'
    averages over non-ignored tokens (0, not NaN, when there are none).
    """
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"loss_reduction={reduction!r}; expected 'mean', 'sum' or 'none'")
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / jnp.maximum((targets != IGNORE_INDEX).sum(), 1)


def chunked_token_nll(x: jax.Array, lm_head: jax.Array, targets: jax.Array, vocab_size: int, chunk: int) -> jax.Array:
    """``token_nll(hidden_to_logits(x, ...), targets)`` without holding all the logits.

    The fp32 logits are ``B*T*V`` (d20 at B=32: 4.3e9 values, 17 GB per
    copy, and softcap/logsumexp and their gradients make several). Here the
    sequence is cut into chunks of ``chunk`` positions (the last one padded
    with ignored targets) and mapped over with ``lax.map``; each chunk is a
    ``jax.checkpoint``, so its logits are rebuilt in the backward pass instead
    of being stored: only one chunk's logits are alive at a time. Same values
    as the unchunked loss up to fp32 summation order.
    """
    B, T, C = x.shape
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    x_chunks = x.reshape(B, n, chunk, C).swapaxes(0, 1)  # (n, B, chunk, C)
    t_chunks = targets.reshape(B, n, chunk).swapaxes(0, 1)
    head = lm_head.astype(x.dtype)  # cast once, not once per chunk and again in the backward

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def piece(x_c, t_c):
        return token_nll(hidden_to_logits(x_c, head, vocab_size), t_c)

    nll = jax.lax.map(lambda xt: piece(*xt), (x_chunks, t_chunks))  # (n, B, chunk)
    return nll.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]


# --------------------------------------------------------------------------- modules


class Blocks(nnx.Module):
    """All transformer blocks' weights, stacked on a leading layer axis."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        for name, shape in config.block_shapes().items():
            _, fan_in, fan_out = shape
            if name.endswith("c_proj"):
                value = jnp.zeros(shape, jnp.float32)  # nanochat zero-inits both output projections
            else:
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
            setattr(self, name, nnx.Param(value))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in BLOCK_PARAM_NAMES}


class GPT(nnx.Module):
    """nanochat's classic GPT. ``model(idx)`` -> fp32 logits; ``model(idx, targets)`` -> loss."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        Vp, C = config.padded_vocab_size, config.n_embd
        self.wte = nnx.Param(jax.random.normal(rngs.params(), (Vp, C), jnp.float32))
        self.h = Blocks(config, rngs=rngs)
        self.lm_head = nnx.Param(jnp.zeros((C, Vp), jnp.float32))

    # -- pieces shared with the inference engine ---------------------------------
    def embed(self, idx: jax.Array) -> jax.Array:
        x = jnp.take(sharding.gather(self.wte[...]), idx, axis=0).astype(self.config.compute_dtype)
        return rms_norm(x)

    def logits_from_hidden(self, x: jax.Array) -> jax.Array:
        return hidden_to_logits(x, sharding.gather(self.lm_head[...]), self.config.vocab_size)

    # -- training / scoring forward ----------------------------------------------
    def __call__(self, idx: jax.Array, targets: jax.Array | None = None, loss_reduction: str = "mean") -> jax.Array:
        cfg = self.config
        validate_tokens(idx, cfg, "idx")
        if targets is not None:
            validate_tokens(targets, cfg, "targets", allow_ignore=True)
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {targets.shape} != idx shape {idx.shape}")
        x = self.hidden_states(idx)
        if targets is None:
            return self.logits_from_hidden(x)
        if 0 < cfg.ce_chunk_size < idx.shape[1]:
            nll = chunked_token_nll(x, sharding.gather(self.lm_head[...]), targets, cfg.vocab_size, cfg.ce_chunk_size)
        else:
            nll = token_nll(self.logits_from_hidden(x), targets)
        return reduce_nll(nll, targets, loss_reduction)

    def hidden_states(self, idx: jax.Array, positions: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """The last block's output ``(B, T, C)``, before the final norm and head (scoring a few positions needs only those).

        ``positions (B, T)`` and ``mask (B, T, T)`` (query, key) replace positions
        ``0..T-1`` and the causal mask, so that CORE can pack several sequences
        sharing a prefix into one row.
        """
        cfg = self.config
        cos, sin = rotary_slice(cfg, idx.shape[1]) if positions is None else rotary_at(cfg, positions)
        x = self.embed(idx)
        attend = None
        if mask is not None:
            attend = lambda q, k, v: (jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla"), None)  # noqa: E731

        def layer(x, p):
            return block_forward(x, p, cos, sin, cfg, attend)[0]

        layer = _remat(layer, cfg.remat)
        params = self.h.stacked()
        if cfg.scan_layers:
            x, _ = jax.lax.scan(lambda c, p: (layer(c, p), None), x, params)
        else:
            for i in range(cfg.n_layer):
                x = layer(x, {k: v[i] for k, v in params.items()})
        return x


def validate_tokens(idx: Any, config: GPTConfig, name: str = "idx", allow_ignore: bool = False) -> None:
    """Clear errors for wrong dtype, rank, length or out-of-range ids.

    Shape/dtype checks always run; the value-range check runs whenever the
    array is concrete (eager calls, host batches) since traced values are
    unknown inside ``jit``.
    """
    dtype = getattr(idx, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {dtype}")
    if getattr(idx, "ndim", None) != 2:
        raise ValueError(f"{name} must have shape (batch, time), got shape {getattr(idx, 'shape', None)}")
    T = idx.shape[1]
    max_T = 10 * config.sequence_len
    if T > max_T:
        raise ValueError(f"{name} has {T} positions; the rotary tables cover {max_T} (10 x sequence_len)")
    if isinstance(idx, jax.core.Tracer):
        return
    arr = np.asarray(idx)
    if arr.size == 0:
        return
    bad = (arr >= config.vocab_size) | (arr < 0)
    if allow_ignore:
        bad &= arr != IGNORE_INDEX
    if bad.any():
        raise ValueError(
            f"{name} contains token id {int(arr[bad].flat[0])} outside [0, {config.vocab_size})"
            + (" (only -1 is allowed, as ignore index)" if allow_ignore else "")
        )
