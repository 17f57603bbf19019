"""Group-relative advantages, and the anchor o_0 as an extra group member."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from abpo_jax.losses.masked import as_mask, safe_sqrt
from abpo_jax.losses.registry import get_advantage_estimator, register_advantage_estimator
from abpo_jax.losses.settings import LossSettings


def _group_moments(rewards: jax.Array, m: jax.Array, ddof: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked mean and std over the last axis, and the member count (all keepdims)."""
    n = jnp.sum(m, axis=-1, keepdims=True)
    mean = jnp.sum(rewards * m, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    sq = jnp.sum(jnp.square(rewards - mean) * m, axis=-1, keepdims=True)
    # n <= ddof (a single member under Bessel) has no spread: define std = 0.
    var = jnp.where(n > ddof, sq / jnp.maximum(n - ddof, 1.0), 0.0)
    return mean, safe_sqrt(var), n


@register_advantage_estimator("grpo")
def group_advantages(rewards: jax.Array, mask: Optional[jax.Array] = None, *,
                     std: str = "population", eps: float = 1e-4) -> jax.Array:
    """GRPO group-normalised advantages over the last axis (the M group members).

    A_i = m_i (r_i - mu) / (sigma + eps), mu = sum_j m_j r_j / n, n = sum_j m_j,
    sigma^2 = sum_j m_j (r_j - mu)^2 / (n - ddof) with ddof 0 (`population`) or 1 (`bessel`);
    `std="none"` gives A_i = m_i (r_i - mu). Masked members get 0 and do not enter mu/sigma;
    single-member groups and zero variance give 0 (never NaN). rewards, mask: [..., M]. Detached.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    m = as_mask(mask, rewards)
    rewards = jnp.where(m > 0, rewards, 0.0)  # padded members may hold NaN
    if std not in ("none", "population", "bessel"):
        raise ValueError(f"loss.std={std!r}; choose one of: none, population, bessel")
    mean, sigma, _ = _group_moments(rewards, m, ddof=1 if std == "bessel" else 0)
    centred = rewards - mean
    adv = centred if std == "none" else centred / (sigma + eps)
    return jax.lax.stop_gradient(adv * m)


@register_advantage_estimator("rloo")
def leave_one_out_advantages(rewards: jax.Array, mask: Optional[jax.Array] = None, *,
                             std: str = "none", eps: float = 1e-4) -> jax.Array:
    """RLOO baseline: A_i = m_i (r_i - sum_{j != i} m_j r_j / (n - 1)) = m_i n/(n-1) (r_i - mu).

    Single-member groups give 0. `std`/`eps` are accepted for a uniform signature and ignored.
    """
    del std, eps
    rewards = jnp.asarray(rewards, jnp.float32)
    m = as_mask(mask, rewards)
    rewards = jnp.where(m > 0, rewards, 0.0)
    n = jnp.sum(m, axis=-1, keepdims=True)
    others = (jnp.sum(rewards * m, axis=-1, keepdims=True) - rewards) / jnp.maximum(n - 1.0, 1.0)
    adv = jnp.where(n > 1, rewards - others, 0.0)
    return jax.lax.stop_gradient(adv * m)


def insert_anchor(rollout_rewards: jax.Array, anchor_reward: jax.Array,
                  rollout_mask: Optional[jax.Array] = None,
                  anchor_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """[B, G] rollouts + [B] anchor -> ([B, G+1] rewards, [B, G+1] mask) with o_0 at index 0."""
    rollout_rewards = jnp.asarray(rollout_rewards, jnp.float32)
    anchor_reward = jnp.asarray(anchor_reward, jnp.float32)
    rm = as_mask(rollout_mask, rollout_rewards)
    am = as_mask(anchor_mask, anchor_reward)
    rewards = jnp.concatenate([anchor_reward[..., None], rollout_rewards], axis=-1)
    mask = jnp.concatenate([am[..., None], rm], axis=-1)
    return rewards, mask


def anchored_advantages(rollout_rewards: jax.Array, anchor_reward: Optional[jax.Array],
                        settings: LossSettings, *, rollout_mask: Optional[jax.Array] = None,
                        anchor_mask: Optional[jax.Array] = None,
                        estimator: str = "grpo") -> tuple[jax.Array, jax.Array]:
    """Advantages of G rollouts and of the anchor, per `settings.anchor`.

    off: statistics over the G rollouts only (plain GRPO), anchor advantage 0.
    baseline_only: statistics over the G+1 members {o_0, o_1..o_G}; anchor advantage 0 (no term).
    full: statistics over G+1, and A_0 returned for the anchor term.
    Returns (rollout advantages [B, G], anchor advantage [B]).
    """
    estimate = get_advantage_estimator(estimator)
    rollout_rewards = jnp.asarray(rollout_rewards, jnp.float32)
    batch_zeros = jnp.zeros(rollout_rewards.shape[:-1], jnp.float32)
    if settings.anchor == "off":
        adv = estimate(rollout_rewards, rollout_mask, std=settings.std, eps=settings.eps)
        return adv, batch_zeros
    if anchor_reward is None:
        raise ValueError(f"loss.anchor={settings.anchor!r} needs anchor_reward")
    rewards, mask = insert_anchor(rollout_rewards, anchor_reward, rollout_mask, anchor_mask)
    adv = estimate(rewards, mask, std=settings.std, eps=settings.eps)
    anchor_adv = adv[..., 0] if settings.anchor == "full" else batch_zeros
    return adv[..., 1:], anchor_adv
