"""Ranking, catalogue and exposure-bias metrics: pure functions of arrays (jit-safe jax.numpy).

Ranking convention: candidates are ordered by score, highest first; **ties are broken by
candidate index** (the lower index ranks first), the order a stable descending sort and
``jax.lax.top_k`` give. Because the target's position in a candidate list is shuffled, a model
that scores every candidate equally ranks the target uniformly at random, i.e. HR@k = k/C in
expectation. NaN scores rank below every number.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import Array
from jax.scipy.special import rel_entr
from jax.typing import ArrayLike


def rank_of_target(scores: ArrayLike, target_index: ArrayLike) -> Array:
    """1-based rank of the target in each row: 1 + #{c: s_c > s_t} + #{c < t: s_c == s_t}.

    scores [N, C], target_index [N] in [0, C) -> int32 [N].
    """
    scores = jnp.asarray(scores)
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    target_index = jnp.asarray(target_index)
    target = jnp.take_along_axis(scores, target_index[:, None], axis=1)
    position = jnp.arange(scores.shape[1])[None, :]
    ahead = (scores > target) | ((scores == target) & (position < target_index[:, None]))
    return 1 + ahead.sum(axis=1).astype(jnp.int32)


def hit_rate_at_k(ranks: ArrayLike, k: int) -> Array:
    """HR@k = mean_n [rank_n <= k]."""
    return jnp.mean(jnp.asarray(ranks) <= k)


def ndcg_at_k(ranks: ArrayLike, k: int) -> Array:
    """NDCG@k with one relevant item = mean_n [rank_n <= k] / log2(rank_n + 1) (as MiniOneRec
    ``calc.py``: 1/ln(i+2) / (1/ln 2) for 0-based position i)."""
    ranks = jnp.asarray(ranks)
    return jnp.mean(jnp.where(ranks <= k, 1.0 / jnp.log2(ranks + 1.0), 0.0))


def ranking_metrics(scores: ArrayLike, target_index: ArrayLike,
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"hr@k", "ndcg@k"} for each k (k <= C), from candidate scores [N, C]."""
    ranks = rank_of_target(scores, target_index)
    num_candidates = jnp.shape(scores)[1]
    out: dict[str, float] = {}
    for k in ks:
        if k <= num_candidates:
            out[f"hr@{k}"] = float(hit_rate_at_k(ranks, k))
            out[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k))
    return out


def item_counts(items: ArrayLike, num_items: int) -> Array:
    """How often each item id in [0, num_items) occurs in ``items`` (any shape); negatives
    (padding) are ignored."""
    items = jnp.ravel(jnp.asarray(items))
    return jnp.zeros(num_items, jnp.int32).at[items].add(jnp.where(items >= 0, 1, 0),
                                                           mode="drop")


def coverage(recommended_items: ArrayLike, num_items: int) -> Array:
    """Catalogue coverage = |distinct recommended items| / num_items."""
    return jnp.mean(item_counts(recommended_items, num_items) > 0)


def gini(counts: ArrayLike) -> Array:
    """Gini coefficient of a count (or popularity) vector, zeros included:
    G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i), x sorted ascending, i = 1..n.
    0 = every item equally often (or no counts at all), (n-1)/n = one item takes everything."""
    x = jnp.sort(jnp.asarray(counts, dtype=jnp.float32))
    n = x.shape[0]
    i = jnp.arange(1, n + 1, dtype=jnp.float32)
    total = jnp.sum(x)
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum((2 * i - n - 1) * x) / (n * safe_total), 0.0)


def average_recommendation_popularity(recommended: ArrayLike, item_popularity: ArrayLike) -> Array:
    """ARP = mean over requests of the mean popularity of its recommended items.

    recommended [N] or [N, K] item ids; item_popularity [num_items] (e.g. train counts)."""
    recommended = jnp.asarray(recommended)
    if recommended.ndim == 1:
        recommended = recommended[:, None]
    return jnp.mean(jnp.asarray(item_popularity, dtype=jnp.float32)[recommended])


def exposure_share(recommended: ArrayLike, previously_exposed: ArrayLike) -> Array:
    """Share of requests whose recommended item was already exposed in that request's context.

    recommended [N]; previously_exposed [N] (the logged exposure) or [N, M] (several past
    exposures, padded with -1)."""
    recommended = jnp.asarray(recommended)
    exposed = jnp.asarray(previously_exposed)
    if exposed.ndim == 1:
        exposed = exposed[:, None]
    return jnp.mean(jnp.any(exposed == recommended[:, None], axis=1))


def kl_divergence(policy_item_dist: ArrayLike, exposure_dist: ArrayLike,
                  eps: float = 1e-6) -> Array:
    """KL(p || q) = sum_i p_i log(p_i / q_i) over the last axis, where p and q are the inputs
    (counts or probabilities) plus ``eps`` per item, renormalised to sum to 1 (smoothing keeps
    items the logging policy never exposed finite; 0 log 0 = 0)."""
    p = jnp.asarray(policy_item_dist, dtype=jnp.float32) + eps
    q = jnp.asarray(exposure_dist, dtype=jnp.float32) + eps
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    return jnp.sum(rel_entr(p, q), axis=-1)  # 0 log 0 = 0


__all__ = ["average_recommendation_popularity", "coverage", "exposure_share", "gini",
           "hit_rate_at_k", "item_counts", "kl_divergence", "ndcg_at_k", "rank_of_target",
           "ranking_metrics"]
