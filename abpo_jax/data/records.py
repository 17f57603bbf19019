"""The log record's extras schema: every key the training side reads, its accessor, and which
keys a run needs (checked at ingest, a missing key quarantines the record with its reason).

The core fields (request, candidates, exposure, propensity, outcome) are `data/logs.py`'s; the
keys below ride in `LogRecord.extras`, written by the logging policy (`sim/logging_policy.py`,
computed once at deploy time so the update never calls the simulator) or brought by an imported
log. An accessor returns None for an absent key (never a made-up value); what a missing key means
is the caller's decision, made once: `required` names the keys a run cannot do without, and
`log_store.ingest(require_extras=...)` quarantines records that lack one.

To add a per-record loss input: a key + accessor here (and in `required` if a setting needs
it), the writer in `sim/logging_policy.log_round`, and the reader in the mode's `featurize`
(`train/modes/`), whose batch field the step passes to the objective.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example

# key -> what it holds (the record schema's extras; `FIELDS` of data/logs.py are the core).
TARGET = "target_item_id"            # held-out next item id (-1 / absent: unknown)
HISTORY_RATINGS = "history_ratings"  # [h] ratings of the history (the exact prompt)
CLICK_PROBS = "click_probs"          # [C] simulated click probability of every candidate
ANCHOR_CERTAINTY = "anchor_certainty"  # exposure's self-certainty quantile over its round
COMPLETION_TOKENS = "completion_tokens"  # text mode: the logged completion's token ids
COMPLETION_KINDS = "completion_kinds"    # ... and their `sampling.procedure` token kinds
LOG_PROPENSITY = "log_propensity"        # log p of the exposure, float64 (SNIPS in log space)
POLICY_LOGP = "policy_logp"              # [C] the deployed policy's own log pi~ (item mode)

EXTRAS: dict[str, str] = {
    TARGET: "held-out next item id; absent = unknown (target index -1: no ground-truth reward)",
    HISTORY_RATINGS: "ratings of the history items; absent = not shown (zeros)",
    CLICK_PROBS: "simulated click probability per candidate; loss.rewards=simulator, and the "
                 "log_sim_ctr / snips_bias columns (skipped when absent)",
    ANCHOR_CERTAINTY: "self-certainty quantile of the exposure over its round under the "
                      "deployed policy; loss.certainty_norm=round",
    COMPLETION_TOKENS: "text mode: the logged completion; absent = the bare item tag",
    COMPLETION_KINDS: "text mode: the token kinds of `completion_tokens`",
    LOG_PROPENSITY: "log p of the exposure under the logging procedure (float64; a whole text "
                    "completion's p underflows); absent = log of the record's propensity",
    POLICY_LOGP: "item mode: the deployed policy's own log pi~ [C] over the candidates, before "
                 "the logging policy's transforms (float32 values); pi_ref's log-probs of the "
                 "update when pi_ref is the deployed policy (train.ref_logp=log); absent = "
                 "the step computes them with a forward",
}


def required(rewards: Sequence[str], certainty_norm: str) -> tuple[str, ...]:
    """The extras keys a method with these loss settings cannot train without."""
    out = []
    if "simulator" in rewards:
        out.append(CLICK_PROBS)
    if certainty_norm == "round":
        out.append(ANCHOR_CERTAINTY)
    return tuple(out)


def missing(record: LogRecord | Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The keys of `keys` absent from a record's extras."""
    extras = record.extras if isinstance(record, LogRecord) else record
    return [k for k in keys if k not in extras]


def target(record: LogRecord) -> int:
    """The held-out next item id (-1 when the log does not know it)."""
    return int(record.extras.get(TARGET, -1))


def _per_candidate(record: LogRecord, key: str) -> np.ndarray | None:
    """A logged per-candidate float list [C] as float32 (None: not logged)."""
    values = record.extras.get(key)
    return None if values is None else np.asarray(values, np.float32)


def click_probs(record: LogRecord) -> np.ndarray | None:
    """The simulated click probabilities [C] the record was logged with (None: not logged)."""
    return _per_candidate(record, CLICK_PROBS)


def anchor_certainty(record: LogRecord) -> float | None:
    """The exposure's self-certainty quantile over its round (None: not logged)."""
    c = record.extras.get(ANCHOR_CERTAINTY)
    return None if c is None else float(c)


def policy_logp(record: LogRecord) -> np.ndarray | None:
    """The deployed policy's log pi~ [C] the record was logged with (None: not logged)."""
    return _per_candidate(record, POLICY_LOGP)


def log_propensity(record: LogRecord) -> float:
    """The exposure's logged log p; a log without the key (an imported one) has it computed
    from its own propensity, the same number wherever p is a normal float (ingest refuses a
    propensity outside (0, 1])."""
    lp = record.extras.get(LOG_PROPENSITY)
    return float(np.log(np.float64(record.propensity))) if lp is None else float(lp)


def completion(record: LogRecord) -> tuple[list[int], list[int]] | None:
    """The logged completion's (tokens, kinds) (None: the log holds the item only)."""
    tokens = record.extras.get(COMPLETION_TOKENS)
    return None if tokens is None else (tokens, record.extras[COMPLETION_KINDS])


def example_from_record(record: LogRecord) -> Example:
    """The request of a logged exposure, as logged (target -1 and ratings 0 when unknown)."""
    cands = np.asarray(record.candidate_item_ids, np.int32)
    tgt = target(record)
    hits = np.flatnonzero(cands == tgt)
    history = np.asarray(record.context_item_ids, np.int32)
    ratings = record.extras.get(HISTORY_RATINGS)
    ratings = (np.zeros(len(history), np.float32) if ratings is None
               else np.asarray(ratings, np.float32))
    return Example(user=record.user_id, history=history, history_ratings=ratings, target=tgt,
                   candidates=cands, target_index=int(hits[0]) if hits.size else -1)
