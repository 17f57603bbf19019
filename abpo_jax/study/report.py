"""The study's outputs, all derived from `study.json`: summary statistics, plots with 95%
bands, the results page and the sentences stating which differences are significant.

`summarize(cells, ...)` turns per-cell metric rows into the study dict written as
`study.json`; `render_results(study)` is a pure function of that dict (a test regenerates the
page from the file, so the page can never be typed by hand).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping, Sequence

from abpo_jax.eval import metric_table
from abpo_jax.study import differences, stats, tuning

# The metrics reported and the headline ones: `eval/metric_table.py` (report / headline).
# metrics with paired tests at the final round (gini: exposure concentration, lower is better)
TESTED = ("ndcg@5", "sim_ctr", "gini")
BASELINES = ("no_update", "grpo", "sft_positive")   # every method is tested against each present
ALPHA = 0.05


def summarize(cells: Sequence[Mapping[str, Any]], methods: Sequence[str],
              conditions: Mapping[str, Mapping[str, Any]], setup: Mapping[str, Any]
              ) -> dict[str, Any]:
    """cells: [{"condition", "seed", "rows": metrics rows, "seconds"}] -> the study dict."""
    out: dict[str, Any] = {"setup": dict(setup), "methods": list(methods), "conditions": {},
                           "cells": [{k: c[k] for k in ("condition", "seed", "seconds", "code")
                                      if k in c} for c in cells]}
    for name, overrides in conditions.items():
        mine = sorted((c for c in cells if c["condition"] == name), key=lambda c: c["seed"])
        if not mine:
            continue
        rounds = sorted({int(r["round"]) for c in mine for r in c["rows"]})
        reported = metric_table.names(metric_table.ks_of(r for c in mine for r in c["rows"]),
                                      "report")
        # values[method][metric][round] = one value per seed (None where missing)
        values: dict[str, dict[str, dict[str, list]]] = {}
        for m in methods:
            for metric in reported:
                per_round = {}
                for k in rounds:
                    per_round[str(k)] = [_value(c["rows"], k, m, metric) for c in mine]
                if any(v is not None for vs in per_round.values() for v in vs):
                    values.setdefault(m, {})[metric] = per_round
        summary = {m: {metric: {k: stats.mean_ci(vs) for k, vs in per_round.items()}
                       for metric, per_round in by_metric.items()}
                   for m, by_metric in values.items()}
        final = str(rounds[-1])
        tests: dict[str, Any] = {}
        for metric in TESTED:
            for base in BASELINES:
                if base not in values or metric not in values[base]:
                    continue
                for m in methods:
                    if m == base or m not in values or metric not in values[m]:
                        continue
                    a, b = values[m][metric][final], values[base][metric][final]
                    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                    if pairs:
                        tests.setdefault(metric, {}).setdefault(base, {})[m] = \
                            stats.paired_test(*zip(*pairs))
            for base, by_method in tests.get(metric, {}).items():  # Holm within a family
                names = list(by_method)
                for m, p in zip(names, stats.holm([by_method[n]["p"] for n in names])):
                    by_method[m]["p_holm"] = p
        out["conditions"][name] = {"overrides": dict(overrides), "seeds": [c["seed"] for c in mine],
                                   "rounds": rounds, "values": values, "summary": summary,
                                   "tests": tests,
                                   "paired": differences.paired_series(values)}
    return out


def _value(rows: Sequence[Mapping[str, Any]], k: int, method: str, metric: str) -> Any:
    for r in rows:
        if int(r["round"]) == k and r["method"] == method:
            v = r.get(metric)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    return None


def _ci(s: Mapping[str, float], digits: int = 3) -> str:
    if s["n"] == 0 or not math.isfinite(s["mean"]):
        return "–"
    return f"{s['mean']:.{digits}f} ± {(s['hi'] - s['lo']) / 2:.{digits}f}"


def _diff(t: Mapping[str, float]) -> str:
    return f"{t['mean']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]"


def improves(t: Mapping[str, float], metric: str) -> bool | None:
    """True / False where a paired test says significantly better / worse (Holm, ALPHA) in the
    metric's direction (`metric_table.lower_is_better`), None where it does not differ."""
    if t["p_holm"] >= ALPHA or t["mean"] == 0:
        return None
    return (t["mean"] < 0) == metric_table.lower_is_better(metric)


def _seeds_better(t: Mapping[str, Any], metric: str) -> int:
    return t["losses"] if metric_table.lower_is_better(metric) else t["wins"]


def significance_sentences(study: Mapping[str, Any], metric: str = "ndcg@5") -> list[str]:
    """One sentence per condition and baseline: which methods differ significantly (paired t
    over seeds, Holm-adjusted within the baseline's family, alpha 0.05) at the final round."""
    lines = []
    for name, cond in study["conditions"].items():
        for base, by_method in cond["tests"].get(metric, {}).items():
            better = [m for m, t in by_method.items() if improves(t, metric) is True]
            worse = [m for m, t in by_method.items() if improves(t, metric) is False]
            same = [m for m in by_method if m not in better + worse]
            parts = []
            if better:
                parts.append("significantly better: " + ", ".join(better))
            if worse:
                parts.append("significantly worse: " + ", ".join(worse))
            if same:
                parts.append("not significantly different: " + ", ".join(same))
            lines.append(f"[{name}] {metric} at round {cond['rounds'][-1]} vs {base} "
                         f"({len(cond['seeds'])} seeds, paired t, Holm): " + "; ".join(parts)
                         + ".")
    return lines


def beats_sentences(study: Mapping[str, Any], metric: str = "ndcg@5",
                    bases: Sequence[str] = ("no_update", "sft_positive")) -> list[str]:
    """Per condition, one sentence: which methods are significantly better than every one of
    `bases` at the final round (paired t over seeds, Holm within each baseline's family), which
    beat only some, and which none (the demo's answer)."""
    lines = []
    for name, cond in study["conditions"].items():
        tests = cond["tests"].get(metric, {})
        present = [b for b in bases if b in tests]
        if not present:
            continue
        methods = [m for m in study["methods"] if m not in present
                   and all(m in tests[b] for b in present)]
        beaten = {m: [b for b in present if improves(tests[b][m], metric)] for m in methods}
        every = [m for m in methods if len(beaten[m]) == len(present)]
        some = [f"{m} (only {', '.join(beaten[m])})" for m in methods
                if 0 < len(beaten[m]) < len(present)]
        none = [m for m in methods if not beaten[m]]
        missing = [b for b in bases if b not in present]
        lines.append(
            f"[{name}] {metric} at round {cond['rounds'][-1]} ({len(cond['seeds'])} seeds, "
            f"paired t, Holm): significantly better than {' and '.join(present)}: "
            + (", ".join(every) or "no method")
            + (f"; better than some of them: {', '.join(some)}" if some else "")
            + (f"; not significantly better than any: {', '.join(none)}" if none else "")
            + (f" ({', '.join(missing)} not in the study)" if missing else "") + ".")
    return lines


def headline_rows(study: Mapping[str, Any], condition: str) -> list[list[str]]:
    """[method, metric mean ± CI half-width ...] at the final round of `condition`."""
    cond = study["conditions"][condition]
    final = str(cond["rounds"][-1])
    rows = []
    for m in study["methods"]:
        if m not in cond["summary"]:
            continue
        rows.append([m] + [_ci(cond["summary"][m][x][final], 4) if x in cond["summary"][m]
                           else "–" for x in headline_metrics(study, condition)])
    return rows


def headline_metrics(study: Mapping[str, Any], condition: str) -> list[str]:
    """The headline metrics the runs produced (@K needs K <= C candidates)."""
    summary = study["conditions"][condition]["summary"]
    return metric_table.present(_headline(summary.values()), list(summary.values()))


def _headline(summaries: Any) -> tuple[str, ...]:
    """The metric table's headline columns at the K the summaries hold."""
    return metric_table.names(metric_table.ks_of(summaries), "headline")


def condition_rows(study: Mapping[str, Any], metric: str = "ndcg@5",
                   base: str = "no_update") -> tuple[list[str], list[list[str]]]:
    """(methods, rows): per condition, each method's final-round paired difference from
    `base` in `metric` (mean [95% CI], * when Holm-significant) — the conditions side by side."""
    methods = [m for m in study["methods"] if m != base]
    rows = []
    for name, cond in study["conditions"].items():
        tests = cond["tests"].get(metric, {}).get(base, {})
        cells = []
        for m in methods:
            t = tests.get(m)
            cells.append("–" if t is None else _diff(t) + (" *" if t["p_holm"] < ALPHA else ""))
        rows.append([name, *cells])
    return methods, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def render_results(study: Mapping[str, Any]) -> str:
    """The results page (markdown), a pure function of the study dict."""
    s = study["setup"]
    lines = ["# Closed-loop study: results", "",
             f"Generated by `{s.get('command', 'abpo-jax study')}` from `study.json`; "
             "regenerate, do not edit.", "",
             f"Setup: {s.get('description', '')}", "",
             "Each cell is a continual run (round 0 = SFT warm start, then deploy -> log -> "
             "update -> evaluate); all methods of a seed share data, simulator, round-0 policy "
             "and logging random numbers, so method differences are paired over seeds. "
             "Values: mean ± half-width of the 95% t interval over seeds.", ""]
    if any("paired" in c for c in study["conditions"].values()):
        lines += ["Plots (`plots/`): each metric per round, and "
                  "`<condition>_<metric>_vs_no_update.png` with the absolute curves beside "
                  "method − no_update per round. " + differences.CAPTION, ""]
    if "tuning" in s:
        lines += tuning.render_section(s["tuning"])
    for name, cond in study["conditions"].items():
        final = cond["rounds"][-1]
        over = ", ".join(f"`{k}={v}`" for k, v in cond["overrides"].items()) or "defaults"
        lines += [f"## Condition `{name}` ({over}); final round {final}, "
                  f"{len(cond['seeds'])} seeds", ""]
        lines += _md_table(["method", *headline_metrics(study, name)], headline_rows(study, name))
        lines.append("")
        for metric in TESTED:
            for base, by_method in cond["tests"].get(metric, {}).items():
                lower = " (lower is better)" if metric_table.lower_is_better(metric) else ""
                lines += [f"Paired differences in {metric}, method − {base}{lower}:", ""]
                rows = [[m, _diff(t), f"{t['p']:.3g}", f"{t['p_holm']:.3g}",
                         f"{_seeds_better(t, metric)}/{t['n']}",
                         "yes" if t["p_holm"] < ALPHA else "no"] for m, t in by_method.items()]
                lines += _md_table(["method", "difference [95% CI]", "p", "p (Holm)",
                                    "seeds better", "significant"], rows)
                lines.append("")
        mde = _mde_line(cond)
        if mde:
            lines += [mde, ""]
    methods, rows = condition_rows(study)
    lines += ["## All conditions: NDCG@5 difference from no_update at the final round", "",
              "Mean [95% CI] over seeds; * = significant (paired t, Holm within the condition).",
              ""]
    lines += _md_table(["condition", *methods], rows)
    lines += ["", "## What the data show", ""]
    lines += [f"- {x}" for x in significance_sentences(study)]
    for metric in TESTED[1:]:
        lines += [f"- {x}" for x in significance_sentences(study, metric)]
    lines += [f"- {x}" for x in where_abpo_does_not_win(study)]
    wall = sum(c["seconds"] for c in study["cells"])
    lines += ["", f"Wall time: {wall / 60:.1f} min over {len(study['cells'])} cells.", ""]
    codes = sorted({c["code"] for c in study["cells"] if "code" in c})
    if codes:   # more than one: the cells ran different code (runner.code_version)
        lines[-1:] = [f"Code: {', '.join(codes)}.", ""]
    return "\n".join(lines)


def _mde_line(cond: Mapping[str, Any]) -> str:
    """Power: the smallest NDCG@5 difference vs no_update these seeds resolve (80%, 0.05)."""
    tests = cond["tests"].get("ndcg@5", {}).get("no_update", {})
    sds = [t["sd"] for t in tests.values() if t["n"] > 1]
    if not sds:
        return ""
    sd = float(sorted(sds)[len(sds) // 2])
    n = max(t["n"] for t in tests.values())
    return (f"Resolution: the median seed-to-seed sd of a method's NDCG@5 difference from "
            f"no_update is {sd:.4f}; with {n} seeds a paired t-test detects a true difference "
            f"of {stats.min_detectable_difference(sd, n):.4f} with 80% power (alpha 0.05).")


def where_abpo_does_not_win(study: Mapping[str, Any], method: str = "abpo") -> list[str]:
    """Plain statements of every (condition, metric, baseline) where `method` is not
    significantly better than the baseline at the final round."""
    out = []
    for name, cond in study["conditions"].items():
        for metric in TESTED:
            for base, by_method in cond["tests"].get(metric, {}).items():
                t = by_method.get(method)
                if t is None or improves(t, metric):
                    continue
                verdict = ("significantly worse" if improves(t, metric) is False else
                           "not significantly different")
                out.append(f"[{name}] {method} does not beat {base} on {metric}: "
                           f"{_diff(t)}, {verdict}.")
    return out


def write_plots(study: Mapping[str, Any], out_dir: str | pathlib.Path,
                metrics: Sequence[str] | None = None) -> list[pathlib.Path]:
    """One PNG per (condition, metric): mean per round, one line per method, 95% band
    (default: the headline metrics)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from abpo_jax.train.outputs import plot_name, save_round_plot

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cond in study["conditions"].items():
        for metric in (metrics if metrics is not None else
                       _headline(cond["summary"].values())):
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            drew = False
            for m in study["methods"]:
                series = cond["summary"].get(m, {}).get(metric)
                if not series:
                    continue
                ks = sorted(int(k) for k in series if series[k]["n"])
                if not ks:
                    continue
                mean = [series[str(k)]["mean"] for k in ks]
                ax.plot(ks, mean, marker="o", label=m)
                ax.fill_between(ks, [series[str(k)]["lo"] for k in ks],
                                [series[str(k)]["hi"] for k in ks], alpha=0.15)
                drew = True
            if not drew:
                plt.close(fig)
                continue
            ax.set_title(f"{name}: {metric} (mean, 95% CI over {len(cond['seeds'])} seeds)",
                         fontsize=9)
            paths.append(save_round_plot(fig, ax, metric, out / f"{name}_{plot_name(metric)}.png"))
    return paths + differences.write_difference_plots(
        study, out, lambda name: headline_metrics(study, name))
