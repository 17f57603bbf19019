"""GEE pool-update strategies: which items to drop and which generations to request each round.

- `full-ctr`:  drop the lowest-CTR item; one generation from a meta-prompt listing every item
  generated so far with its CTR, sorted ascending.
- `partial-ctr`: drop by CTR; one generation from the current pool without CTRs.
- `random-ctr`: like full-ctr, but every CTR (for dropping and in the prompt) is replaced by a
  draw from U[0, random_ctr_max]: real clicks are ignored (a control).
- `no-drop`: full-ctr prompt, one new item per round, nothing dropped (the pool grows).
- `explore-exploit`: drop the worst; one *explore* generation (current pool with topics, no CTRs,
  asked for an uncovered topic) and one *exploit* generation on the topic of the best-CTR item
  whose topic holds fewer than `max_per_topic` items.

Pool size: a dropping strategy drops `len(pool) + len(requests) - N` items (one for a full pool
and one request), so the pool stays at N; explore-exploit thus drops the two worst items when it
requests two generations (set `fixed_pool=False` to drop only the worst and let it grow), and a
round whose generation failed every retry is made up by dropping fewer next round.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from abpo_jax.gee import prompts

STRATEGIES = ("full-ctr", "partial-ctr", "random-ctr", "no-drop", "explore-exploit")


@dataclasses.dataclass
class Item:
    """A generated item and its click statistics (cumulative and of the last simulated round)."""
    id: int
    text: str
    topic: str
    round_added: int
    clicks: int = 0
    impressions: int = 0
    round_clicks: int = 0
    round_impressions: int = 0

    def ctr(self, window: str = "cumulative") -> float:
        """Observed CTR = clicks / impressions over all rounds in the pool, or the last round."""
        c, n = ((self.clicks, self.impressions) if window == "cumulative"
                else (self.round_clicks, self.round_impressions))
        return c / n if n else 0.0


@dataclasses.dataclass(frozen=True)
class Request:
    kind: str                  # initial | ctr | pool | explore | exploit
    prompt: str
    topic: str | None = None   # topic the new item inherits (exploit); None = read from output


@dataclasses.dataclass(frozen=True)
class Plan:
    drop: tuple[int, ...]      # item ids leaving the pool
    requests: tuple[Request, ...]


def _lowest(pool: list[Item], ctr: dict[int, float], n: int) -> list[int]:
    # Ties broken by age (older first) so the choice is deterministic.
    order = sorted(pool, key=lambda it: (ctr[it.id], it.round_added, it.id))
    return [it.id for it in order[:max(n, 0)]]


def plan_round(strategy: str, pool: list[Item], archive: list[Item], *, topic: str,
               pool_size: int, rng: np.random.Generator, ctr_window: str = "cumulative",
               random_ctr_max: float = 0.15, max_per_topic: int = 2,
               fixed_pool: bool = True) -> Plan:
    """The drops and generation requests of one round for `strategy`.

    Args:
      pool: items currently shown.  archive: every item generated so far (pool included).
      rng: used only by random-ctr (the fake CTRs).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"config.gee.strategies contains {strategy!r}; each entry must be one "
                         f"of: {', '.join(STRATEGIES)}")
    if strategy == "random-ctr":
        ctr = {it.id: float(v) for it, v in
               zip(archive, rng.uniform(0.0, random_ctr_max, len(archive)))}
    else:
        ctr = {it.id: it.ctr(ctr_window) for it in archive}

    if strategy in ("full-ctr", "random-ctr", "no-drop"):
        request = Request("ctr", prompts.ctr_prompt(topic, [(it.text, ctr[it.id]) for it in archive]))
        n_drop = 0 if strategy == "no-drop" else max(len(pool) + 1 - pool_size, 0)
        return Plan(tuple(_lowest(pool, ctr, n_drop)), (request,))

    if strategy == "partial-ctr":
        drop = _lowest(pool, ctr, max(len(pool) + 1 - pool_size, 0))
        rest = [it.text for it in pool if it.id not in drop]
        return Plan(tuple(drop), (Request("pool", prompts.pool_prompt(topic, rest)),))

    # explore-exploit: the exploit target is chosen after dropping the worst; the extra drops
    # that keep the pool size fixed spare the target.
    drop = _lowest(pool, ctr, 1)
    rest = [it for it in pool if it.id not in drop]
    per_topic: dict[str, int] = {}
    for it in rest:
        per_topic[it.topic] = per_topic.get(it.topic, 0) + 1
    candidates = sorted((it for it in rest if per_topic[it.topic] < max_per_topic),
                        key=lambda it: (-ctr[it.id], it.round_added, it.id))
    exploit = ([Request("exploit", prompts.exploit_prompt(topic, candidates[0].text,
                                                          candidates[0].topic),
                        topic=candidates[0].topic)] if candidates else [])
    if fixed_pool:
        n_drop = min(max(len(pool) + 1 + len(exploit) - pool_size, 0), len(pool) - 1)
        target = {candidates[0].id} if candidates else set()
        drop = _lowest([it for it in pool if it.id not in target], ctr, n_drop)
        rest = [it for it in pool if it.id not in drop]
    explore = Request("explore", prompts.explore_prompt(topic, [(it.text, it.topic) for it in rest]))
    return Plan(tuple(drop), tuple([explore] + exploit))
