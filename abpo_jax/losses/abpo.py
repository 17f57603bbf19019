"""The ABPO objective (DESIGN.md "ABPO objective", revised 2026-12-01 and 2026-12-04) as small
pure functions.

Per prompt x: G rollouts o_1..o_G ~ pi_old and the anchor o_0 = the logged completion of the
exposed item a, with outcome y (1 positive, 0 no response) and logged propensity p. Every symbol
below is a `config.loss` field (defaults and allowed values live in `abpo_jax/config.py` only).

Rewards: one function for every group member, the anchor included (`rewards`):

    R(o) = sum_{s in rewards} R_s(o),  s in {format, outcome, ground_truth, simulator}
    format       1 for a well-formed completion (constant in item mode, so it cancels)
    outcome      u(y) for o naming the logged item a (the anchor; rollouts that draw a):
                   u = r+                if y = 1          (positive_reward)
                   u = -lambda           if y = 0          (negative_scale; untempered)
                 (`tempering_on=reward`, the 2026-12-01 reading kept as an ablation:
                  u = -lambda g(c) if y = 0, tempered before the baseline)
                 for o naming another item (no outcome observed), `unobserved_reward`:
                   zero         0
                   snips_value  V = sum_j w_j u_j / sum_j w_j over the global batch, the SNIPS
                                estimate of pi_old's outcome (an unobserved item counts as average;
                                u untempered under tempering_on=advantage)
    ground_truth 1[o names the held-out next item] (offline oracle)
    simulator    simulated click probability of o's item (oracle studies)
  `anchor_rewards=outcome` gives the anchor the outcome source only (the pre-revision
  behaviour, kept as an ablation switch).

Self-certainty (Kang et al. 2025): SC_t = logsumexp(z_t) - mean(z_t) over the full vocabulary,
averaged over the item-id tokens or the whole completion (`certainty_tokens`); the anchor's c in
[0, 1] by `certainty_norm`:
    batch    (SC - min_B SC) / (max_B SC - min_B SC + 1e-4) over the global batch
    round    empirical CDF of SC over the anchors of the round's log under pi_{k-1},
             computed once at deployment (stable for small batches)
    running  min-max with the extremes seen so far

Advantages over the members M (anchor off: {1..G}; baseline_only and full: {0..G}):
    A_i = R_i - mean_M R                   (std = none, as Dr.GRPO and the authors' sibling code)
    A_i = (R_i - mean_M R) / (std_M + eps) (std = population | bessel)
    A_i = R_i - lambda_b                   (advantage_baseline = constant: BanditNet's baseline)
  A group whose rewards are all equal gets A = 0 exactly (not a float mean's rounding error).

Tempering (`tempering_on=advantage`, after centring): for every member whose observed outcome is
a no-response (the anchor when y = 0, and rollouts naming the logged item)
    A_i <- g(c) A_i   if A_i < 0,   g in {one, one_minus_c, c, threshold: 1[c < tau]}
so a penalty shrinks toward 0 as the no-response becomes less reliable and is never turned into
a reward.

SNIPS (`importance_ratio=log`): log w = log pi_old(a|x) - log p (log p as logged, never a
floored probability); w~ = clip(exp(log w - log mean_B w), 0, w_max), the batch mean taken with
logsumexp over the global batch (ones when snips off); detached. `importance_ratio=floored` is
the pre-2026-12-04 w = pi_old / max(p, 1e-6) (text-mode p fell below the floor).

Loss, rho_it = pi_theta(o_it) / pi_old(o_it):

    L = -[ sum_{i>=1} sum_t min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
           + 1[anchor = full] w~ A_0 sum_t log pi_theta(o_0,t) ] / N
        + beta * sum_{i>=1} sum_t KL_it / N_roll

    KL_it = k3 (exp(d) - d - 1, d = log pi_ref - log pi_theta) or k1 (-d) on rollout tokens
    only: the estimators assume samples from pi_theta, and the off-policy anchor must not
    dilute beta (`kl_tokens = all` divides by N instead: the pre-revision behaviour).
    N: rollout + anchor tokens (aggregation token_mean), sequences (sequence_mean, each
    sequence's token sum divided by its length), or sequences * max_completion_length
    (constant); N_roll the same over the rollouts.

Invariants (tests/losses/): anchor off with g = one is GRPO and equals TRL's `GRPOTrainer`
loss; anchor full, snips off, g = one is MiniOneRec's unweighted `add_gt` anchor.

Counterfactual baselines (methods of `config.methods`): `banditnet` is the anchor alone
(num_generations 0) with the outcome source only, advantage_baseline constant, snips on:
L = -sum_b w~_b (y_b - lambda_b) log pi_theta(a_b|x_b) / N (Joachims, Swaminathan & de Rijke
2018); `ips_sft` is SFT on clicked exposures weighted by w~ (:func:`sft_weights`).

Item mode: a member's "tokens" are one action with log pi~(c | x) (T = 1). Everything here is
jax.numpy, imports nothing of the package, and returns exactly accumulable pieces: pass the
global denominators (`loss_denominators`) to each micro-batch and sum the results.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

NORM_EPS = 1e-4            # min-max normalisation: (SC - min) / (max - min + NORM_EPS)
PROPENSITY_FLOOR = 1e-6    # w = pi_old / max(p, floor)
# Log-ratios beyond this are clamped before exp: exp(20) ~ 5e8 is far outside any clip range,
# and an overflowing exp would turn a masked-out branch's zero cotangent into NaN.
MAX_LOG_RATIO = 20.0


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """`config.loss` as a frozen (hashable, jit-static) dataclass; see the module docstring.

    No defaults here: `config.py` declares each one once (`LossSettings.from_config`).
    """

    num_generations: int
    anchor: str
    snips: str
    snips_clip: float
    tempering: str
    tempering_threshold: float
    tempering_on: str
    positive_reward: float
    negative_scale: float
    unobserved_reward: str
    anchor_rewards: str
    importance_ratio: str
    advantage_baseline: str
    baseline_value: float
    text_logprobs: str
    certainty_tokens: str
    certainty_norm: str
    std: str
    eps: float
    epsilon_low: float
    epsilon_high: float
    beta: float
    kl_estimator: str
    kl_tokens: str
    kl_ratio_correction: bool
    aggregation: str
    max_completion_length: int
    rewards: tuple[str, ...]

    def __post_init__(self) -> None:
        # ml_collections hands tuples back as lists after some overrides; keep it hashable.
        object.__setattr__(self, "rewards", tuple(self.rewards))

    @classmethod
    def from_config(cls, loss: Mapping[str, Any]) -> "LossSettings":
        """From `config.loss` (a ConfigDict or dict; already validated by `config.validate`)."""
        return cls(**{f.name: loss[f.name] for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> "LossSettings":
        """A copy with `changes` applied (a method's overrides)."""
        return dataclasses.replace(self, **changes)


# --- masked reductions ------------------------------------------------------------------------


def _mask(mask: Optional[jax.Array], like: jax.Array) -> jax.Array:
    if mask is None:
        return jnp.ones(jnp.shape(like), jnp.float32)
    return jnp.broadcast_to(mask, jnp.shape(like)).astype(jnp.float32)


def masked_mean(x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """sum(x m) / max(sum(m), 1) over all entries (global under jit); 0 when all masked."""
    m = _mask(mask, x)
    return jnp.sum(jnp.where(m > 0, x, 0.0) * m) / jnp.maximum(jnp.sum(m), 1.0)


# --- self-certainty ------------------------------------------------------------------------


def token_self_certainty(logits: jax.Array) -> jax.Array:
    """SC_t = logsumexp_v z_tv - mean_v z_tv (full vocabulary, float32): [..., V] -> [...].

    Equals KL(uniform || softmax(z)) + log V, so >= log V; the constant cancels in every
    normalisation below.
    """
    z = jnp.asarray(logits, jnp.float32)
    return jax.nn.logsumexp(z, axis=-1) - jnp.mean(z, axis=-1)


def sequence_self_certainty(token_sc: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean of per-token SC over the last axis ([..., T] -> [...]); 0 with no token."""
    m = _mask(mask, token_sc)
    total = jnp.sum(jnp.where(m > 0, token_sc, 0.0) * m, axis=-1)
    return total / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


def _min_max_scale(x: jax.Array, lo: jax.Array, hi: jax.Array, m: jax.Array) -> jax.Array:
    """(x - lo) / (hi - lo + 1e-4) clipped to [0, 1]; 0 where masked or without statistics."""
    valid = jnp.isfinite(lo) & jnp.isfinite(hi) & (m > 0)
    lo, hi = jnp.where(jnp.isfinite(lo), lo, 0.0), jnp.where(jnp.isfinite(hi), hi, 0.0)
    return jnp.where(valid, jnp.clip((x - lo) / (hi - lo + NORM_EPS), 0.0, 1.0), 0.0)


def _masked_extremes(x: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.min(jnp.where(m > 0, x, jnp.inf)), jnp.max(jnp.where(m > 0, x, -jnp.inf))


def normalize_certainty_batch(sc: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """c = (SC - min) / (max - min + 1e-4), extremes over the unmasked global batch."""
    sc = jnp.asarray(sc, jnp.float32)
    m = _mask(mask, sc)
    return jax.lax.stop_gradient(_min_max_scale(sc, *_masked_extremes(sc, m), m))


class CertaintyStats(NamedTuple):
    """Running extremes of self-certainty (the `certainty_norm=running` state)."""

    min: jax.Array
    max: jax.Array
    count: jax.Array

    @classmethod
    def init(cls) -> "CertaintyStats":
        return cls(jnp.float32(jnp.inf), jnp.float32(-jnp.inf), jnp.float32(0.0))


def normalize_certainty_running(sc: jax.Array, stats: CertaintyStats,
                                mask: Optional[jax.Array] = None
                                ) -> tuple[jax.Array, CertaintyStats]:
    """Min-max with running extremes: stats' = (min(stats.min, min_B), max(.., max_B),
    count + n); c = (SC - min') / (max' - min' + 1e-4). Returns (c, stats')."""
    sc = jnp.asarray(sc, jnp.float32)
    m = _mask(mask, sc)
    lo, hi = _masked_extremes(sc, m)
    new = CertaintyStats(jnp.minimum(stats.min, lo), jnp.maximum(stats.max, hi),
                         stats.count + jnp.sum(m))
    return jax.lax.stop_gradient(_min_max_scale(sc, new.min, new.max, m)), new


def certainty_quantiles(sc: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`certainty_norm=round`: c = #{r in reference: r <= sc} / |reference|, the empirical CDF
    of the round's anchor self-certainties (host side, once per round): [N] -> [N] in [0, 1]."""
    ref = np.sort(np.asarray(reference, np.float64))
    ranks = np.searchsorted(ref, np.asarray(sc, np.float64), side="right")
    return (ranks / max(len(ref), 1)).astype(np.float32)


# --- rewards -------------------------------------------------------------------------------

TEMPERINGS: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "one": lambda c, tau: jnp.ones_like(c),              # every no-response in full
    "one_minus_c": lambda c, tau: 1.0 - c,               # a confident model: likely external
    "c": lambda c, tau: c,                                # the opposite reading (ablation)
    "threshold": lambda c, tau: (c < tau).astype(jnp.float32),  # hard 1 - c
}


def no_response_tempering(settings: LossSettings, outcome: jax.Array, certainty: jax.Array
                          ) -> jax.Array:
    """g(c) for a no-response (y = 0), 1 for a positive: [B] in [0, 1]. Detached."""
    c = jnp.asarray(certainty, jnp.float32)
    g = TEMPERINGS[settings.tempering](c, settings.tempering_threshold)
    return jax.lax.stop_gradient(jnp.where(jnp.asarray(outcome) > 0, 1.0, g).astype(jnp.float32))


def outcome_value(settings: LossSettings, outcome: jax.Array, certainty: jax.Array
                  ) -> jax.Array:
    """u(y) = r+ if y = 1 else -lambda (tempering_on=advantage: the penalty is tempered after
    centring), or -lambda g(c) (tempering_on=reward); outcome [B] in {0, 1}, c [B] in [0, 1]."""
    positive = jnp.asarray(outcome) > 0
    scale = (no_response_tempering(settings, outcome, certainty)
             if settings.tempering_on == "reward" else 1.0)
    u = jnp.where(positive, settings.positive_reward, -settings.negative_scale * scale)
    return jax.lax.stop_gradient(u.astype(jnp.float32))


def temper_advantages(advantages: jax.Array, observed: jax.Array, temper: jax.Array
                      ) -> jax.Array:
    """A <- t A where an observed member's A < 0 (`tempering_on=advantage`), else A.

    advantages [..., M]; observed [..., M] bool: the member names the logged item (so carries
    its outcome); temper [...] per row, :func:`no_response_tempering` (g(c) when y = 0, 1 when
    y = 1). With t in [0, 1] a penalty only shrinks toward 0: its sign never flips.
    """
    adv = jnp.asarray(advantages, jnp.float32)
    scaled = jnp.asarray(temper, jnp.float32)[..., None] * adv
    return jax.lax.stop_gradient(jnp.where(jnp.asarray(observed, bool) & (adv < 0),
                                           scaled, adv))


def importance_weights(target_prob: jax.Array, propensity: jax.Array,
                       mask: Optional[jax.Array] = None) -> jax.Array:
    """w = pi_old(a|x) / max(p, 1e-6); 0 on masked rows. Detached (`importance_ratio=floored`,
    the pre-2026-12-04 reading; :func:`log_importance_weights` is the default)."""
    target_prob = jnp.asarray(target_prob, jnp.float32)
    m = _mask(mask, target_prob)
    p = jnp.maximum(jnp.asarray(propensity, jnp.float32), PROPENSITY_FLOOR)
    return jax.lax.stop_gradient(jnp.where(m > 0, target_prob / jnp.where(m > 0, p, 1.0), 0.0))


def log_importance_weights(target_logp: jax.Array, log_propensity: jax.Array,
                           mask: Optional[jax.Array] = None) -> jax.Array:
    """log w = log pi_old(a|x) - log p: a ratio of log-probabilities, finite however small p is
    (a whole text completion's p is routinely < 1e-10). -inf on masked rows. Detached.

    log p comes from the log in float64; the difference is taken in float32 (the loss's dtype):
    an absolute error of ~1e-5 nats at |log p| ~ 200, a relative error of 1e-5 in w.
    """
    lq = jnp.asarray(target_logp, jnp.float32)
    m = _mask(mask, lq)
    lp = jnp.asarray(log_propensity, jnp.float32)
    return jax.lax.stop_gradient(jnp.where(m > 0, lq - jnp.where(m > 0, lp, 0.0), -jnp.inf))


def log_mean_weight(log_w: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """log mean_B w = logsumexp_B(log w) - log |B| over the unmasked global batch (-inf when
    no row is unmasked). Never forms w itself, so nothing under- or overflows."""
    m = _mask(mask, log_w)
    lw = jnp.where(m > 0, log_w, -jnp.inf)
    n = jnp.sum(m)
    top = jnp.max(lw)
    safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.sum(jnp.where(m > 0, jnp.exp(lw - safe_top), 0.0))
    return jnp.where((n > 0) & (total > 0),
                     safe_top + jnp.log(jnp.where(total > 0, total, 1.0))
                     - jnp.log(jnp.maximum(n, 1.0)), -jnp.inf)


def log_snips_weights(log_w: jax.Array, mask: Optional[jax.Array] = None, *, clip: float
                      ) -> jax.Array:
    """w~ = clip(exp(log w - log mean_B w), 0, w_max) * m: :func:`snips_weights` in log space
    (all-equal log w gives ones). Detached."""
    m = _mask(mask, log_w)
    mean = log_mean_weight(log_w, m)
    ok = jnp.isfinite(mean) & (m > 0)
    rel = jnp.where(ok, log_w - jnp.where(jnp.isfinite(mean), mean, 0.0), -jnp.inf)
    # exp of a log-ratio above log(w_max) is clipped anyway: clamp first so nothing overflows
    w_tilde = jnp.exp(jnp.minimum(rel, float(np.log(clip))))
    return jax.lax.stop_gradient(jnp.where(ok, jnp.clip(w_tilde, 0.0, clip), 0.0) * m)


def log_snips_value(log_w: jax.Array, u: jax.Array, mask: Optional[jax.Array] = None
                    ) -> jax.Array:
    """V = sum_j w_j u_j / sum_j w_j with the weights self-normalised in log space (0 without
    weight)."""
    m = _mask(mask, log_w)
    mean = log_mean_weight(log_w, m)
    share = jnp.where((m > 0) & jnp.isfinite(mean),
                      jnp.exp(log_w - jnp.where(jnp.isfinite(mean), mean, 0.0)), 0.0)
    return snips_value(share, u, m)


def snips_weights(w: jax.Array, mask: Optional[jax.Array] = None, *, clip: float) -> jax.Array:
    """w~ = clip(w / mean_B w, 0, w_max) * m (mean over the unmasked global batch); all-equal w
    gives ones; w all 0 gives 0."""
    m = _mask(mask, w)
    mean_w = masked_mean(w, m)
    w_tilde = jnp.where(mean_w > 0, w / jnp.where(mean_w > 0, mean_w, 1.0), 0.0)
    return jax.lax.stop_gradient(jnp.clip(w_tilde, 0.0, clip) * m)


def snips_value(w: jax.Array, u: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """V = sum_j w_j u_j / sum_j w_j (0 without weight): the SNIPS estimate of pi_old's u."""
    m = _mask(mask, w)
    den = jnp.sum(w * m)
    return jax.lax.stop_gradient(jnp.where(den > 0, jnp.sum(w * u * m) / jnp.where(
        den > 0, den, 1.0), 0.0))


def sft_weights(settings: LossSettings, *, outcome: jax.Array, target_logp: jax.Array,
                log_propensity: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-row SFT weights for SFT on clicked exposures: y w~ with snips on (`ips_sft`), y with
    snips off (`sft_positive`); w~ over the whole global batch (every exposure, clicked or not)
    as in :func:`anchor_terms`. [B], detached.

    The SFT step takes s as its row weights: -sum_b s_b log pi_theta(a_b|x_b) / sum_b s_b |a_b|,
    a w~-weighted mean over the clicked exposures; with snips off, `sft_positive`'s loss.
    """
    m = jnp.asarray(mask, jnp.float32)
    y = (jnp.asarray(outcome) > 0).astype(jnp.float32) * m
    if settings.snips != "on":
        return y
    if settings.importance_ratio == "floored":
        w = importance_weights(jnp.exp(target_logp), jnp.exp(log_propensity), m)
        return jax.lax.stop_gradient(y * snips_weights(w, m, clip=settings.snips_clip))
    log_w = log_importance_weights(target_logp, log_propensity, m)
    return jax.lax.stop_gradient(y * log_snips_weights(log_w, m, clip=settings.snips_clip))


def member_rewards(settings: LossSettings, *, names_logged: jax.Array, u: jax.Array,
                   unobserved: jax.Array, is_target: Optional[jax.Array] = None,
                   sim_reward: Optional[jax.Array] = None,
                   format_reward: Optional[jax.Array] = None) -> jax.Array:
    """R [B, M] for the members of each group, member 0 the anchor.

    names_logged [B, M] bool: the member names the logged item (always true for the anchor);
    u [B]: its outcome value; unobserved: the outcome source's value for any other item
    (scalar or [B]); is_target [B, M] bool (ground_truth); sim_reward [B, M] (simulator);
    format_reward [B, M] (text mode with free text; 1 for every member otherwise).
    """
    names_logged = jnp.asarray(names_logged, bool)
    zeros = jnp.zeros(names_logged.shape, jnp.float32)
    sources = {
        "format": zeros + 1.0 if format_reward is None else jnp.asarray(format_reward,
                                                                        jnp.float32),
        "outcome": jnp.where(names_logged, jnp.asarray(u, jnp.float32)[..., None],
                             jnp.broadcast_to(jnp.asarray(unobserved, jnp.float32)[..., None]
                                              if jnp.ndim(unobserved) else unobserved,
                                              names_logged.shape)),
        "ground_truth": zeros if is_target is None else jnp.asarray(is_target, jnp.float32),
        "simulator": zeros if sim_reward is None else jnp.asarray(sim_reward, jnp.float32),
    }
    total = sum((sources[s] for s in settings.rewards), zeros)
    if settings.anchor_rewards == "outcome":  # ablation: the anchor gets the outcome only
        anchor = sources["outcome"][..., 0] if "outcome" in settings.rewards else zeros[..., 0]
        total = total.at[..., 0].set(anchor)
    return jax.lax.stop_gradient(total)


# --- advantages --------------------------------------------------------------------------


def group_advantages(rewards: jax.Array, mask: Optional[jax.Array] = None, *, std: str,
                     eps: float) -> jax.Array:
    """A_i = m_i (R_i - mu) [/ (sigma + eps)] over the last axis (the group's members).

    mu, sigma over the unmasked members; sigma with ddof 0 (population) or 1 (bessel); std none
    leaves A centred only. Masked members get 0; a group whose unmasked rewards are all equal
    gets exactly 0 (a float mean of equal values can round away from them, and z-scoring would
    blow the rounding error up to ~1e-3); never NaN. Detached.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    m = _mask(mask, rewards)
    rewards = jnp.where(m > 0, rewards, 0.0)  # padded members may hold NaN
    n = jnp.sum(m, axis=-1, keepdims=True)
    mean = jnp.sum(rewards * m, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    lo, hi = (jnp.min(jnp.where(m > 0, rewards, jnp.inf), axis=-1, keepdims=True),
              jnp.max(jnp.where(m > 0, rewards, -jnp.inf), axis=-1, keepdims=True))
    # Tied groups are zeroed by a test, not by centring on a member: the other groups' values
    # stay bit-identical to the plain mean-centred ones (and a NaN reward still poisons its
    # group, so the step is skipped, not silently zeroed).
    centred = jnp.where(hi == lo, 0.0, rewards - mean)
    if std != "none":
        ddof = 1 if std == "bessel" else 0
        sq = jnp.sum(jnp.square(centred) * m, axis=-1, keepdims=True)
        var = jnp.where(n > ddof, sq / jnp.maximum(n - ddof, 1.0), 0.0)
        sigma = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
        centred = centred / (sigma + eps)
    return jax.lax.stop_gradient(centred * m)


def anchored_advantages(settings: LossSettings, rewards: jax.Array, mask: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """(rollout advantages [B, G], anchor advantage [B]) from member rewards/mask [B, G+1].

    anchor off: statistics over the G rollouts; baseline_only: over G+1, no anchor term;
    full: over G+1 and A_0 for the anchor term. advantage_baseline=constant: A_i = R_i -
    lambda_b for every member (no group statistics; BanditNet).
    """
    if settings.advantage_baseline == "constant":
        m = jnp.asarray(mask, jnp.float32)
        adv = jax.lax.stop_gradient(jnp.where(
            m > 0, jnp.asarray(rewards, jnp.float32) - settings.baseline_value, 0.0))
        keep = settings.anchor == "full"
        return adv[..., 1:], adv[..., 0] if keep else jnp.zeros_like(adv[..., 0])
    if settings.anchor == "off":
        adv = group_advantages(rewards[..., 1:], mask[..., 1:], std=settings.std,
                               eps=settings.eps)
        return adv, jnp.zeros(adv.shape[:-1], jnp.float32)
    adv = group_advantages(rewards, mask, std=settings.std, eps=settings.eps)
    anchor_adv = adv[..., 0] if settings.anchor == "full" else jnp.zeros_like(adv[..., 0])
    return adv[..., 1:], anchor_adv


def member_advantages(settings: LossSettings, rewards: jax.Array, mask: jax.Array,
                      names_logged: jax.Array, temper: Optional[jax.Array]
                      ) -> tuple[jax.Array, jax.Array]:
    """(rollout advantages [B, G], anchor advantage [B]): :func:`anchored_advantages`, then,
    with tempering_on=advantage, :func:`temper_advantages` on the members naming the logged
    item (names_logged [B, G+1]; temper [B] from :func:`anchor_terms`)."""
    roll_adv, anchor_adv = anchored_advantages(settings, rewards, mask)
    if settings.tempering_on != "advantage":
        return roll_adv, anchor_adv
    if temper is None:
        raise ValueError("loss.tempering_on='advantage' needs AnchorTerms.temper (build the "
                         "terms with anchor_terms and take rows with AnchorTerms.rows)")
    # Members naming the logged item carry its observed outcome; temper is g(c) on
    # no-response rows and 1 on positive rows, so only no-responses are tempered.
    adv = temper_advantages(jnp.concatenate([anchor_adv[..., None], roll_adv], axis=-1),
                            names_logged, temper)
    return adv[..., 1:], adv[..., 0]


# --- the policy loss ---------------------------------------------------------------------


def kl_per_token(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) on samples of pi_theta: k1 = -d, k3 = e^d - d - 1,
    d = log pi_ref - log pi_theta (TRL / Schulman)."""
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    return jnp.exp(jnp.clip(d, -MAX_LOG_RATIO, MAX_LOG_RATIO)) - d - 1.0


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
    masked = per_token * mask
    if aggregation == "sequence_mean":
        return jnp.sum(jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
    return jnp.sum(masked)


def _count(mask: jax.Array, settings: LossSettings) -> jax.Array:
    """Normaliser of sequences [..., T]: tokens | sequences | sequences * max length."""
    if settings.aggregation == "token_mean":
        return jnp.sum(mask)
    sequences = jnp.sum(jnp.any(mask > 0, axis=-1).astype(jnp.float32))
    if settings.aggregation == "sequence_mean":
        return sequences
    return sequences * float(settings.max_completion_length)


class Denominators(NamedTuple):
    """N (rollouts + anchor when its term is on) and the KL normaliser, global over the batch."""

    policy: jax.Array
    kl: jax.Array


def loss_denominators(settings: LossSettings, rollout_mask: jax.Array,
                      anchor_mask: jax.Array) -> Denominators:
    """The global N and N_roll (or N for kl_tokens=all) from the masks of the whole batch;
    rollout_mask [..., G, T], anchor_mask [..., T]."""
    roll = _count(jnp.asarray(rollout_mask, jnp.float32), settings)
    n = roll
    if settings.anchor == "full":
        n = n + _count(jnp.asarray(anchor_mask, jnp.float32), settings)
    kl = roll if settings.kl_tokens == "rollouts" else n
    return Denominators(jnp.maximum(n, 1e-8), jnp.maximum(kl, 1e-8))


def policy_loss(settings: LossSettings, *, logp: jax.Array, old_logp: jax.Array,
                mask: jax.Array, advantages: jax.Array, ref_logp: Optional[jax.Array] = None,
                anchor_logp: Optional[jax.Array] = None,
                anchor_mask: Optional[jax.Array] = None,
                anchor_advantage: Optional[jax.Array] = None,
                anchor_weight: Optional[jax.Array] = None,
                denominators: Optional[Denominators] = None,
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L of the module docstring for one (micro-)batch; returns (loss, metrics).

    Rollouts logp/old_logp/ref_logp/mask [B, G, T], advantages [B, G]; anchor_logp/anchor_mask
    [B, Ta], anchor_advantage/anchor_weight [B]. With `denominators` from the whole batch the
    micro-batch losses (and gradients) sum to the global one; without, this batch's own.
    Metric sums over micro-batches need dividing by their count.
    """
    m = _mask(mask, logp)
    # Masked positions may hold garbage (-inf, NaN): zero them before any exp. The loss runs in
    # float32 whatever the compute dtype (bf16 ratios near 1 are too coarse to clip).
    logp = jnp.where(m > 0, logp.astype(jnp.float32), 0.0)
    old_logp = jnp.where(m > 0, jax.lax.stop_gradient(old_logp).astype(jnp.float32), 0.0)
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[..., None]
    am = None
    if settings.anchor == "full":
        if anchor_logp is None or anchor_advantage is None:
            raise ValueError("loss.anchor='full' needs anchor_logp and anchor_advantage")
        am = _mask(anchor_mask, anchor_logp)
    if denominators is None:
        denominators = loss_denominators(settings, m, am if am is not None else m[..., 0, :])

    ratio = jnp.exp(jnp.clip(logp - old_logp, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    clipped = jnp.clip(ratio, 1.0 - settings.epsilon_low, 1.0 + settings.epsilon_high)
    pg_sum = _aggregate(-jnp.minimum(ratio * adv, clipped * adv), m, settings.aggregation)
    kl = jnp.zeros_like(ratio)
    if settings.beta != 0.0:
        if ref_logp is None:
            raise ValueError(f"loss.beta={settings.beta} needs ref_logp")
        kl = kl_per_token(logp, jnp.where(m > 0, jax.lax.stop_gradient(ref_logp), 0.0),
                          settings.kl_estimator)
        if settings.kl_ratio_correction:  # TRL use_bias_correction_kl
            kl = kl * ratio
    kl_sum = _aggregate(kl, m, settings.aggregation)

    is_clipped = (((ratio < 1.0 - settings.epsilon_low) & (adv < 0))
                  | ((ratio > 1.0 + settings.epsilon_high) & (adv > 0)))
    seq_valid = jnp.any(m > 0, axis=-1).astype(jnp.float32)
    metrics = {  # fixed keys whatever the settings: a jitted step returns one pytree
        "clip_fraction": masked_mean(is_clipped.astype(jnp.float32), m),
        "kl": masked_mean(kl, m),
        "mean_advantage": masked_mean(adv[..., 0], seq_valid),
        "mean_weight": jnp.float32(0.0),
        "anchor_advantage": jnp.float32(0.0),
    }
    if am is not None:
        a_logp = jnp.where(am > 0, anchor_logp.astype(jnp.float32), 0.0)
        a_adv = jax.lax.stop_gradient(jnp.asarray(anchor_advantage, jnp.float32))
        weight = (jnp.ones_like(a_adv) if anchor_weight is None
                  else jax.lax.stop_gradient(jnp.asarray(anchor_weight, jnp.float32)))
        pg_sum = pg_sum + _aggregate(-(weight * a_adv)[..., None] * a_logp, am,
                                     settings.aggregation)
        a_valid = jnp.any(am > 0, axis=-1).astype(jnp.float32)
        metrics["mean_weight"] = masked_mean(weight, a_valid)
        metrics["anchor_advantage"] = masked_mean(a_adv, a_valid)
    loss = pg_sum / denominators.policy + settings.beta * kl_sum / denominators.kl
    return loss, metrics


# --- one group batch, end to end -------------------------------------------------------------


class AnchorTerms(NamedTuple):
    """Per-row anchor quantities, all detached: c in [0, 1], u(y, c), w (raw), w~, V, and the
    advantage tempering g(c) of a no-response (1 for a positive; tempering_on=advantage)."""

    certainty: jax.Array
    outcome_value: jax.Array
    weight: jax.Array
    snips_weight: jax.Array
    unobserved: jax.Array
    stats: Optional[CertaintyStats]
    temper: Optional[jax.Array] = None

    def rows(self, take: Callable[[jax.Array], jax.Array]) -> "AnchorTerms":
        """The per-row fields through `take` (e.g. one micro-batch's rows); V is global and
        the running stats stay with the whole batch."""
        return self._replace(certainty=take(self.certainty),
                             outcome_value=take(self.outcome_value), weight=take(self.weight),
                             snips_weight=take(self.snips_weight), stats=None,
                             temper=None if self.temper is None else take(self.temper))


# exp(log w) beyond this is reported clamped (w is a diagnostic; w~ and V never form it)
MAX_LOG_WEIGHT = 80.0


def _log_or(log_value: Optional[jax.Array], value: Optional[jax.Array], name: str
            ) -> jax.Array:
    if log_value is not None:
        return jnp.asarray(log_value, jnp.float32)
    if value is None:
        raise ValueError(f"anchor_terms needs log_{name} (or {name})")
    return jnp.log(jnp.asarray(value, jnp.float32))


def anchor_terms(settings: LossSettings, *, outcome: jax.Array, self_certainty: jax.Array,
                 mask: jax.Array, target_prob: Optional[jax.Array] = None,
                 propensity: Optional[jax.Array] = None,
                 target_logp: Optional[jax.Array] = None,
                 log_propensity: Optional[jax.Array] = None,
                 round_certainty: Optional[jax.Array] = None,
                 stats: Optional[CertaintyStats] = None) -> AnchorTerms:
    """The whole-batch anchor quantities (exact under gradient accumulation: compute them once
    over the global batch). self_certainty: raw SC of the anchor under pi_old [B];
    target_logp: log pi_old(a|x) (or target_prob), log_propensity: the logged log p (or
    propensity) [B]; round_certainty: c from the round's log (certainty_norm=round); stats:
    running state."""
    m = jnp.asarray(mask, jnp.float32)
    if settings.certainty_norm == "round":
        if round_certainty is None:
            raise ValueError("loss.certainty_norm='round' needs the round's anchor quantiles")
        c = jnp.asarray(round_certainty, jnp.float32) * m
    elif settings.certainty_norm == "running":
        c, stats = normalize_certainty_running(
            self_certainty, CertaintyStats.init() if stats is None else stats, m)
    else:
        c = normalize_certainty_batch(self_certainty, m)
    u = outcome_value(settings, outcome, c) * m
    temper = (no_response_tempering(settings, outcome, c) if settings.tempering_on == "advantage"
              else jnp.ones_like(m))
    if settings.importance_ratio == "floored":
        w = importance_weights(jnp.exp(_log_or(target_logp, target_prob, "target_prob"))
                               if target_prob is None else target_prob,
                               jnp.exp(_log_or(log_propensity, propensity, "propensity"))
                               if propensity is None else propensity, m)
        w_tilde = snips_weights(w, m, clip=settings.snips_clip)
        v = snips_value(w, u, m)
    else:
        log_w = log_importance_weights(_log_or(target_logp, target_prob, "target_prob"),
                                       _log_or(log_propensity, propensity, "propensity"), m)
        w = jnp.where(m > 0, jnp.exp(jnp.minimum(log_w, MAX_LOG_WEIGHT)), 0.0)
        w_tilde = log_snips_weights(log_w, m, clip=settings.snips_clip)
        v = log_snips_value(log_w, u, m)
    if settings.snips != "on":
        w_tilde = m
    if settings.unobserved_reward != "snips_value":
        v = jnp.float32(0.0)
    return AnchorTerms(c, u, w, w_tilde, v, stats, temper)


def group_loss(settings: LossSettings, *, logp: jax.Array, old_logp: jax.Array,
               ref_logp: jax.Array, mask: jax.Array, members: jax.Array, terms: AnchorTerms,
               valid: jax.Array, target: Optional[jax.Array] = None,
               sim_reward: Optional[jax.Array] = None,
               format_reward: Optional[jax.Array] = None,
               denominators: Optional[Denominators] = None,
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective for groups of M = G+1 members with per-token log-probs (both modes).

    logp / old_logp / ref_logp / mask [B, M, T]: per-token log-probs of each member under the
    trained, old and reference policies, member 0 the anchor (the logged completion) and 1..G
    the rollouts; members [B, M] the item each member names (candidate index or item id);
    terms from :func:`anchor_terms` over the global batch; valid [B] (0 = padding row);
    target [B] the held-out item (-1 unknown); sim_reward [B, M] each member's simulated click
    probability; format_reward [B, M].
    """
    valid = jnp.asarray(valid, jnp.float32)
    member_mask = jnp.broadcast_to(valid[:, None], members.shape)
    names_logged = members == members[:, :1]
    rewards = member_rewards(
        settings, names_logged=names_logged, u=terms.outcome_value,
        unobserved=terms.unobserved,
        is_target=None if target is None else members == target[:, None],
        sim_reward=sim_reward, format_reward=format_reward)
    roll_adv, anchor_adv = member_advantages(settings, rewards, member_mask, names_logged,
                                             terms.temper)
    mask = jnp.asarray(mask, jnp.float32) * valid[:, None, None]
    loss, metrics = policy_loss(
        settings, logp=logp[:, 1:], old_logp=old_logp[:, 1:], ref_logp=ref_logp[:, 1:],
        mask=mask[:, 1:], advantages=roll_adv, anchor_logp=logp[:, 0],
        anchor_mask=mask[:, 0], anchor_advantage=anchor_adv,
        anchor_weight=terms.snips_weight, denominators=denominators)
    metrics.update(reward=masked_mean(rewards[:, 1:], member_mask[:, 1:]),
                   anchor_reward=masked_mean(rewards[:, 0], valid),
                   mean_certainty=masked_mean(terms.certainty, valid),
                   unobserved_value=jnp.asarray(terms.unobserved, jnp.float32))
    return loss, metrics


def item_mode_loss(settings: LossSettings, *, logp: jax.Array, old_logp: jax.Array,
                   ref_logp: jax.Array, members: jax.Array, terms: AnchorTerms,
                   valid: jax.Array, target: Optional[jax.Array] = None,
                   sim_reward: Optional[jax.Array] = None,
                   denominators: Optional[Denominators] = None,
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective for item mode, where a member is one action of pi~ over the candidates
    (one "token": log pi~ of its candidate).

    logp / old_logp / ref_logp [B, C]: log pi~ of the trained, old and reference policies;
    members [B, G+1] candidate indices, member 0 the logged item (the anchor) and 1..G the
    rollouts; terms from :func:`anchor_terms` over the global batch; valid [B] (0 = padding
    row); target [B] the held-out item's index (-1 unknown); sim_reward [B, C].
    """
    take = lambda x: jnp.take_along_axis(x, members, axis=-1)  # noqa: E731  [B, C] -> [B, G+1]
    return group_loss(
        settings, logp=take(logp)[..., None], old_logp=take(old_logp)[..., None],
        ref_logp=take(ref_logp)[..., None], mask=jnp.ones(members.shape + (1,), jnp.float32),
        members=members, terms=terms, valid=valid, target=target,
        sim_reward=None if sim_reward is None else take(sim_reward),
        denominators=denominators)
