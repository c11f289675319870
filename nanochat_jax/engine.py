"""Inference engine: a fixed-shape KV cache, compiled prefill and compiled decode chunks.

nanochat runs one forward per token from Python and grows its cache; under JAX
that recompiles per shape and pays a host round trip per token. Here shapes
never change during a generation: the cache ``(n_layer, B, n_kv_head, T_max,
head_dim)`` is allocated once, prompts, prompt counts and ``T_max`` are rounded
up to buckets (:func:`bucket`) so nearby sizes share programs, and decoding
runs in chunks (one ``lax.while_loop``) that return to the host only to stream,
to stop, or to run the calculator after ``<|python_end|>``; its reply is fed
back through a per-row forced-token queue.

Prompts of different lengths decode together: each is prefilled right-padded
(the training kernel), then its K/V are shifted so that all prompts end at one
slot, the shared write position (cache writes stay a ``dynamic_update_slice``);
row r masks its slots before ``start[r]`` and slot t has rotary position
``t - start[r]``. Sample j of prompt i draws from ``fold_in(fold_in(PRNGKey(
seed_i), j), step)``: independent of the batch and of where chunks end.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from nanochat_jax import calculator, sharding
from nanochat_jax.gpt import GPT, validate_tokens
from nanochat_jax.kv_cache import KVCache, forward_cached, init_cache, layer_weights, run_layers

DEFAULT_CHUNK = 32
FORCED_QUEUE = 128  # F: longest forced sequence (<|output_start|> ... <|output_end|>)
MIN_CACHE_BUCKET = 64
MIN_PROMPT_BUCKET = 16
MIN_TOPK_BUCKET = 64
DEFAULT_SEED = 42  # nanochat's generate() default


class DecodeState(NamedTuple):
    """What the compiled decode loop carries from one chunk to the next."""

    cache: KVCache
    logits: jax.Array  # (B, vocab) fp32: next-token logits for every row
    done: jax.Array  # (B,) bool: row emitted <|assistant_end|> or <|bos|> (or is batch padding)
    keys: jax.Array  # (B, 2) uint32: row (i, j)'s key fold_in(PRNGKey(seed_i), j); step s folds in s


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


# --------------------------------------------------------------------------- sampling


def first_argmax(x: jax.Array) -> jax.Array:
    """``argmax`` over the last axis (the first maximum, as torch's) as two plain reductions: XLA:CPU runs
    ``argmax``'s (value, index) reduction as a slow scalar loop (~80 us for 8 x 4,096 logits)."""
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == jnp.max(x, axis=-1, keepdims=True), ids, x.shape[-1] - 1), axis=-1)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array, k_max: int | None,
                  step: jax.Array | None = None) -> jax.Array:
    """One token per row of ``logits (B, V)``, row keys ``(B, 2)``: argmax at temperature 0, else softmax(l/T) over the top k.

    ``temperature`` and ``top_k`` are scalars or one per row (``(B,)``), so
    requests with different settings decode in one batch. Each row draws with
    its own key, so a row's token does not depend on the other rows. They are
    traced, so changing them does not recompile; when every row is at
    temperature 0 a ``lax.cond`` skips the sampling work. ``k_max`` (static,
    >= top_k) is the width of ``lax.top_k``; candidates ranked past ``top_k``
    are masked to -inf. ``k_max=None`` samples from the full distribution
    (nanochat's ``top_k=None``). ``step``: the rows draw with
    ``fold_in(key, step)``, folded inside the sampling branch (greedy decoding
    skips the hashing).
    """
    B = logits.shape[0]
    temperature, top_k = jnp.broadcast_to(temperature, (B,)), jnp.broadcast_to(top_k, (B,))
    greedy = lambda: first_argmax(logits)

    def one_row(row, key, t, k):
        t = jnp.where(t > 0, t, 1.0)  # greedy rows' draws are discarded below
        if k_max is None:
            return jax.random.categorical(key, row / t)
        vals, idx = jax.lax.top_k(row, k_max)
        vals = jnp.where(jnp.arange(k_max) < k, vals, -jnp.inf)
        return idx[jax.random.categorical(key, vals / t)]

    def sample():
        row_keys = keys if step is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
        return jnp.where(temperature > 0, jax.vmap(one_row)(logits, row_keys, temperature, top_k).astype(jnp.int32), greedy())

    return jax.lax.cond(jnp.any(temperature > 0), sample, greedy)


def top_k_width(top_k: int | None, vocab_size: int) -> int | None:
    """Static ``lax.top_k`` width for a requested top_k: a power of two >= 64, at most the vocab."""
    if top_k is None:
        return None
    return min(bucket(top_k, MIN_TOPK_BUCKET), vocab_size)


# --------------------------------------------------------------------------- compiled prefill and decode


def _constrain_rows(ds: DecodeState, mesh) -> DecodeState:
    """Rows split over the mesh's data axis (the cache's batch axis is axis 1)."""
    if mesh is None:
        return ds
    on = lambda a, spec: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))
    rows0, rows1 = PartitionSpec(sharding.DATA_AXIS), PartitionSpec(None, sharding.DATA_AXIS)
    c = ds.cache
    cache = KVCache(on(c.k, rows1), on(c.v, rows1), c.pos, on(c.start, rows0))
    return DecodeState(cache, on(ds.logits, rows0), on(ds.done, rows0), on(ds.keys, rows0))


@functools.partial(jax.jit, static_argnames=("graphdef", "t_max", "mesh"))
def _prefill_jit(graphdef, state, tokens, lengths, rows, samples, seeds, done, *, t_max, mesh):
    """Prefill ``tokens (N, P_b)`` (prompt i right-padded from length ``lengths[i]``), then lay out B cache rows.

    Cache row b is sample ``samples[b]`` of prompt ``rows[b]``; each prompt's
    K/V are rolled right by ``L - length`` so that all prompts end at slot
    ``L = max(lengths)``, the shared write position. ``done`` marks padding rows.
    """
    model = nnx.merge(graphdef, state)
    N, P_b = tokens.shape
    cache = init_cache(model.config, N, P_b)
    x, cache = run_layers(model, model.embed(tokens), cache, fresh=True)
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)
    logits = model.logits_from_hidden(last)[:, 0]
    L = jnp.max(lengths)
    shift = L - lengths

    def place(a):
        a = jax.vmap(lambda row, s: jnp.roll(row, s, axis=2), in_axes=(1, 0), out_axes=1)(a, shift)
        return jnp.pad(jnp.take(a, rows, axis=1), ((0, 0), (0, 0), (0, 0), (0, t_max - P_b), (0, 0)))

    keys = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.PRNGKey(s), j))(seeds, samples)
    cache = KVCache(place(cache.k), place(cache.v), L.astype(jnp.int32), shift[rows].astype(jnp.int32))
    return _constrain_rows(DecodeState(cache, logits[rows], done, keys), mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk", "k_max"), donate_argnames=("dstate",))
def _decode_jit(graphdef, state, dstate, queue, q_len, q_pos, step0, n_steps, temperature, top_k, special, *, chunk, k_max):
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
    weights = layer_weights(model)  # sliced once, outside the loop

    def cond(carry):
        i, _, _, _, _, stop = carry
        return (i < n_steps) & ~stop

    def body(carry):
        i, ds, q_pos, toks, masks, _ = carry
        sampled = sample_tokens(ds.logits, ds.keys, temperature, top_k, k_max, step0 + i)
        forced = q_pos < q_len
        forced_tok = jnp.take_along_axis(queue, jnp.minimum(q_pos, F - 1)[:, None], axis=1)[:, 0]
        tok = jnp.where(forced, forced_tok, sampled)
        q_pos = q_pos + forced.astype(jnp.int32)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        masks = jax.lax.dynamic_update_slice(masks, (~forced).astype(jnp.int32)[:, None], (0, i))
        tool_call = (tok == py_end_id) & ~ds.done
        done = ds.done | (tok == end_id) | (tok == bos_id)
        logits, cache = forward_cached(model, tok[:, None], ds.cache, weights)
        stop = jnp.all(done) | jnp.any(tool_call)
        return i + 1, DecodeState(cache, logits[:, 0], done, ds.keys), q_pos, toks, masks, stop

    toks0 = jnp.zeros((B, chunk), jnp.int32)
    init = (jnp.zeros((), jnp.int32), dstate, q_pos, toks0, toks0, jnp.zeros((), bool))
    n, dstate, q_pos, toks, masks, _ = jax.lax.while_loop(cond, body, init)
    return dstate, q_pos, toks, masks, n


@functools.partial(jax.jit, static_argnames=("dtype",))
def _cast_params(state, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)


# --------------------------------------------------------------------------- host side


def _per_prompt(value, prompts, name: str) -> list:
    """One setting per prompt: ``value`` itself if it is a sequence (its length checked), else repeated."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != len(prompts):
            raise ValueError(f"{len(value)} values of {name} for {len(prompts)} prompts; pass one per prompt or a single value")
        return list(value)
    return [value] * len(prompts)


class _RowTools:
    """nanochat's per-row tool state: collect python tokens, produce forced output tokens."""

    def __init__(self):
        self.in_python, self.expr = False, []


class Engine:
    """nanochat's ``Engine`` API over the compiled cache/decode programs above, for one prompt or many.

    The model's weights are read at every generation call, so an engine
    built once keeps sampling from a model that is being trained (RL).
    ``mesh``: cache rows are split over its data axis (padded to a multiple
    of its size), so each device decodes its share of the rows. ``k_width``:
    a fixed ``lax.top_k`` width (>= every top_k asked for), so that a row's
    draw does not depend on the top_k of the rows decoded with it (the web
    server batches requests); default: the smallest bucket that fits the call.
    """

    def __init__(self, model: GPT, tokenizer, *, chunk_size: int = DEFAULT_CHUNK, forced_queue: int = FORCED_QUEUE, mesh=None,
                 k_width: int | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.chunk_size = int(chunk_size)
        self.forced_queue = int(forced_queue)
        self.mesh = mesh
        self.k_width = None if k_width is None else min(int(k_width), model.config.vocab_size)
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
        return graphdef, state if self.mesh is None else jax.device_put(state, sharding.replicated(self.mesh))

    def plan(self, prompt_len: int, max_tokens: int | None) -> tuple[int, int]:
        """(max_tokens, T_max bucket) for a (longest) prompt; checks the rotary-table limit."""
        cfg = self.model.config
        limit = 10 * cfg.sequence_len  # rows of the rotary tables
        if max_tokens is None:
            # nanochat HEAD sizes the cache to sequence_len when no budget is given.
            if prompt_len >= cfg.sequence_len:
                raise ValueError(f"prompt of {prompt_len} tokens fills the model's context ({cfg.sequence_len}); "
                                 "pass max_tokens explicitly")
            max_tokens = cfg.sequence_len - prompt_len
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if prompt_len + max_tokens > limit:
            raise ValueError(f"prompt ({prompt_len}) + max_tokens ({max_tokens}) exceeds {limit} positions (10 x sequence_len)")
        return max_tokens, bucket(prompt_len + max(max_tokens, 1), MIN_CACHE_BUCKET, limit)

    def num_rows(self, num_prompts: int, num_samples: int) -> int:
        """Cache rows for ``num_prompts x num_samples`` samples: a bucket, a multiple of the mesh's devices."""
        devices = 1 if self.mesh is None else self.mesh.shape[sharding.DATA_AXIS]
        return -(-bucket(num_prompts * num_samples, 1) // devices) * devices

    def prefill(self, params, prompts: Sequence[Sequence[int]], num_samples: int, t_max: int, seeds: Sequence[int] | None = None):
        """Run every prompt once (their count and length padded to buckets) and lay out ``num_samples`` rows each.

        Rows are prompt-major (row ``i * num_samples + j``); rows past the
        real ones are padding, marked done from the start.
        """
        n, real, B = len(prompts), len(prompts) * num_samples, self.num_rows(len(prompts), num_samples)
        lengths = np.ones((bucket(n, 1),), np.int32)  # padding prompts: one <|bos|>
        lengths[:n] = [len(p) for p in prompts]
        tokens = np.full((len(lengths), bucket(lengths.max(), MIN_PROMPT_BUCKET, t_max)), self.bos, np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        seeds = [DEFAULT_SEED] * n if seeds is None else [int(s) % 2**32 for s in seeds]
        padded = lambda a, dtype: np.concatenate([np.asarray(a, dtype), np.zeros((B - real,), dtype)])
        rows = padded(np.repeat(np.arange(n), num_samples), np.int32)
        samples = padded(np.tile(np.arange(num_samples), n), np.int32)
        row_seeds = padded(np.repeat(seeds, num_samples), np.uint32)
        done = np.arange(B) >= real
        graphdef, state = params
        return _prefill_jit(graphdef, state, tokens, lengths, rows, samples, row_seeds, done, t_max=t_max, mesh=self.mesh)

    def decode(self, params, dstate, queue, q_len, q_pos, step0, n_steps, temperature, top_k, special=None):
        """One compiled chunk of up to ``n_steps`` tokens; ``dstate`` is donated (its buffers are reused).

        ``temperature`` and ``top_k`` (None or <= 0 = off): one value, or one
        per cache row. Values go in as numpy arrays so that changing them
        (temperature, top_k, step counts) never triggers a retrace.
        """
        graphdef, state = params
        if special is None:
            special = np.array([self.assistant_end, self.bos, self.python_end], np.int32)
        B, vocab = dstate.logits.shape[0], self.model.config.vocab_size
        temps = np.broadcast_to(np.asarray(temperature, np.float32), (B,))
        ks = [None if k is None or k <= 0 else min(int(k), vocab) for k in np.broadcast_to(np.asarray(top_k, object), (B,))]
        k_max = self.k_width or (None if all(k is None for k in ks) else top_k_width(max(k or vocab for k in ks), vocab))
        scalars = np.int32(step0), np.int32(n_steps), temps, np.array([k or vocab for k in ks], np.int32)
        return _decode_jit(graphdef, state, dstate, queue, q_len, q_pos, *scalars, special, chunk=self.chunk_size, k_max=k_max)

    # -- generation ----------------------------------------------------------------
    def generate_columns(self, prompts, num_samples=1, *, max_tokens=None, temperature=1.0, top_k=None, seeds=None
                         ) -> Iterator[tuple[list[int], list[int]]]:
        """All prompts decoded together: one ``(token_column, mask_column)`` per step over the rows (prompt-major).

        ``max_tokens``, ``temperature`` and ``top_k`` are one value or one per
        prompt. A row past its own ``max_tokens`` reads as ended: its column
        entry is ``<|assistant_end|>`` once, then whatever (as after any end).
        """
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts or not all(prompts):
            raise ValueError("generation needs at least one prompt, each with at least one token (e.g. <|bos|>)")
        for i, p in enumerate(prompts):
            validate_tokens(np.asarray([p], np.int32), self.model.config, f"prompt {i}")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; pass one seed per prompt")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        S, temps, ks = num_samples, _per_prompt(temperature, prompts, "temperature"), _per_prompt(top_k, prompts, "top_k")
        if min(temps) < 0:
            raise ValueError(f"temperature must be >= 0, got {min(temps)}")
        limits = [self.plan(len(p), m)[0] for p, m in zip(prompts, _per_prompt(max_tokens, prompts, "max_tokens"))]
        longest, t_max = self.plan(max(map(len, prompts)), max(limits))
        if longest == 0:
            return

        params = self.params()
        dstate = self.prefill(params, prompts, S, t_max, seeds)
        real, B, F = len(prompts) * S, dstate.logits.shape[0], self.forced_queue
        pad = [0.0] * (B - real)  # padding rows: greedy, top_k of a real row (never widens lax.top_k)
        temps, ks = np.repeat(temps, S).tolist() + pad, np.repeat(np.asarray(ks, object), S).tolist() + [ks[0]] * (B - real)
        queue = np.zeros((B, F), np.int32)
        q_len = np.zeros((B,), np.int32)
        q_pos = np.zeros((B,), np.int32)
        rows = [_RowTools() for _ in range(real)]
        completed = [False] * real
        step = 0
        while step < longest:
            n_req = min(self.chunk_size, longest - step)
            dstate, q_pos_dev, toks, masks, n = self.decode(params, dstate, queue, q_len, q_pos, step, n_req, temps, ks)
            n = int(n)
            toks, masks = np.asarray(toks)[:real, :n], np.asarray(masks)[:real, :n]
            q_pos = np.array(q_pos_dev)
            for j in range(n):
                column, mask_column = toks[:, j].tolist(), masks[:, j].tolist()
                for r, tok in enumerate(column):
                    if completed[r]:
                        continue
                    if step >= limits[r // S]:
                        column[r], completed[r] = self.assistant_end, True
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

    def generate(self, tokens: Sequence[int], num_samples: int = 1, max_tokens: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = DEFAULT_SEED) -> Iterator[tuple[list[int], list[int]]]:
        """nanochat's API: yield ``(token_column, mask_column)`` per step; mask 1 = sampled, 0 = forced by the tool.

        Stops after ``max_tokens`` steps or once every row has emitted
        ``<|assistant_end|>``/``<|bos|>`` (that last column is yielded).
        """
        yield from self.generate_columns([tokens], num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                         seeds=[seed])

    def generate_multi(self, prompts: Sequence[Sequence[int]], num_samples: int = 1, *, max_tokens, temperature=1.0,
                       top_k=None, seeds: Sequence[int] | None = None):
        """All prompts decoded together: ``results[i][j]`` is sample j of prompt i, as ``generate_batch``'s rows.

        Sequences include the prompt and exclude the terminal token; masks are
        0 on the prompt and on forced tool output, 1 on sampled tokens.
        ``seeds[i]`` (default 42 each) seeds prompt i's samples; ``max_tokens``,
        ``temperature``, ``top_k``: one value or one per prompt.
        """
        S = num_samples
        results = [[list(map(int, p)) for _ in range(S)] for p in prompts]
        masks = [[[0] * len(p) for _ in range(S)] for p in prompts]
        completed = [False] * (len(prompts) * S)
        for column, mask_column in self.generate_columns(prompts, S, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                                         seeds=seeds):
            for r, (tok, m) in enumerate(zip(column, mask_column)):
                if completed[r]:
                    continue
                if tok == self.assistant_end or tok == self.bos:
                    completed[r] = True
                else:
                    results[r // S][r % S].append(tok)
                    masks[r // S][r % S].append(m)
        return results, masks

    def generate_batch(self, tokens: Sequence[int], num_samples: int = 1, *, seed: int = DEFAULT_SEED, **sampling):
        """nanochat's API: full sequences (prompt included, terminal token excluded) and masks (prompt = 0).

        ``sampling``: ``max_tokens``, ``temperature``, ``top_k``, as ``generate``.
        """
        sampling.setdefault("max_tokens", None)
        results, masks = self.generate_multi([tokens], num_samples, seeds=[seed], **sampling)
        return results[0], masks[0]
