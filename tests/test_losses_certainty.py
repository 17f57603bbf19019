"""Self-certainty and its normalisation: hand values, masks, running state, sharding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.losses import (CertaintyStats, LossSettings, anchor_reward, anchor_terms,
                             normalize_certainty_batch, normalize_certainty_running,
                             sequence_self_certainty, token_self_certainty)


def test_token_self_certainty_by_hand():
    z = jnp.array([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    # uniform: log 4 - 0 ; [log3,0,0,0]: log(3+3) - log(3)/4
    np.testing.assert_allclose(token_self_certainty(z), [math.log(4), math.log(6) - math.log(3) / 4],
                               rtol=1e-6)
    # = KL(U || p) + log V (Kang et al.), checked with numpy on random logits
    logits = np.random.default_rng(0).normal(size=(3, 7)) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kl_u_p = np.mean(np.log(1 / 7) - logp, axis=-1)
    np.testing.assert_allclose(token_self_certainty(jnp.asarray(logits)), kl_u_p + math.log(7),
                               rtol=1e-5)


def test_sequence_mean_over_mask_only():
    z = jnp.zeros((2, 3, 4)).at[0, 1].set(jnp.array([math.log(3.0), 0, 0, 0]))
    mask = jnp.array([[0, 1, 0], [0, 0, 0]])
    sc = sequence_self_certainty(z, mask)
    np.testing.assert_allclose(sc, [math.log(6) - math.log(3) / 4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(sequence_self_certainty(z, jnp.ones((2, 3))),
                               [(2 * math.log(4) + math.log(6) - math.log(3) / 4) / 3, math.log(4)],
                               rtol=1e-6)


def test_batch_minmax_by_hand_and_masks():
    sc = jnp.array([1.0, 3.0, 2.0, 100.0])
    c = normalize_certainty_batch(sc, jnp.array([1, 1, 1, 0]))
    np.testing.assert_allclose(c, [0.0, 2 / 2.0001, 1 / 2.0001, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(normalize_certainty_batch(jnp.full(3, 5.0)), np.zeros(3))
    np.testing.assert_array_equal(normalize_certainty_batch(sc, jnp.zeros(4)), np.zeros(4))


def test_batch_minmax_is_global_when_sharded():
    sc = jnp.arange(16.0) ** 1.5
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    x = jax.device_put(sc, NamedSharding(mesh, P(("data", "fsdp", "tensor"))))
    np.testing.assert_allclose(jax.jit(normalize_certainty_batch)(x),
                               normalize_certainty_batch(jax.device_put(sc, jax.devices()[0])),
                               rtol=1e-6)


def test_running_state():
    stats = CertaintyStats.init()
    c1, stats = normalize_certainty_running(jnp.array([2.0, 4.0]), stats)
    np.testing.assert_allclose(c1, [0.0, 2 / 2.0001], rtol=1e-6)
    assert (float(stats.min), float(stats.max), float(stats.count)) == (2.0, 4.0, 2.0)
    c2, stats = normalize_certainty_running(jnp.array([3.0, 10.0, -1.0]), stats,
                                            jnp.array([1, 0, 1]))
    np.testing.assert_allclose(c2, [4 / 5.0001, 0.0, 0.0], rtol=1e-6)
    assert (float(stats.min), float(stats.max), float(stats.count)) == (-1.0, 4.0, 4.0)
    # jit-able with the state as a pytree
    c3, _ = jax.jit(normalize_certainty_running)(jnp.array([0.0, 9.0]), stats)
    np.testing.assert_allclose(c3, [1 / 10.0001, 10 / 10.0001], rtol=1e-6)  # max grows to 9


def test_anchor_reward_temperings():
    y = jnp.array([1, 0, 0, 0])
    c = jnp.array([0.9, 0.0, 0.25, 0.8])
    base = dict(positive_reward=2.0, negative_scale=0.5)
    cases = {"one": [2, -0.5, -0.5, -0.5], "one_minus_c": [2, -0.5, -0.375, -0.1],
             "c": [2, 0, -0.125, -0.4], "threshold": [2, -0.5, -0.5, 0.0]}
    for name, expect in cases.items():
        s = LossSettings(tempering=name, tempering_threshold=0.5, **base)
        np.testing.assert_allclose(anchor_reward(y, c, s), expect, rtol=1e-6, err_msg=name)


def test_anchor_terms_end_to_end():
    s = LossSettings(snips_clip=10.0)
    terms = anchor_terms(s, outcome=jnp.array([1, 0, 0]), self_certainty=jnp.array([5.0, 1.0, 3.0]),
                         target_prob=jnp.array([0.2, 0.4, 0.6]), propensity=jnp.array([0.2, 0.2, 0.2]))
    np.testing.assert_allclose(terms.certainty, [4 / 4.0001, 0.0, 2 / 4.0001], rtol=1e-6)
    np.testing.assert_allclose(terms.reward, [1.0, -1.0, -(1 - 2 / 4.0001)], rtol=1e-6)
    np.testing.assert_allclose(terms.weight, [0.5, 1.0, 1.5], rtol=1e-6)
    off = anchor_terms(s.replace(snips="off", certainty_norm="running"), outcome=jnp.array([0, 0]),
                       self_certainty=jnp.array([1.0, 2.0]), target_prob=jnp.array([0.1, 0.9]),
                       propensity=jnp.array([0.5, 0.5]))
    np.testing.assert_array_equal(off.weight, [1.0, 1.0])
    assert float(off.stats.max) == 2.0
