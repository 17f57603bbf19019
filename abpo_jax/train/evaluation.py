"""The evaluation role: one per-round table row for a method's params.

Held-out ranking / exposure / simulated CTR over the fixed test requests (their click
probabilities computed once), and the SNIPS estimate of the policy's CTR from the round's log
against its simulated truth on the same contexts (the click probabilities the records carry).
The metrics themselves are the pure functions of `eval.evaluate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from abpo_jax.data import records as rec
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.eval.evaluate import log_metrics, policy_metrics
from abpo_jax.sim.users import UserSimulator
from abpo_jax.train.modes.base import Mode
from abpo_jax.train.policy import Policy
from abpo_jax.train.rollout import Exposures


@dataclasses.dataclass
class Evaluator:
    policy: Policy
    test_examples: Sequence[Example]
    simulator: UserSimulator
    num_items: int
    popularity: np.ndarray       # item interaction counts (for ARP)
    exposures: Exposures
    ks: tuple[int, ...]
    mode: Mode                   # adds its own columns (text: sampled ranking / beam search)

    def __post_init__(self):
        ex = self.test_examples
        self.candidates = np.stack([e.candidates for e in ex])
        self.targets = np.array([e.target_index for e in ex])
        self.click = np.asarray(self.simulator.click_probs(np.array([e.user for e in ex]),
                                                           self.candidates))

    def row(self, k: int, method: str, params: Any,
            records: Sequence[LogRecord] | None = None, train: dict | None = None) -> dict:
        """Round k's row for `method` (`records`: the round's log; `train`: its update's
        mean train metrics)."""
        lp = self.policy.log_probs(params, self.test_examples, f"eval r{k} {method}",
                                   kill="eval")
        row = {"round": k, "method": method,
               **policy_metrics(lp, self.candidates, self.targets, num_items=self.num_items,
                                item_popularity=self.popularity,
                                exposed_items=self.exposures.up_to(method, k), ks=self.ks,
                                click_probs=self.click)}
        row.update(self.mode.eval_metrics(k, params, self.test_examples, self.ks,
                                          f"eval-text r{k} {method}"))
        if records is not None and self.mode.logs_have_candidates:
            rlp = self.policy.log_probs(params, [rec.example_from_record(r) for r in records],
                                        f"eval-log r{k} {method}")
            outcome = np.array([r.outcome for r in records])
            click = [rec.click_probs(r) for r in records]
            row.update(log_metrics(rlp, np.array([r.exposed_index for r in records]),
                                   np.array([r.propensity for r in records]), outcome,
                                   None if any(c is None for c in click) else np.stack(click)))
        if records is not None:
            row["log_ctr"] = float(np.mean([r.outcome for r in records]))
        row.update(train or {})
        return row
