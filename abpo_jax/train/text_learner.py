"""The text-mode policy-gradient step: G sampled completions + the logged one, per token.

One step = one global batch of b logged requests (ppo_epochs = 1, one micro-batch: checked by
`config.validate`):
  1. host, before the step: G rollouts per prompt sampled from pi_old = the step's own params
     (`TextPolicy.sample_batch`, the rollout procedure of `policy.temperature / top_k / top_p /
     max_think_tokens`, key fold_in(round key, step)); each member's item (trie leaf) and
     format reward (`losses.format_rewards`, decoded text; 1 without free text);
  2. jitted: one packed forward of prompt + M = G+1 completions (member 0 the logged completion,
     the anchor), self-certainty, and every member's per-token log-probabilities under the
     *sampling procedure* (temperature, truncation, trie renormalisation:
     `procedure.procedure_log_probs`): the policy optimised is the policy deployed, so the PPO
     ratio, the KL and the anchor term use them (`loss.text_logprobs=procedure`; `model` = the
     temperature-1 unconstrained log-probs, TRL's convention), and the anchor's sum under
     pi_old is the SNIPS numerator against the logged log p;
  3. the revised objective per token (`losses.abpo.group_loss`), backward of step 2's forward
     (`jax.vjp`), AdamW. Forced tokens (a `</think>` appended by the procedure) and padding are
     not actions: they are outside the loss mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from abpo_jax.losses import abpo
from abpo_jax.sampling import procedure as proc
from abpo_jax.sampling.group_scoring import packed_attention_mask, token_scores
from abpo_jax.sampling.trie import Trie
from abpo_jax.train.learner import end_policy_step, finite_update
from abpo_jax.train.state import ModelSplit
from abpo_jax.train.text_policy import TextPolicy, certainty_mask


@dataclasses.dataclass
class TextBatch:
    """One global batch of b logged requests with their M = G+1 member completions.

    prompt_tokens / prompt_mask [b, P] (left-padded); tokens / kinds [b, M, N] (member 0 the
    logged completion); members [b, M] each member's item (candidate index or item id);
    format_reward [b, M]; sim_reward [b, M] simulated click probability of each member's item
    (list mode; 0 in catalogue mode); propensity, outcome, target (member-item space, -1
    unknown), round_certainty, valid [b]; trie: the prompts' candidate tries [b, ...] (list
    mode) or None (the shared catalogue trie is a constant of the step).
    """
    prompt_tokens: Any
    prompt_mask: Any
    tokens: Any
    kinds: Any
    members: Any
    format_reward: Any
    sim_reward: Any
    propensity: Any
    outcome: Any
    target: Any
    round_certainty: Any
    valid: Any
    trie: Any
    log_propensity: Any = None     # [b] the logged log p (None: log of `propensity`)


# A token the procedure's truncation (top-k / top-p) excludes has log q = -inf; the loss takes
# differences and exps of log-probs, so it sees this floor instead (a ratio of 1 between two
# excluded tokens, never NaN).
MIN_LOG_Q = -1e4


jax.tree_util.register_dataclass(
    TextBatch, data_fields=[f.name for f in dataclasses.fields(TextBatch)], meta_fields=[])


def member_scores(model: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  tokens: jax.Array, kinds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-token log pi [b, M, N], self-certainty [b, M, N], the anchor's logits [b, N, V])
    of M completions per left-padded prompt in one shared-prefix packed pass (layout of
    `sampling.group_scoring`: prompt, then the M completion blocks, each seeing the prompt and
    itself causally)."""
    logp, certainty, logits = member_logits(model, prompt_tokens, prompt_mask, tokens, kinds)
    return logp, certainty, logits[:, 0]


def member_procedure_log_probs(logits: jax.Array, tokens: jax.Array, kinds: jax.Array,
                               trie: Any, procedure: proc.Procedure, eos_id: int,
                               shared_trie: bool) -> jax.Array:
    """Per-token log q [b, M, N] of every member under `procedure` (differentiable in the
    logits [b, M, N, V]); `trie` is the catalogue trie (shared_trie) or the prompts' [b, ...]."""
    b, m, n, v = logits.shape
    rows = trie if shared_trie else jax.tree.map(lambda x: jnp.repeat(x, m, axis=0), trie)
    logq = proc.procedure_log_probs(logits.reshape(b * m, n, v), tokens.reshape(b * m, n),
                                    kinds.reshape(b * m, n), rows, procedure, eos_id)
    return jnp.maximum(logq.reshape(b, m, n), MIN_LOG_Q)


def member_logits(model: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  tokens: jax.Array, kinds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`member_scores` with every member's logits [b, M, N, V]."""
    b, m, n = tokens.shape
    p = prompt_tokens.shape[1]
    prompt_mask = prompt_mask.astype(bool)
    real = kinds != proc.KIND_PAD
    plen = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    prompt_pos = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    comp_pos = jnp.broadcast_to(plen[:, None, None] + jnp.arange(n)[None, None], (b, m, n))
    seg = jnp.where(real, jnp.arange(1, m + 1)[None, :, None], -1)
    packed_tokens = jnp.concatenate([prompt_tokens, tokens.reshape(b, m * n)], axis=1)
    positions = jnp.concatenate([prompt_pos, comp_pos.reshape(b, m * n)], axis=1)
    segments = jnp.concatenate([jnp.where(prompt_mask, 0, -1), seg.reshape(b, m * n)], axis=1)
    hidden, _ = model.hidden_states(packed_tokens, positions,
                                    packed_attention_mask(segments, positions))
    # Token (j, t) is predicted by the prompt's last slot (left padding: P - 1) for t = 0,
    # else by its own token t - 1.
    rows = p + jnp.arange(m)[:, None] * n + jnp.arange(n)[None, :] - 1
    rows = jnp.where(jnp.arange(n)[None, :] == 0, p - 1, rows).reshape(-1)
    logits = model.logits_from_hidden(hidden[:, rows]).astype(jnp.float32).reshape(b, m, n, -1)
    logp, certainty = token_scores(logits, tokens)
    return jnp.where(real, logp, 0.0), jnp.where(real, certainty, 0.0), logits


def make_text_policy_step(split: ModelSplit, tx: optax.GradientTransformation,
                          settings: abpo.LossSettings, procedure: proc.Procedure, eos_id: int,
                          shared_trie: Any = None) -> Callable:
    """Pure text-mode step `(state, frozen, ref_params, batch: TextBatch) -> (state, metrics)`
    (see the module docstring). `procedure` is pi_old's rollout procedure (the SNIPS
    numerator); `shared_trie` the catalogue trie (catalogue mode)."""

    # greedy rollouts (temperature 0) have no probabilities to take a ratio of: model log-probs
    procedure_logp = settings.text_logprobs == "procedure" and procedure.temperature > 0

    def forward(params, frozen, batch):
        logp, cert, logits = member_logits(split.merge(params, frozen), batch.prompt_tokens,
                                           batch.prompt_mask, batch.tokens, batch.kinds)
        trie = shared_trie if shared_trie is not None else batch.trie
        if not procedure_logp:   # the procedure for the anchor's SNIPS numerator only
            logits = jax.lax.stop_gradient(logits[:, :1])
        logq = member_procedure_log_probs(logits, batch.tokens[:, :logits.shape[1]],
                                          batch.kinds[:, :logits.shape[1]], trie, procedure,
                                          eos_id, shared_trie is not None)
        return (logq if procedure_logp else logp), (cert, jax.lax.stop_gradient(logq[:, 0]))

    def step(state, frozen, ref_params, batch: TextBatch):
        logp, pullback, (cert, anchor_logq) = jax.vjp(
            lambda p: forward(p, frozen, batch), state["params"], has_aux=True)
        old_logp = jax.lax.stop_gradient(logp)
        if settings.beta != 0.0:
            ref_logp = jax.lax.stop_gradient(forward(ref_params, frozen, batch)[0])
        else:
            ref_logp = old_logp
        valid = batch.valid.astype(jnp.float32)
        kinds = batch.kinds
        loss_mask = ((kinds == proc.KIND_FREE) | (kinds == proc.KIND_ITEM)).astype(jnp.float32)
        loss_mask = loss_mask * valid[:, None, None]
        terms = abpo.anchor_terms(
            settings, outcome=batch.outcome,
            self_certainty=abpo.sequence_self_certainty(
                cert[:, 0], certainty_mask(kinds[:, 0], settings.certainty_tokens)),
            target_logp=jnp.sum(anchor_logq, axis=-1), propensity=batch.propensity,
            log_propensity=batch.log_propensity,
            mask=valid, round_certainty=batch.round_certainty,
            stats=state["cert"] if settings.certainty_norm == "running" else None)
        denominators = abpo.loss_denominators(settings, loss_mask[:, 1:], loss_mask[:, 0])

        def loss_fn(lp):
            return abpo.group_loss(
                settings, logp=lp, old_logp=old_logp, ref_logp=ref_logp, mask=loss_mask,
                members=batch.members, terms=terms, valid=valid, target=batch.target,
                sim_reward=batch.sim_reward, format_reward=batch.format_reward,
                denominators=denominators)

        (loss, metrics), g_logp = jax.value_and_grad(loss_fn, has_aux=True)(logp)
        grads = pullback(g_logp)[0]
        new_state, finite = finite_update(state, grads, loss, tx)
        new_state, metrics = end_policy_step(settings, state, new_state, terms, metrics, loss,
                                             finite, grads, valid)
        metrics["completion_tokens"] = abpo.masked_mean(
            jnp.sum(loss_mask[:, 1:], -1),
            jnp.broadcast_to(valid[:, None], loss_mask.shape[:2])[:, 1:])
        return new_state, metrics

    return step


# --- input: featurized records + rollouts -> text batches ---------------------------------


def text_batch(host: dict, policy: TextPolicy, params: Any, key: jax.Array,
               procedure: proc.Procedure, num_generations: int) -> TextBatch:
    """A featurized host batch + G rollouts sampled from `params` (pi_old) -> :class:`TextBatch`
    (host numpy; the learner places it)."""
    text = policy.text
    b = len(host["exposed"])
    trie = None if text.catalogue_mode else Trie(child_tokens=host["trie_tokens"],
                                                 child_nodes=host["trie_nodes"],
                                                 leaf_candidate=host["trie_leaves"])
    samples = policy.sample_prompts(params, host["prompt_tokens"], host["prompt_mask"],
                                    text.shared_trie if trie is None else trie, key, procedure,
                                    num_generations)
    tokens = np.concatenate([host["anchor_tokens"][:, None], samples.tokens], axis=1)
    kinds = np.concatenate([host["anchor_kinds"][:, None], samples.kinds], axis=1)
    members = np.concatenate([host["anchor_item"][:, None], samples.candidate], axis=1)
    fmt = np.concatenate([host["anchor_format"][:, None],
                          text.format_rewards(samples.tokens, samples.kinds)], axis=1)
    sim = (np.zeros(members.shape, np.float32) if text.catalogue_mode else
           np.take_along_axis(np.asarray(host["sim_reward"], np.float32), members, axis=1))
    return TextBatch(
        prompt_tokens=host["prompt_tokens"], prompt_mask=host["prompt_mask"], tokens=tokens,
        kinds=kinds, members=members.astype(np.int32), format_reward=fmt.astype(np.float32),
        sim_reward=sim, propensity=host["propensity"], outcome=host["outcome"],
        target=host["item_target"], round_certainty=host["round_certainty"],
        valid=np.ones(b, np.float32), trie=trie, log_propensity=host.get("log_propensity"))
