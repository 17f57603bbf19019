"""Invariants of the item-mode objective end to end (anchor terms -> member rewards ->
advantages -> loss): 8-device sharding equals one device, a batch permutation permutes the
gradients, extreme inputs stay finite, and with one token per member every aggregation agrees.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.config import base_config
from abpo_jax.losses import abpo

B, C, G = 8, 6, 4


def _settings(**changes):
    return abpo.LossSettings.from_config(base_config().loss).replace(
        certainty_norm="batch", **changes)


def _batch(key):
    ks = jax.random.split(key, 8)
    logp = jax.nn.log_softmax(jax.random.normal(ks[0], (B, C)))
    exposed = jax.random.randint(ks[1], (B,), 0, C)
    return dict(
        logp=logp, old=logp + 0.1 * jax.random.normal(ks[2], (B, C)),
        ref=logp + 0.1 * jax.random.normal(ks[3], (B, C)),
        members=jnp.concatenate([exposed[:, None], jax.random.randint(ks[4], (B, G), 0, C)], 1),
        outcome=jax.random.bernoulli(ks[5], 0.3, (B,)).astype(jnp.int32),
        sc=jax.random.uniform(ks[6], (B,), maxval=5.0),
        propensity=jax.random.uniform(ks[7], (B,), minval=0.05, maxval=0.9))


def _loss(s, b, logp):
    exposed = b["members"][:, 0]
    terms = abpo.anchor_terms(
        s, outcome=b["outcome"], self_certainty=b["sc"],
        target_prob=jnp.exp(jnp.take_along_axis(b["old"], exposed[:, None], 1)[:, 0]),
        propensity=b["propensity"], mask=jnp.ones(B))
    return abpo.item_mode_loss(s, logp=logp, old_logp=b["old"], ref_logp=b["ref"],
                               members=b["members"], terms=terms, valid=jnp.ones(B))


def test_sharded_equals_single_device():
    b = _batch(jax.random.PRNGKey(0))
    s = _settings()
    step = jax.jit(lambda b: jax.value_and_grad(lambda lp: _loss(s, b, lp), has_aux=True)(
        b["logp"]))
    ref = step(jax.device_put(b, jax.devices()[0]))
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    out = step(jax.device_put(b, NamedSharding(mesh, P(("data", "fsdp", "tensor")))))
    assert len(out[1].sharding.device_set) == 8
    # same math, other reduction order: float32 rounding of sums over 8 x 5 members
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_batch_permutation_permutes_gradients():
    b = _batch(jax.random.PRNGKey(1))
    s = _settings()
    perm = jnp.array([2, 0, 7, 3, 1, 6, 5, 4])
    (v, _), g = jax.value_and_grad(lambda lp: _loss(s, b, lp), has_aux=True)(b["logp"])
    bp = {k: x[perm] for k, x in b.items()}
    (vp, _), gp = jax.value_and_grad(lambda lp: _loss(s, bp, lp), has_aux=True)(bp["logp"])
    np.testing.assert_allclose(vp, v, rtol=1e-6)
    np.testing.assert_allclose(gp, g[perm], rtol=1e-5, atol=1e-8)


def test_extreme_inputs_give_finite_loss_and_gradients():
    b = _batch(jax.random.PRNGKey(2))
    b["old"] = b["old"].at[1].set(-80.0)                      # ratio ~ e^80
    b["ref"] = b["ref"].at[2].set(60.0)                       # k3 exp overflow
    b["propensity"] = b["propensity"].at[0].set(0.0)          # floored
    b["sc"] = jnp.full_like(b["sc"], 7.0)                     # zero certainty range
    for changes in ({}, {"kl_estimator": "k1"}, {"anchor": "off", "std": "bessel"},
                    {"std": "population", "unobserved_reward": "zero"}):
        s = _settings(**changes)
        (v, m), g = jax.value_and_grad(lambda lp: _loss(s, b, lp), has_aux=True)(b["logp"])
        assert np.isfinite(v) and np.all(np.isfinite(g)), changes
        assert all(np.isfinite(x) for x in jax.tree.leaves(m)), changes


def test_one_token_members_make_aggregations_agree():
    b = _batch(jax.random.PRNGKey(3))
    s = _settings(max_completion_length=1)
    values = [float(_loss(s.replace(aggregation=a), b, b["logp"])[0])
              for a in ("token_mean", "sequence_mean", "constant")]
    np.testing.assert_allclose(values, values[0], rtol=1e-6)
