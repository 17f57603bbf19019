"""Equal tuning budgets (study/tuning.py): which fields each method gets, choosing on
validation only, and the study config / page the choices produce. The continual runs are
replaced by a scripted `run_cell` whose validation value is a known function of the method's
hyper-parameters."""
import pathlib

import pytest

from abpo_jax.config import ConfigError, base_config, method_learning_rate, method_losses, validate
from abpo_jax.study import runner, tuning

METHODS = ("abpo", "grpo", "banditnet", "sft_positive", "no_update")


def _config(tmp_path: pathlib.Path):
    c = base_config()
    c.rounds.methods = METHODS
    c.study.dir = str(tmp_path)
    c.data.max_users = 300
    c.data.num_test_users = 50
    t = c.study.tuning
    t.learning_rate, t.beta, t.negative_scale, t.baseline_value = (1e-5, 1e-4), (0.0, 0.04), \
        (1.0,), (0.0, 0.2)
    return validate(c)


def test_each_method_gets_the_fields_it_has(tmp_path):
    c = _config(tmp_path)
    sizes = {m: len(tuning.method_grid(c, m)) for m in METHODS}
    # abpo / grpo: lr x beta x lambda; banditnet pins beta and lambda, has lambda_b; SFT: lr
    assert sizes == {"abpo": 4, "grpo": 4, "banditnet": 4, "sft_positive": 2, "no_update": 1}
    assert tuning.method_grid(c, "banditnet")[1] == {"learning_rate": 1e-5,
                                                     "baseline_value": 0.2}
    assert tuning.method_grid(c, "no_update") == [{}]


def _scripted_run(calls):
    """Validation value = -|log10 lr + 4.5| - beta - baseline_value (best: lr 1e-4, beta 0,
    lambda_b 0 ... with a tie between lr 1e-5 and 1e-4 broken by grid order); the test-users
    column `test_only` is huge for the worst variant and must never decide."""
    import math

    def run(cfg, cell_dir):
        calls.append((cfg.seed, cfg.data.max_users, tuple(cfg.rounds.methods)))
        rows = []
        for m in cfg.rounds.methods:
            e = cfg.methods[m]
            lr = method_learning_rate(cfg, m)
            loss = {**cfg.loss.to_dict(), **method_losses(cfg)[m][1]}
            v = -abs(math.log10(lr) + 4.5) - loss["beta"] - (
                loss["baseline_value"] if e.get("advantage_baseline") == "constant" else 0.0)
            v += 0.01 * (lr > 5e-5)        # break the lr tie toward 1e-4
            for k in range(3):
                rows.append({"round": k, "method": m, "ndcg@5": v, "test_only": -v,
                             "valid_ndcg@5": v if k < 2 else -v})   # round 2's next = test
        return {"rows": rows, "seconds": 0.0}
    return run


def test_tune_chooses_on_the_validation_slice_and_writes_the_choices(tmp_path):
    c = _config(tmp_path)
    calls = []
    study, summary = tuning.tune(c, tmp_path, {"base": {}}, runner.cell_config,
                                 _scripted_run(calls))
    # one tuning run per tuning seed, never a reported seed, on the users before the test users
    assert [(s, u) for s, u, _ in calls] == [(c.seed + 1000, 300 - 50)]
    assert len(calls[0][2]) == 4 + 4 + 4 + 2 + 1
    ch = summary["choices"]
    assert ch["abpo"]["values"] == {"learning_rate": 1e-4, "beta": 0.0, "negative_scale": 1.0}
    assert ch["banditnet"]["values"] == {"learning_rate": 1e-4, "baseline_value": 0.0}
    assert ch["sft_positive"]["values"] == {"learning_rate": 1e-4}
    assert ch["no_update"]["values"] == {}
    # the study config carries the choices under the methods' own names, grids cleared
    validate(study)
    assert tuple(study.rounds.methods) == METHODS
    assert method_learning_rate(study, "abpo") == 1e-4 and study.methods.abpo.beta == 0.0
    assert study.methods.banditnet.baseline_value == 0.0 and study.methods.banditnet.beta == 0.0
    assert not tuning.enabled(study)
    # a re-run reuses the finished tuning run
    tuning.tune(c, tmp_path, {"base": {}}, runner.cell_config, _scripted_run(calls))
    assert len(calls) == 1
    page = "\n".join(tuning.render_section(summary))
    assert "learning_rate ∈ {1e-05, 0.0001}" in page and "| abpo | learning_rate=0.0001, beta=0" \
        in page


def test_events_choose_on_rounds_before_the_last():
    # round 2's next window is the test window: a variant best there only must not win
    rows = [{"round": k, "method": m, "next": v}
            for m, vals in (("a__t0", (0.5, 0.6, 0.1)), ("a__t1", (0.5, 0.4, 0.9)))
            for k, v in zip((0, 1, 2), vals)]
    grid = {"a__t0": ("a", {"beta": 0.0}), "a__t1": ("a", {"beta": 0.04})}
    assert tuning.choose([rows], grid, "next", events=True)["a"]["values"] == {"beta": 0.0}
    assert tuning.choose([rows], grid, "next", events=False)["a"]["values"] == {"beta": 0.04}
    with pytest.raises(ConfigError, match="carry no 'missing'"):
        tuning.choose([rows], grid, "missing", events=True)


def test_users_protocol_needs_room_for_a_validation_slice(tmp_path):
    c = _config(tmp_path)
    c.data.max_users = 90
    with pytest.raises(ConfigError, match="no validation slice"):
        tuning.validation_users(c)


def test_event_rounds_tune_on_the_validation_window(tmp_path):
    c = _config(tmp_path)
    c.rounds.split = "events"
    calls = []
    _, summary = tuning.tune(c, tmp_path, {"base": {}}, runner.cell_config, _scripted_run(calls))
    assert calls[0][1] == 300                   # no user slice: the windows validate
    assert summary["metric"] == "valid_ndcg@5"
    assert summary["choices"]["abpo"]["values"]["learning_rate"] == 1e-4
