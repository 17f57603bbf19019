"""Hand-computed values for every piece and switch of `losses/abpo.py` (the revised objective)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abpo_jax.config import base_config
from abpo_jax.losses import abpo


def settings(**changes) -> abpo.LossSettings:
    """The configured defaults (config.py, declared once) with `changes`."""
    return abpo.LossSettings.from_config(base_config().loss).replace(**changes)


def test_settings_come_from_config_only():
    s = settings()
    for f in ("anchor", "snips", "std", "unobserved_reward", "kl_tokens", "certainty_norm"):
        assert getattr(s, f) == base_config().loss[f]


@pytest.mark.parametrize("tempering,c,want", [
    ("one", 0.25, -2.0), ("one_minus_c", 0.25, -1.5), ("c", 0.25, -0.5),
    ("threshold", 0.4, -2.0), ("threshold", 0.6, 0.0),   # 1[c < tau], tau = 0.5
])
def test_outcome_value_tempers_no_responses_only(tempering, c, want):
    s = settings(tempering=tempering, tempering_threshold=0.5, negative_scale=2.0,
                 positive_reward=1.5, tempering_on="reward")
    u = abpo.outcome_value(s, jnp.array([0, 1]), jnp.array([c, c]))
    np.testing.assert_allclose(np.asarray(u), [want, 1.5], rtol=1e-6)
    # tempering_on=advantage: u is untempered; g(c) waits for the advantage
    u = abpo.outcome_value(s.replace(tempering_on="advantage"), jnp.array([0, 1]),
                           jnp.array([c, c]))
    np.testing.assert_allclose(np.asarray(u), [-2.0, 1.5], rtol=1e-6)


def test_importance_and_snips_weights_by_hand():
    w = abpo.importance_weights(jnp.array([0.5, 0.2, 0.3]), jnp.array([0.25, 0.4, 0.0]),
                                jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(np.asarray(w), [2.0, 0.5, 0.0], rtol=1e-6)   # masked row: 0
    # mean over the 2 unmasked rows = 1.25 -> [1.6, 0.4]; clip at 1.5
    wt = abpo.snips_weights(w, jnp.array([1.0, 1.0, 0.0]), clip=1.5)
    np.testing.assert_allclose(np.asarray(wt), [1.5, 0.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(abpo.snips_weights(jnp.full(4, 0.3), clip=10.0)),
                               np.ones(4), rtol=1e-6)
    assert float(jnp.sum(abpo.snips_weights(jnp.zeros(3), clip=10.0))) == 0.0


def test_snips_value_by_hand():
    v = abpo.snips_value(jnp.array([1.0, 3.0, 5.0]), jnp.array([1.0, -1.0, 7.0]),
                         jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(float(v), (1 - 3) / 4, rtol=1e-6)
    assert float(abpo.snips_value(jnp.zeros(2), jnp.ones(2))) == 0.0


def test_member_rewards_anchor_gets_the_same_sources():
    # member 0 = anchor; member 2 also draws the logged item; u = -0.5, V = 0.1
    names = jnp.array([[True, False, True, False]])
    s = settings(rewards=("format", "outcome"), anchor_rewards="all")
    r = abpo.member_rewards(s, names_logged=names, u=jnp.array([-0.5]),
                            unobserved=jnp.float32(0.1))
    np.testing.assert_allclose(np.asarray(r), [[0.5, 1.1, 0.5, 1.1]], rtol=1e-6)
    # ablation: the anchor without the format reward (the pre-revision behaviour)
    r_old = abpo.member_rewards(s.replace(anchor_rewards="outcome"), names_logged=names,
                                u=jnp.array([-0.5]), unobserved=jnp.float32(0.1))
    np.testing.assert_allclose(np.asarray(r_old), [[-0.5, 1.1, 0.5, 1.1]], rtol=1e-6)
    # ground truth and simulator sources, per member
    r_gt = abpo.member_rewards(
        settings(rewards=("ground_truth", "simulator")), names_logged=names, u=jnp.array([1.0]),
        unobserved=0.0, is_target=jnp.array([[False, True, False, False]]),
        sim_reward=jnp.array([[0.1, 0.2, 0.1, 0.3]]))
    np.testing.assert_allclose(np.asarray(r_gt), [[0.1, 1.2, 0.1, 0.3]], rtol=1e-6)


@pytest.mark.parametrize("std,want", [
    ("none", [1.5, -0.5, -0.5, -0.5]),
    ("population", np.array([1.5, -0.5, -0.5, -0.5]) / (np.sqrt(0.75) + 1e-4)),
    ("bessel", np.array([1.5, -0.5, -0.5, -0.5]) / (1.0 + 1e-4)),
])
def test_group_advantages_by_hand(std, want):
    adv = abpo.group_advantages(jnp.array([[2.0, 0.0, 0.0, 0.0]]), std=std, eps=1e-4)
    np.testing.assert_allclose(np.asarray(adv)[0], want, rtol=1e-5)


def test_group_advantages_masked_and_tied():
    adv = abpo.group_advantages(jnp.array([[1.0, 3.0, jnp.nan]]), jnp.array([[1, 1, 0]]),
                                std="population", eps=1e-4)
    np.testing.assert_allclose(np.asarray(adv), [[-1 / 1.0001, 1 / 1.0001, 0.0]], rtol=1e-5)
    tied = abpo.group_advantages(jnp.ones((1, 4)), std="population", eps=1e-4)
    assert np.all(np.asarray(tied) == 0)


def test_anchored_advantages_per_anchor_mode():
    rewards = jnp.array([[-1.0, 0.0, 0.0, 1.0]])   # anchor -1, rollouts 0, 0, 1
    mask = jnp.ones((1, 4))
    roll, a0 = abpo.anchored_advantages(settings(anchor="off", std="none"), rewards, mask)
    np.testing.assert_allclose(np.asarray(roll), [[-1 / 3, -1 / 3, 2 / 3]], rtol=1e-6)
    assert float(a0[0]) == 0.0
    roll, a0 = abpo.anchored_advantages(settings(anchor="baseline_only", std="none"), rewards,
                                        mask)
    np.testing.assert_allclose(np.asarray(roll), [[0.0, 0.0, 1.0]], atol=1e-7)
    assert float(a0[0]) == 0.0
    roll, a0 = abpo.anchored_advantages(settings(anchor="full", std="none"), rewards, mask)
    np.testing.assert_allclose(float(a0[0]), -1.0, rtol=1e-6)


def test_tempering_survives_tied_rollouts_with_std_none():
    """The old spec's failure (2): z-scored, a tied group gives A_0 = -sqrt(G) whatever g(c)
    is; with std=none A_0 scales with the tempered penalty."""
    G = 4
    for std, expect_same in (("population", True), ("none", False)):
        a0 = []
        for u in (-1.0, -0.25):
            rewards = jnp.array([[u] + [0.0] * G])
            a0.append(float(abpo.anchored_advantages(settings(anchor="full", std=std),
                                                     rewards, jnp.ones((1, G + 1)))[1][0]))
        # z-scored: both -sqrt(G) up to eps / sigma (~1e-3); centred: -0.8 vs -0.2
        assert (abs(a0[0] - a0[1]) < 1e-2) == expect_same, (std, a0)


def test_certainty_normalisations_by_hand():
    sc = jnp.array([2.0, 4.0, 3.0, 9.0])
    m = jnp.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(abpo.normalize_certainty_batch(sc, m)),
                               [0.0, 2 / 2.0001, 1 / 2.0001, 0.0], rtol=1e-6)
    c, stats = abpo.normalize_certainty_running(sc, abpo.CertaintyStats.init(), m)
    assert (float(stats.min), float(stats.max), float(stats.count)) == (2.0, 4.0, 3.0)
    c2, stats2 = abpo.normalize_certainty_running(jnp.array([3.0]), stats)
    np.testing.assert_allclose(float(c2[0]), 1 / 2.0001, rtol=1e-6)
    # round: the empirical CDF over the round's anchors
    q = abpo.certainty_quantiles(np.array([0.05, 0.25, 0.4, 9.0]),
                                 np.array([0.4, 0.1, 0.3, 0.2]))
    np.testing.assert_allclose(q, [0.0, 0.5, 1.0, 1.0])


def test_anchor_terms_round_norm_uses_logged_quantiles():
    s = settings(certainty_norm="round", tempering="one_minus_c", snips="on",
                 unobserved_reward="snips_value", tempering_on="reward")
    t = abpo.anchor_terms(s, outcome=jnp.array([1, 0]), self_certainty=jnp.array([5.0, 1.0]),
                          target_prob=jnp.array([0.5, 0.5]), propensity=jnp.array([0.25, 0.5]),
                          mask=jnp.ones(2), round_certainty=jnp.array([0.2, 0.75]))
    np.testing.assert_allclose(np.asarray(t.certainty), [0.2, 0.75])
    np.testing.assert_allclose(np.asarray(t.outcome_value), [1.0, -0.25], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t.weight), [2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t.snips_weight), [4 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(float(t.unobserved), (2 * 1.0 - 0.25) / 3, rtol=1e-6)
    zero = abpo.anchor_terms(s.replace(unobserved_reward="zero", snips="off"),
                             outcome=jnp.array([1, 0]), self_certainty=jnp.ones(2),
                             target_prob=jnp.ones(2), propensity=jnp.ones(2), mask=jnp.ones(2),
                             round_certainty=jnp.zeros(2))
    assert float(zero.unobserved) == 0.0
    np.testing.assert_allclose(np.asarray(zero.snips_weight), [1.0, 1.0])


def _hand_batch():
    """B = 1, G = 2, T = 1: ratio 1, A = [1, -1], anchor A_0 = 0.5, w~ = 2, log pi(o_0) = -1."""
    return dict(logp=jnp.array([[[-1.0], [-2.0]]]), old_logp=jnp.array([[[-1.0], [-2.0]]]),
                ref_logp=jnp.array([[[-1.5], [-2.0]]]), mask=jnp.ones((1, 2, 1)),
                advantages=jnp.array([[1.0, -1.0]]), anchor_logp=jnp.array([[-1.0]]),
                anchor_mask=jnp.ones((1, 1)), anchor_advantage=jnp.array([0.5]),
                anchor_weight=jnp.array([2.0]))


def test_policy_loss_by_hand_kl_over_rollouts_only():
    k3 = np.exp(-0.5) + 0.5 - 1.0      # d = ref - logp = -0.5 on rollout 1, 0 on rollout 2
    pg = (-(1.0 - 1.0) + 2.0 * 0.5 * 1.0) / 3      # 3 tokens: 2 rollouts + the anchor
    s = settings(anchor="full", beta=0.1, kl_estimator="k3", aggregation="token_mean",
                 kl_ratio_correction=False)
    loss, m = abpo.policy_loss(s.replace(kl_tokens="rollouts"), **_hand_batch())
    np.testing.assert_allclose(float(loss), pg + 0.1 * k3 / 2, rtol=1e-6)
    np.testing.assert_allclose(float(m["kl"]), k3 / 2, rtol=1e-6)
    loss_all, _ = abpo.policy_loss(s.replace(kl_tokens="all"), **_hand_batch())
    np.testing.assert_allclose(float(loss_all), pg + 0.1 * k3 / 3, rtol=1e-6)
    # anchor off: the anchor inputs are ignored, N = the 2 rollout tokens
    off, _ = abpo.policy_loss(s.replace(anchor="off"), **_hand_batch())
    np.testing.assert_allclose(float(off), 0.0 + 0.1 * k3 / 2, rtol=1e-6)


def test_ppo_clip_fires_only_off_policy():
    b = _hand_batch()
    b["old_logp"] = b["logp"] - 0.5          # rho = e^0.5 > 1.2 on both rollouts
    s = settings(anchor="off", beta=0.0, epsilon_low=0.2, epsilon_high=0.2)
    loss, m = abpo.policy_loss(s, **b)
    # rollout 1: A = 1 > 0 clipped to 1.2; rollout 2: A = -1, min(-rho, -1.2) = -rho
    np.testing.assert_allclose(float(loss), -(1.2 - np.exp(0.5)) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_fraction"]), 0.5)


def test_micro_batches_with_global_denominators_sum_to_the_batch():
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 6)
    B, G, T = 6, 3, 4
    logp = -jax.random.uniform(ks[0], (B, G, T), minval=0.1, maxval=3.0)
    mask = (jnp.arange(T) < jax.random.randint(ks[1], (B, G, 1), 1, T + 1)).astype(jnp.float32)
    batch = dict(old_logp=logp + 0.1, ref_logp=logp - 0.2, mask=mask,
                 advantages=jax.random.normal(ks[2], (B, G)),
                 anchor_mask=(jnp.arange(T) < jax.random.randint(ks[3], (B, 1), 1, T + 1)
                              ).astype(jnp.float32),
                 anchor_advantage=jax.random.normal(ks[4], (B,)),
                 anchor_weight=jax.random.uniform(ks[5], (B,)))
    a_logp = -jnp.ones((B, T))
    for agg in ("token_mean", "sequence_mean", "constant"):
        s = settings(anchor="full", beta=0.04, aggregation=agg)
        den = abpo.loss_denominators(s, batch["mask"], batch["anchor_mask"])
        f = lambda lp, a, sl: abpo.policy_loss(  # noqa: E731
            s, logp=lp, anchor_logp=a, denominators=den,
            **jax.tree.map(lambda x: x[sl], batch))[0]
        whole, g_whole = jax.value_and_grad(f)(logp, a_logp, slice(None))
        halves = [jax.value_and_grad(f)(logp[sl], a_logp[sl], sl)
                  for sl in (slice(0, 2), slice(2, B))]
        np.testing.assert_allclose(float(sum(h[0] for h in halves)), float(whole), rtol=1e-5)
        np.testing.assert_allclose(np.concatenate([np.asarray(h[1]) for h in halves]),
                                   np.asarray(g_whole), rtol=1e-5, atol=1e-8)
