"""The deployed logging policy: expose one candidate per request, record its exact propensity.

A policy is a scoring function `score_fn(examples) -> log pi [B, C]` over each example's closed
candidate list (item mode; the model's packed candidate scorer plugs in here). The logging policy
draws the exposed item from softmax(log pi / temperature), logs that probability as the
propensity, asks the user simulator for the outcome, and commits the round through
`data.log_store` (validated, atomic). Randomness: `fold_in(PRNGKey(seed), round)`.

Each record's `extras` carry what the update needs, computed once here so the training side
never calls the simulator: the held-out target (`TARGET`), the history ratings (`HISTORY_RATINGS`,
the exact prompt) and every candidate's simulated click probability (`CLICK_PROBS`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.data import log_store
from abpo_jax.data.logs import LogRecord
# The extras keys `log_round` writes (the schema: `data/records.py`).
from abpo_jax.data.records import (ANCHOR_CERTAINTY, CLICK_PROBS, HISTORY_RATINGS,
                                   LOG_PROPENSITY, POLICY_LOGP, TARGET)
from abpo_jax.losses.abpo import certainty_quantiles
from abpo_jax.sim.replay import Feedback, as_feedback, request_keys
from abpo_jax.sim.users import UserSimulator


class ExampleLike(Protocol):
    """What the logging policy reads of `data.splits.Example`."""

    user: int
    history: np.ndarray      # [h] item ids, oldest first
    candidates: np.ndarray   # [C] item ids



ScoreFn = Callable[[Sequence[ExampleLike]], "jax.Array | np.ndarray"]


def uniform_policy() -> ScoreFn:
    """log pi(c|x) = -log C for every candidate."""

    def score(examples: Sequence[ExampleLike]) -> np.ndarray:
        c = len(examples[0].candidates)
        return np.full((len(examples), c), -np.log(c), np.float32)

    return score


def popularity_policy(item_counts: np.ndarray, smoothing: float = 1.0) -> ScoreFn:
    """pi(c|x) proportional to (count(c) + smoothing) over the candidates."""
    log_pop = np.log(np.asarray(item_counts, np.float64) + smoothing)

    def score(examples: Sequence[ExampleLike]) -> np.ndarray:
        logits = log_pop[np.stack([np.asarray(e.candidates) for e in examples])]
        log_z = np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        return (logits - log_z).astype(np.float32)

    return score


@jax.jit
def sample_exposures(key: jax.Array, log_pi: jax.Array, temperature: float,
                     logit_bias: jax.Array | float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Draw one candidate index per row from softmax(log pi / T + bias); return (index,
    propensity): the exact probability of the draw under that logging distribution."""
    logits = jnp.asarray(log_pi, jnp.float32) / temperature + logit_bias
    index = jax.random.categorical(key, logits, axis=-1)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), index[:, None], -1)[:, 0]
    return index.astype(jnp.int32), jnp.exp(log_p)


@jax.jit
def round_key(seed: int, round_index: int) -> jax.Array:
    """The logging stream's key of round k: fold_in(PRNGKey(seed), k); `log_round` draws the
    exposures with fold_in(., 0) and the outcomes with fold_in(., 1), text-mode deployment
    samples its completions with fold_in(., 2)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), round_index)


def request_id(round_index: int, user: int, event: int | None = None) -> str:
    """Deterministic request id of (round, user), or of (round, user, event) when a user has
    many requests in a round (event rounds)."""
    return f"r{round_index:05d}-u{user}" + ("" if event is None else f"-e{event}")


def _score_all(examples: Sequence[ExampleLike], score_fn: ScoreFn, batch_size: int) -> np.ndarray:
    parts = [np.asarray(score_fn(examples[i:i + batch_size]), np.float32)
             for i in range(0, len(examples), batch_size)]
    log_pi = np.concatenate(parts)
    if log_pi.shape != (len(examples), len(examples[0].candidates)):
        raise ValueError(f"score_fn returned shape {log_pi.shape}; expected "
                         f"[{len(examples)}, {len(examples[0].candidates)}] log-probabilities")
    return log_pi


@dataclasses.dataclass
class SampledExposures:
    """Exposures drawn by the deployed policy itself (text mode): index [N] into `candidates`
    [N, C] (the prompt's list, or [N, 1] = the generated catalogue item), propensity [N] (the
    probability of the whole completion under the sampling procedure), raw self-certainty [N]
    and extras (the completion's tokens) per record."""

    index: np.ndarray
    propensity: np.ndarray
    candidates: np.ndarray
    certainty: np.ndarray | None
    extras: Sequence[dict]


def log_round(examples: Sequence[ExampleLike], score_fn: ScoreFn | None,
              simulator: "UserSimulator | Feedback", *, round_index: int, seed: int, logs_dir: str,
              policy_revision: str, temperature: float = 1.0, timestamp: float | None = None,
              batch_size: int = 64, overwrite: bool = False,
              logit_bias: np.ndarray | None = None,
              certainty: np.ndarray | None = None,
              sampled: "SampledExposures | None" = None,
              per_event: bool = False,
              policy_logp: np.ndarray | None = None) -> log_store.RoundLog:
    """Deploy `score_fn` on the round's requests and commit the round's log.

    Args:
      examples: one request per fresh user of the round (`data.splits.Example`s).
      score_fn: log pi over each example's candidates, called on chunks of `batch_size`
        (item mode); None with `sampled`.
      sampled: exposures the deployed policy already drew itself (text mode), with their
        exact propensities, raw self-certainty and per-record extras.
      simulator: gives the outcome of each exposure: a `sim.replay.Feedback` (mnl | replay,
        keyed by (user, event)) or a bare `UserSimulator` (mnl).
      per_event: event rounds: a user may have many requests, each named by its event.
      temperature: logging temperature (config `policy.logging_temperature`).
      logit_bias: [N, C] added to log pi / T before sampling (e.g. a popularity bias); the
        logged propensity includes it.
      certainty: [N, C] raw self-certainty of each candidate under the deployed policy; the
        exposure's quantile over the round is logged (`certainty_norm=round`).
      policy_logp: [N, C] the deployed policy's own log pi~ (before temperature, bias or
        uniform logging), logged per record (`POLICY_LOGP`: pi_ref's log-probs of the update
        when pi_ref is the deployed policy, so the step needs no reference forward).
      timestamp: stamped on every record (default: now); fix it for byte-identical reruns.
    Returns:
      The committed, verified round.
    """
    if not examples:
        raise ValueError("log_round needs at least one example")
    feedback = as_feedback(simulator)
    users, events = request_keys(examples)
    if per_event and (events.min() < 0 or len(np.unique(events)) != len(events)):
        raise ValueError(f"round {round_index}: event requests need distinct event ids >= 0")
    if not per_event and len(np.unique(users)) != len(users):
        raise ValueError(f"round {round_index}: a user appears twice; request ids are derived "
                         "from (round, user) and must be unique")
    key = round_key(seed, round_index)
    if sampled is None:
        log_pi = _score_all(examples, score_fn, batch_size)
        bias = 0.0 if logit_bias is None else np.asarray(logit_bias, np.float32)
        index, propensity = sample_exposures(jax.random.fold_in(key, 0), log_pi, temperature,
                                             bias)
        candidates = np.stack([np.asarray(e.candidates) for e in examples])
        sc = (None if certainty is None else
              np.asarray(certainty, np.float32)[np.arange(len(examples)), np.asarray(index)])
    else:
        index, propensity, candidates = sampled.index, sampled.propensity, sampled.candidates
        sc = sampled.certainty
    exposed = candidates[np.arange(len(examples)), np.asarray(index)]
    outcome = np.asarray(feedback.sample_outcomes(jax.random.fold_in(key, 1), users, events,
                                                  exposed))
    click = np.asarray(feedback.click_probs(users, events, candidates), np.float32)
    propensity = np.asarray(propensity, np.float64)
    stamp = time.time() if timestamp is None else float(timestamp)
    quantile = None if sc is None else certainty_quantiles(sc, sc)
    # float32 values as Python floats: JSON keeps them exactly, so featurize reads back the
    # very float32 numbers the deployed policy computed (one tolist over the round)
    own_logp = None if policy_logp is None else np.asarray(policy_logp, np.float32).tolist()

    def records():
        for i, e in enumerate(examples):
            extras = {CLICK_PROBS: [float(p) for p in click[i]]}
            if sampled is not None:
                extras.update(sampled.extras[i])
            # text mode logs the completion's summed log-probs itself (its p may underflow)
            extras.setdefault(LOG_PROPENSITY, float(np.log(propensity[i])))
            if quantile is not None:
                extras[ANCHOR_CERTAINTY] = float(quantile[i])
            if own_logp is not None:
                extras[POLICY_LOGP] = own_logp[i]
            if hasattr(e, "target"):
                extras[TARGET] = int(e.target)
            if hasattr(e, "history_ratings"):
                extras[HISTORY_RATINGS] = [float(r) for r in np.asarray(e.history_ratings,
                                                                         np.float32)]
            yield LogRecord(
                request_id=request_id(round_index, int(e.user),
                                      int(events[i]) if per_event else None),
                round=round_index,
                policy_revision=policy_revision, user_id=int(e.user),
                context_item_ids=tuple(int(x) for x in e.history),
                candidate_item_ids=tuple(int(x) for x in candidates[i]),
                exposed_item_id=int(exposed[i]), propensity=float(propensity[i]),
                outcome=int(outcome[i]), timestamp=stamp, extras=extras)

    # Generated records must all be valid: any quarantined one is a bug, so the limit is 0.
    log_store.write_round(records(), logs_dir, round_index, source=f"policy:{policy_revision}",
                          catalogue=feedback.num_items,
                          num_users=feedback.num_users, max_bad_fraction=0.0,
                          overwrite=overwrite, report=None)
    return log_store.open_round(log_store.round_path(logs_dir, round_index))


LOGGING_POLICIES = ("current", "stale", "uniform")


@dataclasses.dataclass
class LoggingPolicy:
    """Who deploys in round k and with which logits: the one place a logging condition lives.

    kind: `current` (pi_{k-1} deploys), `stale` (the round-0 policy deploys every round: the
    methods' state carries it as "initial"), `uniform` (every candidate with probability 1/C;
    pi_{k-1} still scores the round for the logged self-certainty). The exposure is drawn from
    softmax(logits / temperature + popularity_bias log(1 + count)); its RNG stream is `seed`
    (`round_key`).
    """

    kind: str
    temperature: float
    seed: int                       # RngStreams.logging
    popularity: np.ndarray          # item interaction counts
    popularity_bias: float = 0.0    # b (policy.logging_popularity)

    def __post_init__(self):
        if self.kind not in LOGGING_POLICIES:
            raise ValueError(f"logging policy {self.kind!r}; one of {LOGGING_POLICIES}")

    def frozen(self, params: Any, own: Callable[[Any], Any]) -> dict:
        """The fixed policies a method's state carries for logging, built by `own(params)`
        ("initial" for `stale`; none otherwise)."""
        return {"initial": own(params)} if self.kind == "stale" else {}

    def deployed(self, mstate: dict, resuming: bool) -> Any:
        """The params that deploy in a round, from a method's state before its update
        (`resuming`: mid-update, when "params" already moved on and "ref" holds pi_{k-1})."""
        if "initial" in mstate:
            return mstate["initial"]
        return mstate["ref"] if resuming else mstate["params"]

    def logits(self, log_pi: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, Any]:
        """(log pi, logit bias) to sample the exposures from (item mode), for the deployed
        policy's log pi [N, C] over `candidates` [N, C] (item ids)."""
        if self.kind == "uniform":
            log_pi = np.full(log_pi.shape, -np.log(log_pi.shape[-1]), np.float32)
        bias = None
        if self.popularity_bias:   # exposure bias: logits + b log(1 + count)
            bias = self.popularity_bias * np.log1p(self.popularity[candidates])
        return log_pi, bias

    def sample_key(self, k: int) -> jax.Array:
        """Round k's key for a deployed policy that samples its own exposures (text mode)."""
        return jax.random.fold_in(round_key(self.seed, k), 2)

    def log(self, examples: Sequence[ExampleLike], simulator: "UserSimulator | Feedback", k: int,
            logs_dir: str, revision: str, **inputs: Any) -> log_store.RoundLog:
        """Commit round k's log (`log_round` with this policy's temperature and stream; the
        timestamp is the round, so reruns are byte-identical)."""
        return log_round(examples, simulator=simulator, round_index=k, seed=self.seed,
                         logs_dir=logs_dir, policy_revision=revision,
                         temperature=self.temperature, timestamp=float(k), **inputs)
