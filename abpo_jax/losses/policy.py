"""The ABPO / GRPO policy loss as (loss_sum, denominator, metrics); GRPO is ABPO with anchor off."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from abpo_jax.losses.masked import as_mask
from abpo_jax.losses.registry import register_policy_loss
from abpo_jax.losses.settings import LossSettings

# Log-ratios beyond this are clamped before exp: exp(20) ~ 5e8 is already far outside any clip
# range, and an overflowing exp would turn a masked-out branch's zero cotangent into NaN.
MAX_LOG_RATIO = 20.0


def _exp_log_ratio(delta: jax.Array) -> jax.Array:
    return jnp.exp(jnp.clip(delta, -MAX_LOG_RATIO, MAX_LOG_RATIO))


def kl_per_token(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) estimate on samples from pi_theta.

    k1 = logp - ref_logp; k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (TRL / Schulman).
    """
    delta = ref_logp - logp
    if estimator == "k1":
        return -delta
    if estimator == "k3":
        return _exp_log_ratio(delta) - delta - 1.0
    raise ValueError(f"loss.kl_estimator={estimator!r}; choose one of: k1, k3")


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
    """Numerator contribution of one group of sequences [..., T] under `aggregation`."""
    masked = per_token * mask
    if aggregation == "sequence_mean":
        return jnp.sum(jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
    return jnp.sum(masked)


def _denominator(mask: jax.Array, aggregation: str, max_completion_length: int) -> jax.Array:
    """Normaliser contribution: tokens (token_mean), sequences (sequence_mean) or
    sequences * max_completion_length (constant). A sequence counts when it has a valid token."""
    if aggregation == "token_mean":
        return jnp.sum(mask)
    sequences = jnp.sum(jnp.any(mask > 0, axis=-1).astype(jnp.float32))
    if aggregation == "sequence_mean":
        return sequences
    return sequences * float(max_completion_length)


def _mean(x: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def policy_loss(settings: LossSettings, *, logp: jax.Array, old_logp: jax.Array,
                mask: jax.Array, advantages: jax.Array,
                ref_logp: Optional[jax.Array] = None,
                anchor_logp: Optional[jax.Array] = None,
                anchor_mask: Optional[jax.Array] = None,
                anchor_advantage: Optional[jax.Array] = None,
                anchor_weight: Optional[jax.Array] = None,
                certainty: Optional[jax.Array] = None,
                ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """ABPO objective as an exactly accumulable (sum, denominator) pair; loss = sum / denominator.

    Per rollout token (i >= 1), rho = exp(logp - old_logp):
      l_it = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta KL_it
    (KL_it = k1 | k3 of pi_theta vs pi_ref, times rho if `kl_ratio_correction`; rollouts only);
    per anchor token (anchor=full): l_0t = -w~ A_0 log pi_theta(o_0,t).
    loss = [sum_i agg(l_i) + agg(l_0)] / N where for `aggregation`
      token_mean:    agg = sum_t m_t l_t,            N = tokens of rollouts + anchor (TRL bnpo/dapo)
      sequence_mean: agg = sum_t m_t l_t / sum_t m_t, N = sequences incl. anchor   (TRL grpo)
      constant:      agg = sum_t m_t l_t,  N = sequences * max_completion_length   (TRL dr_grpo).
    With anchor off / baseline_only the anchor adds nothing to sum or N (exactly GRPO).

    Shapes: rollouts logp/old_logp/ref_logp/mask [..., T] (e.g. [B, G, T]; item mode T = 1 with
    per-action log pi~), advantages [...]; anchor_logp/anchor_mask [B, Ta], anchor_advantage and
    anchor_weight (the SNIPS w~, or ones) [B]; certainty [B] only feeds a metric.
    Metrics: clip_fraction (TRL region-clipped share of rollout tokens), kl, mean_weight,
    mean_certainty, mean_advantage, anchor_advantage.
    """
    m = as_mask(mask, logp)
    # Masked positions may hold garbage (-inf, NaN); zero them before any exp. The loss runs in
    # float32 whatever the model's compute dtype (bf16 ratios near 1 are too coarse to clip).
    logp = jnp.where(m > 0, logp.astype(jnp.float32), 0.0)
    old_logp = jnp.where(m > 0, jax.lax.stop_gradient(old_logp), 0.0)
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[..., None]

    ratio = _exp_log_ratio(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - settings.epsilon_low, 1.0 + settings.epsilon_high)
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    kl = jnp.zeros_like(per_token)
    if settings.beta != 0.0:
        if ref_logp is None:
            raise ValueError(f"loss.beta={settings.beta} needs ref_logp")
        ref = jnp.where(m > 0, jax.lax.stop_gradient(ref_logp), 0.0)
        kl = kl_per_token(logp, ref, settings.kl_estimator)
        if settings.kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + settings.beta * kl

    loss_sum = _aggregate(per_token, m, settings.aggregation)
    denom = _denominator(m, settings.aggregation, settings.max_completion_length)

    is_clipped = (((ratio < 1.0 - settings.epsilon_low) & (adv < 0))
                  | ((ratio > 1.0 + settings.epsilon_high) & (adv > 0)))
    seq_valid = jnp.any(m > 0, axis=-1).astype(jnp.float32)
    metrics = {
        "clip_fraction": _mean(is_clipped.astype(jnp.float32), m),
        "kl": _mean(kl, m),
        "mean_advantage": _mean(adv[..., 0], seq_valid),
        # Same keys whatever the settings, so a jitted step returns a fixed pytree.
        "mean_weight": jnp.float32(0.0),
        "anchor_advantage": jnp.float32(0.0),
        "mean_certainty": jnp.float32(0.0),
    }

    if settings.anchor == "full":
        if anchor_logp is None or anchor_advantage is None:
            raise ValueError("loss.anchor='full' needs anchor_logp and anchor_advantage")
        am = as_mask(anchor_mask, anchor_logp)
        a_logp = jnp.where(am > 0, anchor_logp.astype(jnp.float32), 0.0)
        a_adv = jax.lax.stop_gradient(jnp.asarray(anchor_advantage, jnp.float32))
        weight = (jnp.ones_like(a_adv) if anchor_weight is None
                  else jax.lax.stop_gradient(jnp.asarray(anchor_weight, jnp.float32)))
        anchor_token = -(weight * a_adv)[..., None] * a_logp
        loss_sum = loss_sum + _aggregate(anchor_token, am, settings.aggregation)
        denom = denom + _denominator(am, settings.aggregation, settings.max_completion_length)
        a_valid = jnp.any(am > 0, axis=-1).astype(jnp.float32)
        metrics["mean_weight"] = _mean(weight, a_valid)
        metrics["anchor_advantage"] = _mean(a_adv, a_valid)
    if certainty is not None:
        metrics["mean_certainty"] = jnp.mean(jnp.asarray(certainty, jnp.float32))
    return loss_sum, denom, metrics


@register_policy_loss("abpo")
def abpo_policy_loss(settings: LossSettings, **inputs) -> tuple[jax.Array, jax.Array, dict]:
    """ABPO: `policy_loss` with the settings as given (default: anchor full, SNIPS weights)."""
    return policy_loss(settings, **inputs)


@register_policy_loss("grpo")
def grpo_policy_loss(settings: LossSettings, **inputs) -> tuple[jax.Array, jax.Array, dict]:
    """GRPO: `policy_loss` with anchor off (anchor inputs, if any, are ignored)."""
    for key in ("anchor_logp", "anchor_mask", "anchor_advantage", "anchor_weight"):
        inputs.pop(key, None)
    return policy_loss(settings.replace(anchor="off"), **inputs)
