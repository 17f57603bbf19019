"""Ranking / catalogue / exposure metrics against hand-computed values."""

import math

import jax
import numpy as np
import pytest

from abpo_jax.eval import metrics as m


def test_rank_of_target_ties_by_candidate_index():
    scores = np.array([
        [0.1, 0.9, 0.5, 0.3],       # target 2 (0.5): only 0.9 above -> rank 2
        [1.0, 1.0, 1.0, 1.0],       # all tied, target 2: indices 0, 1 ahead -> rank 3
        [0.2, 0.7, 0.7, 0.1],       # target 2 tied with index 1 (lower) -> rank 2
        [0.2, 0.7, 0.7, 0.1],       # target 1 tied with index 2 (higher) -> rank 1
        [np.nan, 0.0, -5.0, 0.3],   # NaN ranks last: target 2 behind 0.3, 0.0 -> rank 3
    ])
    target = np.array([2, 2, 2, 1, 2])
    np.testing.assert_array_equal(m.rank_of_target(scores, target), [2, 3, 2, 1, 3])


def test_rank_matches_stable_descending_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
    target = rng.integers(0, 7, size=50)
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = np.array([list(row).index(t) + 1 for row, t in zip(order, target)])
    np.testing.assert_array_equal(m.rank_of_target(scores, target), expected)
    # jax.lax.top_k breaks ties the same way
    _, top = jax.lax.top_k(scores, 7)
    np.testing.assert_array_equal(np.asarray(top), order)


def test_hit_rate_and_ndcg_hand_values():
    ranks = np.array([1, 2, 3, 6, 11])
    assert float(m.hit_rate_at_k(ranks, 1)) == pytest.approx(1 / 5)
    assert float(m.hit_rate_at_k(ranks, 5)) == pytest.approx(3 / 5)
    assert float(m.hit_rate_at_k(ranks, 10)) == pytest.approx(4 / 5)
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(4)) / 5 = (1 + 0.63093 + 0.5) / 5
    assert float(m.ndcg_at_k(ranks, 5)) == pytest.approx((1 + 0.6309297535714575 + 0.5) / 5,
                                                         rel=1e-6)
    # MiniOneRec calc.py: sum 1/ln(minID+2) / (1/ln 2), minID = 0-based position
    calc = sum(1 / math.log(r - 1 + 2) for r in ranks if r <= 10) / len(ranks) / (1 / math.log(2))
    assert float(m.ndcg_at_k(ranks, 10)) == pytest.approx(calc, rel=1e-6)


def test_ranking_metrics_dict_and_jit():
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    target = np.array([0, 0])                    # ranks 1 and 3
    out = m.ranking_metrics(scores, target, ks=(1, 5))
    assert out == pytest.approx({"hr@1": 0.5, "ndcg@1": 0.5})  # k=5 > C=3 is left out
    ranks = jax.jit(m.rank_of_target)(scores, target)
    np.testing.assert_array_equal(ranks, [1, 3])
    assert float(jax.jit(m.ndcg_at_k, static_argnums=1)(ranks, 3)) == pytest.approx(
        (1 + 1 / 2) / 2)


def test_coverage_counts_and_padding():
    rec = np.array([[0, 1], [1, 4], [-1, 0]])     # -1 = padding
    np.testing.assert_array_equal(m.item_counts(rec, 6), [2, 2, 0, 0, 1, 0])
    assert float(m.coverage(rec, 6)) == pytest.approx(3 / 6)


def test_gini_hand_values():
    assert float(m.gini([5, 5, 5, 5])) == pytest.approx(0.0)
    assert float(m.gini([0, 0, 0, 10])) == pytest.approx(3 / 4)
    # [1, 2, 3]: sum (2i-n-1) x = -2*1 + 0*2 + 2*3 = 4 ; / (3 * 6) = 2/9
    assert float(m.gini([3, 1, 2])) == pytest.approx(2 / 9)
    assert float(m.gini([0, 0, 0])) == 0.0          # no recommendations: defined, not NaN


def test_average_recommendation_popularity():
    popularity = np.array([10.0, 0.0, 4.0, 2.0])
    assert float(m.average_recommendation_popularity([0, 2, 3], popularity)) == pytest.approx(
        16 / 3)
    # per-request means (10+0)/2=5 and (4+2)/2=3 -> 4
    assert float(m.average_recommendation_popularity([[0, 1], [2, 3]], popularity)) == \
        pytest.approx(4.0)


def test_exposure_share():
    assert float(m.exposure_share([1, 2, 3, 4], [1, 0, 3, 0])) == pytest.approx(0.5)
    past = np.array([[5, 1, -1], [7, -1, -1], [2, 3, 9]])
    assert float(m.exposure_share([1, 2, 9], past)) == pytest.approx(2 / 3)


def test_kl_divergence_hand_value_and_smoothing():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.25, 0.25, 0.5])
    # eps=0: 0.5 ln2 + 0.5 ln2 = ln 2
    assert float(m.kl_divergence(p, q, eps=0.0)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(m.kl_divergence(q * 8, q, eps=0.0)) == pytest.approx(0.0, abs=1e-7)  # counts ok
    # an item the logger never exposed stays finite with eps > 0
    eps = 1e-3
    kl = float(m.kl_divergence([0.0, 1.0], [1.0, 0.0], eps=eps))
    ps = np.array([eps, 1 + eps]) / (1 + 2 * eps)
    qs = ps[::-1]
    assert kl == pytest.approx(float(np.sum(ps * np.log(ps / qs))), rel=1e-5)
    assert np.isfinite(kl)
    batched = m.kl_divergence(np.stack([p, q]), np.stack([q, q]), eps=0.0)
    np.testing.assert_allclose(batched, [math.log(2), 0.0], atol=1e-6)
