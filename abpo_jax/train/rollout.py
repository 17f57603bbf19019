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

import jax
import numpy as np

from abpo_jax.data import log_store
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.losses.abpo import sequence_self_certainty
from abpo_jax.sampling.procedure import Procedure
from abpo_jax.sim.logging_policy import (COMPLETION_KINDS, COMPLETION_TOKENS, SampledExposures,
                                         log_round)
from abpo_jax.sim.users import UserSimulator
from abpo_jax.train.distributed import barrier
from abpo_jax.train.outputs import is_main_process
from abpo_jax.train.faults import kill_point
from abpo_jax.train.policy import Policy
from abpo_jax.train.text_policy import TextPolicy, certainty_mask, completion_lists


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
    text: TextPolicy | None = None                # text mode: the sampler that deploys
    procedure: Procedure | None = None            # text mode: the logging procedure
    certainty_on: str = "item"                    # loss.certainty_tokens

    def deploy(self, k: int, method: str, params: Any) -> log_store.RoundLog:
        """Round k's log for `method`: reuse a committed one (resume), else deploy and log."""
        path = round_path(self.logs_root, method, k)
        barrier(f"deploy-check-r{k}-{method}")   # all processes decide on the same state
        if path.exists():
            return log_store.open_round(path)
        examples = self.round_examples[k - 1]
        if self.text is not None:
            return self._deploy_text(k, method, params, examples, path)
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

    def _deploy_text(self, k: int, method: str, params: Any, examples: Sequence[Example],
                     path: pathlib.Path) -> log_store.RoundLog:
        """Text mode: the deployed policy samples one completion per request under the logging
        procedure; its item is the exposure, the completion's probability the propensity."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), k), 2)
        out = self.text.sample(params, examples, key, self.procedure, 1,
                               f"rollout r{k} {method}")
        kill_point("rollout")
        leaf = out.candidate[:, 0]
        if self.text.text.catalogue_mode:   # the generated item is the only "candidate"
            index, candidates = np.zeros(len(examples), np.int64), leaf[:, None]
        else:
            index, candidates = leaf, np.stack([e.candidates for e in examples])
        extras = []
        for tokens, kinds in zip(out.tokens[:, 0], out.kinds[:, 0]):
            t, kd = completion_lists(tokens, kinds)
            extras.append({COMPLETION_TOKENS: t, COMPLETION_KINDS: kd})
        sampled = SampledExposures(
            index=index, propensity=np.exp(np.sum(out.logq[:, 0], axis=-1, dtype=np.float64)),
            candidates=candidates,
            certainty=np.asarray(sequence_self_certainty(
                out.self_certainty[:, 0], certainty_mask(out.kinds[:, 0], self.certainty_on))),
            extras=extras)
        if is_main_process():
            log_round(examples, None, self.simulator, round_index=k, seed=self.seed,
                      logs_dir=str(self.logs_root / method), policy_revision=f"{method}@{k - 1}",
                      temperature=self.procedure.temperature, timestamp=float(k),
                      sampled=sampled)
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
