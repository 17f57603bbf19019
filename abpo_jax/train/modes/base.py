"""The action-space protocol: everything the rounds, the learner, the rollout and the evaluator
need to know about how the policy acts, so none of them branches on the mode.

    featurize(record)       logged record -> fixed-shape host arrays (the grain pipeline)
    policy_batch(...)       a host batch of those (+ this step's key) -> the step's batch
    make_policy_step(...)   the pure jitted policy-gradient step over that batch
    expose(...)             deploy: the round's exposures, as `LoggingPolicy.log` inputs
    eval_metrics(...)       the mode's own evaluation columns (beside the item-mode ranking)

`experiment.build` picks the mode once (`config.policy.mode`); a new action space is one more
module here that implements `Mode`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
import optax

from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.losses import abpo
from abpo_jax.sim.logging_policy import LoggingPolicy

# (state, frozen, ref_params, batch, round_key) -> (state, metrics)
PolicyStep = Callable[..., tuple[dict, dict]]


class Mode(Protocol):
    """One action space (see the module docstring)."""

    name: str
    batch_rows: bool           # policy batches are [B, ...] by row (else [A, B/A, ...] micro)
    logs_have_candidates: bool  # a logged record lists the candidates the policy chose among

    def featurize(self, record: LogRecord) -> dict[str, np.ndarray]:
        """One logged request as fixed-shape host arrays (what `policy_batch` and the
        `sft_positive` step read: `learner.rl_batch`'s fields at least)."""

    def policy_batch(self, host: dict, params: Any, key: jax.Array,
                     settings: abpo.LossSettings) -> Any:
        """A featurized host batch -> the policy step's batch (host numpy; `key` is this
        step's, fold_in(round key, step), for rollouts drawn outside the step)."""

    def make_policy_step(self, tx: optax.GradientTransformation, settings: abpo.LossSettings
                         ) -> PolicyStep:
        """The pure policy-gradient step of one method's settings."""

    def expose(self, params: Any, examples: Sequence[Example], logging: LoggingPolicy, k: int,
               desc: str) -> dict[str, Any]:
        """Deploy `params` on round k's requests: the keyword inputs of `LoggingPolicy.log`
        (`score_fn` + scores, or `sampled` exposures). Runs on every process."""

    def eval_metrics(self, k: int, params: Any, examples: Sequence[Example],
                     ks: Sequence[int], desc: str) -> dict[str, float]:
        """The mode's own columns of round k's row ({} when the item ranking is all)."""
