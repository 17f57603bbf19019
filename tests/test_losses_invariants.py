"""ABPO / GRPO objective invariants: anchor off == GRPO, add_gt equivalence, permutation,
8-device sharding == single device, exact micro-batch accumulation, NaN-free extremes, item mode.

All random batches share one shape so eager op compilation is reused across tests.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.losses import (LossSettings, abpo_objective, anchor_terms, get_policy_loss,
                             group_advantages, policy_loss)


def _random_batch(key, b=8, g=3, t=4, ta=4):
    ks = jax.random.split(key, 8)
    logp = -jax.random.uniform(ks[0], (b, g, t), minval=0.1, maxval=3.0)
    mask = (jnp.arange(t) < jax.random.randint(ks[1], (b, g, 1), 1, t + 1)).astype(jnp.float32)
    return dict(
        rollout_rewards=jax.random.randint(ks[2], (b, g), 0, 3).astype(jnp.float32),
        logp=logp, mask=mask,
        old_logp=logp + jax.random.uniform(ks[3], (b, g, t), minval=-0.4, maxval=0.4),
        ref_logp=logp + jax.random.uniform(ks[4], (b, g, t), minval=-0.4, maxval=0.4),
        anchor_logp=-jax.random.uniform(ks[5], (b, ta), minval=0.1, maxval=3.0),
        anchor_mask=(jnp.arange(ta) < jax.random.randint(ks[6], (b, 1), 1, ta + 1)).astype(
            jnp.float32),
    ), dict(outcome=jax.random.bernoulli(ks[7], 0.4, (b,)).astype(jnp.int32),
            self_certainty=jax.random.uniform(jax.random.fold_in(key, 9), (b,), maxval=5.0),
            target_prob=jax.random.uniform(jax.random.fold_in(key, 10), (b,), minval=0.05),
            propensity=jax.random.uniform(jax.random.fold_in(key, 11), (b,), minval=0.05))


def _objective(settings, batch, logged):
    return abpo_objective(settings, anchor=anchor_terms(settings, **logged), **batch)


def test_anchor_off_is_exactly_grpo():
    batch, logged = _random_batch(jax.random.PRNGKey(0))
    abpo_off = _objective(LossSettings(anchor="off"), batch, logged)
    grpo = _objective(LossSettings(name="grpo"), batch, logged)   # anchor="full" is overridden
    adv = group_advantages(batch["rollout_rewards"])
    plain = get_policy_loss("grpo")(LossSettings(), advantages=adv, **{
        k: batch[k] for k in ("logp", "old_logp", "ref_logp", "mask")})
    for a, b in [(abpo_off, grpo), (grpo, plain)]:
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # and the anchor changes it when on
    assert not np.allclose(_objective(LossSettings(), batch, logged)[0], grpo[0])


def test_baseline_only_changes_advantages_not_terms():
    batch, logged = _random_batch(jax.random.PRNGKey(1))
    s = LossSettings(anchor="baseline_only")
    terms = anchor_terms(s, **logged)
    got = abpo_objective(s, anchor=terms, **batch)
    full_adv = group_advantages(jnp.concatenate([terms.reward[:, None],
                                                 batch["rollout_rewards"]], 1))[:, 1:]
    ref = policy_loss(s.replace(anchor="off"), advantages=full_adv,
                      **{k: batch[k] for k in ("logp", "old_logp", "ref_logp", "mask")})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_full_anchor_unweighted_equals_add_gt_member(aggregation):
    """anchor=full, snips=off, g=one: the anchor is MiniOneRec's `add_gt` ground-truth member —
    one more group member with its own reward and an unweighted, on-policy (ratio 1) term."""
    t = 4
    batch, logged = _random_batch(jax.random.PRNGKey(2))
    s = LossSettings(snips="off", tempering="one", beta=0.0, aggregation=aggregation,
                     max_completion_length=t)
    terms = anchor_terms(s, **logged)
    np.testing.assert_allclose(terms.reward, np.where(logged["outcome"] == 1, 1.0, -1.0))

    def ours(logp, anchor_logp):
        out = abpo_objective(s, anchor=terms, **{**batch, "logp": logp, "anchor_logp": anchor_logp})
        return out[0] / out[1]

    def add_gt(logp, anchor_logp):
        rewards = jnp.concatenate([batch["rollout_rewards"], terms.reward[:, None]], 1)
        all_logp = jnp.concatenate([logp, anchor_logp[:, None]], 1)
        all_old = jnp.concatenate([batch["old_logp"], jax.lax.stop_gradient(anchor_logp)[:, None]], 1)
        all_mask = jnp.concatenate([batch["mask"], batch["anchor_mask"][:, None]], 1)
        out = get_policy_loss("grpo")(s, logp=all_logp, old_logp=all_old, mask=all_mask,
                                      advantages=group_advantages(rewards))
        return out[0] / out[1]

    args = (batch["logp"], batch["anchor_logp"])
    for got, want in zip(jax.grad(ours, (0, 1))(*args), jax.grad(add_gt, (0, 1))(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_batch_permutation_permutes_outputs():
    batch, logged = _random_batch(jax.random.PRNGKey(3))
    perm = jnp.array([2, 0, 7, 3, 1, 6, 5, 4])
    s = LossSettings()
    loss = lambda bt: (lambda o: o[0] / o[1])(_objective(s, bt, logged_p))  # noqa: E731
    logged_p = logged
    g, v = jax.grad(loss)(batch), loss(batch)
    logged_p = {k: x[perm] for k, x in logged.items()}
    batch_p = {k: x[perm] for k, x in batch.items()}
    gp, vp = jax.grad(loss)(batch_p), loss(batch_p)
    np.testing.assert_allclose(vp, v, rtol=1e-6)
    np.testing.assert_allclose(gp["logp"], g["logp"][perm], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gp["anchor_logp"], g["anchor_logp"][perm], rtol=1e-5, atol=1e-8)
    terms, terms_p = anchor_terms(s, **logged), anchor_terms(s, **logged_p)
    for a, b in zip(terms[:3], terms_p[:3]):
        np.testing.assert_allclose(b, a[perm], rtol=1e-6)


def test_sharded_equals_single_device():
    batch, logged = _random_batch(jax.random.PRNGKey(4))
    s = LossSettings()

    def step(batch, logged):
        def loss(bt):
            out = _objective(s, bt, logged)
            return out[0] / out[1], out[2]
        (v, m), g = jax.value_and_grad(loss, has_aux=True)(batch)
        return v, m, g

    one = jax.devices()[0]
    ref = jax.jit(step)(*jax.device_put((batch, logged), one))
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    shard = NamedSharding(mesh, P(("data", "fsdp", "tensor")))
    out = jax.jit(step)(*jax.device_put((batch, logged), shard))
    assert len(out[2]["logp"].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_microbatch_accumulation_is_exact():
    batch, logged = _random_batch(jax.random.PRNGKey(5))
    for aggregation in ("token_mean", "sequence_mean", "constant"):
        s = LossSettings(aggregation=aggregation)
        terms = anchor_terms(s, **logged)   # weights/certainty over the whole batch first
        full = abpo_objective(s, anchor=terms, **batch)
        halves = [abpo_objective(s, anchor=type(terms)(*(x[sl] for x in terms[:3]), None),
                                 **{k: v[sl] for k, v in batch.items()})
                  for sl in (slice(0, 4), slice(4, 8))]
        np.testing.assert_allclose((halves[0][0] + halves[1][0]) / (halves[0][1] + halves[1][1]),
                                   full[0] / full[1], rtol=1e-6)


def test_extreme_inputs_give_finite_loss_and_gradients():
    batch, logged = _random_batch(jax.random.PRNGKey(6))
    batch["logp"] = batch["logp"].at[0].set(-1e4).at[1, 0, 0].set(-1e-9)
    batch["old_logp"] = batch["old_logp"].at[1].set(-80.0)            # ratio ~ e^80
    batch["ref_logp"] = batch["ref_logp"].at[2].set(60.0)             # k3 exp overflow
    batch["logp"] = jnp.where(batch["mask"] > 0, batch["logp"], jnp.nan)   # garbage padding
    batch["anchor_logp"] = jnp.where(batch["anchor_mask"] > 0, -1e4, -jnp.inf)
    logged["propensity"] = logged["propensity"].at[0].set(0.0).at[1].set(1.0)
    logged["self_certainty"] = jnp.full_like(logged["self_certainty"], 7.0)  # zero range
    for name, kl in [("abpo", "k3"), ("abpo", "k1"), ("grpo", "k3")]:
        s = LossSettings(name=name, kl_estimator=kl, std="bessel")
        loss = lambda lp, alp: (lambda o: o[0] / o[1])(  # noqa: E731
            _objective(s, {**batch, "logp": lp, "anchor_logp": alp}, logged))
        v, grads = jax.value_and_grad(loss, (0, 1))(batch["logp"], batch["anchor_logp"])
        assert np.isfinite(v), (name, kl)
        for gr in grads:
            assert np.all(np.isfinite(gr)), (name, kl)


def test_item_mode_token_axis_of_one():
    """Item mode: per-action log pi~ as a length-1 token axis; shapes [B, G, 1] and [B, 1]."""
    batch, logged = _random_batch(jax.random.PRNGKey(7), t=1, ta=1)
    s = LossSettings(max_completion_length=1)
    sums = [abpo_objective(s.replace(aggregation=a), anchor=anchor_terms(s, **logged), **batch)
            for a in ("token_mean", "sequence_mean", "constant")]
    # with one token per sequence all three aggregations coincide
    for out in sums[1:]:
        np.testing.assert_allclose(out[0] / out[1], sums[0][0] / sums[0][1], rtol=1e-6)
    np.testing.assert_allclose(sums[0][1], 8 * 3 + 8)
