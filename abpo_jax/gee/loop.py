"""The GEE loop (`abpo-jax gee`): generate a pool, simulate clicks, update the pool, repeat.

Round 0 shows the initial pool (generated once, shared by every strategy so they start equal);
each later round applies the strategy's drops and generations (`strategies.plan_round`), judges
the new items (cached), and simulates S interactions of the persona population with the pool.
Randomness: the click simulation of (strategy, round) uses fold_in(fold_in(key(seed), crc32
(strategy)), round); generation seeds derive from (seed, strategy, round, attempt) the same way,
so a strategy's run does not depend on which other strategies run beside it.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from abpo_jax.config import ConfigError
from abpo_jax.gee import click_model, outputs, prompts
from abpo_jax.gee.backends import TextBackend, stable_hash
from abpo_jax.gee.judge import SCORE_MODES, Judge
from abpo_jax.gee.personas import Persona
from abpo_jax.gee.results import RoundResult
from abpo_jax.gee.strategies import STRATEGIES, Item, Plan, Request, plan_round

MAX_ENUMERATED_SLATES = 200_000   # above this many K-subsets the analytic CTR is skipped


def _seed(*parts: object) -> int:
    return stable_hash(*parts) & 0x7FFFFFFF


def generate_items(generator: TextBackend, requests: Sequence[Request], *, existing: set[str],
                   cfg: ml_collections.ConfigDict, seed_parts: tuple) -> tuple[
                       list[prompts.Parsed | None], list[dict]]:
    """Run the requests; retry malformed ones (new seed each attempt) up to `cfg.max_retries`.

    Returns one parse per request (None when every attempt failed) and a record of every
    malformed generation: {kind, attempt, reason, text}.
    """
    results: list[prompts.Parsed | None] = [None] * len(requests)
    malformed: list[dict] = []
    pending = list(range(len(requests)))
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        texts = generator.generate([requests[i].prompt for i in pending],
                                   max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.gen_temperature,
                                   seed=_seed(*seed_parts, attempt))
        still = []
        for i, text in zip(pending, texts):
            parsed = prompts.parse_generation(text, existing)
            if parsed.item is None:
                malformed.append({"kind": requests[i].kind, "attempt": attempt,
                                  "reason": parsed.reason, "text": text})
                still.append(i)
            else:
                results[i] = parsed
                existing.add(prompts.normalise(parsed.item))
        pending = still
    return results, malformed


def _topic_key(topic: str) -> str:
    return " ".join(topic.lower().split())


def initial_pool(generator: TextBackend, cfg: ml_collections.ConfigDict,
                 seed: int) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """N initial items (text, topic); fewer only if every retry failed (recorded as malformed)."""
    requests = [Request("initial", prompts.initial_prompt(cfg.topic))] * cfg.pool_size
    parsed, malformed = generate_items(generator, requests, existing=set(), cfg=cfg,
                                       seed_parts=(seed, "initial"))
    items = [(p.item, p.topic) for p in parsed if p is not None]
    if len(items) < cfg.slate_size:
        raise RuntimeError(f"the generator produced only {len(items)} well-formed initial items "
                           f"(need >= config.gee.slate_size={cfg.slate_size}); malformed: "
                           + "; ".join(f"{m['reason']}: {m['text'][:80]!r}" for m in malformed[:5]))
    return items, malformed


def run_strategy(strategy: str, initial: Sequence[tuple[str, str | None]], *,
                 generator: TextBackend, judge: Judge, personas: Sequence[Persona],
                 persona_weights: np.ndarray, cfg: ml_collections.ConfigDict, seed: int,
                 progress: bool = True) -> list[RoundResult]:
    """All rounds of one strategy from a shared initial pool."""
    key = jax.random.fold_in(jax.random.key(seed), stable_hash(strategy))
    plan_rng = np.random.default_rng(_seed(seed, strategy, "plan"))
    archive: list[Item] = []
    scores: dict[int, np.ndarray] = {}

    def add(texts_topics: Sequence[tuple[str, str | None]], round_idx: int) -> list[Item]:
        new = []
        for text, topic in texts_topics:
            item_id = len(archive)
            # An item without a parsed topic is its own topic (the exploit prompt then reads well).
            item = Item(item_id, text, _topic_key(topic or text), round_idx)
            archive.append(item)
            new.append(item)
        if new:
            for item, row in zip(new, judge.score([it.text for it in new], personas)):
                scores[item.id] = np.asarray(row, np.float64)
        return new

    pool = add(initial, 0)
    existing = {prompts.normalise(it.text) for it in pool}
    results = []
    bar = tqdm(range(cfg.rounds), desc=f"gee {strategy}", disable=not progress, leave=False)
    for r in bar:
        plan, malformed, failed, added = Plan((), ()), [], [], []
        if r > 0:
            plan = plan_round(strategy, pool, archive, topic=cfg.topic, pool_size=cfg.pool_size,
                              rng=plan_rng, ctr_window=cfg.ctr_window,
                              random_ctr_max=cfg.random_ctr_max,
                              max_per_topic=cfg.max_per_topic, fixed_pool=cfg.fixed_pool)
            pool = [it for it in pool if it.id not in plan.drop]
            parsed, malformed = generate_items(generator, plan.requests, existing=existing,
                                               cfg=cfg, seed_parts=(seed, strategy, r))
            failed = [req.kind for req, p in zip(plan.requests, parsed) if p is None]
            added = add([(p.item, req.topic or p.topic)
                         for req, p in zip(plan.requests, parsed) if p is not None], r)
            pool = pool + added
        if len(pool) < cfg.slate_size:
            raise RuntimeError(f"{strategy} round {r}: pool has {len(pool)} items, fewer than "
                               f"config.gee.slate_size={cfg.slate_size}")
        pool_scores = np.stack([scores[it.id] for it in pool])
        sim = jax.device_get(click_model.simulate_interactions(
            jax.random.fold_in(key, r), pool_scores, persona_weights,
            num_interactions=cfg.interactions, slate_size=cfg.slate_size,
            temperature=cfg.temperature, rejection_score=cfg.rejection_score))
        sim = {k: np.asarray(v) for k, v in sim.items()}
        clicks, impressions = click_model.item_counts(sim["shown"], sim["clicked"], len(pool))
        for it, c, n in zip(pool, clicks, impressions):
            it.round_clicks, it.round_impressions = int(c), int(n)
            it.clicks += int(c)
            it.impressions += int(n)
        expected_pool, expected_items = None, [None] * len(pool)
        if math.comb(len(pool), cfg.slate_size) <= MAX_ENUMERATED_SLATES:
            expected_pool, expected_items = click_model.expected_ctr(
                pool_scores, persona_weights, slate_size=cfg.slate_size,
                temperature=cfg.temperature, rejection_score=cfg.rejection_score)
            expected_items = [float(x) for x in expected_items]
        pool_ctr = float(np.mean(sim["clicked"] != click_model.NO_CLICK))
        bar.set_postfix(pool_ctr=f"{pool_ctr:.3f}")
        record = {
            "strategy": strategy, "round": r, "pool_size": len(pool),
            "pool_ctr": pool_ctr, "expected_pool_ctr": expected_pool,
            "dropped": list(plan.drop), "added": [it.id for it in added],
            "failed_requests": failed, "malformed": malformed,
            "pool": [{"id": it.id, "text": it.text, "topic": it.topic,
                      "round_added": it.round_added, "round_ctr": it.ctr("round"),
                      "round_clicks": it.round_clicks, "round_impressions": it.round_impressions,
                      "ctr": it.ctr("cumulative"), "clicks": it.clicks,
                      "impressions": it.impressions, "expected_ctr": e,
                      "mean_score": float(scores[it.id] @ persona_weights / persona_weights.sum())}
                     for it, e in zip(pool, expected_items)],
        }
        results.append(RoundResult(record, np.array([it.id for it in pool]), sim))
    return results


def validate_gee(cfg: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first bad `config.gee.*` field."""
    def bad(field: str, msg: str) -> ConfigError:
        return ConfigError(f"config.gee.{field}={cfg[field]!r} {msg}")
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"config.gee.strategies contains {s!r}, which is not allowed; each "
                              "entry must be one of: " + ", ".join(STRATEGIES))
    if not cfg.strategies:
        raise bad("strategies", "is empty")
    choices = {"judge_score": SCORE_MODES, "ctr_window": ("cumulative", "round"),
               "backend": ("smollm2", "scripted")}
    for field, allowed in choices.items():
        if cfg[field] not in allowed:
            raise bad(field, "is not allowed; choose one of: " + ", ".join(allowed))
    for field in ("pool_size", "slate_size", "interactions", "rounds", "max_new_tokens",
                  "max_per_topic", "judge_batch_size"):
        if cfg[field] < 1:
            raise bad(field, "is out of range; it must be >= 1")
    if not cfg.temperature > 0:
        raise bad("temperature", "is out of range; it must be > 0")
    if cfg.max_retries < 0 or cfg.num_personas < 0 or cfg.gen_temperature < 0:
        raise ConfigError("config.gee.max_retries, num_personas and gen_temperature must be >= 0")
    if not 0 <= cfg.random_ctr_max <= 1:
        raise bad("random_ctr_max", "is out of range; it must be in [0, 1]")
    if cfg.slate_size > cfg.pool_size:
        raise ConfigError(f"config.gee.slate_size={cfg.slate_size} must be <= "
                          f"config.gee.pool_size={cfg.pool_size}")


def run_gee(generator: TextBackend, judge: Judge, personas: Sequence[Persona],
            cfg: ml_collections.ConfigDict, seed: int,
            progress: bool = True) -> tuple[dict[str, list[RoundResult]], list[dict]]:
    """Every configured strategy from one shared initial pool; returns (results, initial malformed)."""
    weights = np.ones(len(personas)) if not cfg.persona_weights else np.asarray(
        cfg.persona_weights, np.float64)
    if len(weights) != len(personas) or np.any(weights < 0) or weights.sum() <= 0:
        raise ConfigError(f"config.gee.persona_weights needs {len(personas)} non-negative values "
                          f"with a positive sum, got {tuple(cfg.persona_weights)}")
    initial, malformed = initial_pool(generator, cfg, seed)
    results = {s: run_strategy(s, initial, generator=generator, judge=judge, personas=personas,
                               persona_weights=weights, cfg=cfg, seed=seed, progress=progress)
               for s in tqdm(cfg.strategies, desc="gee strategies", disable=not progress)}
    return results, malformed


def main(config: ml_collections.ConfigDict) -> dict[str, list[RoundResult]]:
    """`abpo-jax gee`: run the strategies, write history.jsonl, table, plot (and bandit logs)."""
    from abpo_jax.gee import backends, bridge
    from abpo_jax.gee.judge import CachedJudge, LMJudge
    from abpo_jax.gee.personas import load_personas

    cfg = config.gee
    validate_gee(cfg)
    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    personas = load_personas(cfg.persona_file, cfg.num_personas)
    start = time.perf_counter()
    if cfg.backend == "scripted":
        generator, judge, namespace = (backends.ScriptedGenerator(backends.demo_script),
                                       backends.HashJudge(), "scripted")
    else:
        from abpo_jax.gee.smollm import SmolLMBackend
        generator = SmolLMBackend.from_config(config)
        judge = LMJudge(generator, cfg.topic, cfg.judge_score, cfg.judge_batch_size)
        namespace = f"{generator.name}|{cfg.judge_score}|{cfg.topic}"
    judge = CachedJudge(judge, namespace, cfg.cache_path or str(run_dir / "judge_cache.json"))
    results, malformed = run_gee(generator, judge, personas, cfg, config.seed)
    elapsed = time.perf_counter() - start
    outputs.write_all(run_dir, results, initial_malformed=malformed,
                      meta={"seconds": elapsed, "judge_cache_hits": judge.hits,
                            "judge_cache_misses": judge.misses, "personas": len(personas),
                            "config": json.loads(cfg.to_json())})
    if cfg.export_logs:
        for strategy, rounds in results.items():
            path = bridge.write_bandit_log(run_dir / "logs" / strategy, rounds, strategy=strategy,
                                           slate_size=cfg.slate_size,
                                           persona_names=[p.name for p in personas])
            print(f"bandit log for {strategy}: {path}")
    return results
