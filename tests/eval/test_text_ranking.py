"""Text-mode ranking: de-duplication in sampling order, misses, HR/NDCG by hand."""

import math

import numpy as np
import pytest

from abpo_jax.eval.text_ranking import ranking_from_samples, text_ranking_metrics, text_ranks


def test_ranking_keeps_first_sampling_order_and_skips_invalid():
    samples = np.array([[3, 1, 3, 0, 1],
                        [2, 2, 2, 2, 2],
                        [-1, 4, -1, 1, 4]])
    ranked = ranking_from_samples(samples, num_candidates=5)
    # sorted(set(...)) would give [0, 1, 3] for row 0: the order is the sampling order
    np.testing.assert_array_equal(ranked, [[3, 1, 0, -1, -1],
                                           [2, -1, -1, -1, -1],
                                           [4, 1, -1, -1, -1]])
    assert ranking_from_samples(samples, num_candidates=3 + 2).dtype == np.int32
    assert ranking_from_samples(np.array([[0, 1, 2, 0]]), num_candidates=3).shape == (1, 3)
    with pytest.raises(ValueError, match="num_candidates"):
        ranking_from_samples(samples, num_candidates=4)


def test_hr_ndcg_by_hand():
    ranked = ranking_from_samples(np.array([[3, 1, 3, 0, 1],    # target 0 at position 3
                                            [2, 2, 2, 2, 2],    # target 2 at position 1
                                            [4, 1, 4, 1, 4],    # target 3 never sampled
                                            [1, 0, 1, 1, 1]]),  # target 0 at position 2
                                  num_candidates=5)
    targets = np.array([0, 2, 3, 0])
    np.testing.assert_array_equal(text_ranks(ranked, targets), [3, 1, np.inf, 2])
    m = text_ranking_metrics(ranked, targets, ks=(1, 2, 5))
    assert set(m) == {"text_hr@1", "text_ndcg@1", "text_hr@2", "text_ndcg@2", "text_hr@5",
                      "text_ndcg@5"}
    assert m["text_hr@1"] == pytest.approx(1 / 4)
    assert m["text_ndcg@1"] == pytest.approx(1 / 4)
    assert m["text_hr@2"] == pytest.approx(2 / 4)
    assert m["text_ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    # the never-sampled target stays a miss even at K beyond the list length
    assert m["text_hr@5"] == pytest.approx(3 / 4)
    assert m["text_ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)
