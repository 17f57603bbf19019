"""The rollout role: deploy pi_{k-1} on round k's fresh users and log the round.

The log is global data: every process scores the round's requests (one sharded computation),
process 0 alone samples the exposures, asks the simulator for outcomes and click probabilities
and commits the log; the others wait at a barrier and read it back (the run directory is shared
by the hosts). A committed round is reused as is (resume). `Exposures` caches each round's
exposed items, so evaluation never re-reads earlier rounds.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import numpy as np

from abpo_jax.data import log_store
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.sim.logging_policy import log_round
from abpo_jax.sim.users import UserSimulator
from abpo_jax.train.distributed import barrier
from abpo_jax.train.outputs import is_main_process
from abpo_jax.train.policy import Policy


def round_path(logs_root: pathlib.Path, method: str, k: int) -> pathlib.Path:
    """Directory of `method`'s committed round-k log."""
    return log_store.round_path(logs_root / method, k)


@dataclasses.dataclass
class Rollout:
    """Deploys a policy on the rounds' requests and commits one log per (round, method)."""

    policy: Policy
    simulator: UserSimulator
    round_examples: Sequence[Sequence[Example]]   # round k's requests at index k - 1
    logs_root: pathlib.Path
    seed: int                                     # the logging stream (RngStreams.logging)
    temperature: float                            # policy.logging_temperature
    popularity: np.ndarray                        # item interaction counts
    popularity_bias: float = 0.0                  # policy.logging_popularity (b)

    def deploy(self, k: int, method: str, params: Any) -> log_store.RoundLog:
        """Round k's log for `method`: reuse a committed one (resume), else deploy and log."""
        path = round_path(self.logs_root, method, k)
        barrier(f"deploy-check-r{k}-{method}")   # all processes decide on the same state
        if path.exists():
            return log_store.open_round(path)
        examples = self.round_examples[k - 1]
        log_pi, certainty = self.policy.scores(params, examples, f"rollout r{k} {method}",
                                               kill="rollout")
        bias = None
        if self.popularity_bias:   # exposure bias: logits + b log(1 + count)
            cands = np.stack([e.candidates for e in examples])
            bias = self.popularity_bias * np.log1p(self.popularity[cands])
        if is_main_process():
            # batch_size=len(examples): log_round asks for all scores in one call.
            log_round(examples, lambda chunk: log_pi, self.simulator, round_index=k,
                      seed=self.seed, logs_dir=str(self.logs_root / method),
                      policy_revision=f"{method}@{k - 1}", temperature=self.temperature,
                      timestamp=float(k), batch_size=len(examples), logit_bias=bias,
                      certainty=certainty)
        barrier(f"deploy-written-r{k}-{method}")
        return log_store.open_round(path)


@dataclasses.dataclass
class Exposures:
    """Exposed item ids per (method, round), read at most once from the committed logs."""

    logs_root: pathlib.Path
    cache: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)

    def add(self, method: str, k: int, records: Sequence[LogRecord]) -> None:
        self.cache[(method, k)] = np.asarray([r.exposed_item_id for r in records], np.int64)

    def up_to(self, method: str, k: int) -> np.ndarray:
        """Every item `method` exposed in rounds 1..k (rounds without a log contribute none)."""
        for r in range(1, k + 1):
            if (method, r) not in self.cache:
                path = round_path(self.logs_root, method, r)
                self.add(method, r, list(log_store.open_round(path)) if path.exists() else [])
        return np.concatenate([np.zeros(0, np.int64)]
                              + [self.cache[(method, r)] for r in range(1, k + 1)])
