"""Catalogue-mode ranking metrics: HR@K / NDCG@K of constrained beam search over the catalogue.

As MiniOneRec's `calc.py` (`gao`): per test request the K beam outputs, best first, are scanned
for the first one equal to the target (`minID`, 0-based); HR@k counts requests with
minID < k, NDCG@k adds 1 / ln(minID + 2) and divides by 1 / ln 2, i.e. 1 / log2(rank + 1)
with rank = minID + 1; both are averaged over *all* requests (a target no beam names is a miss
at every k), and a k larger than the beam width is skipped. Its cut-offs are
`topk_list = [1, 3, 5, 10, 20, 50]`.

One difference: `calc.py` compares decoded title strings, so an item whose title another item
shares counts as a hit for both. Here beams and targets are dense item ids (the trie leaf is the
item, :mod:`abpo_jax.data.catalogue`), so a hit is the item itself. HR and NDCG are
:func:`abpo_jax.eval.metrics.hit_rate_at_k` / ``ndcg_at_k`` of that rank.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.typing import ArrayLike

from abpo_jax.eval.metrics import hit_rate_at_k, ndcg_at_k
from abpo_jax.eval.text_ranking import text_ranks

CALC_PY_KS = (1, 3, 5, 10, 20, 50)


def catalogue_metrics(beam_items: ArrayLike, target_items: ArrayLike,
                      ks: Sequence[int] = CALC_PY_KS) -> dict[str, float]:
    """{"catalogue_hr@k", "catalogue_ndcg@k"} for each k <= K, from beam items [N, K] (dense
    item ids, best first; -1 = no item) and target item ids [N]."""
    items = np.asarray(beam_items)
    targets = np.asarray(target_items)
    if items.ndim != 2 or targets.shape != items.shape[:1]:
        raise ValueError(f"catalogue_metrics: need items [N, K] and targets [N], got "
                         f"{items.shape} and {targets.shape}")
    if np.any(targets < 0):
        raise ValueError("catalogue_metrics: target item ids must be >= 0")
    ranks = text_ranks(items, targets)   # 1-based position of the target; +inf if absent
    out: dict[str, float] = {}
    for k in ks:
        if k <= items.shape[1]:
            out[f"catalogue_hr@{k}"] = float(hit_rate_at_k(ranks, k))
            out[f"catalogue_ndcg@{k}"] = float(ndcg_at_k(ranks, k))
    return out


__all__ = ["CALC_PY_KS", "catalogue_metrics"]
