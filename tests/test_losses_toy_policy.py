"""One ABPO gradient step on a toy item-mode policy: softmax over C candidate items (T = 1).

Shows numerically that the anchor term moves the logged item the right way: up for a positive,
down for a no-response, and down LESS when the model is certain under `one_minus_c` tempering.
"""
import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.losses import LossSettings, abpo_objective, anchor_terms, token_self_certainty

ANCHOR_ITEM = 0
ROLLOUTS = jnp.array([[1, 2, 3, 4], [1, 2, 3, 4]])   # G = 4 draws, none equal to the anchor
# Rollout rewards vary (e.g. the format reward): with all-equal rollout rewards, group std
# normalisation would make the advantages invariant to the anchor reward's scale.
ROLLOUT_REWARDS = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
# context 0: a certain model (peaked on the anchor); context 1: an uncertain one
THETA = jnp.array([[4.0, 0.5, 0.0, -0.5, 0.2, 0.1], [0.4, 0.3, 0.0, -0.2, 0.2, 0.1]])
LR = 0.5


def _anchor_logprob_after_step(settings: LossSettings, outcome: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """log pi~(anchor) before and after one SGD step on the ABPO loss of the toy policy."""
    old = jax.nn.log_softmax(THETA)
    terms = anchor_terms(settings, outcome=outcome,
                         self_certainty=token_self_certainty(THETA),   # full "vocabulary" = items
                         target_prob=jnp.exp(old[:, ANCHOR_ITEM]),
                         propensity=jnp.exp(old[:, ANCHOR_ITEM]))      # logged by pi_old itself

    def loss(theta):
        logp = jax.nn.log_softmax(theta)
        rollout_logp = jnp.take_along_axis(logp, ROLLOUTS, axis=1)[..., None]     # [B, G, 1]
        s, d, _ = abpo_objective(
            settings, rollout_rewards=ROLLOUT_REWARDS, logp=rollout_logp,
            old_logp=jax.lax.stop_gradient(rollout_logp), ref_logp=rollout_logp,
            mask=jnp.ones_like(rollout_logp), anchor=terms,
            anchor_logp=logp[:, ANCHOR_ITEM:ANCHOR_ITEM + 1], anchor_mask=jnp.ones((2, 1)))
        return s / d

    new = jax.nn.log_softmax(THETA - LR * jax.grad(loss)(THETA))
    return np.asarray(old[:, ANCHOR_ITEM]), np.asarray(new[:, ANCHOR_ITEM])


def test_certainty_of_the_toy_contexts():
    c = anchor_terms(LossSettings(), outcome=jnp.zeros(2), self_certainty=token_self_certainty(THETA),
                     target_prob=jnp.ones(2), propensity=jnp.ones(2)).certainty
    assert float(c[0]) > 0.99 and float(c[1]) == 0.0


def test_positive_anchor_is_raised():
    before, after = _anchor_logprob_after_step(LossSettings(), jnp.array([1, 1]))
    assert np.all(after > before + 1e-3), (before, after)


def test_no_response_anchor_is_lowered_less_when_certain():
    zero = jnp.array([0, 0])
    before, after_one = _anchor_logprob_after_step(LossSettings(tempering="one"), zero)
    _, after_temp = _anchor_logprob_after_step(LossSettings(tempering="one_minus_c"), zero)
    drop_one, drop_temp = before - after_one, before - after_temp
    assert np.all(drop_one > 1e-3), drop_one        # a no-response lowers the anchor
    assert np.all(drop_temp > 0), drop_temp
    # certain context: tempering shrinks the penalty; uncertain context (c = 0): unchanged
    assert drop_temp[0] < 0.5 * drop_one[0], (drop_temp, drop_one)
    np.testing.assert_allclose(drop_temp[1], drop_one[1], rtol=1e-5)


def test_anchor_off_leaves_anchor_to_the_rollouts_only():
    # GRPO: the logged item gets no direct term; it only rises as rollout mass shifts, whatever y is
    _, after_pos = _anchor_logprob_after_step(LossSettings(anchor="off"), jnp.array([1, 1]))
    _, after_neg = _anchor_logprob_after_step(LossSettings(anchor="off"), jnp.array([0, 0]))
    np.testing.assert_allclose(after_pos, after_neg)
