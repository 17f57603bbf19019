"""`abpo-jax study` end to end at tiny sizes: cells run, study.json / results.md / plots are
written, the page is a pure function of study.json, and a re-run resumes cell by cell."""
import json

import pytest

from abpo_jax.config import ConfigError, validate
from abpo_jax.study import report, runner
from helpers import tiny_run_config


def _config(tmp_path):
    c = tiny_run_config(tmp_path / "study_run", methods=("abpo", "grpo", "no_update"))
    c.study.seeds = 2
    c.study.conditions = ("base:", "t2:policy.logging_temperature=2")
    return validate(c)


def test_a_condition_may_switch_the_action_space(tmp_path):
    """A cell's config is the study's with the condition's overrides, validated: text mode
    (whose continual runs tests/train/test_text_mode.py runs end to end), a float field given
    an int, and an unknown field named."""
    config = _config(tmp_path)
    cell = runner.cell_config(config, "t2", {"policy.mode": "text",
                                             "policy.logging_temperature": 2}, 1, tmp_path / "c")
    assert cell.policy.mode == "text" and cell.seed == 1
    assert isinstance(cell.policy.logging_temperature, float)
    assert cell.policy.logging_temperature == 2.0
    with pytest.raises(ConfigError, match=r"config.policy.nope"):
        runner.cell_config(config, "t2", {"policy.nope": 1}, 0, tmp_path / "c")


def test_study_end_to_end_and_resume(tmp_path, capsys):
    config = _config(tmp_path)
    study = runner.main(config)
    out = tmp_path / "study_run" / "study"
    assert set(study["conditions"]) == {"base", "t2"}
    assert study["conditions"]["t2"]["overrides"] == {"policy.logging_temperature": 2}
    cells = sorted(p.parent.name + "/" + p.name for p in (out / "cells").glob("*/*"))
    assert cells == ["base/seed_0", "base/seed_1", "t2/seed_0", "t2/seed_1"]
    saved = json.loads((out / "study.json").read_text())
    assert (out / "results.md").read_text() == report.render_results(saved)
    # every cell records the code it ran, and the page says it (one version: nothing mixed)
    assert {c["code"] for c in saved["cells"]} == {runner.code_version()}
    assert f"Code: {runner.code_version()}." in report.render_results(saved)
    assert list((out / "plots").glob("base_ndcg_at_5.png"))
    tests = saved["conditions"]["base"]["tests"]["ndcg@5"]
    assert set(tests) == {"no_update", "grpo"} and set(tests["no_update"]) == {"abpo", "grpo"}
    printed = capsys.readouterr().out
    assert "vs no_update (2 seeds, paired t, Holm)" in printed

    # a re-run reuses every finished cell (nothing is trained again)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("cell.json")}
    again = runner.main(_config(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("cell.json")} == stamps
    assert again["conditions"]["base"]["values"] == study["conditions"]["base"]["values"]

    # report_only: summarize what is finished, run nothing
    (out / "cells" / "t2" / "seed_1" / "cell.json").unlink()
    config = _config(tmp_path)
    config.study.report_only = True
    partial = runner.main(config)
    assert not (out / "cells" / "t2" / "seed_1" / "cell.json").exists()
    assert partial["conditions"]["t2"]["seeds"] == [0]
    assert "Finished cells: 3 of 4." in partial["setup"]["description"]
