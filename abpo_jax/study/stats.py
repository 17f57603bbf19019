"""Pure statistics of the study: t confidence intervals over seeds, paired tests, power.

Seeds are the unit of replication: every method of a (condition, seed) cell shares the data
split, the simulator, the round-0 policy and the logging random numbers, so a method's metric
minus another's on the same seed is a paired difference.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and the two-sided t interval over `values` (one per seed); NaN-free inputs.

    With one value the interval is the point itself (no spread to estimate).
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": 0.0, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sd": 0.0, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


def paired_test(a: Sequence[float], b: Sequence[float], level: float = 0.95
                ) -> dict[str, float]:
    """a - b paired over seeds: mean difference, its t interval, the two-sided paired t-test
    p-value, and the number of seeds where a > b. One seed cannot be tested (p = 1); with no
    spread, p = 1 when every difference is 0 and 0 otherwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    out = mean_ci(d, level)
    if len(d) < 2:
        p = 1.0
    elif np.all(d == d[0]):
        p = 1.0 if d[0] == 0 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {**out, "p": p, "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0))}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the comparisons given)."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8
                              ) -> float:
    """Smallest true mean difference a paired t-test over n units with difference sd detects
    with the given power: (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)."""
    if n < 2 or not np.isfinite(sd):
        return float("inf")
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))


def users_needed(sd_user: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Test users for a paired per-user difference of sd `sd_user` to resolve `delta`
    (normal approximation): ((z_{1-alpha/2} + z_power) sd / delta)^2."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return int(math.ceil((z * sd_user / delta) ** 2))
