"""User simulator: closed-form MNL, click sampling vs analytic CTR, BPR fit, cache."""

import numpy as np
import jax
import pytest

from abpo_jax.sim import users as su

T, RS = 1.5, 11.0


def hand_prefs() -> su.Preferences:
    """3 users x 4 items with raw score = user_factor * item_factor (d=1), no bias.

    quantiles = linspace(-1, 1): score = 1 + 9 * (raw + 1) / 2 for raw in [-1, 1].
    """
    return su.Preferences(
        user_factors=np.array([[1.0], [-1.0], [0.5]], np.float32),
        item_factors=np.array([[1.0], [0.5], [0.0], [-1.0]], np.float32),
        item_bias=np.zeros(4, np.float32),
        quantiles=np.linspace(-1, 1, su.NUM_QUANTILES).astype(np.float32))


def test_scores_follow_quantile_map():
    s = np.asarray(su.preference_scores(hand_prefs(), np.array([0, 1]), np.array([[0, 1, 2, 3]] * 2)))
    raw = np.array([[1.0, 0.5, 0.0, -1.0], [-1.0, -0.5, 0.0, 1.0]])
    np.testing.assert_allclose(s, 1 + 9 * (raw + 1) / 2, rtol=1e-5)


def test_mnl_matches_closed_form():
    scores = np.array([[9.0, 5.0, 1.0], [10.0, 10.0, 2.0]])
    got = np.asarray(su.mnl_click_probabilities(scores, T, RS))
    e = np.exp(scores / T)
    denom = np.exp(RS / T) + e.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[:, :3], e / denom, rtol=1e-5)
    np.testing.assert_allclose(got[:, 3], np.exp(RS / T) / denom[:, 0], rtol=1e-5)
    # Single shown item, external ignore 0.2: (1 - 0.2) e^{r/T} / (e^{RS/T} + e^{r/T}).
    for r in (1.0, 7.0, 11.0):
        want = 0.8 * np.exp(r / T) / (np.exp(RS / T) + np.exp(r / T))
        np.testing.assert_allclose(su.click_probability(np.array(r), T, RS, 0.2), want, rtol=1e-5)
    assert np.isclose(float(su.click_probability(np.array(11.0), T, RS, 0.0)), 0.5)


def test_slate_probs_include_external_ignore():
    sim = su.UserSimulator(hand_prefs(), T, RS, external_ignore=0.3)
    probs = np.asarray(sim.slate_probs(np.array([0]), np.array([[0, 1, 3]])))
    scores = 1 + 9 * (np.array([1.0, 0.5, -1.0]) + 1) / 2
    mnl = np.exp(scores / T) / (np.exp(RS / T) + np.exp(scores / T).sum())
    np.testing.assert_allclose(probs[0, :3], 0.7 * mnl, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)


def test_policy_ctr_hand_computed():
    pi = np.array([[0.5, 0.25, 0.25]])
    p_click = np.array([[0.4, 0.2, 0.0]])
    np.testing.assert_allclose(su.policy_ctr(pi, p_click), [0.25])


def test_empirical_ctr_matches_analytic_and_is_seeded():
    sim = su.UserSimulator(hand_prefs(), T, RS, external_ignore=0.2)
    n = 60_000
    rng = np.random.default_rng(0)
    users = rng.integers(0, 3, n)
    items = rng.integers(0, 4, n)
    key = jax.random.PRNGKey(7)
    y = np.asarray(sim.sample_outcomes(key, users, items))
    p = np.asarray(sim.click_probs(users, items[:, None]))[:, 0]
    # Per (user, item) cell and overall, within 4 standard errors.
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / n)
    for u in range(3):
        for i in range(4):
            cell = (users == u) & (items == i)
            pc = p[cell][0]
            assert abs(y[cell].mean() - pc) < 4 * np.sqrt(pc * (1 - pc) / cell.sum()) + 1e-3
    assert np.array_equal(y, np.asarray(sim.sample_outcomes(key, users, items)))
    assert not np.array_equal(y, np.asarray(sim.sample_outcomes(jax.random.PRNGKey(8), users, items)))
    # The true CTR of a policy is the propensity-weighted click probability.
    pi = np.full((3, 4), 0.25)
    cands = np.tile(np.arange(4), (3, 1))
    raw = np.array([1.0, -1.0, 0.5])[:, None] * np.array([1.0, 0.5, 0.0, -1.0])
    score = 1 + 9 * (raw + 1) / 2
    want = np.mean(0.8 * np.exp(score / T) / (np.exp(RS / T) + np.exp(score / T)))
    np.testing.assert_allclose(sim.true_ctr(np.arange(3), cands, pi), want, rtol=1e-5)


def two_group_data():
    """Users 0-19 interact with items 0-9, users 20-39 with items 10-19."""
    users, items = [], []
    for u in range(40):
        for i in range(10):
            users.append(u)
            items.append(i + (10 if u >= 20 else 0))
    return np.array(users), np.array(items)


def test_bpr_recovers_structure_and_caches(tmp_path, monkeypatch):
    users, items = two_group_data()
    settings = dict(dim=4, steps=150, seed=0, batch_size=256, learning_rate=0.05)
    prefs = su.load_or_fit_preferences(users, items, 40, 20, cache_dir=tmp_path, **settings)
    s = np.asarray(su.preference_scores(prefs, np.arange(40), np.tile(np.arange(20), (40, 1))))
    assert s.min() >= 1 and s.max() <= 10
    in_group = np.where(np.arange(40)[:, None] < 20, np.arange(20) < 10, np.arange(20) >= 10)
    assert s[in_group].min() > s[~in_group].max()
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    # A second call reads the cache; a changed setting fits again into a new file.
    monkeypatch.setattr(su, "fit_preferences", lambda *a, **k: pytest.fail("refit"))
    again = su.load_or_fit_preferences(users, items, 40, 20, cache_dir=tmp_path, **settings)
    np.testing.assert_array_equal(again.item_factors, prefs.item_factors)
    np.testing.assert_array_equal(again.quantiles, prefs.quantiles)
    with pytest.raises(pytest.fail.Exception):
        su.load_or_fit_preferences(users, items, 40, 20, cache_dir=tmp_path,
                                   **{**settings, "steps": 151})


def test_fit_rejects_bad_ids():
    with pytest.raises(ValueError, match="dense indices"):
        su.fit_preferences(np.array([0, 5]), np.array([0, 1]), 3, 2, steps=1)


@pytest.mark.parametrize("preference", ["cooc"])   # mf: test_bpr_recovers_structure_and_caches
def test_simulator_from_config_recovers_groups(tmp_path, preference):
    from abpo_jax.config import base_config

    c = base_config()
    c.sim.preference, c.sim.mf_dim, c.sim.mf_steps = preference, 4, 150
    users, items = two_group_data()
    sim = su.simulator_from_config(c, users, items, 40, 20, cache_dir=tmp_path)
    assert (sim.temperature, sim.rejection_score, sim.external_ignore) == (1.5, 11.0, 0.2)
    p = np.asarray(sim.click_probs(np.arange(40), np.tile(np.arange(20), (40, 1))))
    in_group = np.where(np.arange(40)[:, None] < 20, np.arange(20) < 10, np.arange(20) >= 10)
    assert p[in_group].min() > p[~in_group].max()
    assert p.max() <= 0.8 / (1 + np.exp(1 / 1.5)) + 1e-6   # score <= 10: (1-e) sigmoid(-1/T)
    assert [f.name.split("-")[1] for f in tmp_path.iterdir()] == [preference]
