"""Self-certainty (Kang et al. 2025) of a completion and its [0, 1] normalisation."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from abpo_jax.losses.masked import as_mask

NORM_EPS = 1e-4


def token_self_certainty(logits: jax.Array) -> jax.Array:
    """SC_t = logsumexp_v z_tv - mean_v z_tv over the full vocabulary; logits [..., V] -> [...].

    Equals KL(uniform || softmax(z)) + log V (so >= log V); the constant cancels in the min-max
    normalisation. Computed in float32.
    """
    z = jnp.asarray(logits, jnp.float32)
    return jax.nn.logsumexp(z, axis=-1) - jnp.mean(z, axis=-1)


def sequence_self_certainty(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean of SC_t over the token axis: logits [..., T, V], mask [..., T] -> [...].

    `mask` selects the completion tokens (certainty_tokens=completion) or only the item-id span
    (certainty_tokens=item). Rows with no selected token give 0. Detached.
    """
    sc = token_self_certainty(logits)
    m = as_mask(mask, sc)
    total = jnp.sum(jnp.where(m > 0, sc, 0.0) * m, axis=-1)
    return jax.lax.stop_gradient(total / jnp.maximum(jnp.sum(m, axis=-1), 1.0))


def _masked_min_max(x: jax.Array, m: jax.Array, axis_name: Optional[str]) -> tuple[jax.Array, jax.Array]:
    lo = jnp.min(jnp.where(m > 0, x, jnp.inf))
    hi = jnp.max(jnp.where(m > 0, x, -jnp.inf))
    if axis_name is not None:
        lo, hi = jax.lax.pmin(lo, axis_name), jax.lax.pmax(hi, axis_name)
    return lo, hi


def _min_max_scale(x: jax.Array, lo: jax.Array, hi: jax.Array, m: jax.Array) -> jax.Array:
    """(x - lo) / (hi - lo + 1e-4), clipped to [0, 1]; 0 where masked or no statistics yet."""
    valid = jnp.isfinite(lo) & jnp.isfinite(hi) & (m > 0)
    safe_lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    safe_hi = jnp.where(jnp.isfinite(hi), hi, 0.0)
    c = (x - safe_lo) / (safe_hi - safe_lo + NORM_EPS)
    return jax.lax.stop_gradient(jnp.where(valid, jnp.clip(c, 0.0, 1.0), 0.0))


def normalize_certainty_batch(sc: jax.Array, mask: Optional[jax.Array] = None,
                              axis_name: Optional[str] = None) -> jax.Array:
    """c = (SC - min) / (max - min + 1e-4) with min/max over the unmasked GLOBAL batch.

    Under jit a sharded `sc` gives the global min/max; inside shard_map pass `axis_name`.
    """
    sc = jnp.asarray(sc, jnp.float32)
    m = as_mask(mask, sc)
    lo, hi = _masked_min_max(sc, m, axis_name)
    return _min_max_scale(sc, lo, hi, m)


class CertaintyStats(NamedTuple):
    """Running extremes of self-certainty seen so far (the `certainty_norm=running` state)."""

    min: jax.Array
    max: jax.Array
    count: jax.Array

    @classmethod
    def init(cls) -> "CertaintyStats":
        return cls(jnp.float32(jnp.inf), jnp.float32(-jnp.inf), jnp.float32(0.0))


def normalize_certainty_running(sc: jax.Array, stats: CertaintyStats,
                                mask: Optional[jax.Array] = None,
                                axis_name: Optional[str] = None) -> tuple[jax.Array, CertaintyStats]:
    """Min-max normalise with running extremes: stats' = (min(stats.min, batch min),
    max(stats.max, batch max), count + n); c = (SC - min') / (max' - min' + 1e-4), in [0, 1].
    Returns (c, stats'). Pure: state in, state out.
    """
    sc = jnp.asarray(sc, jnp.float32)
    m = as_mask(mask, sc)
    lo, hi = _masked_min_max(sc, m, axis_name)
    n = jnp.sum(m)
    if axis_name is not None:
        n = jax.lax.psum(n, axis_name)
    new = CertaintyStats(jnp.minimum(stats.min, lo), jnp.maximum(stats.max, hi), stats.count + n)
    return _min_max_scale(sc, new.min, new.max, m), new
