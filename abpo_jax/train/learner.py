"""The learner role: jitted train steps (item mode) and the loops that feed them.

Steps: policy-gradient (every `config.methods` entry of kind policy_gradient: ABPO, its
ablations, GRPO, banditnet), SFT (round-0 warm start, `sft_positive`, and `ips_sft`: its rows
weighted by w~ when the method's loss.snips is on). The objective
(`losses/abpo.py`) is called from one function, :func:`policy_objective`.

One step = one global batch of B prompts, split into `grad_accum` micro-batches ([A, B/A, ...]):
  1. log pi~_old [B, C] and the self-certainty of every candidate: from the gradient's own
     forward (`jax.vjp`) when ppo_epochs = 1 and A = 1, else a no-grad pre-pass over the
     micro-batches; log pi~_ref only when beta > 0, from the log's deploy-time log pi~ where
     pi_ref is the policy that deployed the round (`ref_from_log`), else a no-grad forward;
  2. global (whole-batch) quantities: G rollouts ~ pi~_old per prompt, member rewards (the
     anchor and the rollouts alike), SNIPS weights and value, certainty, loss denominators —
     so accumulation is exact (no per-micro-batch statistics);
  3. gradient: the backward of step 1's forward, or a scan over micro-batches summing each
     one's share (mu = ppo_epochs times, rollouts fixed). Non-finite loss or grads: the update
     is skipped and counted.
RNG: fold_in(RngStreams.train_round(round), step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from abpo_jax.data.logs import LogRecord
from abpo_jax.data.pipeline import log_iterator
from abpo_jax.data.splits import Example
from abpo_jax.config import method_learning_rate, method_losses
from abpo_jax.losses import abpo
from abpo_jax.sampling.group_scoring import CandidateBatch, PackedGroup, score_candidates
from abpo_jax.train import state as st
from abpo_jax.train.faults import kill_point
from abpo_jax.train.outputs import progress
from abpo_jax.train.policy import Encoder
from abpo_jax.train.state import ModelSplit


@dataclasses.dataclass
class RLBatch:
    """One global batch of logged requests, [A, b, ...] (A = grad_accum micro-batches).

    cands: the C candidate completions per prompt, packed; exposed [A, b] candidate index of
    the logged item; propensity [A, b]; outcome [A, b] (1 = positive); target [A, b] candidate
    index of the held-out next item (-1 when unknown); sim_reward [A, b, C] simulated click
    probability of each candidate (logged); round_certainty [A, b] the anchor's self-certainty
    quantile over the round's log under pi_{k-1} (logged; certainty_norm=round); valid [A, b]
    (0 = padding row); log_propensity [A, b] the logged log p (SNIPS in log space; None: log
    of `propensity`); policy_logp [A, b, C] the deployed policy's log pi~ as logged
    (`records.POLICY_LOGP`; a NaN row: not logged), pi_ref's log-probs in a step built with
    `ref_from_log` (None: not featurized).
    """
    cands: CandidateBatch
    exposed: Any
    propensity: Any
    outcome: Any
    target: Any
    sim_reward: Any
    round_certainty: Any
    valid: Any
    log_propensity: Any = None
    policy_logp: Any = None


jax.tree_util.register_dataclass(
    RLBatch, data_fields=[f.name for f in dataclasses.fields(RLBatch)], meta_fields=[])


def init_step_state(params: Any, opt_state: Any) -> dict:
    """The train-state pytree the steps donate: params, optimizer state, counters, running
    self-certainty extremes."""
    # Counters live on the params' mesh (replicated), so the step's shardings are one mesh.
    sharding = jax.tree.leaves(params)[0].sharding
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    scalars = {"step": jnp.int32(0), "skipped": jnp.int32(0), "cert": abpo.CertaintyStats.init()}
    return {"params": params, "opt": opt_state, **jax.device_put(scalars, replicated)}


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [..., C] at idx [..., K] -> [..., K]."""
    return jnp.take_along_axis(x, idx, axis=-1)


def _scan_micro(fn: Callable, xs: Any) -> Any:
    """Map `fn` over the leading micro-batch axis (lax.map keeps one micro-batch live)."""
    return jax.lax.map(fn, xs)


def finite_update(state: dict, grads: Any, loss: jax.Array, tx: optax.GradientTransformation
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


def end_policy_step(settings: abpo.LossSettings, state: dict, new_state: dict,
                    terms: abpo.AnchorTerms, metrics: dict, loss: jax.Array, finite: jax.Array,
                    grads: Any, valid: jax.Array) -> tuple[dict, dict]:
    """The end every policy-gradient step shares: the running certainty extremes carried
    (certainty_norm=running) and the step metrics every mode reports."""
    new_state["cert"] = terms.stats if settings.certainty_norm == "running" else state["cert"]
    metrics.update(loss=loss, finite=finite.astype(jnp.float32),
                   grad_norm=optax.global_norm(grads),
                   snips_weight=abpo.masked_mean(terms.snips_weight, valid))
    metrics.update(weight_stats(terms.snips_weight, valid))
    return new_state, metrics


STEP_ONLY = "step/"   # step metrics for the training curves only, not the round's train/ means


def weight_stats(weight: jax.Array, valid: jax.Array) -> dict:
    """The anchors' SNIPS weights w~ over the valid rows: min, max and the effective sample
    size as a fraction of the rows, (sum w)^2 / (n sum w^2) (1 = uniform weights). Step-only:
    TensorBoard curves, not the round's metrics.jsonl row."""
    ok = valid.reshape(weight.shape) > 0
    w = jnp.where(ok, weight, 0.0)
    n = jnp.maximum(ok.sum(), 1)
    ess = jnp.square(w.sum()) / jnp.maximum(n * jnp.square(w).sum(), 1e-30)
    some = ok.any()   # no valid row: 0, not +-inf (the step history is stored as JSON)
    return {f"{STEP_ONLY}w_min": jnp.where(some, jnp.where(ok, weight, jnp.inf).min(), 0.0),
            f"{STEP_ONLY}w_max": jnp.where(some, jnp.where(ok, weight, -jnp.inf).max(), 0.0),
            f"{STEP_ONLY}w_ess_fraction": ess}


@dataclasses.dataclass
class Objective:
    """The whole-batch quantities of one policy step and its per-micro-batch loss."""
    terms: abpo.AnchorTerms     # c, u(y, c), SNIPS weights, V, running stats ([A, b] rows)
    members: jax.Array          # [A, b, G+1] candidate indices: the anchor, then G rollouts
    micro_loss: Callable[[jax.Array, int], tuple]  # (log pi~_theta [b, C], i) -> (loss, m)


def policy_objective(settings: abpo.LossSettings, batch: RLBatch, old_logp: jax.Array,
                     ref_logp: jax.Array, certainty: jax.Array, stats: abpo.CertaintyStats,
                     key: jax.Array) -> Objective:
    """The method's objective over one global batch [A, b, C]: the one place that calls the
    objective (`losses/abpo.py`).

    Whole-batch quantities (SNIPS mean and V, certainty extremes, the loss denominators) are
    computed here over every micro-batch, so accumulation is exact; `micro_loss(logp, i)` is
    micro-batch i's share of the loss at the current log pi~_theta.
    """
    A, b, _ = old_logp.shape
    G = settings.num_generations
    valid = batch.valid.astype(jnp.float32)
    flat = lambda x: x.reshape((A * b,) + x.shape[2:])  # noqa: E731
    terms = abpo.anchor_terms(
        settings, outcome=flat(batch.outcome),
        self_certainty=flat(_take(certainty, batch.exposed[..., None])[..., 0]),
        target_logp=flat(_take(old_logp, batch.exposed[..., None])[..., 0]),
        propensity=flat(batch.propensity), mask=flat(valid),
        log_propensity=None if batch.log_propensity is None else flat(batch.log_propensity),
        round_certainty=flat(batch.round_certainty),
        stats=stats if settings.certainty_norm == "running" else None)
    # Drawn over the flat global batch, so the draws do not depend on grad_accum.
    rollouts = jax.random.categorical(key, flat(old_logp)[:, None], axis=-1,
                                      shape=(A * b, G)).reshape(A, b, G)
    members = jnp.concatenate([batch.exposed[..., None], rollouts], axis=-1)
    denominators = abpo.loss_denominators(
        settings, jnp.broadcast_to(valid[..., None, None], (A, b, G, 1)), valid[..., None])
    rows = lambda x, i: x.reshape((A, b) + x.shape[1:])[i]  # noqa: E731

    def micro_loss(logp: jax.Array, i: int) -> tuple:
        terms_i = terms.rows(lambda x: rows(x, i))
        loss, metrics = abpo.item_mode_loss(
            settings, logp=logp, old_logp=old_logp[i], ref_logp=ref_logp[i],
            members=members[i], terms=terms_i, valid=valid[i], target=batch.target[i],
            sim_reward=batch.sim_reward[i], denominators=denominators)
        return loss, metrics

    return Objective(terms, members, micro_loss)


def make_policy_step(split: ModelSplit, tx: optax.GradientTransformation,
                     settings: abpo.LossSettings, ppo_epochs: int = 1,
                     single_pass: bool = True, shared_rows: int = 0,
                     ref_from_log: bool = False) -> Callable:
    """Pure policy-gradient step `(state, frozen, ref_params, batch, round_key) -> (state, metrics)`.

    `state` = {"params", "opt", "step", "skipped", "cert"} ("cert": running self-certainty
    extremes for certainty_norm=running); `ref_params` are pi_ref's trainable params (pi_{k-1});
    `settings` already carry the method's overrides.

    ppo_epochs = mu inner updates on the batch (rollouts fixed, rho = pi_theta / pi_old). With
    mu = 1 and one micro-batch, pi_old comes from the very forward the gradient uses
    (`jax.vjp`: forward, then rollouts and advantages from its outputs, then the backward), so
    there is no separate pi_old pass; the pi_ref pass is skipped when beta = 0.
    `single_pass=False` keeps the separate pi_old pre-pass anyway (the reference the
    single-pass step is tested and benchmarked against). `shared_rows`: logits rows scored
    once per prompt (`Encoder.shared_rows`; 0 = every row apart).

    `ref_from_log` (static: one program): pi_ref is the policy that deployed the batch's round
    (`experiment.ref_logp_from_log`), so log pi~_ref is the deploy-time log pi~ the records
    carry (`batch.policy_logp`) and the step skips the pi_ref forward, one of its ~4
    forward-equivalents. A batch with a record that lacks it (NaN: a log written before the
    key existed, or imported) computes the forward instead, inside the same program
    (`lax.cond`): the record is valid data and pi_ref's log-probs are computable, so it is
    neither quarantined nor dropped, and its update is the one the forward gives.
    """
    certainty_on = settings.certainty_tokens

    def score(params, frozen, cands):
        cand_logp, _, cert = score_candidates(split.merge(params, frozen), cands, certainty_on,
                                              shared_rows)
        return cand_logp, cert

    def step(state, frozen, ref_params, batch: RLBatch, round_key):
        key = jax.random.fold_in(round_key, state["step"])
        A = batch.valid.shape[0]
        one_pass = single_pass and ppo_epochs == 1 and A == 1
        if one_pass:
            first = jax.tree.map(lambda x: x[0], batch.cands)
            (logp0, cert0), pullback = jax.vjp(lambda p: score(p, frozen, first),
                                               state["params"])
            old_logp, cert = jax.lax.stop_gradient((logp0[None], cert0[None]))
        else:
            params = jax.lax.stop_gradient(state["params"])
            old_logp, cert = jax.lax.stop_gradient(
                _scan_micro(lambda c: score(params, frozen, c), batch.cands))
        if settings.beta != 0.0:
            ref_logp = reference_logp(batch, lambda: _scan_micro(
                lambda c: score(ref_params, frozen, c), batch.cands)[0], ref_from_log)
        else:
            ref_logp = old_logp
        objective = policy_objective(settings, batch, old_logp, ref_logp, cert,
                                     state["cert"], key)

        if one_pass:
            (loss, metrics), g_logp = jax.value_and_grad(
                lambda lp: objective.micro_loss(lp, 0), has_aux=True)(logp0)
            grads = pullback((g_logp, jnp.zeros_like(cert0)))[0]
            new_state, finite = finite_update(state, grads, loss, tx)
        else:
            grad_fn = jax.grad(lambda p, i: _split_aux(objective.micro_loss(
                score(p, frozen, jax.tree.map(lambda x: x[i], batch.cands))[0], i)),
                has_aux=True)
            new_state = state
            for _ in range(ppo_epochs):   # mu is small and static: unrolled
                grads, loss, metrics = _accumulate(grad_fn, new_state["params"], A)
                new_state, finite = finite_update(new_state, grads, loss, tx)
        return end_policy_step(settings, state, new_state, objective.terms, metrics, loss,
                               finite, grads, batch.valid.astype(jnp.float32).reshape(-1))

    return step


def reference_logp(batch: RLBatch, forward: Callable[[], jax.Array], from_log: bool
                   ) -> jax.Array:
    """log pi~_ref [A, b, C], no gradient: `forward()` (pi_ref's params over the candidates),
    or with `from_log` the logged `batch.policy_logp`, unless a valid row of it is NaN (not
    logged): then the whole batch takes `forward()` (only that branch runs)."""
    if not from_log or batch.policy_logp is None:   # static: the batch has no such field
        return jax.lax.stop_gradient(forward())
    logged = jnp.asarray(batch.policy_logp, jnp.float32)
    missing = jnp.isnan(logged) & (batch.valid[..., None] > 0)
    # padding rows' NaNs -> 0: masked in the loss, but 0 * NaN would still be NaN
    logged = jnp.where(jnp.isnan(logged), 0.0, logged)
    return jax.lax.stop_gradient(jax.lax.cond(jnp.any(missing), forward, lambda: logged))


def _accumulate(grad_fn: Callable, params: Any, num_micro: int) -> tuple[Any, jax.Array, dict]:
    """Sum `grad_fn(params, i)` over micro-batches (each already divided by the global
    denominators, so the sums are the batch's gradient and loss); metrics averaged."""
    zeros_g = jax.tree.map(jnp.zeros_like, params)
    _, (_, m_shape) = jax.eval_shape(grad_fn, params, 0)
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)

    def body(carry, i):
        g_acc, l_acc, m_acc = carry
        g, (l, m) = grad_fn(params, i)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, m_acc, m)), None

    (g, loss, m), _ = jax.lax.scan(body, (zeros_g, jnp.float32(0), zeros_m),
                                   jnp.arange(num_micro))
    return g, loss, {k: v / num_micro for k, v in m.items()}


def _split_aux(out: tuple) -> tuple[jax.Array, tuple]:
    """(loss, metrics) -> (loss, (loss, metrics)) for jax.grad."""
    loss, metrics = out
    return loss, (loss, metrics)

def make_sft_step(split: ModelSplit, tx: optax.GradientTransformation,
                  ips: abpo.LossSettings | None = None) -> Callable:
    """Pure SFT step `(state, frozen, cands [A, b, ...], index [A, b], weight [A, b])`.

    loss = - sum_b w_b log pi_theta(o_{b, index_b} | x_b) / sum_b w_b |o_{b, index_b}|: the
    token-mean NLL of one packed completion per row (the next item for round-0 SFT; the logged
    item with w = 1[positive] for `sft_positive`). Accumulated exactly as (sum, denom).

    `ips` (ips_sft: a method of kind sft_positive with loss.snips on): the step takes the
    logged log p [A, b] as a fourth batch argument and weighs row b by y_b w~_b
    (`abpo.sft_weights`, w~ over the whole global batch from a no-grad pass of pi_old =
    the step's own params: the closed-set pi~(a|x) at temperature 1).
    """

    def micro(p, frozen, cands, index, weight):
        _, seq_logp, _ = score_candidates(split.merge(p, frozen), cands)
        tokens = jnp.sum(cands.packed.completion_mask, axis=-1).astype(jnp.float32)
        loss_sum = -jnp.sum(weight * _take(seq_logp, index[:, None])[:, 0])
        return loss_sum, (loss_sum, jnp.sum(weight * _take(tokens, index[:, None])[:, 0]))

    grad_fn = jax.grad(micro, has_aux=True)

    def step(state, frozen, cands: CandidateBatch, index, weight, log_propensity=None):
        if ips is not None:
            params = jax.lax.stop_gradient(state["params"])
            old = jax.lax.stop_gradient(_scan_micro(
                lambda c: score_candidates(split.merge(params, frozen), c)[0], cands))
            weight = abpo.sft_weights(
                ips, outcome=weight.reshape(-1), mask=jnp.ones(weight.size, jnp.float32),
                target_logp=_take(old, index[..., None])[..., 0].reshape(-1),
                log_propensity=log_propensity.reshape(-1)).reshape(weight.shape)

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
        new_state, finite = finite_update(state, grads, loss, tx)
        return new_state, {"loss": loss, "finite": finite.astype(jnp.float32),
                           "grad_norm": optax.global_norm(grads)}

    return step




# --- input: logged records -> RL batches ----------------------------------------------------


def log_batches(shards: Sequence[str], featurize_record: Callable[[LogRecord], dict], *,
                steps: int, batch_size: int, seed: int, num_records: int,
                featurize_batch: Callable[[list], dict] | None = None) -> Iterator[dict]:
    """This process's share of `steps` global batches of a round's log, each record through
    `featurize_record` (the mode's `featurize`); grain iterator,
    checkpointable, reshuffled every epoch."""
    per_epoch = max(num_records // batch_size, 1)
    return iter(log_iterator(
        list(shards), batch_size=batch_size // jax.process_count(), seed=seed,
        featurize=featurize_record, num_epochs=max(1, math.ceil(steps / per_epoch)),
        featurize_batch=featurize_batch))


def rl_batch(b: dict) -> RLBatch:
    """A featurized host batch (dict of [n, ...]) as an :class:`RLBatch`."""
    packed = PackedGroup(tokens=b["tokens"], positions=b["positions"],
                         segments=b["segments"], prompt_lengths=b["prompt_lengths"],
                         completion_tokens=b["completion_tokens"],
                         completion_mask=b["completion_mask"])
    return RLBatch(cands=CandidateBatch(packed, b["item_mask"], b["valid_cands"]),
                   exposed=b["exposed"], propensity=b["propensity"], outcome=b["outcome"],
                   target=b["target"], sim_reward=b["sim_reward"],
                   round_certainty=b["round_certainty"],
                   valid=np.ones(len(b["exposed"]), np.float32),
                   log_propensity=b.get("log_propensity"), policy_logp=b.get("policy_logp"))


# --- the learner: jitted steps and their loops ------------------------------------------------

SaveFn = Callable[[dict, int, list], None]   # (train state, next step, metric history)
STATE_KEYS = ("params", "opt", "step", "skipped", "cert")


@dataclasses.dataclass
class Learner:
    """Runs the SFT and per-method update loops on the mesh; steps are jitted once per name
    (donated state, explicit shardings, batch over data x fsdp)."""

    split: ModelSplit
    frozen: Any
    mesh: Mesh
    config: Any                    # the run config: `train.*` and `loss.*` fields
    mode: Any                      # the action space (`train/modes/base.Mode`)
    show_progress: bool = False
    round_requests: int = 0        # requests logged per round (0: data.users_per_round)
    # per-step training scalars (name, step, scalars) -> TensorBoard; None = not reported
    on_step: Callable[[str, int, dict], None] | None = None

    def __post_init__(self):
        self.settings = abpo.LossSettings.from_config(self.config.loss)
        self.methods = method_losses(self.config)   # name -> (update kind, loss overrides)
        self.micro_sharding = NamedSharding(self.mesh, P(None, ("data", "fsdp")))
        self.batch_rows = NamedSharding(self.mesh, P(("data", "fsdp")))
        self.replicated = st.replicated(self.mesh)
        self.compiled: dict[str, Callable] = {}   # jit cache: pure memo, name -> step

    def update_steps(self) -> int:
        """Update steps per round: `train.steps_per_round`, else epochs over the round's log."""
        t = self.config.train
        if t.steps_per_round > 0:
            return int(t.steps_per_round)
        n = self.round_requests or self.config.data.users_per_round
        return (n // t.batch_size) * int(t.epochs_per_round)

    def optimizer(self, sft: bool, method: str | None = None) -> optax.GradientTransformation:
        """SFT's or a method's update optimizer (a method entry may carry its own
        learning_rate: a tuned choice of `abpo-jax study`)."""
        return st.make_optimizer(self.config, *self._rate(sft, method))

    def _rate(self, sft: bool, method: str | None = None) -> tuple[float, int]:
        """(base learning rate, schedule length in steps) of SFT or `method`'s update."""
        t = self.config.train
        steps = int(t.sft_steps) if sft else self.update_steps()
        lr = (t.sft_learning_rate if sft else method_learning_rate(self.config, method)
              if method is not None else t.learning_rate)
        return float(lr), max(steps, 1)

    def fresh_state(self, params: Any, sft: bool = False) -> dict:
        """A train state of `params` with a new optimizer state."""
        return init_step_state(params, st.init_opt_state(self.optimizer(sft), params,
                                                         self.mesh))

    def _jit(self, name: str, make: Callable[[], Callable], state: dict, num_batch_args: int,
             with_ref: bool = False, batch_sharding: NamedSharding | None = None) -> Callable:
        """The jitted step `name`: (state, frozen[, ref params], batch args...[, key]) with
        explicit shardings, the state donated; batch args on the micro-batch sharding unless
        `batch_sharding` is given; a replicated key last with the ref params."""
        if name not in self.compiled:
            sh = jax.tree.map(lambda x: x.sharding, state)
            ins = [sh, jax.tree.map(lambda x: x.sharding, self.frozen)]
            if with_ref:
                ins.append(jax.tree.map(lambda x: x.sharding, state["params"]))
            ins += [batch_sharding or self.micro_sharding] * num_batch_args
            if with_ref:
                ins.append(self.replicated)
            self.compiled[name] = jax.jit(make(), in_shardings=tuple(ins),
                                          out_shardings=(sh, self.replicated), donate_argnums=0)
        return self.compiled[name]

    def _place(self, host: Any) -> Any:
        """This process's [B/P, ...] host arrays -> global [B, ...] arrays sharded by row."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_rows, np.asarray(x)),
            host)

    def _micro(self, host: Any) -> Any:
        """This process's [B/P, ...] host arrays (P processes) -> global [A, B/A, ...] arrays
        placed with the micro-batch sharding (each process fills its devices' rows)."""
        a = int(self.config.train.grad_accum)
        host = jax.tree.map(lambda x: np.asarray(x).reshape((a, -1) + np.shape(x)[1:]), host)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.micro_sharding, x), host)

    def sft(self, state: dict, examples: Sequence[Example], encoder: Encoder, start: int,
            save: SaveFn) -> dict:
        """Round-0 warm start: steps `start..train.sft_steps` on next-item targets."""
        t = self.config.train
        steps, bs = int(t.sft_steps), int(t.batch_size)
        tx = self.optimizer(sft=True)
        fn = self._jit("sft", lambda: make_sft_step(self.split, tx), state, 3)
        share = bs // jax.process_count()
        lo = jax.process_index() * share
        for s in progress(range(start, steps), "sft", total=steps - start,
                          enabled=self.show_progress):
            # this process's share of the global batch (all of it with one process)
            ex = [examples[i % len(examples)] for i in range(s * bs + lo, s * bs + lo + share)]
            cands = self._micro(encoder.encode(ex))
            index = self._micro(np.array([e.target_index for e in ex], np.int32))
            weight = self._micro(np.ones(len(ex), np.float32))
            with jax.set_mesh(self.mesh):
                state, m = fn(state, self.frozen, cands, index, weight)
            if self.on_step is not None:
                self.on_step("sft", s + 1, {"sft_loss": m["loss"],
                                            "lr": self._lr(True, s)})
            kill_point("sft")
            self._maybe_save(save, state, s + 1, steps, [])
        return state

    def _lr(self, sft: bool, step: int, method: str | None = None) -> float:
        """The learning rate the schedule gives at `step` (for the training curves)."""
        return float(st.make_schedule(self.config, *self._rate(sft, method))(step))

    def update(self, method: str, state: dict, ref: Any, batches: Iterator[dict],
               round_key: jax.Array, start: int, hist: list, save: SaveFn,
               round_index: int = 1) -> tuple[dict, dict]:
        """One method's round update from step `start` (with the metric history `hist` of
        the steps before it). Returns (train state, mean train metrics of the round).
        `round_index` places the steps on the method's curve (x = step over all rounds)."""
        steps = self.update_steps()
        tx = self.optimizer(sft=False, method=method)
        state = {key: state[key] for key in STATE_KEYS}
        kind, overrides = self.methods[method]
        policy_gradient = kind == "policy_gradient"
        mode = self.mode
        if policy_gradient:
            settings = self.settings.replace(**overrides)
            fn = self._jit(f"policy:{method}", lambda: mode.make_policy_step(tx, settings),
                           state, 1, with_ref=True,
                           batch_sharding=self.batch_rows if mode.batch_rows else None)
            place = self._place if mode.batch_rows else self._micro
        else:  # sft_positive: SFT on the logged item, weighted by its positive outcome
            # (ips_sft: and by w~, when the method's loss.snips is on)
            ips = self.settings.replace(**overrides)
            ips = ips if ips.snips == "on" else None
            fn = self._jit(f"sft:{method}", lambda: make_sft_step(self.split, tx, ips), state,
                           3 if ips is None else 4)
        hist = list(hist)
        for s in progress(range(start, steps), "update", total=steps - start,
                          enabled=self.show_progress):
            host = next(batches)
            if policy_gradient:
                batch = place(mode.policy_batch(host, state["params"],
                                                jax.random.fold_in(round_key, s), settings))
                with jax.set_mesh(self.mesh):
                    state, m = fn(state, self.frozen, ref, batch, round_key)
            else:
                batch = self._micro(rl_batch(host))
                with jax.set_mesh(self.mesh):
                    state, m = fn(state, self.frozen, batch.cands, batch.exposed,
                                  batch.outcome.astype(jnp.float32),
                                  *(() if ips is None else (batch.log_propensity,)))
            hist.append({key: float(v) for key, v in jax.device_get(m).items()})
            if self.on_step is not None:
                self.on_step(method, (round_index - 1) * steps + s + 1,
                             {**{k.removeprefix(STEP_ONLY): v for k, v in hist[-1].items()},
                              "lr": self._lr(False, s, method)})
            kill_point("update")
            self._maybe_save(save, state, s + 1, steps, hist)
        return state, train_summary(hist, state)

    def _maybe_save(self, save: SaveFn, state: dict, done: int, steps: int, hist: list) -> None:
        every = int(self.config.checkpoint.every_steps)
        if every and done % every == 0 and done < steps:
            save(state, done, hist)


def train_summary(hist: list[dict], state: dict) -> dict:
    """Mean of every step metric over the round (`train/<name>`), plus skipped steps."""
    if not hist:
        return {}
    out = {f"train/{key}": float(np.mean([h[key] for h in hist])) for key in hist[0]
           if not key.startswith(STEP_ONLY)}
    out["train/skipped"] = int(state["skipped"])
    return out
