"""Catalogue HR@K / NDCG@K: hand-computed values and MiniOneRec calc.py's loop, by item."""

import math

import numpy as np
import pytest

from abpo_jax.eval.catalogue import CALC_PY_KS, catalogue_metrics


def test_hand_computed():
    items = np.array([[3, 7, 1],     # target 7 at rank 2
                      [5, 2, 9],     # target 5 at rank 1
                      [4, 6, 0],     # target 8 never named: a miss at every k
                      [0, -1, 1]])   # target 1 at rank 3 (-1: a beam that found no item)
    got = catalogue_metrics(items, np.array([7, 5, 8, 1]), ks=(1, 2, 3, 5))
    assert set(got) == {f"catalogue_{m}@{k}" for m in ("hr", "ndcg") for k in (1, 2, 3)}
    assert got["catalogue_hr@1"] == pytest.approx(1 / 4)
    assert got["catalogue_hr@2"] == pytest.approx(2 / 4)
    assert got["catalogue_hr@3"] == pytest.approx(3 / 4)
    assert got["catalogue_ndcg@1"] == pytest.approx(1 / 4)
    assert got["catalogue_ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got["catalogue_ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 1 / 2) / 4)


def _calc_py(predict, target, topk_list=CALC_PY_KS):
    """MiniOneRec calc.py `gao`'s loop, transcribed (strings compared as it does)."""
    n_beam = len(predict[0])
    all_ndcg, all_hr = np.zeros(len(topk_list)), np.zeros(len(topk_list))
    for sample, target_item in zip(predict, target):
        min_id = 1000000
        for i in range(len(sample)):
            if sample[i] == target_item:
                min_id = i
                break
        for index, topk in enumerate(topk_list):
            if topk > n_beam:
                continue
            if min_id < topk:
                all_ndcg[index] += 1 / math.log(min_id + 2)
                all_hr[index] += 1
    ndcg = all_ndcg / len(predict) / (1.0 / math.log(2))
    hr = all_hr / len(predict)
    return {k: (h, d) for k, h, d in zip(topk_list, hr, ndcg) if k <= n_beam}


def test_matches_calc_py_on_random_beams():
    rng = np.random.default_rng(0)
    n, k, num_items = 300, 20, 40
    items = np.stack([rng.permutation(num_items)[:k] for _ in range(n)])
    targets = rng.integers(0, num_items, size=n)
    got = catalogue_metrics(items, targets)
    want = _calc_py([[str(i) for i in row] for row in items], [str(t) for t in targets])
    assert sorted(want) == [1, 3, 5, 10, 20]  # 50 > K is skipped, as calc.py does
    for cut, (hr, ndcg) in want.items():
        assert got[f"catalogue_hr@{cut}"] == pytest.approx(hr, abs=1e-6)
        assert got[f"catalogue_ndcg@{cut}"] == pytest.approx(ndcg, abs=1e-6)
    assert 0 < got["catalogue_hr@1"] < got["catalogue_hr@20"] < 1


def test_matches_by_item_not_by_title():
    """Items 0 and 2 share a title: calc.py's string match calls beam item 2 a hit for target 0;
    by item it is a miss."""
    titles = ["Alien", "Brazil", "Alien"]
    items, targets = np.array([[2, 1]]), np.array([0])
    assert _calc_py([[titles[i] for i in items[0]]], [titles[0]])[1][0] == 1.0
    assert catalogue_metrics(items, targets)["catalogue_hr@1"] == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match="need items"):
        catalogue_metrics(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match=">= 0"):
        catalogue_metrics(np.array([[1, 2]]), np.array([-1]))
