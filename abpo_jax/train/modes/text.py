"""Text mode: the policy samples a completion (optional free text, then an item tag under a
trie) of the prompt's candidates (`policy.candidates=list`) or of the whole catalogue
(`catalogue`). Deployment logs the sampled completion with its exact probability under the
logging procedure; the step is `text_learner.make_text_policy_step` over G rollouts + the
logged completion; evaluation adds the sampled ranking (list) or beam search (catalogue)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from abpo_jax.data import records
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.eval.catalogue import catalogue_metrics
from abpo_jax.eval.text_ranking import ranking_from_samples, text_ranking_metrics
from abpo_jax.losses import abpo
from abpo_jax.losses.abpo import sequence_self_certainty
from abpo_jax.sampling.procedure import Procedure
from abpo_jax.sim.logging_policy import LoggingPolicy, SampledExposures
from abpo_jax.train.faults import kill_point
from abpo_jax.train.modes import item
from abpo_jax.train.modes.base import PolicyStep
from abpo_jax.train.text_learner import TextBatch, make_text_policy_step, text_batch
from abpo_jax.train.text_policy import TextEncoder, TextPolicy, certainty_mask, completion_lists


def featurize_text(record: LogRecord, text: TextEncoder, required: Sequence[str] = ()
                   ) -> dict[str, np.ndarray]:
    """One logged request as fixed-shape arrays: the item-mode fields (`item.featurize`,
    used by `sft_positive`) plus the left-padded prompt and the logged completion."""
    out = item.featurize(record, text.encoder, required)
    ex = records.example_from_record(record)
    tokens, mask = text.prompts([ex])
    anchor_t, anchor_k = text.anchor(record, ex)
    catalogue = text.catalogue_mode
    out.update({
        "prompt_tokens": tokens[0], "prompt_mask": mask[0],
        "anchor_tokens": anchor_t, "anchor_kinds": anchor_k,
        "anchor_item": np.int32(text.logged_item(record)),
        "anchor_format": np.float32(text.format_rewards(anchor_t[None], anchor_k[None])[0]),
        "item_target": np.int32(ex.target if catalogue else ex.target_index),
        "history": np.asarray(record.context_item_ids, np.int32),
        "user": np.int64(record.user_id),
    })
    if not catalogue:
        trie = text.tries([ex])
        out.update(trie_tokens=trie.child_tokens[0], trie_nodes=trie.child_nodes[0],
                   trie_leaves=trie.leaf_candidate[0])
    return out


@dataclasses.dataclass
class TextMode:
    """Sampled completions (`policy.mode=text`), list or catalogue candidates."""

    policy: TextPolicy
    logging_procedure: Procedure   # deployment (policy.logging_temperature)
    eval_samples: int              # eval.text_samples (list mode)
    beam: int                      # eval.beam (catalogue mode)
    eval_key: Callable[[int], Any]  # round -> sampling key (`RngStreams.text_eval`)
    certainty_on: str = "item"     # loss.certainty_tokens
    required: tuple[str, ...] = ()
    name: str = "text"
    batch_rows: bool = True

    @property
    def text(self) -> TextEncoder:
        return self.policy.text

    @property
    def procedure(self) -> Procedure:
        """pi_old's rollout procedure (policy.temperature): update rollouts and evaluation."""
        return self.text.procedure

    @property
    def logs_have_candidates(self) -> bool:   # a catalogue log holds the generated item only
        return not self.text.catalogue_mode

    def featurize(self, record: LogRecord) -> dict[str, np.ndarray]:
        return featurize_text(record, self.text, self.required)

    def policy_batch(self, host: dict, params: Any, key: jax.Array,
                     settings: abpo.LossSettings) -> TextBatch:
        """Rollouts from pi_old = this step's params, then the batch."""
        return text_batch(host, self.policy, params, key, self.procedure,
                          settings.num_generations)

    def make_policy_step(self, tx: optax.GradientTransformation, settings: abpo.LossSettings
                         ) -> PolicyStep:
        step = make_text_policy_step(self.policy.split, tx, settings, self.procedure,
                                     self.text.eos_id, self.text.shared_trie)
        # the rollouts were drawn outside the step: it takes no key
        return lambda state, frozen, ref, batch, round_key: step(state, frozen, ref, batch)

    def expose(self, params: Any, examples: Sequence[Example], logging: LoggingPolicy, k: int,
               desc: str) -> dict[str, Any]:
        """The deployed policy samples one completion per request under the logging
        procedure; its item is the exposure, the completion's probability the propensity."""
        out = self.policy.sample(params, examples, logging.sample_key(k),
                                 self.logging_procedure, 1, desc)
        kill_point("rollout")
        leaf = out.candidate[:, 0]
        if self.text.catalogue_mode:   # the generated item is the only "candidate"
            index, candidates = np.zeros(len(examples), np.int64), leaf[:, None]
        else:
            index, candidates = leaf, np.stack([e.candidates for e in examples])
        extras = []
        log_p = np.sum(out.logq[:, 0], axis=-1, dtype=np.float64)   # exp(log_p) may underflow
        for tokens, kinds, lp in zip(out.tokens[:, 0], out.kinds[:, 0], log_p):
            t, kd = completion_lists(tokens, kinds)
            extras.append({records.COMPLETION_TOKENS: t, records.COMPLETION_KINDS: kd,
                           records.LOG_PROPENSITY: float(lp)})
        sampled = SampledExposures(
            index=index, propensity=np.exp(log_p),
            candidates=candidates,
            certainty=np.asarray(sequence_self_certainty(
                out.self_certainty[:, 0], certainty_mask(out.kinds[:, 0], self.certainty_on))),
            extras=extras)
        return dict(score_fn=None, sampled=sampled)

    def eval_metrics(self, k: int, params: Any, examples: Sequence[Example],
                     ks: Sequence[int], desc: str) -> dict[str, float]:
        """n sampled completions per test request ranked in sampling order (the sibling
        protocol, list mode) or constrained beam search over the catalogue (K = `beam`)."""
        if self.text.catalogue_mode:
            items = self.policy.beam_items(params, examples, self.beam, desc)
            return catalogue_metrics(items, np.array([e.target for e in examples]),
                                     [x for x in ks if x <= self.beam])
        out = self.policy.sample(params, examples, self.eval_key(k), self.procedure,
                                 self.eval_samples, desc)
        ranked = ranking_from_samples(out.candidate, self.text.encoder.num_candidates)
        return text_ranking_metrics(ranked, np.array([e.target_index for e in examples]), ks)
