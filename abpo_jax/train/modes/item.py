"""Item mode: the policy is pi~(c | x) = softmax over the closed candidate list of each
completion's sequence log-probability (`train/policy.py`); the exposure is drawn from it by
the logging policy; the step is `learner.make_policy_step` over packed candidates."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
import optax

from abpo_jax.data import records
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.losses import abpo
from abpo_jax.sampling.group_scoring import CandidateBatch
from abpo_jax.sim.logging_policy import LoggingPolicy
from abpo_jax.train.learner import RLBatch, make_policy_step, rl_batch
from abpo_jax.train.modes.base import PolicyStep
from abpo_jax.train.policy import Encoder, Policy
from abpo_jax.train.state import ModelSplit


def featurize(record: LogRecord, encoder: Encoder, required: Sequence[str] = (),
              encoded: CandidateBatch | None = None) -> dict[str, np.ndarray]:
    """One logged request as fixed-shape arrays: the exact logged prompt, re-tokenized, and the
    per-record loss inputs the record carries (no simulator call in the input pipeline).

    A loss input absent from the record is an error when `required` names it (the ingest check
    quarantines such records first) and NaN otherwise: this run's objective never reads it.
    `encoded`: the request already packed (one row of a batch `featurize_batch` packed).
    """
    ex = records.example_from_record(record)
    cands = encoder.encode([ex]) if encoded is None else encoded
    p = cands.packed
    gone = records.missing(record, required)
    if gone:
        raise ValueError(f"request {record.request_id}: extras {gone} missing; this run's "
                         "loss needs them (data/records.py)")
    click = records.click_probs(record)
    certainty = records.anchor_certainty(record)
    own = records.policy_logp(record)
    nan = np.full(len(ex.candidates), np.nan, np.float32)   # [C] of a loss input not logged
    return {
        "tokens": p.tokens[0], "positions": p.positions[0], "segments": p.segments[0],
        "prompt_lengths": p.prompt_lengths[0], "completion_tokens": p.completion_tokens[0],
        "completion_mask": p.completion_mask[0], "item_mask": cands.item_mask[0],
        "valid_cands": cands.valid[0],
        "exposed": np.int32(record.exposed_index),
        "propensity": np.float32(record.propensity),
        # float64 in the log; float32 on the device, where the loss takes log pi_old - log p
        "log_propensity": np.float32(records.log_propensity(record)),
        "outcome": np.int32(record.outcome),
        "target": np.int32(ex.target_index),
        "sim_reward": nan if click is None else click,
        "round_certainty": np.float32(np.nan if certainty is None else certainty),
        # NaN when not logged: the step then takes pi_ref's log-probs from its forward
        "policy_logp": nan.copy() if own is None else own,   # (not aliasing sim_reward)
    }


@dataclasses.dataclass
class ItemMode:
    """The closed candidate list (`policy.mode=item`)."""

    policy: Policy
    split: ModelSplit
    ppo_epochs: int
    required: tuple[str, ...] = ()   # extras the run's methods train on (`records.required`)
    # pi_ref's log-probs from the log's `policy_logp` (`experiment.ref_logp_from_log`: where
    # pi_ref is exactly the policy that deployed the round), not from a forward per step
    ref_from_log: bool = False
    name: str = "item"
    batch_rows: bool = False
    logs_have_candidates: bool = True

    def featurize(self, record: LogRecord) -> dict[str, np.ndarray]:
        return featurize(record, self.policy.encoder, self.required)

    def featurize_batch(self, recs: Sequence[LogRecord]) -> dict[str, np.ndarray]:
        """The stacked `featurize` of a batch, its requests packed in one vectorised call."""
        packed = self.policy.encoder.encode([records.example_from_record(r) for r in recs])
        rows = [featurize(r, self.policy.encoder, self.required,
                          jax.tree.map(lambda x, i=i: x[i:i + 1], packed))
                for i, r in enumerate(recs)]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def policy_batch(self, host: dict, params: Any, key: jax.Array,
                     settings: abpo.LossSettings) -> RLBatch:
        return rl_batch(host)

    def make_policy_step(self, tx: optax.GradientTransformation, settings: abpo.LossSettings
                         ) -> PolicyStep:
        return make_policy_step(self.split, tx, settings, self.ppo_epochs,
                                shared_rows=self.policy.encoder.shared_rows,
                                ref_from_log=self.ref_from_log)

    def expose(self, params: Any, examples: Sequence[Example], logging: LoggingPolicy, k: int,
               desc: str) -> dict[str, Any]:
        own, certainty = self.policy.scores(params, examples, desc, kill="rollout")
        log_pi, bias = logging.logits(own, np.stack([e.candidates for e in examples]))
        # batch_size=len(examples): log_round asks for all scores in one call. The policy's
        # own log pi~ is logged beside (pi_ref's log-probs of the update: `ref_from_log`).
        return dict(score_fn=lambda chunk: log_pi, batch_size=len(examples), logit_bias=bias,
                    certainty=certainty, policy_logp=own)

    def eval_metrics(self, k: int, params: Any, examples: Sequence[Example],
                     ks: Sequence[int], desc: str) -> dict[str, float]:
        return {}
