"""GEE click model: closed form on hand-set scores, simulation vs analytic expectation."""

import itertools
import math

import jax
import numpy as np
import pytest

from abpo_jax.gee import click_model as cm


def test_click_probabilities_closed_form():
    # T = 1.5, RS = 11, slate scores 10, 7, 3: hand-written MNL with the outside option.
    t, rs = 1.5, 11.0
    e = [math.exp(10 / t), math.exp(7 / t), math.exp(3 / t)]
    den = math.exp(rs / t) + sum(e)
    want = [x / den for x in e] + [math.exp(rs / t) / den]
    # gee reuses the simulator's MNL (float32), so float32 tolerance.
    got = cm.click_probabilities(np.array([[10.0, 7.0, 3.0]]), t, rs)
    np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5)
    # All-equal scores at the rejection level: every option equally likely.
    np.testing.assert_allclose(cm.click_probabilities(np.full(3, 11.0), 2.0, 11.0), [0.25] * 4,
                               rtol=1e-6)


def _brute_expected(scores, weights, k, t, rs):
    """Expected pool / item CTR by explicit loops (independent of expected_ctr's vectorisation)."""
    n, p = scores.shape
    w = np.asarray(weights, float) / np.sum(weights)
    pool, clicks, shows = 0.0, np.zeros(n), np.zeros(n)
    subsets = list(itertools.combinations(range(n), k))
    for a in subsets:
        for j in range(p):
            ex = [math.exp(scores[i, j] / t) for i in a]
            den = math.exp(rs / t) + sum(ex)
            pool += w[j] * sum(ex) / den / len(subsets)
            for i, x in zip(a, ex):
                clicks[i] += w[j] * x / den
        for i in a:
            shows[i] += 1
    return pool, clicks / shows


def test_expected_ctr_matches_explicit_enumeration():
    rng = np.random.default_rng(0)
    scores = rng.uniform(1, 10, (6, 4))
    weights = np.array([1.0, 2.0, 0.5, 0.5])
    pool, items = cm.expected_ctr(scores, weights, slate_size=3, temperature=1.5,
                                  rejection_score=11.0)
    want_pool, want_items = _brute_expected(scores, weights, 3, 1.5, 11.0)
    assert pool == pytest.approx(want_pool, rel=1e-5)
    np.testing.assert_allclose(items, want_items, rtol=1e-5)


def test_simulated_ctr_matches_analytic_expectation():
    rng = np.random.default_rng(1)
    scores = rng.uniform(3, 10, (5, 3))
    weights = np.array([0.2, 0.3, 0.5])
    s = 20000
    sim = cm.simulate_interactions(jax.random.key(0), scores, weights, num_interactions=s,
                                   slate_size=3, temperature=1.5, rejection_score=11.0)
    sim = {k: np.asarray(v) for k, v in sim.items()}
    pool, items = cm.expected_ctr(scores, weights, slate_size=3, temperature=1.5,
                                  rejection_score=11.0)
    got_pool = np.mean(sim["clicked"] != cm.NO_CLICK)
    assert abs(got_pool - pool) < 4 * math.sqrt(pool * (1 - pool) / s)
    clicks, imps = cm.item_counts(sim["shown"], sim["clicked"], 5)
    assert imps.sum() == 3 * s
    assert np.all(np.abs(imps / s - 3 / 5) < 0.02)           # uniform K-of-N display
    se = np.sqrt(items * (1 - items) / imps)
    assert np.all(np.abs(clicks / imps - items) < 4 * se)
    # persona population shares
    assert np.all(np.abs(np.bincount(sim["persona"], minlength=3) / s - weights) < 0.02)


def test_simulation_shows_distinct_real_items_and_clicks_a_shown_one():
    scores = np.array([[9.0], [8.0], [10.0]])   # 3 items: padded to 8 rows internally
    sim = cm.simulate_interactions(jax.random.key(3), scores, np.ones(1), num_interactions=500,
                                   slate_size=2, temperature=1.5, rejection_score=11.0)
    shown, clicked = np.asarray(sim["shown"]), np.asarray(sim["clicked"])
    assert shown.max() < 3 and np.all(shown[:, 0] != shown[:, 1])
    hit = clicked != cm.NO_CLICK
    assert np.all((shown[hit] == clicked[hit, None]).any(1))
    # zero-weight personas are never drawn
    sim2 = cm.simulate_interactions(jax.random.key(4), np.ones((3, 2)), np.array([0.0, 1.0]),
                                    num_interactions=200, slate_size=2, temperature=1.5,
                                    rejection_score=11.0)
    assert np.all(np.asarray(sim2["persona"]) == 1)
    with pytest.raises(ValueError, match="slate_size"):
        cm.simulate_interactions(jax.random.key(0), scores, np.ones(1), num_interactions=5,
                                 slate_size=4, temperature=1.5, rejection_score=11.0)
