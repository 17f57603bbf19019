"""`abpo-jax demo` at tiny sizes: part 1 (the study) prints CIs and the significance sentence,
part 2 runs the top-level config through the rounds; both configs are validated first."""
import pytest

from abpo_jax import demo
from abpo_jax.config import ConfigError, validate
from helpers import tiny_run_config


def _config(tmp_path):
    c = tiny_run_config(tmp_path / "llm")
    c.rounds.num_rounds = 0
    c.demo = c.__class__()
    c.demo.run_study, c.demo.run_llm = True, True
    c.demo.study = tiny_run_config(tmp_path / "stats")
    c.demo.study.study.seeds = 2
    return validate(c)


def test_demo_prints_cis_and_significance_then_runs_the_llm_part(tmp_path, capsys):
    demo.main(_config(tmp_path))
    out = capsys.readouterr().out
    assert "part 1/2" in out and "part 2/2" in out
    assert "mean ± 95% CI over 2 seeds" in out
    assert "[base] ndcg@5 at round 1 vs no_update (2 seeds, paired t, Holm)" in out
    # everything under the demo's run_dir: the study in <run_dir>/study (issue 26)
    assert (tmp_path / "llm" / "study" / "results.md").exists()
    assert (tmp_path / "llm" / "metrics.jsonl").exists()


def test_demo_checks_the_study_config_before_any_work(tmp_path):
    c = _config(tmp_path)
    c.demo.study.loss.anchor = "sideways"
    with pytest.raises(ConfigError, match="config.loss.anchor='sideways'"):
        demo.main(c)
    assert not (tmp_path / "llm").exists() and not (tmp_path / "stats").exists()
