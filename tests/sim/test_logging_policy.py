"""Logging policy: exact propensities, exposure frequencies, determinism, stored round."""

import numpy as np
import jax
import pytest

from abpo_jax.data.splits import Example
from abpo_jax.sim import logging_policy as lp
from abpo_jax.sim import users as su

NUM_USERS, NUM_ITEMS, C = 3000, 12, 4


def make_sim(external_ignore: float = 0.2) -> su.UserSimulator:
    rng = np.random.default_rng(0)
    prefs = su.Preferences(rng.normal(size=(NUM_USERS, 2)).astype(np.float32),
                           rng.normal(size=(NUM_ITEMS, 2)).astype(np.float32),
                           np.zeros(NUM_ITEMS, np.float32),
                           np.linspace(-3, 3, su.NUM_QUANTILES).astype(np.float32))
    return su.UserSimulator(prefs, 1.5, 11.0, external_ignore)


def make_examples(n: int, same_candidates: bool = True) -> list[Example]:
    out = []
    for u in range(n):
        cands = np.array([2, 5, 7, 11] if same_candidates else
                         np.random.default_rng(u).choice(NUM_ITEMS, C, replace=False), np.int32)
        out.append(Example(user=u, history=np.array([1, 3], np.int32),
                           history_ratings=np.ones(2, np.float32), target=int(cands[0]),
                           candidates=cands, target_index=0))
    return out


FIXED_LOG_PI = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def fixed_policy(examples):
    return np.tile(FIXED_LOG_PI, (len(examples), 1))


def test_uniform_and_popularity_scorers_hand_checked():
    ex = make_examples(2)
    np.testing.assert_allclose(lp.uniform_policy()(ex), np.full((2, 4), np.log(0.25)), rtol=1e-6)
    counts = np.zeros(NUM_ITEMS)
    counts[[2, 5, 7, 11]] = [3, 1, 0, 4]          # +1 smoothing -> 4, 2, 1, 5 of 12
    np.testing.assert_allclose(np.exp(lp.popularity_policy(counts)(ex)),
                               np.tile([4 / 12, 2 / 12, 1 / 12, 5 / 12], (2, 1)), rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_exposures_match_logged_propensities(tmp_path, temperature):
    n = 3000
    log = lp.log_round(make_examples(n), fixed_policy, make_sim(), round_index=1, seed=0,
                       logs_dir=tmp_path, policy_revision="fixed", temperature=temperature,
                       batch_size=512)
    records = list(log)
    assert len(records) == n == log.manifest["num_records"]
    expected = np.array([0.5, 0.3, 0.15, 0.05]) ** (1 / temperature)
    expected /= expected.sum()
    idx = np.array([r.exposed_index for r in records])
    # Logged propensity is exactly the probability of the item drawn.
    np.testing.assert_allclose([r.propensity for r in records], expected[idx], rtol=1e-5)
    # Exposure frequencies match: chi-square with 3 dof below its 99.9% quantile (16.27).
    observed = np.bincount(idx, minlength=C)
    chi2 = np.sum((observed - n * expected) ** 2 / (n * expected))
    assert chi2 < 16.27, (observed, n * expected)
    assert records[17].request_id == "r00001-u17" and records[17].round == 1
    assert records[17].context_item_ids == (1, 3)
    extras = records[17].extras
    assert extras[lp.TARGET] == 2 and extras[lp.HISTORY_RATINGS] == [1.0, 1.0]
    # the click probabilities of every candidate, computed once at log time
    want = np.asarray(make_sim().click_probs(np.array([records[17].user_id]),
                                             np.array([records[17].candidate_item_ids])))[0]
    np.testing.assert_allclose(extras[lp.CLICK_PROBS], want, rtol=1e-6)


def test_outcomes_follow_simulator(tmp_path):
    sim = make_sim(external_ignore=0.2)
    ex = make_examples(3000, same_candidates=False)
    log = lp.log_round(ex, lp.uniform_policy(), sim, round_index=2, seed=1, logs_dir=tmp_path,
                       policy_revision="u", timestamp=5.0)
    records = list(log)
    p = np.asarray(sim.click_probs(np.array([r.user_id for r in records]),
                                   np.array([[r.exposed_item_id] for r in records])))[:, 0]
    y = np.array([r.outcome for r in records])
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / len(y))
    assert log.manifest["num_positive"] == y.sum()
    # Nobody responds when every no-response is external.
    none = lp.log_round(ex[:200], lp.uniform_policy(), make_sim(external_ignore=1.0),
                        round_index=3, seed=1, logs_dir=tmp_path, policy_revision="u")
    assert none.manifest["num_positive"] == 0


def test_seeded_per_round_and_independent_of_batching(tmp_path):
    kw = dict(seed=4, policy_revision="p", timestamp=1.0)
    ex = make_examples(300, same_candidates=False)
    a = [r.to_dict() for r in lp.log_round(ex, fixed_policy, make_sim(), round_index=1,
                                           logs_dir=tmp_path / "a", batch_size=64, **kw)]
    b = [r.to_dict() for r in lp.log_round(ex, fixed_policy, make_sim(), round_index=1,
                                           logs_dir=tmp_path / "b", batch_size=7, **kw)]
    assert a == b
    c = [r.to_dict() for r in lp.log_round(ex, fixed_policy, make_sim(), round_index=2,
                                           logs_dir=tmp_path / "a", **kw)]
    assert [r["exposed_item_id"] for r in a] != [r["exposed_item_id"] for r in c]


def test_sample_exposures_propensity_is_exact():
    log_pi = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    index, prop = lp.sample_exposures(jax.random.PRNGKey(0), log_pi, 1.0)
    np.testing.assert_allclose(prop, np.exp(log_pi)[np.arange(2), np.asarray(index)], rtol=1e-6)


def test_rejects_duplicate_users_and_bad_scores(tmp_path):
    ex = make_examples(3)
    with pytest.raises(ValueError, match="appears twice"):
        lp.log_round(ex + ex[:1], fixed_policy, make_sim(), round_index=1, seed=0,
                     logs_dir=tmp_path, policy_revision="p")
    with pytest.raises(ValueError, match="score_fn returned shape"):
        lp.log_round(ex, lambda e: np.zeros((len(e), 2)), make_sim(), round_index=1, seed=0,
                     logs_dir=tmp_path, policy_revision="p")


def test_logging_policy_conditions_pick_params_and_logits():
    """current / stale / uniform: which params deploy, which logits the exposure is drawn from."""
    pop = np.arange(NUM_ITEMS, dtype=np.float32)
    cands = np.stack([e.candidates for e in make_examples(2)])
    log_pi = np.tile(FIXED_LOG_PI, (2, 1)).astype(np.float32)
    state = {"params": "pi_k", "ref": "pi_k-1"}
    current = lp.LoggingPolicy("current", 1.0, 0, pop)
    assert current.frozen("p0", lambda p: p) == {}
    assert current.deployed(state, resuming=False) == "pi_k" == state["params"]
    assert current.deployed(state, resuming=True) == "pi_k-1"
    got, bias = current.logits(log_pi, cands)
    assert got is log_pi and bias is None
    stale = lp.LoggingPolicy("stale", 1.0, 0, pop)
    assert stale.frozen("p0", lambda p: p) == {"initial": "p0"}
    assert stale.deployed({**state, "initial": "p0"}, resuming=False) == "p0"
    uniform = lp.LoggingPolicy("uniform", 1.0, 0, pop, popularity_bias=0.5)
    got, bias = uniform.logits(log_pi, cands)
    np.testing.assert_allclose(np.exp(got), 0.25)
    np.testing.assert_allclose(bias, 0.5 * np.log1p(pop[cands]))
    with pytest.raises(ValueError, match="logging policy"):
        lp.LoggingPolicy("greedy", 1.0, 0, pop)


def test_uniform_logging_logs_one_over_c(tmp_path):
    pol = lp.LoggingPolicy("uniform", 1.0, 0, np.ones(NUM_ITEMS, np.float32))
    ex = make_examples(200)
    log_pi, bias = pol.logits(np.tile(FIXED_LOG_PI, (len(ex), 1)).astype(np.float32),
                              np.stack([e.candidates for e in ex]))
    records = list(pol.log(ex, make_sim(), 1, str(tmp_path), "uniform@0",
                           score_fn=lambda chunk: log_pi, batch_size=len(ex), logit_bias=bias))
    np.testing.assert_allclose([r.propensity for r in records], 1 / C, rtol=1e-6)
    assert {r.timestamp for r in records} == {1.0}


def test_uniform_logging_is_an_item_mode_condition():
    from abpo_jax.config import ConfigError, base_config, validate
    c = base_config()
    c.policy.logging_policy = "uniform"
    validate(c)
    c.policy.mode = "text"
    with pytest.raises(ConfigError, match="logging_policy"):
        validate(c)
