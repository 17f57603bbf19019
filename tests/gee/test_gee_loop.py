"""GEE loop end to end with a scripted LLM: every strategy for 15 rounds, outputs, bandit-log bridge."""

import importlib.util
import json
import math
import pathlib
import re

import pytest

from abpo_jax.gee import loop
from abpo_jax.gee.backends import KeywordJudge, ScriptedGenerator, stable_hash
from abpo_jax.gee.personas import load_personas
from abpo_jax.gee.strategies import STRATEGIES

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(**gee):
    spec = importlib.util.spec_from_file_location("gee_config", ROOT / "configs" / "gee.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.gee.update(gee)
    return c


def improving_script(prompt: str, seed: int, row: int) -> str:
    """Initial items score 1.0..2.0 (by row); every later item beats the best it is shown by 0.5."""
    seen = [float(x) for x in re.findall(r"\[score=([0-9.]+)\]", prompt)]
    score = 1.0 + 0.25 * row if not seen else max(seen) + 0.5
    tag = stable_hash(prompt, seed, row) % 10_000
    return f"New Question: Is it good? [score={score}] #{tag}\nTopic: topic {tag}"


def _run(strategies, script=improving_script, **gee):
    cfg = _config(strategies=tuple(strategies), **gee).gee
    personas = load_personas(count=3)
    gen = ScriptedGenerator(script)
    results, malformed = loop.run_gee(gen, KeywordJudge(), personas, cfg, seed=0, progress=False)
    return results, malformed, gen


def test_every_strategy_runs_15_rounds_and_keeps_its_pool_size():
    results, malformed, _ = _run(STRATEGIES)
    assert malformed == []
    for strategy, rounds in results.items():
        recs = [r.record for r in rounds]
        assert [r["round"] for r in recs] == list(range(15))
        sizes = [r["pool_size"] for r in recs]
        if strategy == "no-drop":
            assert sizes == list(range(5, 20))          # grows by one per round
            assert all(r["dropped"] == [] and len(r["added"]) == 1 for r in recs[1:])
        else:
            assert sizes == [5] * 15
        for r in recs:
            assert sum(p["round_impressions"] for p in r["pool"]) == 5000 * 3
            assert r["pool_ctr"] == pytest.approx(
                sum(p["round_clicks"] for p in r["pool"]) / 5000)
    # every strategy starts from the same initial pool
    first = {s: [p["text"] for p in r[0].record["pool"]] for s, r in results.items()}
    assert len({tuple(v) for v in first.values()}) == 1
    ee = [r.record for r in results["explore-exploit"]]
    assert all(len(r["added"]) == 2 and len(r["dropped"]) == 2 for r in ee[1:])


def test_full_ctr_drops_the_worst_and_pool_ctr_rises_with_better_items():
    results, _, gen = _run(["full-ctr"])
    recs = [r.record for r in results["full-ctr"]]
    for prev, cur in zip(recs, recs[1:]):
        worst = min(prev["pool"], key=lambda p: (p["ctr"], p["round_added"], p["id"]))
        assert cur["dropped"] == [worst["id"]]
    expected = [r["expected_pool_ctr"] for r in recs]
    assert all(b > a for a, b in zip(expected, expected[1:]))
    # simulated pool CTR is non-decreasing up to 3 standard errors of S = 5000 draws
    ctr = [r["pool_ctr"] for r in recs]
    for a, b in zip(ctr, ctr[1:]):
        assert b >= a - 3 * math.sqrt(a * (1 - a) / 5000)
    assert ctr[-1] > 5 * ctr[0]
    for r in recs:
        se = math.sqrt(r["expected_pool_ctr"] / 5000)
        assert abs(r["pool_ctr"] - r["expected_pool_ctr"]) < 4 * se


def test_random_ctr_does_not_follow_clicks():
    results, _, _ = _run(["full-ctr", "random-ctr"])
    final = {s: r[-1].record["expected_pool_ctr"] for s, r in results.items()}
    assert final["random-ctr"] < final["full-ctr"]


def test_malformed_generations_are_retried_and_recorded():
    seen = set()

    def flaky(prompt, seed, row):   # every CTR prompt fails its first attempt
        if "CTR" in prompt and prompt not in seen:
            seen.add(prompt)
            return "Sure! Shoppers love asking about things."
        return improving_script(prompt, seed, row)

    results, _, gen = _run(["full-ctr"], script=flaky, rounds=6)
    recs = [r.record for r in results["full-ctr"]]
    bad = [m for r in recs for m in r["malformed"]]
    assert bad and all(m["reason"] == "no 'New Question:' line" and m["kind"] == "ctr"
                       for m in bad)
    assert all(len(r["added"]) == 1 for r in recs[1:])   # every request succeeded on a retry
    seeds = [s for p, s in gen.calls if "CTR" in p]
    assert len(bad) == 5 and len(seeds) == len(set(seeds)) == 10   # fresh seed per attempt


def test_giving_up_after_retries_is_recorded():
    def stubborn(prompt, seed, row):
        return "no format" if "CTR" in prompt else improving_script(prompt, seed, row)

    results, _, _ = _run(["full-ctr"], script=stubborn, rounds=3, max_retries=2)
    r1, r2 = results["full-ctr"][1].record, results["full-ctr"][2].record
    assert r1["failed_requests"] == ["ctr"] and len(r1["malformed"]) == 3
    assert r1["pool_size"] == 4 and r1["added"] == [] and len(r1["dropped"]) == 1
    assert r2["pool_size"] == 4 and r2["dropped"] == []    # a short pool is not shrunk further


def test_seeded_runs_are_reproducible():
    a, _, _ = _run(["explore-exploit"], rounds=4)
    b, _, _ = _run(["explore-exploit"], rounds=4)
    assert [r.record for r in a["explore-exploit"]] == [r.record for r in b["explore-exploit"]]


def test_main_writes_history_table_plot_and_bandit_logs(tmp_path, capsys):
    from abpo_jax.data import log_store, logs

    config = _config(backend="scripted", rounds=3, interactions=200, num_personas=4,
                     strategies=("full-ctr", "no-drop"), export_logs=True)
    config.run_dir = str(tmp_path)
    results = loop.main(config)
    lines = [json.loads(l) for l in open(tmp_path / "history.jsonl")]
    assert [(l["strategy"], l["round"]) for l in lines] == [
        (s, r) for s in ("full-ctr", "no-drop") for r in range(3)]
    assert (tmp_path / "ctr_per_round.png").stat().st_size > 1000
    for strategy in ("full-ctr", "no-drop"):   # the run layout: tb/<strategy>/
        assert list((tmp_path / "tb" / strategy).glob("events.out.tfevents.*"))
    table = (tmp_path / "results.txt").read_text()
    assert "full-ctr" in table and "r2" in table
    assert "pool CTR" in capsys.readouterr().out
    assert json.loads((tmp_path / "judge_cache.json").read_text())["scripted"]
    # bandit log: one record per displayed item, propensity K/N, outcome = that item clicked
    rnd = results["no-drop"][2]
    records = list(log_store.open_round(log_store.round_path(tmp_path / "logs" / "no-drop", 2)))
    assert len(records) == 200 * 3
    rec = records[0]
    assert isinstance(rec, logs.LogRecord)
    assert rec.propensity == pytest.approx(3 / 7) and rec.round == 2
    assert rec.exposed_item_id in rec.candidate_item_ids and len(rec.context_item_ids) == 2
    assert sorted(rec.candidate_item_ids) == sorted(rnd.item_ids.tolist())
    clicks = sum(r.outcome for r in records)
    assert clicks == sum(p["round_clicks"] for p in rnd.record["pool"])


def test_bad_gee_config_is_named():
    from abpo_jax.config import ConfigError

    with pytest.raises(ConfigError, match="strategies contains 'greedy'"):
        loop.validate_gee(_config(strategies=("greedy",)).gee)
    with pytest.raises(ConfigError, match="slate_size=6 must be <= config.gee.pool_size=5"):
        loop.validate_gee(_config(slate_size=6).gee)
    with pytest.raises(ConfigError, match="judge_score='mode'"):
        loop.validate_gee(_config(judge_score="mode").gee)


def test_cli_runs_gee_with_overrides(tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "abpo_jax", "gee", "--config.gee.backend=scripted",
           "--config.gee.rounds=2", "--config.gee.interactions=100",
           "--config.gee.strategies=('partial-ctr','explore-exploit')",
           f"--config.run_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(l) for l in open(tmp_path / "history.jsonl")]
    assert {l["strategy"] for l in lines} == {"partial-ctr", "explore-exploit"}
    bad = subprocess.run(cmd[:4] + ["--config.gee.slate_size=9", f"--config.run_dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert bad.returncode != 0 and "config.gee.slate_size=9" in bad.stderr
