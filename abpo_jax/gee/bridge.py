"""Export a GEE simulation as a bandit log (one record per displayed item) for ABPO.

Mapping of one simulated interaction i of round r (persona p, slate A of K pool items, click c):
each shown item a in A becomes one record

    request_id          "gee:<strategy>:r<r>:i<i>:s<slot>"  (unique per displayed item)
    round               r
    policy_revision     "<strategy>@r<r>" (the pool is the deployed policy; it changes per round)
    user_id             p (persona index into the run's persona list)
    context_item_ids    the other K-1 items shown beside a, in slot order
    candidate_item_ids  the N items of the pool in round r (a is always one of them)
    exposed_item_id     a
    propensity          K / N: the marginal probability that a uniform K-of-N display shows a
                        (exact for the simulator's display policy; identical for every item, so
                        SNIPS weights are constant within a round)
    outcome             1 if the persona clicked a, else 0 (a slate has at most one click)
    timestamp           r * S + i (synthetic, strictly ordered by round then interaction)

Item ids are the GEE archive ids of the strategy (stable across rounds).
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from abpo_jax.gee.results import RoundResult

FIELDS = ("request_id", "round", "policy_revision", "user_id", "context_item_ids",
          "candidate_item_ids", "exposed_item_id", "propensity", "outcome", "timestamp")


def round_records(result: RoundResult, *, strategy: str, slate_size: int) -> list[dict]:
    """Bandit-log records (dicts with `FIELDS`) of one simulated round."""
    r = result.record["round"]
    ids = np.asarray(result.item_ids)
    shown = np.asarray(result.interactions["shown"])        # [S, K] pool positions
    clicked = np.asarray(result.interactions["clicked"])    # [S] pool position or -1
    persona = np.asarray(result.interactions["persona"])
    n_interactions = shown.shape[0]
    propensity = slate_size / len(ids)
    candidates = [int(x) for x in ids]
    shown_ids = ids[shown]
    outcome = (shown == clicked[:, None]).astype(int)
    records = []
    for i in range(n_interactions):
        slate = [int(x) for x in shown_ids[i]]
        for s in range(slate_size):
            records.append({
                "request_id": f"gee:{strategy}:r{r}:i{i}:s{s}", "round": r,
                "policy_revision": f"{strategy}@r{r}", "user_id": int(persona[i]),
                "context_item_ids": slate[:s] + slate[s + 1:],
                "candidate_item_ids": candidates, "exposed_item_id": slate[s],
                "propensity": propensity, "outcome": int(outcome[i, s]),
                "timestamp": float(r * n_interactions + i)})
    return records


def write_bandit_log(out_dir: pathlib.Path | str, rounds: Sequence[RoundResult], *,
                     strategy: str, slate_size: int, persona_names: Sequence[str]) -> pathlib.Path:
    """Write every round of a strategy as validated bandit-log rounds (ArrayRecord + manifest,
    `abpo_jax.data.log_store`) under `out_dir`, plus personas.json (user_id -> persona name)."""
    from abpo_jax.data import log_store

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "personas.json").write_text(json.dumps(list(persona_names)))
    n_items = 1 + max(int(np.max(r.item_ids)) for r in rounds)
    for r in rounds:
        log_store.write_round(round_records(r, strategy=strategy, slate_size=slate_size), out_dir,
                              r.record["round"], source=f"gee-{strategy}", catalogue=n_items,
                              num_users=len(persona_names), overwrite=True, report=None)
    return out_dir
