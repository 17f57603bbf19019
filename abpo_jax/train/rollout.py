"""The rollout role: deploy pi_{k-1} on round k's requests (fresh users, or the events of a
window) and log the round.

How the deployed policy exposes items is the mode's (`Mode.expose`), who deploys and with which
logits the logging policy's (`sim.logging_policy.LoggingPolicy`). The log is global data: every
process scores the round's requests (one sharded computation), process 0 alone samples the exposures, asks the simulator for outcomes and click probabilities
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
from abpo_jax.sim.logging_policy import LoggingPolicy
from abpo_jax.sim.replay import Feedback
from abpo_jax.train.distributed import barrier
from abpo_jax.train.modes.base import Mode
from abpo_jax.train.outputs import is_main_process


def round_path(logs_root: pathlib.Path, method: str, k: int) -> pathlib.Path:
    """Directory of `method`'s committed round-k log."""
    return log_store.round_path(logs_root / method, k)


@dataclasses.dataclass
class Rollout:
    """Deploys a policy on the rounds' requests and commits one log per (round, method)."""

    mode: Mode                                    # how the deployed policy exposes items
    logging: LoggingPolicy                        # temperature, bias, RNG stream
    simulator: Feedback                           # outcomes: mnl simulator | replay
    round_examples: Sequence[Sequence[Example]]   # round k's requests at index k - 1
    logs_root: pathlib.Path
    per_event: bool = False                       # event rounds: request ids name the event

    def deploy(self, k: int, method: str, params: Any) -> log_store.RoundLog:
        """Round k's log for `method`: reuse a committed one (resume), else deploy and log."""
        path = round_path(self.logs_root, method, k)
        barrier(f"deploy-check-r{k}-{method}")   # all processes decide on the same state
        if path.exists():
            return log_store.open_round(path)
        examples = self.round_examples[k - 1]
        inputs = self.mode.expose(params, examples, self.logging, k, f"rollout r{k} {method}")
        if is_main_process():
            self.logging.log(examples, self.simulator, k, str(self.logs_root / method),
                             f"{method}@{k - 1}", per_event=self.per_event, **inputs)
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
