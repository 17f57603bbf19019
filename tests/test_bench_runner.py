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
    assert {"scoring", "sampling", "losses", "pipeline", "train_step"} <= set(found)
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
