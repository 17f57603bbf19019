"""The evaluation role: one per-round table row for a method's params.

Held-out ranking / exposure / simulated CTR over the fixed test requests (their click
probabilities computed once), and the SNIPS estimate of the policy's CTR from the round's log
against its simulated truth on the same contexts (the click probabilities the records carry).
The metrics themselves are the pure functions of `eval.evaluate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.eval.catalogue import catalogue_metrics
from abpo_jax.eval.evaluate import log_metrics, policy_metrics
from abpo_jax.eval.text_ranking import ranking_from_samples, text_ranking_metrics
from abpo_jax.sampling.procedure import Procedure
from abpo_jax.sim.users import UserSimulator
from abpo_jax.train.policy import Policy, example_from_record, record_click_probs
from abpo_jax.train.rollout import Exposures
from abpo_jax.train.text_policy import TextPolicy


@dataclasses.dataclass
class TextEval:
    """Text-mode evaluation: n sampled completions per test request ranked in sampling order
    (the sibling protocol, list mode) or constrained beam search over the catalogue (K =
    `beam`, catalogue mode), beside the exact item-mode ranking of the same model."""

    policy: TextPolicy
    procedure: Procedure
    num_samples: int
    beam: int
    key: Callable[[int], Any]      # round -> sampling key (`RngStreams.text_eval`)

    def metrics(self, k: int, params: Any, examples: Sequence[Example], ks: Sequence[int],
                desc: str) -> dict:
        if self.policy.text.catalogue_mode:
            items = self.policy.beam_items(params, examples, self.beam, desc)
            return catalogue_metrics(items, np.array([e.target for e in examples]),
                                     [x for x in ks if x <= self.beam])
        out = self.policy.sample(params, examples, self.key(k), self.procedure,
                                 self.num_samples, desc)
        ranked = ranking_from_samples(out.candidate, self.policy.text.encoder.num_candidates)
        return text_ranking_metrics(ranked, np.array([e.target_index for e in examples]), ks)


@dataclasses.dataclass
class Evaluator:
    policy: Policy
    test_examples: Sequence[Example]
    simulator: UserSimulator
    num_items: int
    popularity: np.ndarray       # item interaction counts (for ARP)
    exposures: Exposures
    ks: tuple[int, ...]
    text: TextEval | None = None

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
        if self.text is not None:
            row.update(self.text.metrics(k, params, self.test_examples, self.ks,
                                         f"eval-text r{k} {method}"))
        catalogue = self.text is not None and self.text.policy.text.catalogue_mode
        if records is not None and not catalogue:   # catalogue logs hold no candidate list
            rlp = self.policy.log_probs(params, [example_from_record(r) for r in records],
                                        f"eval-log r{k} {method}")
            outcome = np.array([r.outcome for r in records])
            row.update(log_metrics(rlp, np.array([r.exposed_index for r in records]),
                                   np.array([r.propensity for r in records]), outcome,
                                   np.stack([record_click_probs(r) for r in records])))
        if records is not None:
            row["log_ctr"] = float(np.mean([r.outcome for r in records]))
        row.update(train or {})
        return row
