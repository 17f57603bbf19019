"""The anchor's reward r_0 with self-certainty tempering of the no-response penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from abpo_jax.losses.registry import get_tempering, register_tempering
from abpo_jax.losses.settings import LossSettings


@register_tempering("one")
def tempering_one(c: jax.Array, tau: float) -> jax.Array:
    """g(c) = 1: every no-response is penalised in full."""
    del tau
    return jnp.ones_like(c)


@register_tempering("one_minus_c")
def tempering_one_minus_c(c: jax.Array, tau: float) -> jax.Array:
    """g(c) = 1 - c: a confident model (likely an external no-response) is penalised less."""
    del tau
    return 1.0 - c


@register_tempering("c")
def tempering_c(c: jax.Array, tau: float) -> jax.Array:
    """g(c) = c: the opposite reading, penalise confident mistakes more."""
    del tau
    return c


@register_tempering("threshold")
def tempering_threshold(c: jax.Array, tau: float) -> jax.Array:
    """g(c) = 1[c < tau]: the hard version of 1 - c; no penalty once the model is certain."""
    return (c < tau).astype(jnp.float32)


def anchor_reward(outcome: jax.Array, certainty: jax.Array, settings: LossSettings) -> jax.Array:
    """r_0 = r+ if y = 1, else -lambda * g(c); outcome y in {0, 1}, c in [0, 1]: [B] -> [B]. Detached."""
    c = jnp.asarray(certainty, jnp.float32)
    g = get_tempering(settings.tempering)(c, settings.tempering_threshold)
    y = jnp.asarray(outcome)
    r = jnp.where(y > 0, settings.positive_reward, -settings.negative_scale * g)
    return jax.lax.stop_gradient(r.astype(jnp.float32))
