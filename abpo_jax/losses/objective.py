"""The whole ABPO objective in two calls: anchor terms (reward, SNIPS weight, certainty), then
advantages + the registered policy loss. The train step calls these; each piece is its own module."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from abpo_jax.losses.advantages import anchored_advantages
from abpo_jax.losses.certainty import (CertaintyStats, normalize_certainty_batch,
                                       normalize_certainty_running)
from abpo_jax.losses.registry import get_policy_loss
from abpo_jax.losses.rewards import anchor_reward
from abpo_jax.losses.settings import LossSettings
from abpo_jax.losses.snips import snips_weights


class AnchorTerms(NamedTuple):
    """Per-row anchor quantities, all detached: r_0, w~ (ones when snips=off), c in [0, 1]."""

    reward: jax.Array
    weight: jax.Array
    certainty: jax.Array
    stats: Optional[CertaintyStats]


def anchor_terms(settings: LossSettings, *, outcome: jax.Array, self_certainty: jax.Array,
                 target_prob: jax.Array, propensity: jax.Array,
                 mask: Optional[jax.Array] = None, stats: Optional[CertaintyStats] = None,
                 axis_name: Optional[str] = None) -> AnchorTerms:
    """r_0 = r+ | -lambda g(c) with c the normalised `self_certainty` (raw SC of the anchor under
    pi_old, [B]); w~ = SNIPS(target_prob = pi_old(a|x), propensity) or 1. `stats` is the running
    state for certainty_norm=running (returned updated; None for batch)."""
    m = jnp.ones(jnp.shape(outcome), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    if settings.certainty_norm == "running":
        c, stats = normalize_certainty_running(
            self_certainty, CertaintyStats.init() if stats is None else stats, m, axis_name)
    else:
        c = normalize_certainty_batch(self_certainty, m, axis_name)
    if settings.snips == "on":
        w = snips_weights(target_prob, propensity, m, clip=settings.snips_clip, axis_name=axis_name)
    else:
        w = m
    return AnchorTerms(anchor_reward(outcome, c, settings) * m, w, c, stats)


def abpo_objective(settings: LossSettings, *, rollout_rewards: jax.Array, logp: jax.Array,
                   old_logp: jax.Array, mask: jax.Array, ref_logp: Optional[jax.Array] = None,
                   rollout_mask: Optional[jax.Array] = None, anchor: Optional[AnchorTerms] = None,
                   anchor_logp: Optional[jax.Array] = None,
                   anchor_mask: Optional[jax.Array] = None,
                   anchor_row_mask: Optional[jax.Array] = None,
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Advantages over {o_0?, o_1..o_G} (`anchored_advantages`), then the policy loss registered
    as `settings.name` ("abpo" | "grpo"). Rollouts [B, G, T], rewards [B, G]; anchor [B, Ta].
    Returns (loss_sum, denominator, metrics); loss = loss_sum / denominator."""
    loss_settings = settings.replace(anchor="off") if settings.name == "grpo" else settings
    adv, anchor_adv = anchored_advantages(
        rollout_rewards, None if anchor is None else anchor.reward, loss_settings,
        rollout_mask=rollout_mask, anchor_mask=anchor_row_mask)
    return get_policy_loss(settings.name)(
        loss_settings, logp=logp, old_logp=old_logp, ref_logp=ref_logp, mask=mask,
        advantages=adv, anchor_logp=anchor_logp, anchor_mask=anchor_mask,
        anchor_advantage=anchor_adv, anchor_weight=None if anchor is None else anchor.weight,
        certainty=None if anchor is None else anchor.certainty)
