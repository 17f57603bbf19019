"""Grids that leave the machine: cells as separate processes (`study.workers`), one cell per
task (`study.cell`, a SLURM array / Kubernetes indexed Job) and the merge (`report_only`)."""
import json

import jax
import pytest

from abpo_jax.config import ConfigError, validate
from abpo_jax.study import runner
from helpers import tiny_run_config


def _config(run_dir, **study):
    c = tiny_run_config(run_dir, methods=("abpo", "no_update"))
    c.study.seeds = 2
    c.study.conditions = ("base:",)
    c.study.update(study)
    # the worker processes read the programs this process compiled (conftest's cache)
    c.train.compile_cache_dir = jax.config.jax_compilation_cache_dir
    return validate(c)


def _values(study_dir):
    study = json.loads((study_dir / "study.json").read_text())
    return {name: cond["values"] for name, cond in study["conditions"].items()}


def test_two_worker_processes_merge_into_the_sequential_study(tmp_path):
    sequential = runner.main(_config(tmp_path / "seq"))
    assert sequential["conditions"]["base"]["seeds"] == [0, 1]

    # two cells, two processes (each `python -m abpo_jax.study.runner <config> K`)
    parallel = runner.main(_config(tmp_path / "par", workers=2))
    par_dir = tmp_path / "par" / "study"
    assert sorted(p.parent.name for p in par_dir.glob("cells/base/*/cell.json")) == [
        "seed_0", "seed_1"]
    assert _values(par_dir) == _values(tmp_path / "seq" / "study")
    assert parallel["conditions"]["base"]["values"] == sequential["conditions"]["base"]["values"]

    # a task of an array job runs exactly its cell (here already done: reused, not rerun) and
    # writes no study.json; report_only merges what the tasks finished
    (par_dir / "study.json").unlink()
    stamp = (par_dir / "cells/base/seed_1/cell.json").stat().st_mtime_ns
    cell = runner.main(_config(tmp_path / "par", cell=1))
    assert (cell["condition"], cell["seed"]) == ("base", 1)
    assert (par_dir / "cells/base/seed_1/cell.json").stat().st_mtime_ns == stamp
    assert not (par_dir / "study.json").exists()
    runner.main(_config(tmp_path / "par", report_only=True))
    assert _values(par_dir) == _values(tmp_path / "seq" / "study")


def test_cell_index_out_of_the_grid_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"config.study.cell=2 but the grid has 2 cells"):
        runner.main(_config(tmp_path, cell=2))
    assert [runner.cells_of(_config(tmp_path, seeds=2, conditions=("a:", "b:")))[k]
            for k in range(4)] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
