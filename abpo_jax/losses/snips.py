"""Self-normalised inverse-propensity (SNIPS) weights for the anchor term."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from abpo_jax.losses.masked import as_mask, masked_mean


def snips_weights(target_prob: jax.Array, propensity: jax.Array,
                  mask: Optional[jax.Array] = None, *, clip: float = 10.0,
                  propensity_floor: float = 1e-6,
                  axis_name: Optional[str] = None) -> jax.Array:
    """w~_b = clip(w_b / mean_{b': m=1} w_b', 0, w_max) * m_b with w_b = pi_old(a_b|x_b) / max(p_b, floor).

    target_prob: pi_old(a|x) of the logged item under the closed-candidate policy; propensity: the
    logged p. The mean runs over the unmasked rows of the GLOBAL batch: under `jit` a plain
    `jnp.mean` of a globally sharded array is global (XLA inserts the all-reduce); inside
    `shard_map`/`pmap` pass `axis_name` to psum the sum and count. Detached (stop_gradient).
    All-equal w gives all ones; masked rows get 0.
    """
    target_prob = jnp.asarray(target_prob, jnp.float32)
    m = as_mask(mask, target_prob)
    p = jnp.maximum(jnp.asarray(propensity, jnp.float32), propensity_floor)
    w = jnp.where(m > 0, target_prob / jnp.where(m > 0, p, 1.0), 0.0)
    mean_w = masked_mean(w, m, axis_name)
    # mean_w == 0 only when every target_prob is 0: all weights are then 0 as well.
    w_tilde = jnp.where(mean_w > 0, w / jnp.where(mean_w > 0, mean_w, 1.0), 0.0)
    return jax.lax.stop_gradient(jnp.clip(w_tilde, 0.0, clip) * m)
