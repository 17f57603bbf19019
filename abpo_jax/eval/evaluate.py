"""Evaluation metrics of an item-mode policy: ranking, exposure bias, simulated CTR, SNIPS.

`policy_metrics` and `log_metrics` are pure numpy over the policy's candidate log-probabilities,
so the rounds runner, `abpo-jax eval` (`train/rounds.evaluate_run`) and tests share one
definition of every number in the per-round table (which columns are shown where:
`eval/metric_table.py`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from abpo_jax.eval.metrics import (average_recommendation_popularity, coverage, exposure_share,
                                   gini, item_counts, kl_divergence, ranking_metrics)

def policy_metrics(log_probs: np.ndarray, candidates: np.ndarray, target_index: np.ndarray,
                   *, num_items: int, item_popularity: np.ndarray,
                   exposed_items: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                   click_probs: np.ndarray | None = None) -> dict[str, float]:
    """Held-out metrics of a policy with log pi~ [N, C] over `candidates` [N, C] (item ids).

    hr@k / ndcg@k: rank of the held-out item (ties broken by candidate position);
    exposed_share: share of top-1 recommendations that are items exposed in the logs so far
    (`exposed_items`, item ids, any length); kl_exposure: KL(policy item distribution ||
    logged exposure distribution), the policy's distribution being its probability mass summed
    per item over the test requests; coverage / gini / arp of the top-1 recommendations;
    sim_ctr: E_{c ~ pi~}[P(click | user, c)] under the simulator (`click_probs` [N, C]).
    """
    log_probs = np.asarray(log_probs, np.float32)
    probs = np.exp(log_probs)
    out = ranking_metrics(log_probs, target_index, ks)
    top = candidates[np.arange(len(candidates)), np.argmax(log_probs, axis=-1)]
    policy_mass = np.zeros(num_items, np.float64)
    np.add.at(policy_mass, candidates.ravel(), probs.ravel())
    exposed = np.asarray(exposed_items, np.int64).ravel()
    exposure_counts = np.asarray(item_counts(exposed, num_items)) if exposed.size else None
    out["exposed_share"] = (float(exposure_share(top, np.broadcast_to(exposed, (len(top),
                                                                            exposed.size))))
                            if exposed.size else 0.0)
    out["kl_exposure"] = (float(kl_divergence(policy_mass, exposure_counts))
                          if exposure_counts is not None else float("nan"))
    out["coverage"] = float(coverage(top, num_items))
    out["gini"] = float(gini(item_counts(top, num_items)))
    out["arp"] = float(average_recommendation_popularity(top, item_popularity))
    if click_probs is not None:
        out["sim_ctr"] = float(np.mean(np.sum(probs * click_probs, axis=-1)))
    return out


def validation_metrics(log_probs: np.ndarray, target_index: np.ndarray,
                       click_probs: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                       prefix: str = "valid_") -> dict[str, float]:
    """Held-out metrics on requests the policy has not been deployed on yet (event rounds: the
    next window's events): `{prefix}hr@k`, `{prefix}ndcg@k` and `{prefix}ctr`, the policy's
    true CTR E_{c~pi}[P(y=1 | x, c)] under the run's feedback source (`click_probs` [N, C])."""
    log_probs = np.asarray(log_probs, np.float32)
    out = {f"{prefix}{name}": v for name, v in ranking_metrics(log_probs, target_index,
                                                                  ks).items()}
    out[f"{prefix}ctr"] = float(np.mean(np.sum(np.exp(log_probs) * click_probs, axis=-1)))
    return out


def snips_ctr(target_log_probs: np.ndarray, propensity: np.ndarray, outcome: np.ndarray
              ) -> float:
    """SNIPS estimate of a new policy's CTR from a logged round:
    V = sum_i w_i y_i / sum_i w_i, w_i = pi_new(a_i | x_i) / p_i (a_i the logged item)."""
    w = np.exp(np.asarray(target_log_probs, np.float64)) / np.asarray(propensity, np.float64)
    return float(np.sum(w * outcome) / max(np.sum(w), 1e-12))


def log_metrics(log_probs: np.ndarray, exposed_index: np.ndarray, propensity: np.ndarray,
                outcome: np.ndarray, click_probs: np.ndarray | None) -> dict[str, float]:
    """Off-policy estimate vs truth on a round's logged requests: snips_ctr (from the log),
    log_sim_ctr (the policy's true CTR on the same contexts) and snips_bias = their difference.
    A log without click probabilities (an imported one) has no truth: snips_ctr only.
    """
    lp = np.asarray(log_probs, np.float64)
    target = lp[np.arange(len(lp)), exposed_index]
    est = snips_ctr(target, propensity, outcome)
    if click_probs is None:
        return {"snips_ctr": est}
    truth = float(np.mean(np.sum(np.exp(lp) * click_probs, axis=-1)))
    return {"snips_ctr": est, "log_sim_ctr": truth, "snips_bias": est - truth}


__all__ = ["log_metrics", "policy_metrics", "snips_ctr", "validation_metrics"]
