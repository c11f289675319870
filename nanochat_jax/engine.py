"""Inference engine: a fixed-shape KV cache, compiled prefill and compiled decode chunks.

nanochat runs one forward per token from Python and grows its cache; under JAX
that recompiles per shape and pays a host round trip per token. Here shapes
never change during a generation: the cache ``(n_layer, B, T_max, n_kv_head,
head_dim)`` is allocated once, prompts and ``T_max`` are rounded up to buckets
(:func:`bucket`) so nearby lengths share programs, and decoding runs in chunks
(one ``lax.while_loop``) that return to the host only to stream, to stop, or to
run the calculator after ``<|python_end|>``; its reply is fed back through a
per-row forced-token queue. Step ``s`` samples with ``fold_in(PRNGKey(seed), s)``,
so output depends on the seed alone, not on where chunks end.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nanochat_jax import calculator
from nanochat_jax.gpt import GPT, GPTConfig, block_forward, causal_attention, resolve_attention_impl, rotary_slice, validate_tokens

DEFAULT_CHUNK = 32
FORCED_QUEUE = 128  # F: longest forced sequence (<|output_start|> ... <|output_end|>)
MIN_CACHE_BUCKET = 64
MIN_PROMPT_BUCKET = 16
MIN_TOPK_BUCKET = 64


class KVCache(NamedTuple):
    """Preallocated keys/values for every layer and the shared write position."""

    k: jax.Array  # (n_layer, B, T_max, n_kv_head, head_dim), compute dtype
    v: jax.Array
    pos: jax.Array  # int32 scalar: positions 0..pos-1 hold valid K/V


class DecodeState(NamedTuple):
    """What the compiled decode loop carries from one chunk to the next."""

    cache: KVCache
    logits: jax.Array  # (B, vocab) fp32: next-token logits for every row
    done: jax.Array  # (B,) bool: row emitted <|assistant_end|> or <|bos|>


def init_cache(config: GPTConfig, batch_size: int, t_max: int, dtype=None) -> KVCache:
    """An empty cache; allocated once per generation at its final size, so shapes never change."""
    shape = (config.n_layer, batch_size, t_max, config.n_kv_head, config.head_dim)
    dtype = jnp.dtype(dtype or config.compute_dtype)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def bucket(n: int, minimum: int, cap: int | None = None) -> int:
    """Round ``max(n, minimum)`` up to one of 4 sizes per octave, clipped to ``cap`` (never below n).

    Sizes are multiples of 2^(e-3) where 2^e is the next power of two, i.e.
    ..., 64, 80, 96, 112, 128, 160, ...: at most 25% padding (the decode step
    reads every cached position, so padding is bandwidth) for 4 compiled
    variants per doubling of length.
    """
    m = max(int(n), int(minimum), 1)
    granule = 1 << max((m - 1).bit_length() - 3, 0)
    b = -(-m // granule) * granule
    if cap is not None:
        b = min(b, cap)
    if b < n:
        raise ValueError(f"{n} positions exceed the limit of {cap}")
    return b


# --------------------------------------------------------------------------- model with a cache


def _masked_cache_attention(q, k_layer, v_layer, pos):
    """Queries at positions ``pos .. pos+Tq-1`` over all ``T_max`` cached keys.

    The mask is ``(Tq, T_max)`` -- one row per query, never ``T_max x T_max``
    -- and hides both future and never-written positions. The XLA kernel
    computes scores and softmax in fp32, as the training kernel on CPU does.
    """
    Tq, T_max = q.shape[1], k_layer.shape[1]
    q_pos = pos + jnp.arange(Tq, dtype=jnp.int32)
    mask = jnp.arange(T_max, dtype=jnp.int32)[None, :] <= q_pos[:, None]
    return jax.nn.dot_product_attention(q, k_layer, v_layer, mask=mask[None, None], implementation="xla")


def _run_layers(model: GPT, x: jax.Array, cache: KVCache, fresh: bool):
    """All blocks over ``x (B, Tq, C)`` at positions ``cache.pos ..``; returns (x, cache).

    Each layer writes its new K/V into the full cache array at ``(layer, :,
    pos)`` -- an in-place update inside the compiled program -- and attends to
    that layer's slice. ``fresh`` (prefill from position 0) attends causally
    over the new keys alone, the same kernel as training; otherwise attention
    reads the cache through the position mask.
    """
    cfg = model.config
    Tq = x.shape[1]
    pos = cache.pos
    cos, sin = rotary_slice(cfg, Tq, 0 if fresh else pos)
    impl = resolve_attention_impl(cfg)

    def one_layer(x, p, i, kc, vc):
        def attend(q, k, v):
            kc2 = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), (i, 0, pos, 0, 0))
            vc2 = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), (i, 0, pos, 0, 0))
            if fresh:
                y = causal_attention(q, k, v, impl)
            else:
                y = _masked_cache_attention(q, kc2[i], vc2[i], pos)
            return y, (kc2, vc2)

        x, (kc, vc) = block_forward(x, p, cos, sin, cfg, attend=attend)
        return x, kc, vc

    params = model.h.stacked()
    kc, vc = cache.k, cache.v
    if cfg.scan_layers:

        def body(carry, xs):
            x, kc, vc = carry
            p, i = xs
            return one_layer(x, p, i, kc, vc), None

        (x, kc, vc), _ = jax.lax.scan(body, (x, kc, vc), (params, jnp.arange(cfg.n_layer, dtype=jnp.int32)))
    else:
        for i in range(cfg.n_layer):
            x, kc, vc = one_layer(x, {k: v[i] for k, v in params.items()}, i, kc, vc)
    return x, KVCache(kc, vc, pos + Tq)


def forward_cached(model: GPT, idx: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Logits ``(B, Tq, vocab)`` for ``idx`` placed at ``cache.pos ..``, and the updated cache.

    The general path (any position, any chunk length); usable eagerly or
    under ``jit``. The caller must keep ``cache.pos + Tq <= T_max``.
    """
    x, cache = _run_layers(model, model.embed(idx), cache, fresh=False)
    return model.logits_from_hidden(x), cache


# --------------------------------------------------------------------------- sampling


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array, k_max: int | None) -> jax.Array:
    """One token per row from ``logits (B, V)``: argmax at temperature 0, else softmax(l/T) over the top k.

    ``temperature`` and ``top_k`` are traced, so changing them does not
    recompile. ``k_max`` (static, >= top_k) is the width of ``lax.top_k``;
    candidates ranked past ``top_k`` are masked to -inf. ``k_max=None`` samples
    from the full distribution (nanochat's ``top_k=None``).
    """
    greedy = jnp.argmax(logits, axis=-1)
    safe_t = jnp.where(temperature > 0, temperature, 1.0).astype(logits.dtype)
    if k_max is not None:
        vals, idx = jax.lax.top_k(logits, k_max)
        vals = jnp.where(jnp.arange(k_max) < top_k, vals, -jnp.inf)
        choice = jax.random.categorical(key, vals / safe_t, axis=-1)
        sampled = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    else:
        sampled = jax.random.categorical(key, logits / safe_t, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def top_k_width(top_k: int | None, vocab_size: int) -> int | None:
    """Static ``lax.top_k`` width for a requested top_k: a power of two >= 64, at most the vocab."""
    if top_k is None:
        return None
    return min(bucket(top_k, MIN_TOPK_BUCKET), vocab_size)


# --------------------------------------------------------------------------- compiled prefill and decode


@functools.partial(jax.jit, static_argnames=("graphdef", "t_max", "num_samples"))
def _prefill_jit(graphdef, state, tokens, length, *, t_max, num_samples):
    """Batch-1 prefill of ``tokens (1, P_b)`` (real length ``length``), replicated to ``num_samples`` rows."""
    model = nnx.merge(graphdef, state)
    cache = init_cache(model.config, 1, t_max)
    x, cache = _run_layers(model, model.embed(tokens), cache, fresh=True)
    last = jax.lax.dynamic_slice_in_dim(x, length - 1, 1, axis=1)
    logits = model.logits_from_hidden(last)[:, 0]
    rows = lambda a: jnp.repeat(a, num_samples, axis=1)
    cache = KVCache(rows(cache.k), rows(cache.v), length.astype(jnp.int32))
    logits = jnp.broadcast_to(logits, (num_samples, logits.shape[-1]))
    return DecodeState(cache, logits, jnp.zeros((num_samples,), bool))


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk", "k_max"), donate_argnames=("dstate",))
def _decode_jit(graphdef, state, dstate, queue, q_len, q_pos, key, step0, n_steps, temperature, top_k, special, *, chunk, k_max):
    """Up to ``n_steps <= chunk`` decode steps: each takes the row's forced token if it has one, else samples.

    The loop ends early once every row is done or a live row emitted
    ``<|python_end|>`` (the host must run the calculator first).

    ``special`` = [assistant_end, bos, python_end] ids (traced, so a
    benchmark can pass -1 to disable stopping without recompiling).
    Returns (new DecodeState, q_pos, tokens (B, chunk), masks (B, chunk), steps run).
    """
    model = nnx.merge(graphdef, state)
    B = dstate.logits.shape[0]
    end_id, bos_id, py_end_id = special[0], special[1], special[2]
    F = queue.shape[1]

    def cond(carry):
        i, _, _, _, _, stop = carry
        return (i < n_steps) & ~stop

    def body(carry):
        i, ds, q_pos, toks, masks, _ = carry
        sampled = sample_tokens(ds.logits, jax.random.fold_in(key, step0 + i), temperature, top_k, k_max)
        forced = q_pos < q_len
        forced_tok = jnp.take_along_axis(queue, jnp.minimum(q_pos, F - 1)[:, None], axis=1)[:, 0]
        tok = jnp.where(forced, forced_tok, sampled)
        q_pos = q_pos + forced.astype(jnp.int32)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        masks = jax.lax.dynamic_update_slice(masks, (~forced).astype(jnp.int32)[:, None], (0, i))
        tool_call = (tok == py_end_id) & ~ds.done
        done = ds.done | (tok == end_id) | (tok == bos_id)
        logits, cache = forward_cached(model, tok[:, None], ds.cache)
        stop = jnp.all(done) | jnp.any(tool_call)
        return i + 1, DecodeState(cache, logits[:, 0], done), q_pos, toks, masks, stop

    toks0 = jnp.zeros((B, chunk), jnp.int32)
    init = (jnp.zeros((), jnp.int32), dstate, q_pos, toks0, toks0, jnp.zeros((), bool))
    n, dstate, q_pos, toks, masks, _ = jax.lax.while_loop(cond, body, init)
    return dstate, q_pos, toks, masks, n


@functools.partial(jax.jit, static_argnames=("dtype",))
def _cast_params(state, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)


# --------------------------------------------------------------------------- host side


class _RowTools:
    """nanochat's per-row tool state: collect python tokens, produce forced output tokens."""

    __slots__ = ("expr", "in_python")

    def __init__(self):
        self.in_python = False
        self.expr: list[int] = []


class Engine:
    """nanochat's ``Engine`` API over the compiled cache/decode programs above.

    The model's weights are read at every :meth:`generate` call, so an engine
    built once keeps sampling from a model that is being trained (RL).
    """

    def __init__(self, model: GPT, tokenizer, *, chunk_size: int = DEFAULT_CHUNK, forced_queue: int = FORCED_QUEUE):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.chunk_size = int(chunk_size)
        self.forced_queue = int(forced_queue)
        enc = tokenizer.encode_special
        self.bos = tokenizer.get_bos_token_id()
        self.assistant_end = enc("<|assistant_end|>")
        self.python_start = enc("<|python_start|>")
        self.python_end = enc("<|python_end|>")
        self.output_start = enc("<|output_start|>")
        self.output_end = enc("<|output_end|>")

    # -- low-level pieces (also used by bench/decode.py) --------------------------
    def params(self):
        """(graphdef, state) with floating weights in the compute dtype (cast once per call, not per token)."""
        graphdef, state = nnx.split(self.model)
        dtype = jnp.dtype(self.model.config.compute_dtype)
        if dtype != jnp.dtype(jnp.float32):
            state = _cast_params(state, dtype)
        return graphdef, state

    def plan(self, prompt_len: int, max_tokens: int | None) -> tuple[int, int]:
        """(max_tokens, T_max bucket) for a prompt; checks the rotary-table limit."""
        cfg = self.model.config
        limit = 10 * cfg.sequence_len  # rows of the rotary tables
        if max_tokens is None:
            # nanochat HEAD sizes the cache to sequence_len when no budget is given.
            if prompt_len >= cfg.sequence_len:
                raise ValueError(
                    f"prompt of {prompt_len} tokens fills the model's context ({cfg.sequence_len}); pass max_tokens explicitly"
                )
            max_tokens = cfg.sequence_len - prompt_len
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if prompt_len + max_tokens > limit:
            raise ValueError(f"prompt ({prompt_len}) + max_tokens ({max_tokens}) exceeds {limit} positions (10 x sequence_len)")
        return max_tokens, bucket(prompt_len + max(max_tokens, 1), MIN_CACHE_BUCKET, limit)

    def prefill(self, params, tokens: Sequence[int], num_samples: int, t_max: int) -> DecodeState:
        """Run the prompt once (batch 1, padded to its bucket) and replicate it into ``num_samples`` rows."""
        P = len(tokens)
        p_b = bucket(P, MIN_PROMPT_BUCKET, t_max)
        padded = np.zeros((1, p_b), np.int32)
        padded[0, :P] = tokens
        graphdef, state = params
        return _prefill_jit(graphdef, state, padded, np.int32(P), t_max=t_max, num_samples=num_samples)

    def decode(self, params, dstate, queue, q_len, q_pos, key, step0, n_steps, temperature, top_k, special=None):
        """One compiled chunk of up to ``n_steps`` tokens; ``dstate`` is donated (its buffers are reused).

        Python scalars are passed as numpy scalars so that changing them
        (temperature, top_k, step counts) never triggers a retrace.
        """
        graphdef, state = params
        if special is None:
            special = np.array([self.assistant_end, self.bos, self.python_end], np.int32)
        vocab = self.model.config.vocab_size
        k_max = top_k_width(top_k, vocab)
        return _decode_jit(
            graphdef,
            state,
            dstate,
            queue,
            q_len,
            q_pos,
            key,
            np.int32(step0),
            np.int32(n_steps),
            np.float32(temperature),
            np.int32(min(top_k or vocab, vocab)),
            special,
            chunk=self.chunk_size,
            k_max=k_max,
        )

    # -- nanochat's API ------------------------------------------------------------
    def generate(
        self,
        tokens: Sequence[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield ``(token_column, mask_column)`` per step; mask 1 = sampled, 0 = forced by the tool.

        Stops after ``max_tokens`` steps or once every row has emitted
        ``<|assistant_end|>``/``<|bos|>`` (that last column is yielded).
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("generate needs at least one prompt token (e.g. <|bos|>)")
        validate_tokens(np.asarray([tokens], np.int32), self.model.config, "tokens")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        top_k = None if top_k is None or top_k <= 0 else int(top_k)
        max_tokens, t_max = self.plan(len(tokens), max_tokens)
        if max_tokens == 0:
            return

        params = self.params()
        B, F = num_samples, self.forced_queue
        dstate = self.prefill(params, tokens, B, t_max)
        key = jax.random.PRNGKey(seed)
        queue = np.zeros((B, F), np.int32)
        q_len = np.zeros((B,), np.int32)
        q_pos = np.zeros((B,), np.int32)
        rows = [_RowTools() for _ in range(B)]
        completed = [False] * B
        step = 0
        while step < max_tokens:
            n_req = min(self.chunk_size, max_tokens - step)
            dstate, q_pos_dev, toks, masks, n = self.decode(params, dstate, queue, q_len, q_pos, key, step, n_req, temperature, top_k)
            n = int(n)
            toks, masks = np.asarray(toks)[:, :n], np.asarray(masks)[:, :n]
            q_pos = np.array(q_pos_dev)
            for j in range(n):
                column, mask_column = toks[:, j].tolist(), masks[:, j].tolist()
                for r, tok in enumerate(column):
                    if completed[r]:
                        continue
                    if tok == self.assistant_end or tok == self.bos:
                        completed[r] = True
                        continue
                    forced = self._tool_step(rows[r], tok)
                    if forced:
                        # python_end only comes from sampling, so the queue is empty here.
                        queue[r, : len(forced)] = forced
                        q_len[r], q_pos[r] = len(forced), 0
                yield column, mask_column
                step += 1
                if all(completed):
                    return

    def _tool_step(self, row: _RowTools, tok: int) -> list[int] | None:
        """nanochat's python-block bookkeeping for one token; returns forced tokens or None."""
        if tok == self.python_start:
            row.in_python, row.expr = True, []
        elif tok == self.python_end and row.in_python:
            row.in_python = False
            expr, row.expr = row.expr, []
            if expr:
                result = calculator.evaluate(self.tokenizer.decode(expr))
                if result is not None:
                    forced = [self.output_start, *self.tokenizer.encode(str(result)), self.output_end]
                    if len(forced) <= self.forced_queue:
                        return forced
        elif row.in_python:
            row.expr.append(tok)
        return None

    def generate_batch(self, tokens: Sequence[int], num_samples: int = 1, **sampling) -> tuple[list[list[int]], list[list[int]]]:
        """Full sequences (prompt included, terminal token excluded) and masks (prompt = 0).

        ``sampling``: ``max_tokens``, ``temperature``, ``top_k``, ``seed``, as ``generate``.
        """
        tokens = [int(t) for t in tokens]
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        completed = [False] * num_samples
        for column, mask_column in self.generate(tokens, num_samples, **sampling):
            for r, (tok, m) in enumerate(zip(column, mask_column)):
                if completed[r]:
                    continue
                if tok == self.assistant_end or tok == self.bos:
                    completed[r] = True
                else:
                    results[r].append(tok)
                    masks[r].append(m)
            if all(completed):
                break
        return results, masks
