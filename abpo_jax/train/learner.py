"""The jitted train steps (item mode): policy-gradient (ABPO / GRPO / anchor-no-SNIPS) and SFT.

One step = one global batch of B prompts, split into `grad_accum` micro-batches ([A, B/A, ...]):
  1. no-grad pre-pass over all micro-batches with the same packed scorer: log pi~_old [B, C]
     (the current params), self-certainty of every candidate's item-id span, log pi~_ref;
  2. global (whole-batch) quantities: G rollouts ~ pi~_old per prompt, rewards, group
     advantages with the anchor, SNIPS weights, normalised certainty and tempered anchor reward
     — so accumulation is exact (no per-micro-batch statistics);
  3. grad pass: scan over micro-batches summing grad(loss_sum) and denom; update with
     grad_sum / denom_sum. Non-finite loss or grads: the update is skipped and counted.
RNG: fold_in(fold_in(PRNGKey(seed), round), step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from abpo_jax.losses.certainty import CertaintyStats
from abpo_jax.losses.objective import AnchorTerms, abpo_objective, anchor_terms
from abpo_jax.losses.settings import LossSettings
from abpo_jax.train.policy import CandidateBatch, score_candidates
from abpo_jax.train.state import ModelSplit

POLICY_METHODS = ("abpo", "grpo", "anchor_no_snips")


def method_settings(settings: LossSettings, method: str) -> LossSettings:
    """The loss settings a method trains with.

    abpo: as configured (anchor full, SNIPS on, tempering); grpo: anchor off (propensities
    unused); anchor_no_snips: anchor full with unit weights.
    """
    if method == "abpo":
        return settings
    if method == "grpo":
        return settings.replace(name="grpo", anchor="off")
    if method == "anchor_no_snips":
        return settings.replace(anchor="full", snips="off")
    raise ValueError(f"method {method!r} has no policy loss; policy methods: {POLICY_METHODS}")


@dataclasses.dataclass
class RLBatch:
    """One global batch of logged requests, [A, b, ...] (A = grad_accum micro-batches).

    cands: the C candidate completions per prompt, packed; exposed [A, b] candidate index of the logged
    item; propensity [A, b]; outcome [A, b] (1 = positive); target [A, b] candidate index of the
    held-out next item (-1 when unknown); sim_reward [A, b, C] simulated click probability of
    each candidate (zeros unless `simulator` is a reward); valid [A, b] (0 = padding row).
    """
    cands: CandidateBatch
    exposed: Any
    propensity: Any
    outcome: Any
    target: Any
    sim_reward: Any
    valid: Any


jax.tree_util.register_dataclass(
    RLBatch, data_fields=[f.name for f in dataclasses.fields(RLBatch)], meta_fields=[])


def rollout_rewards(rollouts: jax.Array, batch: RLBatch, r0: jax.Array,
                    settings: LossSettings) -> jax.Array:
    """Summed item-mode rollout rewards [.., G] for `settings.rewards`.

    format: 1 (item mode only emits well-formed tags); anchor_match: r_0 when the rollout is the
    logged item; ground_truth: 1 when it is the held-out next item; simulator: the simulated
    click probability of the rolled-out item.
    """
    r = jnp.zeros(rollouts.shape, jnp.float32)
    if "format" in settings.rewards:
        r = r + 1.0
    if "anchor_match" in settings.rewards:
        r = r + jnp.where(rollouts == batch.exposed[..., None], r0[..., None], 0.0)
    if "ground_truth" in settings.rewards:
        r = r + (rollouts == batch.target[..., None]).astype(jnp.float32)
    if "simulator" in settings.rewards:
        r = r + jnp.take_along_axis(batch.sim_reward, rollouts, axis=-1)
    return r


def init_step_state(params: Any, opt_state: Any) -> dict:
    """The train-state pytree the steps donate: params, optimizer state, counters, running
    self-certainty extremes."""
    # Counters live on the params' mesh (replicated), so the step's shardings are one mesh.
    sharding = jax.tree.leaves(params)[0].sharding
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    scalars = {"step": jnp.int32(0), "skipped": jnp.int32(0), "cert": CertaintyStats.init()}
    return {"params": params, "opt": opt_state, **jax.device_put(scalars, replicated)}


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [..., C] at idx [..., K] -> [..., K]."""
    return jnp.take_along_axis(x, idx, axis=-1)


def _scan_micro(fn: Callable, xs: Any) -> Any:
    """Map `fn` over the leading micro-batch axis (lax.map keeps one micro-batch live)."""
    return jax.lax.map(fn, xs)


def _finite_update(state: dict, grads: Any, loss: jax.Array, tx: optax.GradientTransformation
                   ) -> tuple[dict, jax.Array]:
    """Apply `tx` unless the loss or any gradient is non-finite (then keep params + opt state)."""
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt = tx.update(safe_grads, state["opt"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return {
        "params": keep(new_params, state["params"]),
        "opt": keep(new_opt, state["opt"]),
        "step": state["step"] + 1,
        "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        "cert": state["cert"],
    }, finite


def make_policy_step(split: ModelSplit, tx: optax.GradientTransformation,
                     settings: LossSettings, certainty_on: str = "item") -> Callable:
    """Pure policy-gradient step `(state, frozen, ref_params, batch, round_key) -> (state, metrics)`.

    `state` = {"params", "opt", "step", "skipped", "cert"} ("cert": running self-certainty
    extremes for certainty_norm=running); `ref_params` are pi_ref's trainable params (pi_{k-1});
    `settings` already reflect the method (see `method_settings`).
    """
    G = settings.num_generations

    def score(params, frozen, cands):
        cand_logp, _, cert = score_candidates(split.merge(params, frozen), cands, certainty_on)
        return cand_logp, cert

    def step(state, frozen, ref_params, batch: RLBatch, round_key):
        key = jax.random.fold_in(round_key, state["step"])
        params = jax.lax.stop_gradient(state["params"])
        old_logp, cert = jax.lax.stop_gradient(
            _scan_micro(lambda c: score(params, frozen, c), batch.cands))
        if settings.beta != 0.0:
            ref_logp = jax.lax.stop_gradient(
                _scan_micro(lambda c: score(ref_params, frozen, c), batch.cands)[0])
        else:
            ref_logp = old_logp
        A, b, _ = old_logp.shape
        valid = batch.valid.astype(jnp.float32)

        # Whole-batch quantities (SNIPS mean, certainty min/max): exact under accumulation.
        anchor_old = _take(old_logp, batch.exposed[..., None])[..., 0]
        terms = anchor_terms(
            settings, outcome=batch.outcome,
            self_certainty=_take(cert, batch.exposed[..., None])[..., 0],
            target_prob=jnp.exp(anchor_old), propensity=batch.propensity, mask=valid,
            stats=state["cert"] if settings.certainty_norm == "running" else None)
        # Drawn over the flat global batch, so the draws do not depend on grad_accum.
        rollouts = jax.random.categorical(
            key, old_logp.reshape(A * b, 1, -1), axis=-1, shape=(A * b, G)).reshape(A, b, G)
        rewards = rollout_rewards(rollouts, batch, terms.reward, settings)
        rollout_mask = jnp.broadcast_to(valid[..., None], rewards.shape)

        def micro_loss(p, i):
            logp, _ = score(p, frozen, jax.tree.map(lambda x: x[i], batch.cands))
            roll = rollouts[i]
            anchor_i = AnchorTerms(terms.reward[i], terms.weight[i], terms.certainty[i], None)
            out = abpo_objective(
                settings, rollout_rewards=rewards[i],
                logp=_take(logp, roll)[..., None],
                old_logp=_take(old_logp[i], roll)[..., None],
                ref_logp=_take(ref_logp[i], roll)[..., None],
                mask=rollout_mask[i][..., None], rollout_mask=rollout_mask[i],
                anchor=anchor_i, anchor_logp=_take(logp, batch.exposed[i][..., None]),
                anchor_mask=valid[i][..., None], anchor_row_mask=valid[i])
            return _split_aux(out)

        grad_fn = jax.grad(micro_loss, has_aux=True)

        def accumulate(carry, i):
            g_acc, s_acc, d_acc, m_acc = carry
            g, (s, d, m) = grad_fn(state["params"], i)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, d_acc + d,
                    jax.tree.map(jnp.add, m_acc, m)), None

        zeros_g = jax.tree.map(jnp.zeros_like, state["params"])
        _, (_, _, m_shape) = jax.eval_shape(grad_fn, state["params"], 0)
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
        (g_sum, loss_sum, denom), m_sum = _sum_scan(accumulate, zeros_g, zeros_m, A)
        denom = jnp.maximum(denom, 1e-8)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        loss = loss_sum / denom
        new_state, finite = _finite_update(state, grads, loss, tx)
        if settings.certainty_norm == "running":
            new_state["cert"] = terms.stats
        else:
            new_state["cert"] = state["cert"]
        metrics = {k: v / A for k, v in m_sum.items()}
        n = jnp.maximum(jnp.sum(valid), 1.0)
        metrics.update(
            loss=loss, finite=finite.astype(jnp.float32), grad_norm=optax.global_norm(grads),
            reward=jnp.sum(rewards * rollout_mask) / jnp.maximum(jnp.sum(rollout_mask), 1.0),
            anchor_reward=jnp.sum(terms.reward * valid) / n,
            snips_weight=jnp.sum(terms.weight * valid) / n)
        return new_state, metrics

    return step


def _sum_scan(accumulate: Callable, zeros_g: Any, zeros_m: Any, num_micro: int
              ) -> tuple[tuple, Any]:
    """Run `accumulate` over micro-batch indices; ((grad_sum, loss_sum, denom), metric sums)."""
    (g, s, d, m), _ = jax.lax.scan(
        accumulate, (zeros_g, jnp.float32(0), jnp.float32(0), zeros_m), jnp.arange(num_micro))
    return (g, s, d), m


def _split_aux(out: tuple) -> tuple[jax.Array, tuple]:
    """(loss_sum, denom, metrics) -> (loss_sum, (loss_sum, denom, metrics)) for jax.grad."""
    loss_sum, denom, metrics = out
    return loss_sum, (loss_sum, denom, metrics)


def make_sft_step(split: ModelSplit, tx: optax.GradientTransformation) -> Callable:
    """Pure SFT step `(state, frozen, cands [A, b, ...], index [A, b], weight [A, b])`.

    loss = - sum_b w_b log pi_theta(o_{b, index_b} | x_b) / sum_b w_b |o_{b, index_b}|: the
    token-mean NLL of one packed completion per row (the next item for round-0 SFT; the logged
    item with w = 1[positive] for `sft_positive`). Accumulated exactly as (sum, denom).
    """

    def micro(p, frozen, cands, index, weight):
        _, seq_logp, _ = score_candidates(split.merge(p, frozen), cands)
        tokens = jnp.sum(cands.packed.completion_mask, axis=-1).astype(jnp.float32)
        loss_sum = -jnp.sum(weight * _take(seq_logp, index[:, None])[:, 0])
        return loss_sum, (loss_sum, jnp.sum(weight * _take(tokens, index[:, None])[:, 0]))

    grad_fn = jax.grad(micro, has_aux=True)

    def step(state, frozen, cands: CandidateBatch, index, weight):
        def accumulate(carry, xs):
            g_acc, s_acc, d_acc = carry
            g, (s, d) = grad_fn(state["params"], frozen, *xs)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, d_acc + d), None

        zeros_g = jax.tree.map(jnp.zeros_like, state["params"])
        (g_sum, loss_sum, denom), _ = jax.lax.scan(
            accumulate, (zeros_g, jnp.float32(0), jnp.float32(0)), (cands, index, weight))
        denom = jnp.maximum(denom, 1e-8)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        loss = loss_sum / denom
        new_state, finite = _finite_update(state, grads, loss, tx)
        return new_state, {"loss": loss, "finite": finite.astype(jnp.float32),
                           "grad_norm": optax.global_norm(grads)}

    return step


