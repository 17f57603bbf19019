"""GEE strategies: which item each drops, what its prompt holds, random-ctr ignores clicks."""

import re

import numpy as np
import pytest

from abpo_jax.gee.strategies import STRATEGIES, Item, plan_round


def _pool(ctrs, topics=None):
    topics = topics or [f"t{i}" for i in range(len(ctrs))]
    return [Item(i, f"question {i}?", topics[i], 0, clicks=int(c * 1000), impressions=1000)
            for i, c in enumerate(ctrs)]


def _plan(strategy, pool, archive=None, seed=0, **kw):
    return plan_round(strategy, pool, archive or pool, topic="headphones", pool_size=len(pool),
                      rng=np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("strategy", ["full-ctr", "partial-ctr", "explore-exploit"])
def test_drops_lowest_ctr(strategy):
    pool = _pool([0.10, 0.02, 0.30, 0.05, 0.20])
    plan = _plan(strategy, pool, fixed_pool=False)
    assert plan.drop == (1,)


def test_full_ctr_prompt_lists_archive_sorted_ascending_with_ctr():
    pool = _pool([0.10, 0.02, 0.30])
    gone = Item(9, "old question?", "t9", 0, clicks=70, impressions=1000)   # dropped earlier
    plan = _plan("full-ctr", pool, archive=pool + [gone])
    (req,) = plan.requests
    assert req.kind == "ctr"
    order = re.findall(r"Question: (.*)\nCTR: ([0-9.]+)%", req.prompt)
    assert [q for q, _ in order] == ["question 1?", "old question?", "question 0?", "question 2?"]
    assert [float(c) for _, c in order] == [2.0, 7.0, 10.0, 30.0]
    assert "New Question:" in req.prompt


def test_partial_ctr_prompt_has_current_pool_without_ctr():
    pool = _pool([0.10, 0.02, 0.30])
    plan = _plan("partial-ctr", pool)
    (req,) = plan.requests
    assert "CTR" not in req.prompt and "%" not in req.prompt
    assert "question 0?" in req.prompt and "question 2?" in req.prompt
    assert "question 1?" not in req.prompt          # the dropped item is gone from the prompt


def test_random_ctr_ignores_real_clicks():
    a, b = _pool([0.10, 0.02, 0.30, 0.05]), _pool([0.01, 0.50, 0.02, 0.40])
    plan_a, plan_b = _plan("random-ctr", a, seed=7), _plan("random-ctr", b, seed=7)
    assert plan_a == plan_b                          # identical despite different clicks
    rng = np.random.default_rng(7)
    fake = rng.uniform(0, 0.15, 4)
    assert plan_a.drop == (int(np.argmin(fake)),)
    shown = [float(c) for c in re.findall(r"CTR: ([0-9.]+)%", plan_a.requests[0].prompt)]
    np.testing.assert_allclose(shown, np.round(np.sort(fake) * 100, 1))


def test_no_drop_adds_one_drops_none():
    plan = _plan("no-drop", _pool([0.1, 0.2, 0.3]))
    assert plan.drop == () and len(plan.requests) == 1


def test_explore_exploit_targets_best_topic_with_room():
    # best item (0.30) sits in a topic that is full (2 items); next best with room is "solo"
    pool = _pool([0.30, 0.25, 0.01, 0.20, 0.10], ["battery", "battery", "x", "solo", "price"])
    plan = _plan("explore-exploit", pool, fixed_pool=False, max_per_topic=2)
    explore, exploit = plan.requests
    assert plan.drop == (2,)
    assert explore.kind == "explore" and "CTR" not in explore.prompt
    assert "Topic: battery" in explore.prompt and "question 2?" not in explore.prompt
    assert exploit.kind == "exploit" and exploit.topic == "solo" and "question 3?" in exploit.prompt


def test_explore_exploit_fixed_pool_drops_two_but_spares_target():
    pool = _pool([0.30, 0.03, 0.01, 0.20, 0.10])
    plan = _plan("explore-exploit", pool, fixed_pool=True)
    assert sorted(plan.drop) == [1, 2] and len(plan.requests) == 2
    assert plan.requests[1].topic == "t0"
    # target is the second-worst: the extra drop skips it
    pool = _pool([0.01, 0.02, 0.30, 0.20], ["a", "b", "c", "c"])
    plan = _plan("explore-exploit", pool, fixed_pool=True)
    assert plan.requests[1].topic == "b" and sorted(plan.drop) == [0, 3]


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'best-ctr'.*full-ctr"):
        _plan("best-ctr", _pool([0.1, 0.2]))
    assert len(STRATEGIES) == 5
