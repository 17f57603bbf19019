"""Replay feedback: the outcome is what the user actually consumed (sim.feedback=replay)."""

import jax
import ml_collections
import numpy as np
import pytest

from abpo_jax.data import events as ev
from abpo_jax.data import splits as sp
from abpo_jax.sim.replay import (MnlFeedback, ReplayFeedback, feedback_from_config,
                                 request_keys)
from abpo_jax.sim.users import UserSimulator, fit_preferences
from tests.data.test_events import synthetic


def test_consumed_click_probs_and_true_ctr_by_hand():
    # user 0 consumes 5, 6, 7, 8 in that order; user 1 consumes 1, 2
    seqs = sp.UserSequences(offsets=np.array([0, 4, 6]), items=np.array([5, 6, 7, 8, 1, 2]),
                            timestamps=np.arange(6), ratings=np.ones(6, np.float32))
    fb = ReplayFeedback(seqs, num_items=10, horizon=1, external_ignore=0.25)
    np.testing.assert_array_equal(fb.consumed(np.array([1, 3, 5])),
                                  [[6, 7], [8, -1], [2, -1]])      # never past a user's end
    cands = np.array([[6, 7, 8], [8, 1, 2], [1, 2, 3]])
    np.testing.assert_allclose(fb.click_probs(None, np.array([1, 3, 5]), cands),
                               [[0.75, 0.75, 0], [0.75, 0, 0], [0, 0.75, 0]])
    pi = np.array([[0.5, 0.25, 0.25], [0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
    # exact: (1 - e) * sum of pi over the consumed candidates, averaged over requests
    assert np.isclose(fb.true_ctr(None, np.array([1, 3, 5]), cands, pi),
                      0.75 * (0.75 + 0.1 + 0.3) / 3)
    no_ignore = ReplayFeedback(seqs, 10)
    assert no_ignore.click_probs(None, np.array([1]), cands[:1]).tolist() == [[1, 0, 0]]
    with pytest.raises(ValueError, match="needs the event"):
        no_ignore.click_probs(None, np.array([-1]), cands[:1])


def test_outcomes_are_consumption_times_external_ignore():
    inter = synthetic(num_users=20, per_user=(30, 40))
    seqs = sp.user_sequences(inter)
    index = ev.EventIndex.build(seqs, inter.num_items)
    events = np.flatnonzero(index.position >= 1)
    req = ev.build_requests(index, events, history_len=3, num_candidates=5, seed=0)
    fb = ReplayFeedback(seqs, inter.num_items, external_ignore=0.3)
    rows = np.arange(len(req))
    # exposing the consumed item: clicked with probability 1 - e; a negative: never
    y_hit = fb.sample_outcomes(jax.random.PRNGKey(0), req.user, req.event, req.target)
    assert abs(y_hit.mean() - 0.7) < 4 * np.sqrt(0.21 / len(rows))   # 4 standard errors
    neg = req.candidates[rows, (req.target_index + 1) % 5]
    assert fb.sample_outcomes(jax.random.PRNGKey(1), req.user, req.event, neg).sum() == 0
    # the logged click probabilities are the outcome's expectation, candidate by candidate
    probs = fb.click_probs(req.user, req.event, req.candidates)
    np.testing.assert_allclose(probs[rows, req.target_index], 0.7)
    assert np.isclose(probs.sum(), 0.7 * len(rows))             # and nowhere else (horizon 0)


def test_feedback_from_config_and_request_keys():
    inter = synthetic(num_users=6, per_user=(10, 12))
    seqs = sp.user_sequences(inter)
    prefs, _ = fit_preferences(inter.user, inter.item, 6, inter.num_items, steps=2)
    sim = UserSimulator(prefs, external_ignore=0.1)
    config = ml_collections.ConfigDict({"sim": {"feedback": "mnl", "replay_horizon": 2,
                                                "external_ignore": 0.1}})
    mnl = feedback_from_config(config, sim, seqs, inter.num_items)
    assert isinstance(mnl, MnlFeedback) and mnl.num_items == inter.num_items
    users, cands = np.array([0, 3]), np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(mnl.click_probs(users, None, cands),
                                  np.asarray(sim.click_probs(users, cands)))
    config.sim.feedback = "replay"
    replay = feedback_from_config(config, sim, seqs, inter.num_items)
    assert (replay.name, replay.horizon, replay.external_ignore) == ("replay", 2, 0.1)
    index = ev.EventIndex.build(seqs, inter.num_items)
    req = ev.build_requests(index, np.array([3, 4, 15]), history_len=2, num_candidates=4,
                            seed=0)
    keys = request_keys(req.examples())
    np.testing.assert_array_equal(keys[0], req.user)
    np.testing.assert_array_equal(keys[1], req.event)


def test_an_event_round_logs_many_requests_per_user_with_replay_outcomes(tmp_path):
    """`log_round` on one event window (per_event): ids name the event, a user has many
    requests, and each record's outcome and click probabilities are the user's behaviour."""
    from abpo_jax.data import log_store, records
    from abpo_jax.sim.logging_policy import log_round, uniform_policy

    inter = synthetic(num_users=8, per_user=(40, 50))
    seqs = sp.user_sequences(inter)
    index = ev.EventIndex.build(seqs, inter.num_items)
    timeline = ev.cut_timeline(index, 1, 0.5)
    req = ev.build_requests(index, timeline.window(1), history_len=3, num_candidates=5, seed=0)
    fb = ReplayFeedback(seqs, inter.num_items, horizon=0, external_ignore=0.0)
    log_round(req.examples(), uniform_policy(), fb, round_index=1, seed=0,
              logs_dir=str(tmp_path), policy_revision="test", per_event=True)
    logged = list(log_store.open_round(log_store.round_path(tmp_path, 1)))
    assert len(logged) == len(req)
    assert np.bincount([r.user_id for r in logged]).max() >= 5
    for r, e, target in zip(logged, req.event.tolist(), req.target.tolist()):
        assert r.request_id.endswith(f"-e{e}")
        assert r.outcome == int(r.exposed_item_id == target)      # e = 0: exactly consumption
        np.testing.assert_array_equal(records.click_probs(r),
                                      np.asarray(r.candidate_item_ids) == target)
    assert sum(r.outcome for r in logged) > 0
    with pytest.raises(ValueError, match="a user appears twice"):   # users rounds stay strict
        log_round(req.examples(), uniform_policy(), fb, round_index=2, seed=0,
                  logs_dir=str(tmp_path), policy_revision="test")
