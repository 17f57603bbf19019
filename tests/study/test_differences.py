"""Paired differences from no_update per round (study/differences.py): hand values of the
paired interval, the plots beside the absolute curves, and the page saying the bands are
unadjusted while the verdicts are Holm-adjusted."""
import numpy as np
from scipy import stats as sps

from abpo_jax.study import differences, report


def _cells():
    # 3 seeds; round 0 identical, round 1: a = no_update + [0.1, 0.2, 0.3], b = no_update
    base = [0.40, 0.45, 0.50]
    cells = []
    for i, s in enumerate((0, 1, 2)):
        rows = []
        for k in (0, 1):
            for m, delta in (("a", 0.1 * (i + 1)), ("b", 0.0), ("no_update", 0.0)):
                v = base[i] + (delta if k else 0.0)
                rows.append({"round": k, "method": m, "ndcg@5": v, "hr@5": v})
        cells.append({"condition": "base", "seed": s, "rows": rows, "seconds": 1.0})
    return cells


def test_paired_differences_by_hand(tmp_path):
    study = report.summarize(_cells(), ["a", "b", "no_update"], {"base": {}}, {})
    d = study["conditions"]["base"]["paired"]["ndcg@5"]
    assert set(d) == {"a", "b"}
    half = sps.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)     # diffs 0.1, 0.2, 0.3: sd 0.1
    np.testing.assert_allclose([d["a"]["1"]["mean"], d["a"]["1"]["lo"], d["a"]["1"]["hi"]],
                               [0.2, 0.2 - half, 0.2 + half], rtol=1e-9)
    assert d["a"]["0"]["mean"] == 0.0 and d["b"]["1"]["mean"] == 0.0
    paths = differences.write_difference_plots(study, tmp_path, lambda name: ["ndcg@5"])
    assert [p.name for p in paths] == ["base_ndcg_at_5_vs_no_update.png"]
    assert paths[0].stat().st_size > 0
    page = report.render_results({**study, "setup": {"description": ""}})
    assert "unadjusted" in page and "Holm" in page


def test_beats_sentence_names_who_beats_no_update_and_sft_positive():
    noise = [0.0, 0.05, -0.03]                      # common to every method of a seed
    lift = {"no_update": [0.0] * 3, "sft_positive": [0.05, 0.055, 0.06],
            "a": [0.10, 0.11, 0.12], "b": [0.03, 0.035, 0.04], "c": [0.01, -0.01, 0.0]}
    cells = [{"condition": "base", "seed": i, "seconds": 1.0,
              "rows": [{"round": k, "method": m, "ndcg@5": 0.5 + noise[i] + k * d[i],
                        "hr@5": 0.5} for k in (0, 1) for m, d in lift.items()]}
             for i in range(3)]
    study = report.summarize(cells, list(lift), {"base": {}}, {})
    assert report.beats_sentences(study) == [
        "[base] ndcg@5 at round 1 (3 seeds, paired t, Holm): significantly better than "
        "no_update and sft_positive: a; better than some of them: b (only no_update); "
        "not significantly better than any: c."]
