"""Event rounds: the cut timeline, vectorised requests, and that no target comes before its
time (DESIGN.md "Continual protocol at deployment volume")."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from abpo_jax.data import events as ev
from abpo_jax.data import splits as sp
from abpo_jax.data.datasets import DataError, Interactions, load_amazon2018_csv, load_dataset

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
AMAZON2018 = SHARED / "amazon2018"


def synthetic(num_users=40, num_items=60, per_user=(8, 30), seed=0, tie_every=0):
    """Random interactions; with `tie_every` > 0 timestamps are rounded to that many units
    (days in Amazon data), so many events share one."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        n = int(rng.integers(*per_user))
        items = rng.choice(num_items, size=n, replace=True)   # repeats happen
        times = np.sort(rng.integers(0, 10_000, size=n))
        if tie_every:
            times = times // tie_every * tie_every
        rows += [(u, int(i), int(t), float(rng.integers(1, 6))) for i, t in zip(items, times)]
    u, i, t, r = (np.array(c) for c in zip(*rows))
    return Interactions(
        name="toy", user=u.astype(np.int32), item=i.astype(np.int32),
        timestamp=t.astype(np.int64), rating=r.astype(np.float32),
        raw_user_ids=tuple(f"u{k}" for k in range(num_users)),
        raw_item_ids=tuple(f"i{k}" for k in range(num_items)),
        item_titles=tuple(f"t{k}" for k in range(num_items)))


def config(**rounds):
    c = ml_collections.ConfigDict({
        "seed": 3,
        "rounds": {"num_rounds": 3, "warm_fraction": 0.4, "requests_per_round": 0,
                   "eval_requests": 0},
        "data": {"history_len": 4, "num_candidates": 6},
        "train": {"sft_steps": 4, "batch_size": 8}})
    c.rounds.update(rounds)
    return c


def rounds_of(inter, **kw):
    seqs = sp.user_sequences(inter)
    return seqs, ev.event_rounds(config(**kw), seqs, inter.num_items)


def brute_force_request(inter, seqs, event, H, C):
    """What a request must be, by the definition, for one event."""
    u = int(np.searchsorted(seqs.offsets, event, side="right") - 1)
    t = int(seqs.timestamps[event])
    start = max(int(seqs.offsets[u]), event - H)
    seen = {int(i) for i, tt in zip(seqs.items_of(u), seqs.timestamps[seqs.span(u)]) if tt <= t}
    return u, seqs.items[start:event], seqs.ratings[start:event], int(seqs.items[event]), seen


@pytest.mark.parametrize("ties", [0, 500])
def test_requests_match_the_definition(ties):
    inter = synthetic(tie_every=ties)
    seqs, er = rounds_of(inter)
    H, C = 4, 6
    for req in (*er.deploy, er.test, er.sft, *er.valid):
        items, ratings = req.history(H)
        for row, e in enumerate(req.event.tolist()):
            u, hist, hr, target, seen = brute_force_request(inter, seqs, e, H, C)
            assert req.user[row] == u and req.target[row] == target
            n = len(hist)
            np.testing.assert_array_equal(items[row, :n], hist)
            np.testing.assert_array_equal(ratings[row, :n], hr)
            assert (items[row, n:] == -1).all()
            cands = req.candidates[row]
            assert cands[req.target_index[row]] == target
            negatives = np.delete(cands, req.target_index[row])
            assert len(set(negatives.tolist())) == C - 1
            assert not set(negatives.tolist()) & seen        # none interacted with by t
        ex = req.examples()
        assert [e.target for e in ex] == req.target.tolist()
        np.testing.assert_array_equal(ex[-1].history, seqs.items[req.history_start[-1]:
                                                                 req.event[-1]])


def test_request_is_a_function_of_the_event_alone():
    inter = synthetic()
    seqs = sp.user_sequences(inter)
    index = ev.EventIndex.build(seqs, inter.num_items)
    events = np.flatnonzero(index.position >= 1)
    full = ev.build_requests(index, events, history_len=4, num_candidates=6, seed=1)
    some = np.random.default_rng(0).choice(len(events), 25, replace=False)
    part = ev.build_requests(index, events[some][::-1], history_len=4, num_candidates=6, seed=1)
    np.testing.assert_array_equal(part.candidates, full.candidates[some][::-1])
    np.testing.assert_array_equal(part.target_index, full.target_index[some][::-1])
    other = ev.build_requests(index, events, history_len=4, num_candidates=6, seed=2)
    assert (other.candidates != full.candidates).any()       # the seed matters
    # the target's slot is spread over the list, not always first
    assert len(np.unique(full.target_index)) == 6


def test_no_target_before_its_time():
    """Windows are strictly later than everything before them (ties never straddle a cut), so
    the policy after round k -- trained on the warm period and windows <= k -- has never seen a
    target of its validation window k + 1 or of the test window."""
    inter = synthetic(tie_every=700)        # heavy ties: the cuts must move
    seqs, er = rounds_of(inter, requests_per_round=50, eval_requests=30)
    t = er.timeline
    times = seqs.timestamps
    spans = [t.order[t.bounds[w]:t.bounds[w + 1]] for w in range(len(t.bounds) - 1)]
    for a, b in zip(spans, spans[1:]):
        assert times[a].max() < times[b].min()
    seen_by_update = [times[np.concatenate([t.warm()] + [t.window(j) for j in range(1, k + 1)])]
                      for k in range(t.num_rounds + 1)]
    for k in range(t.num_rounds + 1):
        # validation after round k: strictly after every event any update up to k learnt from
        assert times[er.valid[k].event].min() > seen_by_update[k].max()
        assert times[er.test.event].min() > seen_by_update[k].max()
        # round k's log (deployed on window k) only holds events after what pi_{k-1} saw
        if k >= 1:
            assert times[er.deploy[k - 1].event].min() > seen_by_update[k - 1].max()
    assert times[er.sft.event].max() < times[t.window(1)].min()
    # every request's history is strictly before its event and of the same user
    for req in (*er.deploy, er.test):
        items, _ = req.history(4)
        assert (req.history_start < req.event).all()
        assert (np.searchsorted(seqs.offsets, req.history_start, "right")
                == np.searchsorted(seqs.offsets, req.event, "right")).all()


def test_a_user_appears_in_many_requests_and_sizes():
    inter = synthetic(num_users=10, per_user=(40, 60))
    seqs, er = rounds_of(inter, requests_per_round=40, eval_requests=20)
    t = er.timeline
    for k, req in enumerate(er.deploy, 1):
        assert len(req) == 40 and np.isin(req.event, t.window(k)).all()
        assert (np.diff(req.timestamp) >= 0).all()                   # time order kept
        assert np.bincount(req.user).max() >= 5                     # many requests per user
    assert len(er.test) == 20 and len(er.valid) == t.num_rounds + 1
    # warm fraction by event count, the rest in equal windows (up to the tie moves)
    n = len(t.order)
    assert abs(t.bounds[1] - 0.4 * n) <= 1
    sizes = np.diff(t.bounds[1:])
    assert sizes.max() - sizes.min() <= 1
    # all events of each window (0 = all)
    seqs, er = rounds_of(inter)
    assert [len(r) for r in er.deploy] == [len(t.window(k)) for k in (1, 2, 3)]
    assert "window 1" in er.summary()


def test_dense_user_falls_back_to_the_pool_and_too_dense_fails():
    # one user who has seen all but 7 of 12 items by the end: rejection sampling rarely
    # succeeds, the explicit pool must
    rows = [(0, i, i, 5.0) for i in range(9)] + [(1, i % 3, 100 + i, 4.0) for i in range(6)]
    u, i, t, r = (np.array(c) for c in zip(*rows))
    inter = Interactions(name="dense", user=u.astype(np.int32), item=i.astype(np.int32),
                         timestamp=t.astype(np.int64), rating=r.astype(np.float32),
                         raw_user_ids=("a", "b"), raw_item_ids=tuple(map(str, range(12))),
                         item_titles=tuple(map(str, range(12))))
    seqs = sp.user_sequences(inter)
    index = ev.EventIndex.build(seqs, 12)
    req = ev.build_requests(index, np.array([8]), history_len=3, num_candidates=4, seed=0)
    assert set(req.candidates[0].tolist()) - {8} <= {9, 10, 11}
    with pytest.raises(DataError, match="num_candidates"):
        ev.build_requests(index, np.array([8]), history_len=3, num_candidates=6, seed=0)


def test_empty_window_names_the_fields():
    inter = synthetic(num_users=3, per_user=(4, 5), tie_every=5000)   # two timestamps in all
    with pytest.raises(DataError, match="rounds.num_rounds"):
        rounds_of(inter)


def test_movielens_100k_volume():
    inter = sp.k_core(load_dataset(ml_collections.ConfigDict({"dataset": "ml-100k"})), 5)
    seqs, er = rounds_of(inter, num_rounds=5, warm_fraction=0.2, requests_per_round=10_000,
                        eval_requests=500)
    assert all(len(r) == 10_000 for r in er.deploy)
    assert len(np.unique(er.deploy[0].user)) < 2_000           # users repeat across requests


@pytest.mark.skipif(not (AMAZON2018 / "Office_Products_test.csv").is_file(),
                    reason=f"Amazon 2018 sample not found at {AMAZON2018}")
def test_amazon2018_office_sample():
    inter = load_amazon2018_csv(AMAZON2018)
    seqs, er = rounds_of(inter, num_rounds=2, eval_requests=200)
    assert all(len(r) > 100 for r in er.deploy)
    times = seqs.timestamps
    assert times[er.deploy[1].event].min() > times[er.deploy[0].event].max()


@pytest.mark.filterwarnings("ignore:.*have no title")   # no meta file: raw ids as titles
def test_amazon2023_jsonl(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"user_id": f"U{u}", "parent_asin": f"P{int(rng.integers(30))}", "rating": 4.0,
             "timestamp": 1_600_000_000_000 + int(rng.integers(10**9))}
            for u in range(12) for _ in range(12)]
    (tmp_path / "Toys.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inter = load_dataset(ml_collections.ConfigDict({"dataset": "amazon2023",
                                                    "path": str(tmp_path / "Toys.jsonl")}))
    seqs, er = rounds_of(inter)
    assert sum(len(r) for r in er.deploy) > 40
