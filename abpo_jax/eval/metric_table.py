"""The one table of the per-round metrics: each column's name, how it is computed, and where it
is shown (the run's printed table, its plots, the study's summary and its headline page).

@K columns are written with `{k}` and expanded from `eval.ks` (`at` says which K: the table
would otherwise grow by every K of every family). The run table and plots
(`train/rounds.finish`), `abpo-jax eval` and the study report (`study/report.py`) all read this
table; a metric row may hold more keys (train/*, log_ctr, ...), shown nowhere by default.

To add a metric: compute it in `eval/evaluate.py` (or the mode's `eval_metrics`), add one line
here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str                 # the row key; "{k}" is expanded from eval.ks
    computed: str             # how (the function that computes it and what it measures)
    table: bool = False       # the run's printed table and `abpo-jax eval`
    plot: bool = False        # the run's plots (one per column, against the round)
    report: bool = False      # the study's summary (`study.json`) and its per-metric tables
    headline: bool = False    # the study's results page and plots
    at: str = "all"           # K of eval.ks: all | above_1 | first | first_above_1 | last
    lower_is_better: bool = False   # the study's verdicts: a significant decrease is "better"


_EVERYWHERE = dict(table=True, plot=True, report=True)

# In this order everywhere they are shown (the study pages' order: ndcg@5 is the primary metric).
METRICS: tuple[Metric, ...] = (
    # ndcg@1 = hr@1: not repeated
    Metric("ndcg@{k}", "policy_metrics: rank-discounted hit of the held-out item",
           **_EVERYWHERE, headline=True, at="above_1"),
    Metric("hr@{k}", "policy_metrics: held-out next item in the policy's top K", **_EVERYWHERE,
           headline=True),
    Metric("sim_ctr", "policy_metrics: E_{c~pi}[P(click)] under the simulator", **_EVERYWHERE,
           headline=True),
    Metric("exposed_share", "policy_metrics: share of top-1 items exposed in the logs so far",
           **_EVERYWHERE, headline=True),
    Metric("kl_exposure", "policy_metrics: KL(policy item mass || logged exposures)",
           **_EVERYWHERE),
    Metric("gini", "policy_metrics: Gini of the top-1 item counts (exposure concentration)",
           **_EVERYWHERE, lower_is_better=True),
    Metric("coverage", "policy_metrics: distinct top-1 items / catalogue", **_EVERYWHERE),
    Metric("arp", "policy_metrics: mean interaction count of the top-1 items", **_EVERYWHERE),
    Metric("snips_ctr", "log_metrics: SNIPS CTR estimate from the round's log",
           **_EVERYWHERE),
    Metric("log_sim_ctr", "log_metrics: the policy's simulated CTR on the log's contexts",
           report=True),
    Metric("snips_bias", "log_metrics: snips_ctr - log_sim_ctr", **_EVERYWHERE,
           headline=True),
    # event rounds: the next window's events, before they are deployed on (what to tune on)
    Metric("valid_ndcg@{k}", "validation_metrics: ndcg on the next window's requests",
           report=True, at="above_1"),
    Metric("valid_hr@{k}", "validation_metrics: hr on the next window's requests", report=True),
    Metric("valid_ctr", "validation_metrics: true CTR (feedback source) on the next window",
           report=True),
    Metric("text_ndcg@{k}", "text mode: ndcg of the sampled ranking", **_EVERYWHERE,
           headline=True, at="first_above_1"),
    Metric("text_hr@{k}", "text mode: hr of n sampled completions in sampling order",
           **_EVERYWHERE, headline=True, at="first"),
    Metric("catalogue_ndcg@{k}", "catalogue mode: ndcg of constrained beam search",
           **_EVERYWHERE, headline=True, at="last"),
    Metric("catalogue_hr@{k}", "catalogue mode: hr of constrained beam search (K <= beam)",
           **_EVERYWHERE, headline=True, at="last"),
)


def _select(at: str, ks: Sequence[int]) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    above = [k for k in ks if k > 1]
    return {"all": ks, "above_1": above, "first": ks[:1], "first_above_1": above[:1],
            "last": ks[-1:]}[at]


def names(ks: Sequence[int], where: str) -> tuple[str, ...]:
    """The columns shown in `where` (table | plot | report | headline), @K expanded from ks."""
    out = []
    for m in METRICS:
        if getattr(m, where):
            out += ([m.name.format(k=k) for k in _select(m.at, ks)] if "{k}" in m.name
                    else [m.name])
    return tuple(out)


def lower_is_better(name: str) -> bool:
    """Whether a decrease of the column `name` is an improvement (Gini: less concentration)."""
    for m in METRICS:
        pattern = re.escape(m.name).replace(re.escape("{k}"), r"\d+")
        if re.fullmatch(pattern, name):
            return m.lower_is_better
    return False


def present(columns: Iterable[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns some row holds (a mode or a missing log leaves some out)."""
    return [c for c in columns if any(c in r for r in rows)]


_AT_K = re.compile(r"(?:hr|ndcg)@(\d+)$")


def ks_of(rows: Iterable[Mapping[str, Any]]) -> tuple[int, ...]:
    """The K of eval.ks a set of metric rows was computed with (its hr@K and ndcg@K keys)."""
    return tuple(sorted({int(m.group(1)) for r in rows for key in r
                         if (m := _AT_K.fullmatch(key))}))
