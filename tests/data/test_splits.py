"""Filters, chronological leave-one-out, round slices, candidate sets and short ids."""

import ml_collections
import numpy as np
import pytest

from abpo_jax.data import splits as sp
from abpo_jax.data.datasets import Interactions, load_movielens_1m


def make(rows, raw_items=None, name="toy"):
    """Interactions from (user, item, timestamp, rating) rows with dense ids already."""
    u, i, t, r = (np.array(c) for c in zip(*rows))
    num_items = int(i.max()) + 1
    raw_items = raw_items or tuple(f"it{k:02d}" for k in range(num_items))
    return Interactions(
        name=name, user=u.astype(np.int32), item=i.astype(np.int32), timestamp=t.astype(np.int64),
        rating=r.astype(np.float32), raw_user_ids=tuple(f"u{k}" for k in range(int(u.max()) + 1)),
        raw_item_ids=tuple(raw_items), item_titles=tuple(f"title {x}" for x in raw_items))


@pytest.fixture(scope="module")
def ml1m():
    inter = sp.k_core(load_movielens_1m(), 5)
    return inter, sp.leave_one_out(sp.user_sequences(inter))


def test_k_core_is_iterative():
    rows = [(0, 0, 1, 5), (0, 1, 2, 5), (1, 0, 1, 5), (1, 2, 2, 5),
            (2, 3, 1, 5), (2, 4, 2, 5), (3, 3, 1, 5), (3, 4, 2, 5), (0, 1, 3, 5)]
    out = sp.k_core(make(rows), 2)
    # 2-core, by hand: item 2 (1 row) goes -> user 1 is left with 1 row and goes -> item 0 is
    # left with 1 row and goes -> user 0 keeps item 1 twice (repeats count) and stays.
    assert out.raw_user_ids == ("u0", "u2", "u3")
    assert out.raw_item_ids == ("it01", "it03", "it04")
    assert out.item_titles == ("title it01", "title it03", "title it04")
    assert out.num_interactions == 6
    np.testing.assert_array_equal(out.user, [0, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(out.item, [0, 1, 2, 1, 2, 0])
    assert sp.k_core(make(rows), 0).num_interactions == 9
    with pytest.raises(ValueError, match="config.data.k_core"):
        sp.k_core(make(rows), 10)


def test_min_rating_filter():
    rows = [(0, 0, 1, 5), (0, 1, 2, 2), (1, 1, 1, 4)]
    out = sp.filter_min_rating(make(rows), 4)
    assert out.num_interactions == 2 and out.raw_item_ids == ("it00", "it01")
    assert sp.filter_min_rating(make(rows), 0).num_interactions == 3


def test_sequences_and_leave_one_out_hand_values():
    # user 0 rows out of time order, with a tie at t=5 (source order: item 3 before item 1)
    rows = [(0, 2, 9, 5), (0, 3, 5, 4), (1, 0, 1, 3), (0, 1, 5, 3), (0, 0, 2, 1), (1, 1, 2, 2)]
    seqs = sp.user_sequences(make(rows))
    np.testing.assert_array_equal(seqs.items_of(0), [0, 3, 1, 2])
    np.testing.assert_array_equal(seqs.ratings[seqs.span(0)], [1, 4, 3, 5])
    split = sp.leave_one_out(seqs)
    np.testing.assert_array_equal(split.users, [0])              # user 1 has only 2 items
    np.testing.assert_array_equal(split.train_items(0), [0, 3])
    assert (split.target(0, "valid"), split.target(0, "test")) == (1, 2)
    np.testing.assert_array_equal(seqs.items[split.history(0, "valid")], [0, 3])
    np.testing.assert_array_equal(seqs.items[split.history(0, "test")], [0, 3, 1])
    np.testing.assert_array_equal(split.train_items(1), [0, 1])  # not evaluable: all in train
    with pytest.raises(ValueError, match="fewer than 3"):
        split.target(1, "test")
    np.testing.assert_array_equal(split.test_times(), [9])


def test_ml1m_split_has_no_leakage(ml1m):
    inter, split = ml1m
    seqs = split.sequences
    assert len(split.users) == inter.num_users == 6040
    for u in split.users.tolist():
        train = split.train_items(u)
        s = seqs.span(u)
        test_target, valid_target = split.target(u, "test"), split.target(u, "valid")
        assert test_target not in train and valid_target not in train
        assert test_target != valid_target
        # chronology: the test interaction is the user's latest
        assert seqs.timestamps[s.stop - 1] == seqs.timestamps[s].max()
    total = int(seqs.lengths.sum())
    assert total == inter.num_interactions
    assert sum(len(split.train_items(u)) for u in split.users.tolist()) == total - 2 * 6040


def test_round_slices_are_disjoint_and_time_ordered(ml1m):
    _, split = ml1m
    ordered = sp.users_in_time_order(split)
    assert sorted(ordered.tolist()) == split.users.tolist()
    times = split.test_times()[np.searchsorted(split.users, ordered)]
    assert (np.diff(times) >= 0).all()
    slices = sp.user_slices(ordered[:1000], num_test_users=100, users_per_round=50, num_rounds=3)
    parts = [slices.warm, *slices.rounds, slices.test]
    assert [len(p) for p in parts] == [750, 50, 50, 50, 100]
    np.testing.assert_array_equal(np.concatenate(parts), ordered[:1000])   # disjoint, in order
    with pytest.raises(ValueError, match=r"num_test_users=100.*users_per_round=400"):
        sp.user_slices(ordered[:1000], 100, 400, 3)
    with pytest.raises(ValueError, match=r"config\.data\.users_per_round=-1 must be >= 0"):
        sp.user_slices(ordered[:1000], 100, -1, 3)


def test_candidates_contain_target_once_and_no_interacted_item(ml1m):
    inter, split = ml1m
    users = split.users[::12]
    examples = sp.build_examples(split, users, "test", history_len=10, num_candidates=20,
                                 num_items=inter.num_items, seed=7)
    positions = []
    for ex in examples:
        seen = set(split.sequences.items_of(ex.user).tolist())
        assert len(ex.candidates) == 20 and len(set(ex.candidates.tolist())) == 20
        assert (ex.candidates == ex.target).sum() == 1
        assert ex.candidates[ex.target_index] == ex.target
        assert not (set(ex.candidates.tolist()) - {ex.target}) & seen
        assert ex.target == split.target(ex.user, "test")
        hist = split.sequences.items[split.history(ex.user, "test")]
        np.testing.assert_array_equal(ex.history, hist[-10:])
        positions.append(ex.target_index)
    # target position is shuffled: every slot is used across ~500 users
    assert set(positions) == set(range(20))
    # stable per (seed, user): independent of which other users are built and in what order
    again = sp.build_examples(split, users[::-1][:5], "test", history_len=10, num_candidates=20,
                              num_items=inter.num_items, seed=7)
    for a, b in zip(again, examples[::-1][:5]):
        np.testing.assert_array_equal(a.candidates, b.candidates)
    other_seed = sp.build_examples(split, users[:5], "test", history_len=10, num_candidates=20,
                                   num_items=inter.num_items, seed=8)
    assert any((a.candidates != b.candidates).any() for a, b in zip(other_seed, examples[:5]))
    valid = sp.build_examples(split, users[:5], "valid", history_len=10, num_candidates=20,
                              num_items=inter.num_items, seed=7)
    assert all(v.target == split.target(v.user, "valid") for v in valid)


def test_sample_candidates_dense_user_and_too_few_items():
    # user interacted with 7 of 10 items: the pool path draws the 3 others
    cands, pos = sp.sample_candidates(0, np.arange(7), 10, 4, seed=0, user=3)
    assert sorted(cands.tolist()) == [0, 7, 8, 9] and cands[pos] == 0
    with pytest.raises(ValueError, match="num_candidates-1=4"):
        sp.sample_candidates(0, np.arange(7), 10, 5, seed=0, user=3)


def test_train_examples_are_next_item_pairs():
    rows = [(0, k, k, 5) for k in range(6)] + [(1, 9, 1, 4), (1, 8, 2, 4), (1, 7, 3, 4)]
    split = sp.leave_one_out(sp.user_sequences(make(rows)))
    ex = sp.build_train_examples(split, np.array([0, 1]), history_len=2, num_candidates=3,
                                 num_items=10, seed=0)
    # user 0 train seq = [0,1,2,3] -> targets 1,2,3; user 1 train seq = [9] -> none
    assert [(e.user, e.history.tolist(), e.target) for e in ex] == [
        (0, [0], 1), (0, [0, 1], 2), (0, [1, 2], 3)]
    last = sp.build_train_examples(split, np.array([0]), history_len=2, num_candidates=3,
                                   num_items=10, seed=0, last_per_user=1)
    assert [e.target for e in last] == [3]
    np.testing.assert_array_equal(last[0].candidates, ex[2].candidates)


def test_item_short_ids():
    ints = make([(0, 0, 1, 5), (0, 1, 2, 5), (0, 2, 3, 5)], raw_items=("10", "7", "300"))
    assert sp.item_short_ids(ints) == ["10", "7", "300"]
    names = make([(0, 0, 1, 5), (0, 1, 2, 5), (0, 2, 3, 5)], raw_items=("b", "c", "a"))
    short = sp.item_short_ids(names)
    assert short == ["1", "2", "0"]                       # index in sorted raw-id order
    assert sp.short_id_index(short) == {"1": 0, "2": 1, "0": 2}
    padded = make([(0, 0, 1, 5), (0, 1, 2, 5)], raw_items=("007", "8"))
    assert sp.item_short_ids(padded) == ["0", "1"]        # "007" is not canonical: use indices
    with pytest.raises(ValueError, match="not unique"):
        sp.short_id_index(["1", "1"])


def test_prepare_data_from_config(ml1m):
    inter, _ = ml1m
    cfg = ml_collections.ConfigDict({
        "seed": 0,
        "data": {"dataset": "ml-1m", "path": "", "k_core": 5, "min_rating": 4.0,
                 "max_users": 500, "num_test_users": 50, "users_per_round": 20},
        "rounds": {"num_rounds": 2}})
    prep = sp.prepare_data(cfg, inter)
    assert prep.interactions.rating.min() >= 4.0
    assert len(prep.ordered_users) == 500
    assert [len(prep.slices.warm), *map(len, prep.slices.rounds), len(prep.slices.test)] == [
        410, 20, 20, 50]
    assert len(prep.short_ids) == prep.interactions.num_items
