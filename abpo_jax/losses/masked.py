"""Masked reductions shared by the loss modules (global over a sharded batch under jit)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def as_mask(mask: Optional[jax.Array], like: jax.Array) -> jax.Array:
    """`mask` as float32 shaped like `like` (all ones when None)."""
    if mask is None:
        return jnp.ones(like.shape, jnp.float32)
    return jnp.broadcast_to(mask, like.shape).astype(jnp.float32)


def global_sum(x: jax.Array, axis_name: Optional[str] = None) -> jax.Array:
    """Sum of all entries; with `axis_name` (inside shard_map/pmap) also summed over that axis."""
    s = jnp.sum(x)
    return jax.lax.psum(s, axis_name) if axis_name is not None else s


def masked_mean(x: jax.Array, mask: Optional[jax.Array] = None,
                axis_name: Optional[str] = None) -> jax.Array:
    """sum(x * m) / max(sum(m), 1); 0 when nothing is unmasked."""
    m = as_mask(mask, x)
    total = global_sum(jnp.where(m > 0, x, 0.0) * m, axis_name)
    count = global_sum(m, axis_name)
    return total / jnp.maximum(count, 1.0)


def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)) with a finite (zero) gradient at 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)
