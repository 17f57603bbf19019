"""SNIPS weights: hand values, edge cases, and the global-mean contract on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.losses import snips_weights


def test_hand_values_and_clip():
    target = jnp.array([0.2, 0.1, 0.3, 0.4])
    p = jnp.array([0.1, 0.1, 0.3, 0.8])   # w = 2, 1, 1, 0.5 ; mean 1.125
    np.testing.assert_allclose(snips_weights(target, p), np.array([2, 1, 1, 0.5]) / 1.125,
                               rtol=1e-6)
    np.testing.assert_allclose(snips_weights(target, p, clip=1.5),
                               [1.5, 1 / 1.125, 1 / 1.125, 0.5 / 1.125], rtol=1e-6)


def test_all_equal_ratios_give_ones():
    np.testing.assert_allclose(snips_weights(jnp.full(5, 0.3), jnp.full(5, 0.3)), np.ones(5))
    np.testing.assert_allclose(snips_weights(jnp.full(5, 0.1), jnp.full(5, 0.7)), np.ones(5),
                               rtol=1e-6)
    # p = 1 everywhere: w = pi_old, normalised by its mean
    np.testing.assert_allclose(snips_weights(jnp.array([0.5, 1.0]), jnp.ones(2)), [2 / 3, 4 / 3],
                               rtol=1e-6)


def test_masked_rows_excluded_from_mean_and_zero():
    target = jnp.array([0.2, 0.1, 0.9, jnp.nan])
    p = jnp.array([0.1, 0.1, 0.0, 0.5])
    w = snips_weights(target, p, jnp.array([1, 1, 0, 0]))   # mean over {2, 1} = 1.5
    np.testing.assert_allclose(w, [2 / 1.5, 1 / 1.5, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(snips_weights(target, p, jnp.zeros(4)), np.zeros(4))


def test_propensity_floor_and_extreme_weights():
    # p = 0 hits the floor: huge w, the others collapse, the big one is clipped at w_max
    w = snips_weights(jnp.array([0.5, 0.5, 0.5]), jnp.array([0.0, 0.5, 0.5]), clip=10.0,
                      propensity_floor=1e-6)
    mean = (0.5 / 1e-6 + 2) / 3
    np.testing.assert_allclose(w, [min(0.5 / 1e-6 / mean, 10.0), 1 / mean, 1 / mean], rtol=1e-5)
    assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(snips_weights(jnp.zeros(3), jnp.full(3, 0.2)), np.zeros(3))


def test_detached():
    g = jax.grad(lambda t: jnp.sum(snips_weights(t, jnp.array([0.1, 0.4]))))(jnp.array([0.2, 0.3]))
    np.testing.assert_array_equal(g, [0.0, 0.0])


def _uneven_batch():
    # shard means differ a lot, so a per-device mean would give different weights
    key = jax.random.PRNGKey(3)
    target = jnp.concatenate([jnp.full(8, 0.9), jax.random.uniform(key, (24,), minval=0.01)])
    p = jnp.concatenate([jnp.full(8, 0.05), jax.random.uniform(jax.random.fold_in(key, 1), (24,),
                                                              minval=0.05)])
    mask = (jnp.arange(32) % 5 != 0).astype(jnp.float32)
    return target, p, mask


def test_global_mean_under_jit_on_sharded_batch():
    target, p, mask = _uneven_batch()
    one = jax.devices()[:1][0]
    ref = jax.jit(snips_weights)(*(jax.device_put(x, one) for x in (target, p, mask)))
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(mesh, P(("data", "fsdp", "tensor")))
    args = [jax.device_put(x, sharding) for x in (target, p, mask)]
    out = jax.jit(snips_weights, out_shardings=sharding)(*args)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    # plain numpy reference
    w = np.asarray(target / p)
    m = np.asarray(mask)
    expect = np.clip(w / (w * m).sum() * m.sum(), 0, 10) * m
    np.testing.assert_allclose(ref, expect, rtol=1e-5)


def test_axis_name_inside_shard_map():
    target, p, mask = _uneven_batch()
    mesh = jax.make_mesh((8,), ("batch",))
    f = jax.shard_map(lambda t, q, m: snips_weights(t, q, m, axis_name="batch"), mesh=mesh,
                      in_specs=P("batch"), out_specs=P("batch"))
    args = [jax.device_put(x, NamedSharding(mesh, P("batch"))) for x in (target, p, mask)]
    np.testing.assert_allclose(jax.jit(f)(*args), snips_weights(target, p, mask),
                               rtol=1e-6)
