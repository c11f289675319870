"""Engine tests: cached logits vs full recompute, greedy parity, sampling, stopping, tool use, compiles.

References are independent of the engine: a jitted full forward of the
model (``model(idx)`` on a right-padded buffer; causal attention makes the
padding invisible to earlier positions) and a Python greedy loop over it.
Models are tiny (2 layers, 64 wide, GQA 2:1 heads, vocab 320) with the
zero-initialised ``lm_head``/``c_proj`` randomised so that logits depend on
the whole context.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decode_reference import naive_chat_greedy, scripted_gpt
from nanochat_jax import engine as E
from nanochat_jax import sharding
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.tokenizer import SPECIAL_TOKENS, Tokenizer

REF_T = 128  # padded length of the full-forward reference (= sequence_len)


@pytest.fixture(scope="module")
def tok():
    text = [
        "The quick brown fox jumps over the lazy dog. 2 + 3 = 5, 12 * 7 = 84. Hello world! " * 3,
        "strawberry has three rs; count letters and numbers 0123456789 " * 3,
    ]
    return Tokenizer.train_from_iterator(iter(text), vocab_size=320)


def tiny_config(tok, **kw) -> GPTConfig:
    return GPTConfig(sequence_len=REF_T, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=1, n_embd=64, **kw)


def random_model(tok, seed=0, **kw) -> GPT:
    """Random weights everywhere; special-token logits pinned at exactly 0.

    With ~300 N(0,1) logits the argmax is positive (all-negative has
    probability 2^-300), so greedy decoding never picks a special token:
    greedy runs neither stop nor call the tool and always last max_tokens.
    """
    model = GPT(tiny_config(tok, **kw), rngs=nnx.Rngs(seed))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(100 + seed), 3)
    lm = jax.random.normal(k1, model.lm_head.shape) / 8.0
    specials = [tok.encode_special(s) for s in SPECIAL_TOKENS]
    model.lm_head[...] = lm.at[:, jnp.asarray(specials)].set(0.0)
    model.h.attn_c_proj[...] = jax.random.normal(k2, model.h.attn_c_proj.shape) / 8.0
    model.h.mlp_c_proj[...] = jax.random.normal(k3, model.h.mlp_c_proj.shape) / 16.0
    return model


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok)


_full_forward = jax.jit(lambda graphdef, state, idx: nnx.merge(graphdef, state)(idx), static_argnums=0)


_forward_cached = jax.jit(lambda graphdef, state, idx, cache: E.forward_cached(nnx.merge(graphdef, state), idx, cache), static_argnums=0)


def cached_forward(model, idx, cache):
    """Compiled ``E.forward_cached``: the masked cache path at any position and chunk length."""
    graphdef, state = nnx.split(model)
    return _forward_cached(graphdef, state, jnp.asarray(idx, jnp.int32), cache)


def full_logits(model, ids) -> np.ndarray:
    """Full-recompute logits (len(ids), V) from model(idx) on a padded (1, REF_T) buffer."""
    buf = np.zeros((1, REF_T), np.int32)
    buf[0, : len(ids)] = ids
    graphdef, state = nnx.split(model)
    return np.asarray(_full_forward(graphdef, state, buf))[0, : len(ids)]


def naive_greedy(model, prompt, n, stop_ids=()) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        t = int(np.argmax(full_logits(model, ids)[-1]))
        if t in stop_ids:
            break
        ids.append(t)
    return ids


def prompt_ids(tok, text="Hello world! 2 + 3"):
    return tok.encode(text, prepend="<|bos|>")


# --------------------------------------------------------------------------- cache correctness


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_logits_match_full_forward(tok, scan_layers):
    model = random_model(tok, seed=1, scan_layers=scan_layers)
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 300, size=(2, 21)).astype(np.int32)  # two different rows
    # Reference: the unrolled model's full forward (scan_layers does not change the weights).
    unrolled = random_model(tok, seed=1)
    ref = np.stack([full_logits(unrolled, s.tolist()) for s in seqs])  # (2, 21, V)

    cache = E.init_cache(model.config, 2, 64)
    # An 8-token prefill through the masked cache path...
    logits, cache = cached_forward(model, seqs[:, :8], cache)
    np.testing.assert_allclose(np.asarray(logits), ref[:, :8], atol=1e-5, rtol=1e-5)
    # ...five single-token decode steps...
    for t in range(8, 13):
        logits, cache = cached_forward(model, seqs[:, t : t + 1], cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], ref[:, t], atol=1e-5, rtol=1e-5)
    # ...and an 8-token chunk after the 13-token prefix.
    assert int(cache.pos) == 13
    logits, cache = cached_forward(model, seqs[:, 13:21], cache)
    np.testing.assert_allclose(np.asarray(logits), ref[:, 13:21], atol=1e-5, rtol=1e-5)
    assert int(cache.pos) == 21


def test_prefill_bucket_padding_and_replication(tok, model):
    """Engine prefill pads the prompt to a bucket; logits at the real last position and K/V must not change."""
    eng = E.Engine(model, tok)
    prompt = prompt_ids(tok)
    assert E.bucket(len(prompt), E.MIN_PROMPT_BUCKET) > len(prompt)  # padding really happens
    ds = eng.prefill(eng.params(), [prompt], num_samples=4, t_max=64)
    ref = full_logits(model, prompt)[-1]
    logits = np.asarray(ds.logits)
    assert logits.shape == (4, tok.get_vocab_size())
    for r in range(4):
        np.testing.assert_allclose(logits[r], ref, atol=1e-5, rtol=1e-5)
    assert int(ds.cache.pos) == len(prompt)
    k = np.asarray(ds.cache.k)
    assert k.shape == (2, 4, 1, 64, 32)  # (layer, row, kv head, slot, head dim)
    np.testing.assert_array_equal(k[:, 0], k[:, 3])
    # The prompt's K/V agree with a cache built token-by-token through the masked path.
    cache = E.init_cache(model.config, 2, 64)
    for t in prompt:
        _, cache = cached_forward(model, np.array([[t], [t]], np.int32), cache)
    P = len(prompt)
    np.testing.assert_allclose(k[:, 0, :, :P], np.asarray(cache.k)[:, 0, :, :P], atol=1e-5)


# --------------------------------------------------------------------------- decoding


def test_greedy_matches_naive_recompute(tok, model):
    prompt = prompt_ids(tok)
    eng = E.Engine(model, tok, chunk_size=8)  # 40 tokens = 5 chunks
    seqs, masks = eng.generate_batch(prompt, num_samples=4, max_tokens=40, temperature=0.0)
    ref = naive_greedy(model, prompt, 40)
    assert len(ref) == len(prompt) + 40
    assert seqs == [ref] * 4
    assert masks == [[0] * len(prompt) + [1] * 40] * 4


def test_generate_streams_columns(tok, model):
    prompt = prompt_ids(tok)
    eng = E.Engine(model, tok, chunk_size=8)
    cols = list(eng.generate(prompt, num_samples=4, max_tokens=13, temperature=0.0))
    assert len(cols) == 13
    ref = naive_greedy(model, prompt, 13)[len(prompt) :]
    assert [c[0] for c in cols] == [[t] * 4 for t in ref]
    assert all(c[1] == [1] * 4 for c in cols)
    assert list(eng.generate(prompt, max_tokens=0)) == []


def test_bfloat16_compute(tok):
    """The accelerator setting: weights cast once, bf16 KV cache, same greedy tokens as the bf16 full forward."""
    model = random_model(tok, seed=2, compute_dtype="bfloat16")
    prompt = prompt_ids(tok)
    eng = E.Engine(model, tok, chunk_size=8)
    params = eng.params()
    assert {leaf.dtype for leaf in jax.tree.leaves(params[1])} == {jnp.dtype(jnp.bfloat16)}
    ds = eng.prefill(params, [prompt], num_samples=4, t_max=64)
    assert ds.cache.k.dtype == jnp.bfloat16 and ds.logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ds.logits[0]), full_logits(model, prompt)[-1], atol=0.1)
    seqs, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=0.0)
    assert seqs == [naive_greedy(model, prompt, 16)] * 4


def test_sampling_seeds_topk_and_chunking(tok, model):
    prompt = prompt_ids(tok)
    eng8, eng3 = E.Engine(model, tok, chunk_size=8), E.Engine(model, tok, chunk_size=3)
    kw = {"num_samples": 4, "max_tokens": 24, "temperature": 1.0}
    a, _ = eng8.generate_batch(prompt, seed=7, **kw)
    b, _ = eng8.generate_batch(prompt, seed=7, **kw)
    c, _ = eng8.generate_batch(prompt, seed=8, **kw)
    d, _ = eng3.generate_batch(prompt, seed=7, **kw)
    assert a == b  # same seed, same output
    assert a != c  # another seed, another output
    assert a == d  # chunk boundaries do not change the random stream
    # Rows are sampled independently from the very first token on.
    assert len({tuple(s[len(prompt) :]) for s in a}) == 4
    assert len({s[len(prompt)] for s in a}) > 1
    # top_k=1 is greedy whatever the temperature.
    g, _ = eng8.generate_batch(prompt, num_samples=4, max_tokens=24, temperature=1.5, top_k=1, seed=3)
    assert g == [naive_greedy(model, prompt, 24)] * 4
    # top_k=3 (same compiled program, k is a runtime value): every sampled
    # token is among the 3 largest reference logits at its position, and the
    # choice is not always the argmax.
    out, _ = eng8.generate_batch(prompt, num_samples=4, max_tokens=24, temperature=2.0, top_k=3, seed=5)
    not_argmax = 0
    for s in out:
        ref = full_logits(model, s)
        for t in range(len(prompt), len(s)):
            ranked = np.argsort(ref[t - 1])
            assert s[t] in ranked[-3:]
            not_argmax += s[t] != ranked[-1]
    assert not_argmax > 0


# --------------------------------------------------------------------------- scripted (bigram) models


def bigram_model(tok, transitions: dict[int, list[int]]) -> GPT:
    """A model whose next token depends only on the current one.

    Both c_proj are zero, so the residual stream is the normalised
    embedding. Every token named in ``transitions`` gets its own one-hot
    embedding direction, and lm_head maps that direction to its successors
    with a logit saturating the softcap (15) while all other logits are 0:
    successors are picked with probability ~1 - 300*e^-15 between them,
    uniformly when there are several.
    """
    model = GPT(tiny_config(tok), rngs=nnx.Rngs(0))
    C = model.config.n_embd
    wte = np.asarray(model.wte[...]).copy()
    lm = np.zeros(model.lm_head.shape, np.float32)
    slots = {t: i for i, t in enumerate(transitions)}
    assert len(slots) <= C
    for t, succ in transitions.items():
        wte[t] = 0.0
        wte[t, slots[t]] = 1.0
        for s in succ:
            lm[slots[t], s] = 10.0
    model.wte[...] = jnp.asarray(wte)
    model.lm_head[...] = jnp.asarray(lm)
    return model


def special(tok, name):
    return tok.encode_special(f"<|{name}|>")


def chain(tokens: list[int], extra: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    assert len(set(tokens)) == len(tokens), "a bigram chain needs distinct tokens"
    trans = {a: [b] for a, b in itertools.pairwise(tokens)}
    for k, v in (extra or {}).items():
        trans.setdefault(k, []).extend(v)
    return trans


@pytest.mark.parametrize("chunk_size", [3, 8])
def test_calculator_output_is_forced(tok, chunk_size):
    a_start, a_end = special(tok, "assistant_start"), special(tok, "assistant_end")
    py_s, py_e = special(tok, "python_start"), special(tok, "python_end")
    out_s, out_e = special(tok, "output_start"), special(tok, "output_end")
    expr = tok.encode("2 + 3")
    seven, five = tok.encode("7"), tok.encode("5")
    assert len(seven) == 1 and len(five) == 1
    # The model itself would continue python_end -> "7" -> ... ; forcing must override it.
    trans = chain([a_start, py_s, *expr, py_e, seven[0]], {out_e: [a_end]})
    model = bigram_model(tok, trans)
    prompt = [tok.get_bos_token_id(), a_start]
    eng = E.Engine(model, tok, chunk_size=chunk_size)
    seqs, masks = eng.generate_batch(prompt, num_samples=4, max_tokens=30, temperature=0.0)
    forced = [out_s, *five, out_e]
    assert seqs == [prompt + [py_s, *expr, py_e] + forced] * 4
    assert masks == [[0, 0] + [1] * (len(expr) + 2) + [0] * len(forced)] * 4
    assert tok.decode(seqs[0][2:]) == "<|python_start|>2 + 3<|python_end|><|output_start|>5<|output_end|>"


def test_refused_expression_forces_nothing(tok):
    a_start, a_end = special(tok, "assistant_start"), special(tok, "assistant_end")
    py_s, py_e = special(tok, "python_start"), special(tok, "python_end")
    expr = tok.encode("2 +")  # a syntax error: the calculator returns None
    seven = tok.encode("7")
    model = bigram_model(tok, chain([a_start, py_s, *expr, py_e, seven[0], a_end]))
    eng = E.Engine(model, tok, chunk_size=8)
    seqs, masks = eng.generate_batch([tok.get_bos_token_id(), a_start], num_samples=4, max_tokens=30, temperature=0.0)
    assert seqs[0][2:] == [py_s, *expr, py_e, seven[0]]
    assert masks[0][2:] == [1] * (len(expr) + 3)


def test_rows_finish_and_use_tools_independently(tok):
    """Half the rows call the calculator, the others stop after one token; all are right."""
    a_start, a_end = special(tok, "assistant_start"), special(tok, "assistant_end")
    py_s, py_e = special(tok, "python_start"), special(tok, "python_end")
    out_s, out_e = special(tok, "output_start"), special(tok, "output_end")
    expr, five, x = tok.encode("2 + 3"), tok.encode("5"), tok.encode("Hello")[0]
    trans = chain([a_start, py_s, *expr, py_e], {a_start: [x], x: [a_end], out_e: [a_end], py_e: [x]})
    model = bigram_model(tok, trans)
    prompt = [tok.get_bos_token_id(), a_start]
    eng = E.Engine(model, tok, chunk_size=3)
    tool_seq = prompt + [py_s, *expr, py_e, out_s, *five, out_e]
    tool_mask = [0, 0] + [1] * (len(expr) + 2) + [0] * (len(five) + 2)
    # Each row picks its branch at random (1/2 each); find a seed that mixes
    # both within the 4 rows (P(no mix) = 1/8 per seed) and check every row.
    for seed in range(1, 9):
        seqs, masks = eng.generate_batch(prompt, num_samples=4, max_tokens=30, temperature=1.0, seed=seed)
        kinds = []
        for s, m in zip(seqs, masks):
            if s == prompt + [x]:
                assert m == [0, 0, 1]
                kinds.append("short")
            else:
                assert s == tool_seq and m == tool_mask
                kinds.append("tool")
        if set(kinds) == {"short", "tool"}:
            break
    assert set(kinds) == {"short", "tool"}
    # generate() stops right after the last row's terminal token.
    cols = list(eng.generate(prompt, num_samples=4, max_tokens=30, temperature=1.0, seed=seed))
    assert len(cols) == len(tool_seq) - len(prompt) + 1
    for r, kind in enumerate(kinds):
        got = [c[0][r] for c in cols]
        if kind == "short":
            assert got[:2] == [x, a_end]
        else:
            assert got == tool_seq[len(prompt) :] + [a_end]


# --------------------------------------------------------------------------- many prompts together


def mixed_prompts(tok):
    """Lengths 23, 10, 41 and 1 (prompt bucket 48): a calculator call, an immediate stop, two free continuations."""
    bos, sp = tok.get_bos_token_id(), tok.encode_special
    return [
        tok.encode("Hello world! 2 + 3 = 5, 12 * 7", prepend=bos) + [sp("<|assistant_start|>")],
        tok.encode("The quick brown fox", prepend=bos) + [sp("<|user_end|>")],
        tok.encode("strawberry has three rs; count letters and numbers 0123456789 and the lazy dog", prepend=bos),
        [bos],
    ]


@pytest.fixture(scope="module")
def tool_model(tok):
    """Random weights; <|assistant_start|> opens the call "2 + 3", <|user_end|> ends the reply."""
    sp = tok.encode_special
    chain = [sp("<|assistant_start|>"), sp("<|python_start|>"), *tok.encode("2 + 3"), sp("<|python_end|>")]
    transitions = {a: [b] for a, b in itertools.pairwise(chain)} | {sp("<|user_end|>"): [sp("<|assistant_end|>")]}
    return scripted_gpt(tiny_config(tok), transitions, seed=3)


@pytest.mark.parametrize("chunk_size,mesh", [(5, False), (32, True)])
def test_mixed_length_prompts_decode_together_as_each_alone(tok, tool_model, chunk_size, mesh):
    prompts = mixed_prompts(tok)
    refs = [naive_chat_greedy(tool_model, tok, p, 24) for p in prompts]
    # The references themselves cover what the batch must get right.
    (tool_seq, tool_mask), (stop_seq, _) = refs[0], refs[1]
    forced = [tok.encode_special("<|output_start|>"), *tok.encode("5"), tok.encode_special("<|output_end|>")]
    start = len(prompts[0]) + 6  # <|python_start|> 2 + 3 <|python_end|>
    assert tool_seq[start : start + 3] == forced and tool_mask[start : start + 3] == [0, 0, 0] and len(tool_seq) > start + 3
    assert stop_seq == prompts[1]
    new_tokens = [len(s) - len(p) for (s, _), p in zip(refs, prompts)]
    assert max(new_tokens) == 24 and len(set(new_tokens)) == 4  # rows finish at different steps
    eng = E.Engine(tool_model, tok, chunk_size=chunk_size, mesh=sharding.make_mesh() if mesh else None)
    samples = 1 if mesh else 2  # with the mesh, 4 rows are padded to the 8 devices
    seqs, masks = eng.generate_multi(prompts, samples, max_tokens=24, temperature=0.0)
    assert seqs == [[s] * samples for s, _ in refs]
    assert masks == [[m] * samples for _, m in refs]


def test_each_row_samples_from_its_own_seed(tok, model):
    """Row (i, j) draws from (seeds[i], j, step) only: neither the batch around it nor its place in it matter."""
    prompts = mixed_prompts(tok)[1:]
    kw = {"max_tokens": 20, "temperature": 1.0, "top_k": 50}
    eng = E.Engine(model, tok, chunk_size=8)
    together, _ = eng.generate_multi(prompts, 3, seeds=[11, 12, 13], **kw)
    assert eng.generate_multi(prompts, 3, seeds=[11, 12, 13], **kw)[0] == together
    assert eng.generate_multi(prompts[::-1], 3, seeds=[13, 12, 11], **kw)[0] == together[::-1]
    # Alone, and with fewer samples: the first samples are the same.
    assert eng.generate_multi([prompts[1]], 2, seeds=[12], **kw)[0] == [together[1][:2]]
    assert eng.generate_batch(prompts[1], 2, seed=12, **kw)[0] == together[1][:2]
    other, _ = eng.generate_multi(prompts, 3, seeds=[21, 12, 13], **kw)
    assert other[0] != together[0] and other[1:] == together[1:]
    assert all(len({tuple(s) for s in rows}) == 3 for rows in together)  # samples of one prompt differ
    with pytest.raises(ValueError, match="seeds"):
        eng.generate_multi(prompts, 1, seeds=[1], **kw)
    with pytest.raises(ValueError):
        eng.generate_multi([], 1, **kw)


def test_per_prompt_settings_decode_together_as_each_alone(tok, model):
    """max_tokens, temperature and top_k per prompt (the web server's batches): each row gets what it gets alone.

    The greedy row is checked against the naive full-forward decode; the
    sampled rows against the same request run alone, which with a fixed
    ``k_width`` must not depend on the other rows' settings.
    """
    prompts = mixed_prompts(tok)[1:]
    settings = dict(max_tokens=[5, 17, 11], temperature=[0.0, 1.0, 0.7], top_k=[None, 3, 40])
    eng = E.Engine(model, tok, chunk_size=4, k_width=64)
    seqs, masks = eng.generate_multi(prompts, 1, seeds=[1, 2, 3], **settings)
    assert [len(s[0]) - len(p) for s, p in zip(seqs, prompts)] == [5, 17, 11]  # random_model never stops early
    assert seqs[0][0] == naive_greedy(model, prompts[0], 5)
    for i, p in enumerate(prompts):
        alone = {k: v[i] for k, v in settings.items()}
        assert eng.generate_batch(p, 1, seed=i + 1, **alone)[0] == seqs[i]
    assert masks[1][0] == [0] * len(prompts[1]) + [1] * 17
    with pytest.raises(ValueError, match="temperature"):
        eng.generate_multi(prompts, 1, max_tokens=4, temperature=[1.0, 0.5])


# --------------------------------------------------------------------------- compilation


def test_decode_compiles_once_per_bucket(tok, model):
    compiles = []
    listener = lambda event, *a, **k: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    eng = E.Engine(model, tok, chunk_size=8)
    p1, p2 = prompt_ids(tok, "Hello world"), prompt_ids(tok, "The quick brown fox jumps")
    assert len(p1) != len(p2)
    compiled = (E._prefill_jit, E._decode_jit, E._cast_params)
    before = [f._cache_size() for f in compiled]  # one entry per trace of each jitted program
    cols = list(eng.generate(p1, num_samples=4, max_tokens=200, temperature=0.0))
    assert len(cols) == 200  # 25 chunks, no early stop
    assert all(f._cache_size() - b <= 1 for f, b in zip(compiled, before))
    # A second prompt in the same buckets: no new trace and (almost) no backend compile at all.
    before = [f._cache_size() for f in compiled]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        cols = list(eng.generate(p2, num_samples=4, max_tokens=200, temperature=0.0, seed=3))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(cols) == 200
    assert [f._cache_size() for f in compiled] == before
    assert len(compiles) <= 2, compiles  # e.g. PRNGKey creation; never per token


def test_argument_checks(tok, model):
    eng = E.Engine(model, tok)
    with pytest.raises(ValueError):
        list(eng.generate([]))
    with pytest.raises(ValueError):
        list(eng.generate([tok.get_vocab_size()], max_tokens=2))
    with pytest.raises(ValueError):
        list(eng.generate([1, 2], max_tokens=10 * REF_T))
    assert [E.bucket(n, 16) for n in (3, 16, 17, 20, 21, 33, 65, 2304)] == [16, 16, 20, 20, 24, 40, 80, 2560]
    assert E.bucket(70, 64, cap=75) == 75
    with pytest.raises(ValueError):
        E.bucket(100, 64, cap=80)
