"""One default ABPO step on a toy item-mode policy (softmax over C candidate items, T = 1),
with G rollouts none of which names the logged item: the case the first spec got wrong.

A clicked anchor's probability must rise, and an uncertain no-response anchor's must fall more
than a certain one's. Under the pre-revision switches (anchor without the format reward,
unobserved rollouts scored 0, z-scored advantages) the clicked anchor did not move at all.
"""
import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.config import base_config
from abpo_jax.losses import abpo

ANCHOR = 0
ROLLOUTS = jnp.array([[1, 2, 3, 4]] * 3)           # G = 4 draws, none equal to the anchor
MEMBERS = jnp.concatenate([jnp.full((3, 1), ANCHOR), ROLLOUTS], axis=1)
# context 0: clicked; 1: no response, certain (peaked); 2: no response, uncertain (flat)
THETA = jnp.array([[1.0, 0.5, 0.0, -0.5, 0.2, 0.1],
                   [4.0, 0.5, 0.0, -0.5, 0.2, 0.1],
                   [0.4, 0.3, 0.0, -0.2, 0.2, 0.1]])
OUTCOME = jnp.array([1, 0, 0])
LR = 0.5
OLD_SPEC = dict(anchor_rewards="outcome", unobserved_reward="zero", std="population")


def _step(**changes) -> tuple[np.ndarray, np.ndarray]:
    """log pi~(anchor) before and after one SGD step on the configured loss."""
    s = abpo.LossSettings.from_config(base_config().loss).replace(**changes)
    old = jax.nn.log_softmax(THETA)
    sc = np.asarray(abpo.token_self_certainty(THETA))   # the "vocabulary" is the items here
    terms = abpo.anchor_terms(
        s, outcome=OUTCOME, self_certainty=jnp.asarray(sc), target_prob=jnp.exp(old[:, ANCHOR]),
        propensity=jnp.exp(old[:, ANCHOR]),              # logged by pi_old itself
        mask=jnp.ones(3), round_certainty=jnp.asarray(abpo.certainty_quantiles(sc, sc)))

    def loss(theta):
        lp = jax.nn.log_softmax(theta)
        return abpo.item_mode_loss(s, logp=lp, old_logp=jax.lax.stop_gradient(lp),
                                   ref_logp=jax.lax.stop_gradient(lp), members=MEMBERS,
                                   terms=terms, valid=jnp.ones(3))[0]

    new = jax.nn.log_softmax(THETA - LR * jax.grad(loss)(THETA))
    return np.asarray(old[:, ANCHOR]), np.asarray(new[:, ANCHOR])


def test_default_step_moves_each_anchor_the_right_way():
    before, after = _step()
    drop = before - after
    assert after[0] > before[0] + 1e-3, (before, after)      # clicked: up
    assert drop[2] > 1e-3, drop                               # uncertain no-response: down
    assert drop[2] > drop[1], drop                            # ... more than a certain one


def test_the_pre_revision_spec_ignores_the_click():
    before, after = _step(**OLD_SPEC)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)


def test_grpo_leaves_the_logged_item_to_the_rollouts():
    # anchor off, g = one: no direct term; the outcome cannot reach the anchor
    _, a = _step(anchor="off", tempering="one")
    s_flip = jnp.array([0, 1, 1])
    global OUTCOME
    saved, OUTCOME = OUTCOME, s_flip
    try:
        _, b = _step(anchor="off", tempering="one")
    finally:
        OUTCOME = saved
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_add_gt_equivalence():
    """anchor full, snips off, g = one == an unweighted anchor of advantage A_0 (MiniOneRec
    `add_gt`): the loss equals the one built by hand from the same members."""
    s = abpo.LossSettings.from_config(base_config().loss).replace(
        anchor="full", snips="off", tempering="one", beta=0.0, certainty_norm="batch")
    lp = jax.nn.log_softmax(THETA)
    terms = abpo.anchor_terms(s, outcome=OUTCOME, self_certainty=jnp.ones(3),
                              target_prob=jnp.full(3, 0.5), propensity=jnp.full(3, 0.1),
                              mask=jnp.ones(3))
    loss, _ = abpo.item_mode_loss(s, logp=lp, old_logp=lp, ref_logp=lp, members=MEMBERS,
                                  terms=terms, valid=jnp.ones(3))
    rewards = abpo.member_rewards(s, names_logged=MEMBERS == ANCHOR, u=terms.outcome_value,
                                  unobserved=terms.unobserved)
    adv = np.asarray(rewards) - np.asarray(rewards).mean(axis=1, keepdims=True)
    member_lp = np.take_along_axis(np.asarray(lp), np.asarray(MEMBERS), axis=1)
    # rho = 1: the rollout surrogate is -A_i; the anchor term -A_0 log pi(o_0)
    want = -(adv[:, 1:].sum() + (adv[:, 0] * member_lp[:, 0]).sum()) / (3 * 5)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
