"""The 2026-12-04 revision of the objective (DESIGN.md "Revised again"), switch by switch, against
hand-computed values: tempering on the advantage (never a reward), V from untempered outcomes,
exact zeros for tied groups, SNIPS in log space, and the counterfactual baselines (`banditnet`,
`ips_sft`'s weights)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abpo_jax.config import ConfigError, base_config, method_losses, validate
from abpo_jax.losses import abpo

LN = np.log


def settings(**changes) -> abpo.LossSettings:
    return abpo.LossSettings.from_config(base_config().loss).replace(**changes)


# Two requests over C = 3 candidates (a = 0 is logged in both), G = 3:
#   row 0: y = 0, c = 0.75 (g = 1 - c = 0.25), pi_old = [0.5, 0.3, 0.2], members a a b c
#   row 1: y = 1, c = 0.2,                     pi_old = [0.25, 0.5, 0.25], members a b b c
# logged p = 0.25 for both, so w = [2, 1], mean 1.5, w~ = [4/3, 2/3].
OLD = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.25, 0.5, 0.25]]))
MEMBERS = jnp.array([[0, 0, 1, 2], [0, 1, 1, 2]])
OUTCOME = jnp.array([0, 1])
HAND = dict(positive_reward=1.0, negative_scale=1.0, tempering="one_minus_c",
            certainty_norm="round", snips="on", unobserved_reward="snips_value",
            anchor="full", std="none", beta=0.0, rewards=("format", "outcome"),
            importance_ratio="log", advantage_baseline="group")


def _terms(s):
    return abpo.anchor_terms(s, outcome=OUTCOME, self_certainty=jnp.zeros(2), mask=jnp.ones(2),
                             target_logp=OLD[:, 0], log_propensity=jnp.log(jnp.full(2, 0.25)),
                             round_certainty=jnp.array([0.75, 0.2]))


@pytest.mark.parametrize("on,u,v,temper", [
    ("advantage", [-1.0, 1.0], (2 * -1.0 + 1.0) / 3, [0.25, 1.0]),    # V from untempered u
    ("reward", [-0.25, 1.0], (2 * -0.25 + 1.0) / 3, [1.0, 1.0]),      # the 12-01 reading
])
def test_anchor_terms_per_tempering_reading(on, u, v, temper):
    t = _terms(settings(**HAND, tempering_on=on))
    np.testing.assert_allclose(np.asarray(t.outcome_value), u, rtol=1e-6)
    np.testing.assert_allclose(float(t.unobserved), v, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t.temper), temper, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t.snips_weight), [4 / 3, 2 / 3], rtol=1e-6)


def test_tempering_on_advantage_by_hand():
    s = settings(**HAND, tempering_on="advantage")
    loss, m = abpo.item_mode_loss(s, logp=OLD, old_logp=OLD, ref_logp=OLD, members=MEMBERS,
                                  terms=_terms(s), valid=jnp.ones(2))
    # row 0 outcome rewards [-1, -1, V, V], V = -1/3: A = [-1/3, -1/3, 1/3, 1/3]; the two
    # members naming a are a no-response with A < 0: x g = 0.25 -> [-1/12, -1/12, 1/3, 1/3].
    # row 1 [1, V, V, V]: A = [1, -1/3, -1/3, -1/3] (a positive: untouched).
    # rho = 1: rollouts contribute -sum A = -(7/12 - 1); anchors -w~ A_0 log pi(a).
    rollouts = 7 / 12 - 1.0
    anchors = (4 / 3) * (-1 / 12) * LN(0.5) + (2 / 3) * 1.0 * LN(0.25)
    np.testing.assert_allclose(float(loss), -(rollouts + anchors) / 8, rtol=1e-5)
    np.testing.assert_allclose(float(m["anchor_advantage"]), (-1 / 12 + 1.0) / 2, rtol=1e-5)


def test_tempering_on_reward_keeps_the_old_reading():
    s = settings(**HAND, tempering_on="reward")
    _, m = abpo.item_mode_loss(s, logp=OLD, old_logp=OLD, ref_logp=OLD, members=MEMBERS,
                               terms=_terms(s), valid=jnp.ones(2))
    # u = [-0.25, 1], V = 1/6: row 0 [-1/4, -1/4, 1/6, 1/6] -> A_0 = -5/24;
    # row 1 [1, 1/6, 1/6, 1/6] -> A_0 = 5/8
    np.testing.assert_allclose(float(m["anchor_advantage"]), (-5 / 24 + 5 / 8) / 2, rtol=1e-5)


def test_advantage_tempering_needs_the_terms_temper():
    s = settings(**HAND, tempering_on="advantage")
    with pytest.raises(ValueError, match="temper"):
        abpo.item_mode_loss(s, logp=OLD, old_logp=OLD, ref_logp=OLD, members=MEMBERS,
                            terms=_terms(s)._replace(temper=None), valid=jnp.ones(2))


def _random_advantages(s, key, B=64, C=6, G=8):
    """Advantages of random groups through the objective's own path (terms -> rewards ->
    member_advantages), plus which members carry a no-response."""
    ks = jax.random.split(key, 6)
    exposed = jax.random.randint(ks[0], (B,), 0, C)
    members = jnp.concatenate([exposed[:, None], jax.random.randint(ks[1], (B, G), 0, C)], 1)
    outcome = jax.random.bernoulli(ks[2], 0.1, (B,)).astype(jnp.int32)
    terms = abpo.anchor_terms(
        s, outcome=outcome, self_certainty=jnp.zeros(B), mask=jnp.ones(B),
        target_logp=jnp.log(jax.random.uniform(ks[3], (B,), minval=0.02, maxval=0.9)),
        log_propensity=jnp.log(jax.random.uniform(ks[4], (B,), minval=0.02, maxval=0.9)),
        round_certainty=jax.random.uniform(ks[5], (B,)))
    names = members == members[:, :1]
    rewards = abpo.member_rewards(s, names_logged=names, u=terms.outcome_value,
                                  unobserved=terms.unobserved)
    roll, a0 = abpo.member_advantages(s, rewards, jnp.ones(members.shape), names, terms.temper)
    adv = np.asarray(jnp.concatenate([a0[:, None], roll], 1))
    return adv, np.asarray(names) & (np.asarray(outcome)[:, None] == 0)


@pytest.mark.parametrize("tempering", ["one_minus_c", "c", "threshold"])
def test_tempering_never_turns_a_penalty_into_a_reward(tempering):
    """Property over random groups: under tempering_on=advantage no no-response member gets
    A > 0, and every advantage keeps the sign and at most the size of the untempered one."""
    base = dict(HAND, tempering=tempering)
    rewarded_under_reward = 0
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        adv, no_resp = _random_advantages(settings(**base, tempering_on="advantage"), key)
        raw, _ = _random_advantages(settings(**dict(base, tempering="one"),
                                             tempering_on="advantage"), key)
        assert no_resp.any()
        assert np.all(adv[no_resp] <= 0.0)
        assert np.all(np.sign(adv) * np.sign(raw) >= 0) and np.all(np.abs(adv) <= np.abs(raw))
        old, _ = _random_advantages(settings(**base, tempering_on="reward"), key)
        rewarded_under_reward += int(np.sum(old[no_resp] > 1e-6))
    if tempering != "threshold":   # 1[c < tau] zeroes the confident penalties, never rewards
        assert rewarded_under_reward > 0    # the 2026-12-01 reading's failure, for contrast


@pytest.mark.parametrize("std", ["none", "population", "bessel"])
def test_tied_group_has_exactly_zero_advantage(std):
    # 9 equal float32 values: their float mean is 1.3 - 1.2e-7, which z-scoring used to blow
    # up to A = 1.2e-3
    rewards = jnp.full((2, 9), 1.3).at[1, 3].set(0.0)
    adv = np.asarray(abpo.group_advantages(rewards, std=std, eps=1e-4))
    assert np.all(adv[0] == 0.0)
    assert adv[1, 3] < 0 < adv[1, 0]    # an untied group is still centred


def test_log_space_snips_by_hand():
    log_w = abpo.log_importance_weights(jnp.log(jnp.array([0.5, 0.2, 0.3])),
                                        jnp.log(jnp.array([0.25, 0.4, 0.9])),
                                        jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(np.exp(np.asarray(log_w))[:2], [2.0, 0.5], rtol=1e-6)
    assert np.asarray(log_w)[2] == -np.inf                               # masked row
    wt = abpo.log_snips_weights(log_w, jnp.array([1.0, 1.0, 0.0]), clip=1.5)
    np.testing.assert_allclose(np.asarray(wt), [1.5, 0.4, 0.0], rtol=1e-6)   # [1.6, 0.4] clipped
    v = abpo.log_snips_value(log_w, jnp.array([1.0, -1.0, 9.0]), jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(float(v), (2.0 - 0.5) / 2.5, rtol=1e-6)


def test_log_space_snips_survives_whole_completion_propensities():
    """Text mode: log p ~ -300 nats. exp underflows float32 below ~-87, so the floored ratio
    collapses to 0 for every row, while the log ratio is the policy ratio e^{+-0.5}."""
    target_logp, log_p = jnp.array([-300.0, -301.0]), jnp.array([-300.5, -300.5])
    s = settings(**HAND, tempering_on="advantage")
    kw = dict(outcome=jnp.array([1, 0]), self_certainty=jnp.zeros(2), mask=jnp.ones(2),
              target_logp=target_logp, log_propensity=log_p, round_certainty=jnp.zeros(2))
    t = abpo.anchor_terms(s, **kw)
    want = np.exp([0.5, -0.5]) / np.cosh(0.5)
    np.testing.assert_allclose(np.asarray(t.snips_weight), want, rtol=1e-5)
    np.testing.assert_allclose(float(t.unobserved), (want[0] * 1.0 - want[1] * 1.0) / 2,
                               rtol=1e-5)
    floored = abpo.anchor_terms(s.replace(importance_ratio="floored"), **kw)
    assert float(jnp.sum(floored.snips_weight)) == 0.0


def test_log_space_equals_floored_where_the_floor_never_binds():
    s = settings(**HAND, tempering_on="advantage")
    a = _terms(s)
    b = _terms(s.replace(importance_ratio="floored"))
    for x, y in zip((a.weight, a.snips_weight, a.unobserved),
                    (b.weight, b.snips_weight, b.unobserved)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def test_constant_baseline_by_hand():
    s = settings(advantage_baseline="constant", baseline_value=0.25, anchor="full")
    roll, a0 = abpo.anchored_advantages(s, jnp.array([[1.0, 0.0, 0.5]]), jnp.ones((1, 3)))
    np.testing.assert_allclose(np.asarray(roll), [[-0.25, 0.25]])
    np.testing.assert_allclose(np.asarray(a0), [0.75])


def _method_settings(name):
    c = base_config()
    c.rounds.methods = (name,)
    validate(c)
    kind, overrides = method_losses(c)[name]
    return kind, abpo.LossSettings.from_config(c.loss).replace(**overrides)


def test_banditnet_from_the_method_table_by_hand():
    kind, s = _method_settings("banditnet")
    assert kind == "policy_gradient" and s.num_generations == 0
    s = s.replace(baseline_value=0.1, certainty_norm="round", importance_ratio="log")
    members = MEMBERS[:, :1]                       # the logged action only
    terms = _terms(s)
    loss, _ = abpo.item_mode_loss(s, logp=OLD, old_logp=OLD, ref_logp=OLD, members=members,
                                  terms=terms, valid=jnp.ones(2))
    # A_0 = y - lambda_b = [-0.1, 0.9]; w~ = [4/3, 2/3]; N = 2 anchors; no KL (beta 0)
    want = -((4 / 3) * -0.1 * LN(0.5) + (2 / 3) * 0.9 * LN(0.25)) / 2
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    g = jax.grad(lambda lp: abpo.item_mode_loss(s, logp=lp, old_logp=OLD, ref_logp=OLD,
                                                members=members, terms=terms,
                                                valid=jnp.ones(2))[0])(OLD)
    assert np.all(np.asarray(g)[:, 1:] == 0.0)     # only the logged action's log-prob moves


def test_sft_weights_by_hand():
    s = settings(importance_ratio="log", snips_clip=10.0)
    kw = dict(outcome=jnp.array([1, 0, 1]), target_logp=jnp.log(jnp.array([0.5, 0.2, 0.1])),
              log_propensity=jnp.log(jnp.array([0.25, 0.4, 0.2])), mask=jnp.ones(3))
    # w = [2, 0.5, 0.5], mean 1, w~ = w; the unclicked row weighs 0 but counts in the mean
    np.testing.assert_allclose(np.asarray(abpo.sft_weights(s.replace(snips="on"), **kw)),
                               [2.0, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(abpo.sft_weights(s.replace(snips="off"), **kw)),
                               [1.0, 0.0, 1.0])


def test_anchorless_method_without_rollouts_is_refused():
    c = base_config()
    c.methods.banditnet.anchor = "off"
    c.rounds.methods = ("banditnet",)
    with pytest.raises(ConfigError, match="num_generations=0 needs anchor='full'"):
        validate(c)


def test_lambda_only_rescales_the_advantages_under_std_none():
    """With std=none and unobserved rollouts scored V (the defaults), every outcome is
    (r+ + lambda) * [y or V_y] - lambda, and the shared -lambda cancels in the centring: the
    advantages scale by (r+ + lambda), nothing else. Under Adam (scale-free) lambda then acts
    only through beta's relative weight and the gradient clip — worth knowing before tuning it."""
    key = jax.random.PRNGKey(7)
    base = dict(HAND, tempering_on="advantage")
    a1, _ = _random_advantages(settings(**{**base, "negative_scale": 1.0}), key)
    a0, _ = _random_advantages(settings(**{**base, "negative_scale": 0.0}), key)
    a3, _ = _random_advantages(settings(**{**base, "negative_scale": 0.5}), key)
    np.testing.assert_allclose(a1, 2.0 * a0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a3, 1.5 * a0, rtol=1e-5, atol=1e-6)
    assert np.abs(a0).max() > 0.1
