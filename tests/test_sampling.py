"""Sampling frequencies of ``engine.sample_tokens`` against softmax(l / T), by chi-square.

A fixed logit vector is sampled many times (one key per row); the counts must
fit the distribution nanochat's ``sample_next_token`` draws from: softmax of
the logits divided by the temperature, renormalised within the top k when
top-k is on (zero probability outside it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nanochat_jax.engine import sample_tokens

LOGITS = np.array([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0], np.float32)
N = 40_000


def expected_probs(temperature: float, top_k: int | None) -> np.ndarray:
    z = LOGITS.astype(np.float64) / temperature
    if top_k is not None:
        z = np.where(np.argsort(np.argsort(-LOGITS)) < top_k, z, -np.inf)
    p = np.exp(z - z.max())
    return p / p.sum()


def draw(temperature: float, top_k: int | None, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), N)  # raw (N, 2) row keys, as the engine passes them
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (N, LOGITS.size))
    k_max = None if top_k is None else LOGITS.size
    tokens = sample_tokens(logits, keys, jnp.float32(temperature), jnp.int32(top_k or 0), k_max)
    return np.bincount(np.asarray(tokens), minlength=LOGITS.size)


@pytest.mark.parametrize("top_k", [None, 3], ids=["full", "top3"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_counts_follow_softmax_of_logits_over_temperature(temperature, top_k):
    counts, p = draw(temperature, top_k), expected_probs(temperature, top_k)
    assert counts.sum() == N
    assert np.all(counts[p == 0] == 0), counts  # nothing outside the top k
    support = p > 0
    chi2 = np.sum((counts[support] - N * p[support]) ** 2 / (N * p[support]))
    p_value = stats.chi2.sf(chi2, df=support.sum() - 1)
    assert p_value > 1e-4, (counts, N * p, p_value)


def test_temperature_zero_is_argmax():
    counts = draw(0.0, None)
    assert counts[np.argmax(LOGITS)] == N


def test_greedy_takes_the_first_of_tied_maxima_like_torch_argmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 300)).astype(np.float32)
    for r in range(0, 64, 2):  # half the rows: the maximum repeated at random later columns
        top = logits[r].max()
        logits[r, rng.choice(300, 3, replace=False)] = top
    want = [int(np.flatnonzero(row == row.max())[0]) for row in logits]  # the first maximum, by definition
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    got = sample_tokens(jnp.asarray(logits), keys, jnp.float32(0.0), jnp.int32(0), None)
    assert np.asarray(got).tolist() == want
