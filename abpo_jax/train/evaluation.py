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
from abpo_jax.eval.evaluate import log_metrics, policy_metrics, validation_metrics
from abpo_jax.sim.replay import Feedback, request_keys
from abpo_jax.train.modes.base import Mode
from abpo_jax.train.policy import Policy
from abpo_jax.train.rollout import Exposures


@dataclasses.dataclass
class Evaluator:
    policy: Policy
    test_examples: Sequence[Example]
    simulator: Feedback          # click probabilities: mnl simulator | replay
    num_items: int
    popularity: np.ndarray       # item interaction counts (for ARP)
    exposures: Exposures
    ks: tuple[int, ...]
    mode: Mode                   # adds its own columns (text: sampled ranking / beam search)
    # event rounds: after round k (0..R), requests of the next window (validation, `valid_*`)
    valid_examples: Sequence[Sequence[Example]] | None = None

    def __post_init__(self):
        self.candidates, self.targets, self.click = self._fixed(self.test_examples)
        self._valid: dict[int, tuple] = {}

    def _fixed(self, ex: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidates, target indices, click probabilities under the feedback source) of a
        fixed request set, computed once."""
        candidates = np.stack([e.candidates for e in ex])
        users, events = request_keys(ex)
        return (candidates, np.array([e.target_index for e in ex]),
                np.asarray(self.simulator.click_probs(users, events, candidates)))

    def validation(self, k: int, method: str, params: Any) -> dict:
        """`valid_*` of the policy after round k on the next window's requests ({} without)."""
        if self.valid_examples is None or k >= len(self.valid_examples):
            return {}
        if k not in self._valid:
            self._valid[k] = self._fixed(self.valid_examples[k])
        _, targets, click = self._valid[k]
        lp = self.policy.log_probs(params, self.valid_examples[k], f"valid r{k} {method}")
        return validation_metrics(lp, targets, click, self.ks)

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
        row.update(self.validation(k, method, params))
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
