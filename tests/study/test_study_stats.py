"""Study statistics against hand values and scipy's own definitions; the report as a pure
function of the study dict."""
import math

import numpy as np
import pytest
from scipy import stats as sp

from abpo_jax.study import report, stats
from abpo_jax.study.runner import parse_conditions
from abpo_jax.config import ConfigError


def test_mean_ci_by_hand():
    s = stats.mean_ci([1.0, 2.0, 3.0])
    half = sp.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)      # sd = 1
    assert s["mean"] == 2.0 and s["n"] == 3 and s["sd"] == 1.0
    np.testing.assert_allclose([s["lo"], s["hi"]], [2 - half, 2 + half])
    assert stats.mean_ci([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "sd": 0.0, "n": 1}
    assert stats.mean_ci([None, 1.0, float("nan"), 3.0])["n"] == 2


def test_paired_test_by_hand():
    a, b = [0.60, 0.62, 0.61, 0.64, 0.63], [0.58, 0.61, 0.58, 0.62, 0.60]
    t = stats.paired_test(a, b)
    d = np.subtract(a, b)
    tstat = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    np.testing.assert_allclose(t["p"], 2 * sp.t.sf(abs(tstat), 4), rtol=1e-9)
    np.testing.assert_allclose(t["mean"], d.mean())
    assert t["wins"] == 5 and t["losses"] == 0
    assert stats.paired_test([1, 2], [1, 2])["p"] == 1.0


def test_holm_by_hand():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_power_helpers():
    # 5 seeds, sd 0.01: (t_.975,4 + t_.8,4) * 0.01 / sqrt 5
    want = (sp.t.ppf(0.975, 4) + sp.t.ppf(0.8, 4)) * 0.01 / math.sqrt(5)
    np.testing.assert_allclose(stats.min_detectable_difference(0.01, 5), want)
    assert stats.users_needed(0.2, 0.01) == math.ceil((2.8015852 * 20) ** 2)


def test_parse_conditions():
    got = parse_conditions(["base:", "t2:policy.logging_temperature=2.0,sim.external_ignore=0.5",
                            "pop:policy.logging_popularity=1"])
    assert got == {"base": {}, "t2": {"policy.logging_temperature": 2.0,
                                      "sim.external_ignore": 0.5},
                   "pop": {"policy.logging_popularity": 1}}
    for bad in (["nocolon"], ["x:a"], ["a:", "a:"]):
        with pytest.raises(ConfigError, match="config.study.conditions"):
            parse_conditions(bad)


def _cells():
    """Two seeds; abpo beats no_update by 0.02 +- 0.001 on ndcg@5 at the final round."""
    cells = []
    for seed, noise in ((0, 0.001), (1, -0.001)):
        rows = []
        for k in (0, 1):
            for m, lift in (("abpo", 0.02), ("grpo", -0.01), ("no_update", 0.0)):
                rows.append({"round": k, "method": m, "ndcg@5": 0.5 + k * lift + noise * k,
                             "sim_ctr": 0.1, "hr@1": 0.2})
        cells.append({"condition": "base", "seed": seed, "rows": rows, "seconds": 1.0})
    return cells


def test_summarize_and_render():
    study = report.summarize(_cells(), ["abpo", "grpo", "no_update"], {"base": {}},
                             {"command": "abpo-jax study", "description": "synthetic"})
    cond = study["conditions"]["base"]
    assert cond["rounds"] == [0, 1] and cond["seeds"] == [0, 1]
    t = cond["tests"]["ndcg@5"]["no_update"]["abpo"]
    np.testing.assert_allclose(t["mean"], 0.02)
    assert t["wins"] == 2
    page = report.render_results(study)
    assert "| abpo |" in page and "Paired differences in ndcg@5, method − no_update" in page
    assert report.render_results(study) == page          # pure
    sentences = report.significance_sentences(study)
    assert sentences and all(s.startswith("[base] ndcg@5 at round 1 vs ") for s in sentences)
    # sim_ctr ties exactly: abpo does not beat no_update there, and the page says so
    assert any("abpo does not beat no_update on sim_ctr" in s
               for s in report.where_abpo_does_not_win(study))


def test_lower_is_better_verdicts():
    """Gini (exposure concentration) is tested with the direction flipped: abpo lowering it
    significantly is "better", grpo raising it "worse", and the seeds-better column counts
    decreases."""
    cells = []
    for seed, noise in enumerate((0.002, -0.001, 0.0)):
        rows = [{"round": 1, "method": m, "ndcg@5": 0.5, "sim_ctr": 0.1,
                 "gini": 0.6 + lift + noise}
                for m, lift in (("abpo", -0.05), ("grpo", +0.04), ("no_update", 0.0))]
        cells.append({"condition": "pop", "seed": seed, "rows": rows, "seconds": 1.0})
    study = report.summarize(cells, ["abpo", "grpo", "no_update"], {"pop": {}}, {})
    t = study["conditions"]["pop"]["tests"]["gini"]["no_update"]
    assert t["abpo"]["p_holm"] < 0.05 and t["grpo"]["p_holm"] < 0.05
    assert report.improves(t["abpo"], "gini") is True
    assert report.improves(t["grpo"], "gini") is False
    assert report.improves(t["abpo"], "ndcg@5") is False     # the same numbers, higher-better
    sentences = report.significance_sentences(study, "gini")
    assert sentences == ["[pop] gini at round 1 vs no_update (3 seeds, paired t, Holm): "
                         "significantly better: abpo; significantly worse: grpo.",
                         "[pop] gini at round 1 vs grpo (3 seeds, paired t, Holm): "
                         "significantly better: abpo, no_update."]
    page = report.render_results(study)
    assert "Paired differences in gini, method − no_update (lower is better):" in page
    assert "| abpo | -0.0500 [" in page and "| 3/3 | yes |" in page
    assert "| grpo | +0.0400 [" in page and "| 0/3 | yes |" in page
    assert not any("on gini" in s and "abpo" in s
                   for s in report.where_abpo_does_not_win(study))
