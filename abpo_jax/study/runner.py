"""`abpo-jax study`: a grid of continual runs (conditions x seeds; every method in each run),
resumable cell by cell, then `study.json`, plots with 95% bands and `results.md`.

    abpo-jax study --config=configs/study_tiny.py          # the CPU-sized study (~30 min)
    abpo-jax study --config=configs/study_tiny.py --config.study.seeds=2   # a quick look

A cell is one continual run (`train/rounds.py`) with all of `rounds.methods`, so the methods of a
seed share the split, the simulator, the round-0 policy and the logging random numbers: their
differences are paired. A finished cell writes `cell.json` (atomically) and is skipped on a
re-run; an unfinished one resumes from its own checkpoints.

Cells are independent, so a grid leaves the machine (README "Studies across processes and
machines"):

    abpo-jax study --config.study.workers=2          # cells as 2 local processes
    abpo-jax study --config.study.cell=$K            # exactly cell K (SLURM array, k8s Job)
    abpo-jax study --config.study.report_only=True   # merge the finished cells: study.json

Cell K is the K-th of (seed, condition) in seed-major order (`cells`); every process computes
the same grid from the same config.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pathlib
import pickle
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping

import ml_collections

from abpo_jax.config import ConfigError, validate
from abpo_jax.fileio import atomic_write_text
from abpo_jax.study import report, tuning

CELL_FILE = "cell.json"


def parse_conditions(specs: Any) -> dict[str, dict[str, Any]]:
    """("name:a.b=v,c.d=w", "base:", ...) -> {name: {"a.b": v, ...}} (values as Python
    literals, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, body = str(spec).partition(":")
        if not sep or not name:
            raise ConfigError(f"config.study.conditions entry {spec!r} must look like "
                              "'name:field=value,field=value' (or 'name:' for the defaults)")
        overrides = {}
        for item in filter(None, (x.strip() for x in body.split(","))):
            key, eq, raw = item.partition("=")
            if not eq:
                raise ConfigError(f"config.study.conditions entry {spec!r}: {item!r} is not "
                                  "field=value")
            try:
                overrides[key.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                overrides[key.strip()] = raw.strip()
        if name in out:
            raise ConfigError(f"config.study.conditions names {name!r} twice")
        out[name] = overrides
    return out


def cell_config(config: ml_collections.ConfigDict, condition: str, overrides: Mapping[str, Any],
                seed: int, cell_dir: pathlib.Path) -> ml_collections.ConfigDict:
    """The continual-run config of one cell: the study config + the condition's overrides."""
    c = ml_collections.ConfigDict(config.to_dict())
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = c
        for part in parents:
            node = node[part] if part in node else None
            if not isinstance(node, ml_collections.ConfigDict):
                break
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"config.study.conditions[{condition!r}]: unknown field "
                              f"config.{path}")
        old = node[leaf]
        # 2 for a float field is 2.0: the cell's config keeps the field's type
        node[leaf] = float(value) if isinstance(old, float) and isinstance(value, int) else value
    c.seed = int(seed)
    c.run_dir = str(cell_dir)
    c.sim.cache_dir = config.sim.cache_dir or str(pathlib.Path(config.study.dir) / "sim")
    c.outputs.progress = False
    c.outputs.plots = False
    c.outputs.tensorboard = False
    return validate(c)


def _write_json(path: pathlib.Path, obj: Any) -> None:
    # insertion order: the page follows it; atomic: a kill never leaves a torn file
    atomic_write_text(path, json.dumps(obj, indent=1))


def code_version() -> str:
    """The code a cell ran: `git describe --always --dirty` of the checkout abpo_jax was
    imported from, else the package version (an installed wheel). Cells import the working tree
    when they start, so a study whose cells disagree here mixed code versions."""
    from abpo_jax import __version__
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return __version__
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else __version__


def run_cell(config: ml_collections.ConfigDict, cell_dir: pathlib.Path) -> dict[str, Any]:
    """Run (or resume) one continual run, its table and logs going to `cell_dir/run.log`."""
    from abpo_jax.train import rounds
    cell_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    code = code_version()
    with open(cell_dir / "run.log", "a") as log, contextlib.redirect_stdout(log):
        rows = rounds.main(config)
    return {"rows": rows, "seconds": time.time() - t0, "code": code}


def cells_of(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """The grid: (condition, seed) pairs, seed-major (cell K of `study.cell`)."""
    seeds = [int(config.seed) + i for i in range(int(config.study.seeds))]
    return [(name, s) for s in seeds for name in parse_conditions(config.study.conditions)]


def cell_dir_of(study_dir: pathlib.Path, name: str, seed: int) -> pathlib.Path:
    return study_dir / "cells" / name / f"seed_{seed}"


def run_one(config: ml_collections.ConfigDict, name: str, seed: int,
            study_dir: pathlib.Path) -> dict[str, Any]:
    """Run (or resume) cell (name, seed) unless its cell.json exists; the cell's record."""
    cell_dir = cell_dir_of(study_dir, name, seed)
    path = cell_dir / CELL_FILE
    if path.exists():
        return json.loads(path.read_text())
    cell = {"condition": name, "seed": seed, **run_cell(config, cell_dir)}
    _write_json(path, cell)
    return cell


def run_workers(config: ml_collections.ConfigDict, todo: list[int], study_dir: pathlib.Path,
                workers: int) -> None:
    """Cells `todo` (indices into the grid) as at most `workers` concurrent processes, each
    `python -m abpo_jax.study.runner <study config> K` (the same path as `study.cell=K`);
    a worker's stderr goes to its cell's `worker.err`. Raises when a worker fails."""
    study_dir.mkdir(parents=True, exist_ok=True)
    spec = study_dir / "study_config.pkl"
    worker = ml_collections.ConfigDict(config.to_dict())
    for field in tuning.FIELDS:   # `config` already holds the tuning's choices: not again
        worker.study.tuning[field] = ()
    with open(spec.with_suffix(".tmp"), "wb") as f:
        pickle.dump(worker, f)
    os.replace(spec.with_suffix(".tmp"), spec)
    grid = cells_of(config)
    running: list[tuple[int, subprocess.Popen]] = []
    failed: list[str] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < workers:
            k = queue.pop(0)
            cell_dir = cell_dir_of(study_dir, *grid[k])
            cell_dir.mkdir(parents=True, exist_ok=True)
            with open(cell_dir / "worker.err", "ab") as err:
                running.append((k, subprocess.Popen(
                    [sys.executable, "-m", "abpo_jax.study.runner", str(spec), str(k)],
                    stdout=subprocess.DEVNULL, stderr=err)))
        time.sleep(0.2)
        for k, proc in list(running):
            if proc.poll() is not None:
                running.remove((k, proc))
                if proc.returncode:
                    name, seed = grid[k]
                    failed.append(f"cell {k} ({name}, seed {seed}): exit {proc.returncode}, see "
                                  f"{cell_dir_of(study_dir, name, seed) / 'worker.err'}")
    if failed:
        raise RuntimeError("study workers failed: " + "; ".join(failed))


def main(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Run every cell not yet done (or only `study.cell`), then write study.json, plots/ and
    results.md."""
    from abpo_jax.train.outputs import print_table, progress
    study_dir = pathlib.Path(config.study.dir or os.path.join(config.run_dir, "study"))
    config.study.dir = str(study_dir)
    conditions = parse_conditions(config.study.conditions)
    tuned = None
    if tuning.enabled(config):   # choose per method on validation data first (study/tuning.py)
        config, tuned = tuning.tune(config, study_dir, conditions, cell_config, run_cell)
    seeds = [int(config.seed) + i for i in range(int(config.study.seeds))]
    cells = cells_of(config)
    # every cell's config is built (and validated) before any work
    configs = {(n, s): cell_config(config, n, conditions[n], s, cell_dir_of(study_dir, n, s))
               for n, s in cells}
    only = int(config.study.get("cell", -1))
    if only >= 0:   # one task of an array job: this cell only, no report
        if only >= len(cells):
            raise ConfigError(f"config.study.cell={only} but the grid has {len(cells)} cells "
                              f"(0..{len(cells) - 1}: {len(seeds)} seeds x {len(conditions)} "
                              "conditions)")
        name, s = cells[only]
        cell = run_one(configs[(name, s)], name, s, study_dir)
        print(f"study cell {only} ({name}, seed {s}) done: "
              f"{cell_dir_of(study_dir, name, s) / CELL_FILE}")
        return cell
    t_start = time.time()
    workers = int(config.study.get("workers", 1))
    if workers > 1 and not config.study.report_only:
        todo = [k for k, (n, s) in enumerate(cells)
                if not (cell_dir_of(study_dir, n, s) / CELL_FILE).exists()]
        run_workers(config, todo, study_dir, workers)
    done = []
    bar = progress(cells, "study cells", total=len(cells), enabled=config.outputs.progress)
    for name, s in bar:
        if config.study.report_only and not (cell_dir_of(study_dir, name, s) / CELL_FILE).exists():
            continue
        done.append(run_one(configs[(name, s)], name, s, study_dir))
    if not done:
        raise ConfigError(f"config.study.report_only=True but no cell of {study_dir} is finished")
    setup = {
        "command": "abpo-jax study " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "description": describe(config, len(seeds))
        + (f" Finished cells: {len(done)} of {len(cells)}." if len(done) < len(cells) else ""),
        "wall_seconds_this_invocation": time.time() - t_start,
        **({"tuning": tuned} if tuned else {}),
    }
    study = report.summarize(done, list(config.rounds.methods), conditions, setup)
    _write_json(study_dir / "study.json", study)
    report.write_plots(study, study_dir / "plots")
    (study_dir / "results.md").write_text(report.render_results(study))
    for name in study["conditions"]:
        metrics = report.headline_metrics(study, name)
        rows = [dict(zip(["method", *metrics], r)) for r in report.headline_rows(study, name)]
        for r in rows:
            r["round"] = study["conditions"][name]["rounds"][-1]
        print_table(rows, metrics,
                    f"condition {name}: final round, mean ± 95% CI over {len(seeds)} seeds")
    for line in report.significance_sentences(study):
        print(line)
    print(f"study dir: {study_dir} (study.json, results.md, plots/)")
    return study


def describe(config: ml_collections.ConfigDict, num_seeds: int) -> str:
    """One sentence of the study's sizes, for the results page."""
    d, r = config.data, config.rounds
    if r.get("split", "users") == "events":
        per_round = r.requests_per_round or "all the"
        sizes = (f"{r.num_rounds} event rounds of {per_round} logged requests (interaction "
                 f"events of each window; warm period {r.warm_fraction:.0%} of the events), "
                 f"{r.eval_requests or 'all'} test-window requests")
    else:
        sizes = (f"{r.num_rounds} rounds of {d.users_per_round} logged requests, "
                 f"{d.num_test_users} test users")
    feedback = config.sim.get("feedback", "mnl")
    source = (f", feedback `replay` (real behaviour, horizon {config.sim.replay_horizon})"
              if feedback == "replay" else "")
    return (f"{d.dataset}, model `{config.model.source}`, {sizes}, "
            f"H={d.history_len}, C={d.num_candidates}, G={config.loss.num_generations}, "
            f"{num_seeds} seeds{source}; methods: {', '.join(r.methods)}.")


def _worker_main(argv: list[str]) -> None:
    """`python -m abpo_jax.study.runner <study_config.pkl> K`: one worker of `study.workers`."""
    from abpo_jax import compile_cache
    with open(argv[0], "rb") as f:
        config = pickle.load(f)
    config.study.cell = int(argv[1])
    config.study.workers = 1
    compile_cache.enable(config)   # as the CLI does: the workers share the study's programs
    main(config)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
