"""`abpo-jax bench`: discovery, the table, the JSON record, and failures that are not hidden."""
import json

import ml_collections
import pytest

from abpo_jax import bench


def _config(tmp_path, only=""):
    c = ml_collections.ConfigDict()
    c.run_dir = str(tmp_path / "out")
    c.bench = ml_collections.ConfigDict({"only": only})
    return c


def test_shipped_benchmarks_are_discovered_and_expose_run():
    found = bench.discover()
    assert {"scoring", "sampling", "losses", "pipeline", "train_step", "beam"} <= set(found)
    for path in found.values():
        assert "def run(" in path.read_text()
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench.discover("no_such_bench")


def test_runner_writes_table_and_json_and_reports_failures(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_good.py").write_text(
        "def run(config):\n"
        "    return [{'benchmark': 'good', 'metric': 'x/s', 'ours': 12.5, 'peer': 5.0,"
        " 'peer_name': 'peer', 'ratio': 2.5}]\n")
    (tmp_path / "bench_bad.py").write_text("def run(config):\n    raise RuntimeError('boom')\n")
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    with pytest.raises(SystemExit, match="bad"):
        bench.main(_config(tmp_path))
    out = capsys.readouterr().out
    assert "good" in out and "12.5" in out and "2.5" in out
    (record_path,) = (tmp_path / "out").glob("bench-*.json")
    record = json.loads(record_path.read_text())
    assert record["rows"][0]["ratio"] == 2.5
    assert "boom" in record["failures"]["bad"]
    rows = bench.main(_config(tmp_path, only="good"))
    assert [r["benchmark"] for r in rows] == ["good"]


EXTRA: list = []  # extra overrides (none: the shipped defaults)


def test_quick_runs_every_benchmark_json(tmp_path):
    """`abpo-jax bench --quick`: every benchmark runs at its CI size (none can rot unnoticed),
    one JSON record with each benchmark's seconds; the train_step rows carry the peer, the same
    loss on both sides, the measured matmul peak and the FLOP fraction, and the catalogue
    beam-search row races HF generate and returns the same items."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "abpo_jax", "bench", "--quick",
                          f"--config.run_dir={tmp_path}", *EXTRA], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.glob("bench-*.json")
    record = json.loads(path.read_text())
    assert record["quick"] and not record["failures"], record["failures"]
    assert set(record["seconds"]) == set(bench.discover())   # every benchmark ran
    rows = {r["benchmark"]: r for r in record["rows"]}
    beam = rows.pop("catalogue_beam_search tiny")
    assert set(bench.COLUMNS) <= set(beam) and beam["metric"] == "s/prompt"
    assert beam["ours"] > 0 and beam["peer"] > 0 and beam["ratio"] > 0
    assert beam["peer_name"].startswith("hf generate")
    # same weights, prompts and trie: the same K items, in order, valid, with the same scores
    assert beam["items_agree"] == 1.0 and beam["valid_items"] == 1.0
    assert beam["max_score_diff"] <= 1e-4
    assert rows.pop("catalogue_beam_search_compile tiny")["ours"] > 0
    rows = {k: r for k, r in rows.items() if k.startswith("train_step tiny")}
    assert set(rows) == {"train_step tiny lora r8", "train_step tiny full",
                         "train_step tiny lora r8 two-pass (before)",
                         "train_step tiny full two-pass (before)",
                         "train_step tiny lora r8 bf16-matmul", "train_step tiny full bf16-matmul"}
    for r in rows.values():
        assert set(bench.COLUMNS) <= set(r)
        assert r["matmul_peak"] > 0 and 0 < r["flop_fraction"] <= r["flop_fraction_all_passes"]
        assert r["step_s"] > 0 and r["ours"] > 0
        # the wait before the first step: model load + compile (timed apart from the run)
        assert r["compile_s"] > 0 and r["first_step_s"] > r["compile_s"]
        assert r["to_first_step_s"] == pytest.approx(r["load_s"] + r["compile_s"])
    # the two-pass step runs one more forward than it needs: counted in all passes only
    before = rows["train_step tiny full two-pass (before)"]
    assert before["step_flops"] > before["useful_flops"] == rows["train_step tiny full"][
        "useful_flops"]
    full = rows["train_step tiny full"]
    assert full["peer_name"].startswith("transformers") and full["ratio"] > 0
    assert full["loss_abs_diff"] <= 1e-4 * max(1.0, abs(full["loss"]))
    # bf16 matmuls: against their own measured peak, raced by the torch step under autocast
    mixed = rows["train_step tiny full bf16-matmul"]
    assert mixed["matmul_precision"] == "bfloat16" and full["matmul_precision"] == "float32"
    assert mixed["matmul_peak_f32"] == full["matmul_peak"] and mixed["matmul_peak"] > 0
    assert mixed["peer_name"].endswith("autocast bf16)") and mixed["ratio"] > 0
    assert mixed["useful_flops"] == full["useful_flops"]
    assert any((tmp_path / "jax_cache").iterdir())   # the run filled its compilation cache
    assert "train_step tiny full" in out.stdout     # and printed the table


def test_pipeline_benchmark_runs_at_quick_size(tmp_path):
    """The log-store benchmark (which rotted once when the featurizer it used went away) on
    its quick sizes: ingest and grain rows, no failure (seconds)."""
    c = _config(tmp_path, only="pipeline")
    c.bench.quick = True
    rows = bench.main(c)
    names = [r["benchmark"] for r in rows]
    assert names[0].startswith("log ingest 2,000 records") and len(rows) == 4
    assert all(r["ours"] > 0 for r in rows)


def test_a_bench_choice_typo_fails_before_any_benchmark_naming_the_bench_field(tmp_path):
    from abpo_jax.config import ConfigError
    c = _config(tmp_path, only="round")
    c.bench.round_ref_logp = "forwrd"
    with pytest.raises(ConfigError, match=r"bench\.round_ref_logp='forwrd'.*log \| forward"):
        bench.main(c)
    assert not (tmp_path / "out").exists()   # nothing ran, nothing written
    c.bench.round_ref_logp = "forward"
    bench.check_choices(c)                    # a valid choice passes
