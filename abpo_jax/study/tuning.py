"""Equal tuning budgets for every method (DESIGN.md "Fair comparison").

    abpo-jax study --config=configs/study_tiny.py \
        --config.study.tuning.learning_rate='(1e-5, 1e-4)' --config.study.tuning.beta='(0.0, 0.04)'

Every method gets the same small grid over the hyper-parameters it has (`study.tuning.*`; an
empty tuple leaves a field untuned):

    learning_rate   train.learning_rate     every method that updates
    beta            loss.beta               policy-gradient methods with rollouts (the KL is
                                            over rollout tokens)
    negative_scale  loss.negative_scale     policy-gradient methods whose outcome source is on
    baseline_value  loss.baseline_value     advantage_baseline = constant (banditnet's lambda_b)

A field the method's own `config.methods` entry pins (e.g. banditnet's beta = 0) is not tuned.
Each grid point of a method is a variant method (`abpo__t3`: point 3 of abpo's grid), so all
variants of all methods run side by side in one continual run per tuning seed, on held-out data
that the reported numbers never use:

- rounds.split=users: a validation slice of users — the tuning runs keep only the evaluable users
  before the test users (`data.max_users` = all - num_test_users), so their "test users" are the
  num_test_users users just before the real ones, and every round slice moves back with them;
- rounds.split=events: the validation window — `valid_<metric>` (or the column
  `study.tuning.select_on` names) measured on the next window after rounds 1..R-1 (never after
  round R, whose next window is the test window).

The tuning seeds are seed + 1000 + i, never a reported seed. Per method the variant with the
best mean validation value wins (ties: the first in grid order); the study then runs with the
choices written into `config.methods` and the results page states the grid and each choice.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from abpo_jax.config import ConfigError

TUNING_SEED_OFFSET = 1000
# tuning field -> (config path, does the method have it: (kind, effective loss) -> bool)
FIELDS: dict[str, tuple[str, Callable[[str, Mapping[str, Any]], bool]]] = {
    "learning_rate": ("train.learning_rate", lambda kind, loss: kind != "none"),
    "beta": ("loss.beta", lambda kind, loss: kind == "policy_gradient"
             and loss["num_generations"] > 0),
    "negative_scale": ("loss.negative_scale", lambda kind, loss: kind == "policy_gradient"
                       and "outcome" in loss["rewards"]),
    "baseline_value": ("loss.baseline_value", lambda kind, loss: kind == "policy_gradient"
                       and loss["advantage_baseline"] == "constant"),
}
TUNING_FILE = "tuning.json"


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether `study.tuning` names any grid."""
    return any(len(config.study.tuning[f]) for f in FIELDS)


def method_grid(config: ml_collections.ConfigDict, method: str) -> list[dict[str, Any]]:
    """The grid points of `method`: dicts {tuning field: value} over the fields it has and its
    entry does not pin, in grid order ([{}] when none)."""
    entry = config.methods[method].to_dict()
    kind = entry["kind"]
    loss = {**config.loss.to_dict(), **{k: v for k, v in entry.items() if k != "kind"}}
    fields = [f for f, (path, has) in FIELDS.items()
              if len(config.study.tuning[f]) and has(kind, loss)
              and path.split(".")[-1] not in entry]
    return [dict(zip(fields, values))
            for values in itertools.product(*(tuple(config.study.tuning[f]) for f in fields))]


VARIANT_SEP = "__t"   # variant names are method + "__t" + grid index (safe as a path and key)


def with_choices(config: ml_collections.ConfigDict,
                 points: Mapping[str, tuple[str, Mapping[str, Any]]]
                 ) -> ml_collections.ConfigDict:
    """A copy of `config` running the methods `points` names: {name: (method, point)}, each a
    `config.methods` entry = the method's entry + the point (loss fields, and learning_rate as a
    train.learning_rate override)."""
    c = ml_collections.ConfigDict(config.to_dict())
    for name, (method, point) in points.items():
        c.methods[name] = ml_collections.ConfigDict({**config.methods[method].to_dict(),
                                                     **point})
    c.rounds.methods = tuple(points)
    return c


def variants(config: ml_collections.ConfigDict) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every grid point of every method of rounds.methods: {variant name: (method, point)};
    a method without a grid runs as itself."""
    out = {}
    for m in config.rounds.methods:
        grid = method_grid(config, m)
        for i, point in enumerate(grid):
            out[m if grid == [{}] else f"{m}{VARIANT_SEP}{i}"] = (m, point)
    return out


def validation_users(config: ml_collections.ConfigDict) -> int | None:
    """rounds.split=users: how many evaluable users the tuning runs keep (all but the test
    users, so the last num_test_users of them are a validation slice); None under events."""
    if config.rounds.get("split", "users") != "users":
        return None
    total = int(config.data.max_users)
    if total <= 0:
        from abpo_jax.data.splits import prepare_data
        total = len(prepare_data(config).ordered_users)
    keep = total - int(config.data.num_test_users)
    if keep <= int(config.data.num_test_users):
        raise ConfigError(f"study.tuning: {total} evaluable users leave no validation slice "
                          f"before the config.data.num_test_users={config.data.num_test_users} "
                          "test users; lower num_test_users or users_per_round")
    return keep


def validation_score(rows: Sequence[Mapping[str, Any]], method: str, metric: str,
                     events: bool) -> float | None:
    """The method's validation value in one tuning run: users: `metric` at the final round
    (measured on the validation slice); events: the mean of `metric` over rounds 1..R-1 (the
    next window of round R is the test window)."""
    rounds = sorted({int(r["round"]) for r in rows if r["method"] == method})
    use = [k for k in rounds if k >= 1]
    use = use[:-1] if events else use[-1:]
    vals = [float(r[metric]) for r in rows if r["method"] == method and int(r["round"]) in use
            and isinstance(r.get(metric), (int, float))]
    return sum(vals) / len(vals) if vals else None


def choose(runs: Sequence[Sequence[Mapping[str, Any]]],
           grid: Mapping[str, tuple[str, Mapping[str, Any]]], metric: str, events: bool
           ) -> dict[str, dict[str, Any]]:
    """Per method, the variant with the best mean validation score over the tuning runs (ties:
    the first in grid order): {method: {"variant", "values", "score", "scores"}}."""
    out = {}
    for m in dict.fromkeys(method for method, _ in grid.values()):
        names = [v for v, (method, _) in grid.items() if method == m]
        scores = {}
        for v in names:
            vals = [s for s in (validation_score(rows, v, metric, events) for rows in runs)
                    if s is not None]
            if not vals:
                raise ConfigError(f"study.tuning: the tuning runs carry no {metric!r} for "
                                  f"{v!r} (config.study.tuning.select_on names a row column)")
            scores[v] = sum(vals) / len(vals)
        best = max(names, key=lambda v: (scores[v], -names.index(v)))
        out[m] = {"variant": best, "values": dict(grid[best][1]), "score": scores[best],
                  "scores": scores}
    return out


def tune(config: ml_collections.ConfigDict, study_dir: pathlib.Path,
         conditions: Mapping[str, Mapping[str, Any]],
         cell_config: Callable[..., ml_collections.ConfigDict],
         run_cell: Callable[[ml_collections.ConfigDict, pathlib.Path], dict],
         ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Run (or resume) the tuning runs, choose per method, and return (the study config with
    the choices in `config.methods`, the summary for the results page: grid, choices, scores).

    `cell_config` / `run_cell` are the study runner's (one cell's config, one resumable run)."""
    t = config.study.tuning
    name = t.condition
    if name not in conditions:
        raise ConfigError(f"config.study.tuning.condition={name!r} is not a condition of "
                          "config.study.conditions: " + ", ".join(conditions))
    events = config.rounds.get("split", "users") == "events"
    metric = (t.select_on or f"valid_{t.metric}") if events else t.metric
    grid = variants(config)
    tcfg = with_choices(config, grid)
    keep = validation_users(config)
    if keep is not None:
        tcfg.data.max_users = keep
    runs = []
    for i in range(int(t.seeds)):
        seed = int(config.seed) + TUNING_SEED_OFFSET + i
        cell_dir = study_dir / "tuning" / name / f"seed_{seed}"
        path = cell_dir / "cell.json"
        if path.exists():
            runs.append(json.loads(path.read_text())["rows"])
            continue
        if config.study.report_only:
            raise ConfigError(f"config.study.report_only=True but the tuning run {cell_dir} "
                              "is not finished (run the study once without report_only)")
        cell = run_cell(cell_config(tcfg, name, conditions[name], seed, cell_dir), cell_dir)
        cell_dir.mkdir(parents=True, exist_ok=True)   # the real run_cell makes it too
        path.with_suffix(".tmp").write_text(json.dumps({"seed": seed, **cell}))
        os.replace(path.with_suffix(".tmp"), path)   # atomic: a killed run is redone, not torn
        runs.append(cell["rows"])
    chosen = choose(runs, grid, metric, events)
    summary = {
        "grid": {f: list(t[f]) for f in FIELDS if len(t[f])},
        "condition": name, "seeds": int(t.seeds), "metric": metric,
        "validation": ("the next window after rounds 1..R-1 (event rounds)" if events else
                       f"a validation slice of {config.data.num_test_users} users just before "
                       "the test users"),
        "choices": chosen,
    }
    (study_dir / "tuning").mkdir(parents=True, exist_ok=True)
    (study_dir / "tuning" / TUNING_FILE).write_text(json.dumps(summary, indent=1))
    study = with_choices(config, {m: (m, c["values"]) for m, c in chosen.items()})
    for f in FIELDS:   # chosen: the study's workers (a pickled config) must not tune again
        study.study.tuning[f] = ()
    return study, summary


def render_section(summary: Mapping[str, Any]) -> list[str]:
    """The results page's tuning section: the grid, where it was chosen, each method's choice."""
    grid = "; ".join(f"{f} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}"
                     for f, vals in summary["grid"].items())
    lines = ["## Tuning (equal budget per method)", "",
             f"Grid: {grid}. Each method is tuned over the fields it has (a field its method "
             f"entry pins is not tuned), on condition `{summary['condition']}`, "
             f"{summary['seeds']} tuning seed(s) never reported, choosing the best mean "
             f"{summary['metric']} on {summary['validation']}; the test numbers below never "
             "took part in a choice.", "",
             "| method | chosen | validation score | variants tried |", "|---|---|---|---|"]
    for m, c in summary["choices"].items():
        chosen = ", ".join(f"{k}={v:g}" for k, v in c["values"].items()) or "(nothing to tune)"
        lines.append(f"| {m} | {chosen} | {c['score']:.4f} | {len(c['scores'])} |")
    return lines + [""]
