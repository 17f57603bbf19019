"""Text-mode ranking evaluation (the sibling protocol): rank candidates by sampling order.

The sibling code (cpark88/TWiCE-Rec `evaluation_vllm.py`) samples n completions per test
prompt, extracts each one's item and scores HR@K / NDCG@K of the resulting list. Its list is
``dedup_preserve_order(list(set(items)))``: the ``set()`` runs first, so the order that
reaches the metric is the set's iteration order (hash order, seeded per process for strings),
not the sampling order. Here the list is
de-duplicated **in sampling order** (first sample first), which is the order the protocol
intends. Items never sampled are not recommended: a target that no sample names is a miss at
every K. HR@K and NDCG@K are :func:`abpo_jax.eval.metrics.hit_rate_at_k` / ``ndcg_at_k`` of
the target's 1-based position in the list (a miss has rank +inf).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.typing import ArrayLike

from abpo_jax.eval.metrics import hit_rate_at_k, ndcg_at_k


def ranking_from_samples(candidate_indices: ArrayLike, num_candidates: int) -> np.ndarray:
    """Ranked lists int32 [N, min(n, C)] from sampled candidate indices [N, n] in sampling
    order: distinct candidates in order of their first sample, padded with -1. Negative
    entries (a sample that named no candidate) are skipped."""
    samples = np.asarray(candidate_indices)
    if samples.ndim != 2:
        raise ValueError(f"ranking_from_samples: need [N, n] indices, got shape {samples.shape}")
    if np.any(samples >= num_candidates):
        raise ValueError(f"ranking_from_samples: index >= num_candidates={num_candidates}")
    out = np.full((samples.shape[0], min(samples.shape[1], num_candidates)), -1, np.int32)
    for row, drawn in zip(out, samples):
        ranked = list(dict.fromkeys(int(c) for c in drawn if c >= 0))
        row[:len(ranked)] = ranked
    return out


def text_ranks(ranked: ArrayLike, target_index: ArrayLike) -> np.ndarray:
    """1-based position of each target in its ranked list [N, L] (float; +inf if absent)."""
    ranked = np.asarray(ranked)
    hit = ranked == np.asarray(target_index)[:, None]
    return np.where(hit.any(1), hit.argmax(1) + 1.0, np.inf)


def text_ranking_metrics(ranked: ArrayLike, target_index: ArrayLike,
                         ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"text_hr@k", "text_ndcg@k"} for each k, from ranked lists [N, L] and targets [N]."""
    ranks = text_ranks(ranked, target_index)
    out: dict[str, float] = {}
    for k in ks:
        out[f"text_hr@{k}"] = float(hit_rate_at_k(ranks, k))
        out[f"text_ndcg@{k}"] = float(ndcg_at_k(ranks, k))
    return out


__all__ = ["ranking_from_samples", "text_ranking_metrics", "text_ranks"]
