"""Paired differences from a baseline per round (DESIGN.md "Fair comparison": plots show
method - no_update per round with a 95% CI and a zero line, beside the absolute curves).

Every method of a (condition, seed) cell shares data, simulator, round-0 policy and logging
random numbers, so method - baseline on the same seed is a paired difference; its interval is
the paired t interval over seeds (`stats.paired_test`). The bands are *unadjusted* per-round
95% intervals; the significance verdicts of the results page are Holm-adjusted over the
methods at the final round, so a band that clears zero is not by itself a Holm-significant
difference. The plots mark the final-round points the Holm verdict calls significant (filled
star) and say so in their title.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping, Sequence

from abpo_jax.study import stats

BASE = "no_update"
CAPTION = ("Bands are unadjusted per-round paired 95% t intervals over seeds; ★ marks a "
           "final-round difference that is significant after Holm adjustment (alpha 0.05, the "
           "verdict of the tables above).")


def paired_series(values: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
                  base: str = BASE) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{metric: {method: {round: paired_test(method - base)}}} from the study's per-seed
    `values[method][metric][round]` (seeds where either value is missing are left out)."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    if base not in values:
        return out
    for m, by_metric in values.items():
        if m == base:
            continue
        for metric, per_round in by_metric.items():
            ref = values[base].get(metric)
            if ref is None:
                continue
            for k, xs in per_round.items():
                pairs = [(x, y) for x, y in zip(xs, ref.get(k, [])) if x is not None
                         and y is not None]
                if pairs:
                    out.setdefault(metric, {}).setdefault(m, {})[k] = \
                        stats.paired_test(*zip(*pairs))
    return out


def write_difference_plots(study: Mapping[str, Any], out_dir: str | pathlib.Path,
                           metrics: Callable[[str], Sequence[str]], alpha: float = 0.05,
                           base: str = BASE) -> list[pathlib.Path]:
    """One PNG per (condition, metric of `metrics(condition)`): the absolute curves (mean, 95%
    band) on the left and method - base per round (paired 95% band, zero line) on the
    right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from abpo_jax.train.outputs import plot_name

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cond in study["conditions"].items():
        paired = cond.get("paired", {})
        for metric in metrics(name):
            diffs = paired.get(metric, {})
            if not diffs:
                continue
            fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
            holm = cond["tests"].get(metric, {}).get(base, {})
            final = str(cond["rounds"][-1])
            for i, m in enumerate(study["methods"]):
                color = f"C{i % 10}"
                series = cond["summary"].get(m, {}).get(metric)
                if series:
                    _band(left, series, m, color)
                if m in diffs:
                    _band(right, diffs[m], m, color)
                    t = holm.get(m)
                    if t is not None and t.get("p_holm", 1.0) < alpha and final in diffs[m]:
                        right.plot([int(final)], [diffs[m][final]["mean"]], marker="*",
                                   markersize=12, color=color, linestyle="none")
            right.axhline(0.0, color="black", linewidth=0.8)
            n = len(cond["seeds"])
            left.set_title(f"{name}: {metric} (mean, 95% CI over {n} seeds)", fontsize=9)
            right.set_title(f"{metric}: method − {base}\n(paired 95% CI, unadjusted; "
                            "★ Holm-significant)", fontsize=9)   # two lines: one was cut off
            for ax, label in ((left, metric), (right, f"Δ {metric}")):
                ax.set_xlabel("round")
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
                ax.xaxis.get_major_locator().set_params(integer=True)
            right.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{name}_{plot_name(metric)}_vs_{base}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


def _band(ax: Any, series: Mapping[str, Mapping[str, float]], label: str, color: str) -> None:
    ks = sorted(int(k) for k in series if series[k]["n"])
    if not ks:
        return
    ax.plot(ks, [series[str(k)]["mean"] for k in ks], marker="o", label=label, color=color)
    ax.fill_between(ks, [series[str(k)]["lo"] for k in ks], [series[str(k)]["hi"] for k in ks],
                    alpha=0.15, color=color)
