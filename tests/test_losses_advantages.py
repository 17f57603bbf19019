"""Group advantages and anchor insertion: hand-computed values and edge cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abpo_jax.losses import (LossSettings, anchored_advantages, get_advantage_estimator,
                             group_advantages, insert_anchor)


def test_population_and_bessel_by_hand():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0]])  # mean 0.5, population std 0.5, Bessel std sqrt(1/3)
    np.testing.assert_allclose(group_advantages(r, std="population", eps=0.0),
                               [[1, -1, -1, 1]], rtol=1e-6)
    s = math.sqrt(1 / 3)
    np.testing.assert_allclose(group_advantages(r, std="bessel", eps=1e-4),
                               [[a, -a, -a, a] for a in [0.5 / (s + 1e-4)]], rtol=1e-6)
    np.testing.assert_allclose(group_advantages(r, std="none"), [[0.5, -0.5, -0.5, 0.5]])
    # eps default 1e-4 enters the denominator
    np.testing.assert_allclose(group_advantages(r), [[a, -a, -a, a] for a in [0.5 / 0.5001]], rtol=1e-6)


def test_masked_members_excluded_and_zero():
    r = jnp.array([[2.0, 0.0, 100.0, jnp.nan]])
    m = jnp.array([[1, 1, 0, 0]])
    # statistics over {2, 0}: mean 1, population std 1
    np.testing.assert_allclose(group_advantages(r, m, eps=0.0), [[1.0, -1.0, 0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("std", ["none", "population", "bessel"])
def test_single_member_zero_variance_and_empty_groups(std):
    r = jnp.array([[3.0, 9.0, 9.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0]])
    m = jnp.array([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    adv = group_advantages(r, m, std=std)
    np.testing.assert_array_equal(np.asarray(adv), np.zeros((3, 3)))


def test_gradient_is_nan_free_and_detached():
    r = jnp.array([[1.0, 1.0, 1.0]])
    g = jax.grad(lambda x: jnp.sum(group_advantages(x, std="bessel") ** 2))(r)
    assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_rloo_by_hand():
    r = jnp.array([[1.0, 2.0, 6.0], [4.0, 0.0, 0.0]])
    m = jnp.array([[1, 1, 1], [1, 0, 0]])
    adv = get_advantage_estimator("rloo")(r, m)
    np.testing.assert_allclose(adv, [[1 - 4, 2 - 3.5, 6 - 1.5], [0, 0, 0]], rtol=1e-6)


def test_insert_anchor_puts_o0_first():
    rewards, mask = insert_anchor(jnp.array([[1.0, 2.0]]), jnp.array([-1.0]),
                                  jnp.array([[1, 0]]), jnp.array([1]))
    np.testing.assert_array_equal(rewards, [[-1.0, 1.0, 2.0]])
    np.testing.assert_array_equal(mask, [[1.0, 1.0, 0.0]])


def test_anchor_modes():
    rollouts = jnp.array([[1.0, 0.0, 0.0]])
    r0 = jnp.array([1.0])
    off_adv, off_a0 = anchored_advantages(rollouts, r0, LossSettings(anchor="off", eps=0.0))
    np.testing.assert_allclose(off_adv, group_advantages(rollouts, eps=0.0))
    np.testing.assert_array_equal(off_a0, [0.0])
    # G+1 = {1, 1, 0, 0}: mean 0.5, population std 0.5
    full_adv, full_a0 = anchored_advantages(rollouts, r0, LossSettings(anchor="full", eps=0.0))
    np.testing.assert_allclose(full_adv, [[1.0, -1.0, -1.0]], rtol=1e-6)
    np.testing.assert_allclose(full_a0, [1.0], rtol=1e-6)
    base_adv, base_a0 = anchored_advantages(rollouts, r0,
                                            LossSettings(anchor="baseline_only", eps=0.0))
    np.testing.assert_allclose(base_adv, full_adv)
    np.testing.assert_array_equal(base_a0, [0.0])
    # an absent anchor row (mask 0) falls back to the rollout-only statistics
    abs_adv, abs_a0 = anchored_advantages(rollouts, r0, LossSettings(eps=0.0),
                                          anchor_mask=jnp.array([0]))
    np.testing.assert_allclose(abs_adv, off_adv, rtol=1e-6)
    np.testing.assert_array_equal(abs_a0, [0.0])


def test_anchor_needs_reward():
    with pytest.raises(ValueError, match="anchor_reward"):
        anchored_advantages(jnp.zeros((1, 2)), None, LossSettings(anchor="full"))


def test_batch_permutation_equivariance_under_jit():
    key = jax.random.PRNGKey(0)
    r = jax.random.normal(key, (6, 5))
    m = (jax.random.uniform(jax.random.fold_in(key, 1), (6, 5)) > 0.3).astype(jnp.float32)
    perm = jnp.array([3, 0, 5, 1, 4, 2])
    f = jax.jit(lambda r, m: group_advantages(r, m, std="bessel"))
    np.testing.assert_allclose(f(r, m)[perm], f(r[perm], m[perm]), rtol=1e-6)
