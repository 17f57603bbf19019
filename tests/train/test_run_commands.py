"""Every command works on a run dir (issue 26): training curves in TensorBoard and metrics.csv,
a finished run says so, `eval` / `recommend` restore the newest verified checkpoint of a run
(under its recorded config) and name the weights, `logs` finds logs/<method>/round_*, the run's
config is checked against the checkpoints' meta when config.json is gone, one-line warnings,
progress lines off a terminal and plots for people. One tiny run (seconds) serves them all."""

import csv
import io
import json
import math
import shutil
import warnings

import jax
import numpy as np
import pytest

from helpers import tiny_run_config

METHODS = ("abpo", "no_update")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from abpo_jax.train import rounds
    run_dir = tmp_path_factory.mktemp("run") / "r"
    config = tiny_run_config(run_dir, METHODS)
    config.sim.cache_dir = str(tmp_path_factory.mktemp("sim"))
    rows = rounds.main(config)
    return config, rows, run_dir


def _copy_run(trained, tmp_path):
    config, _, run_dir = trained
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    c = config.copy_and_resolve_references()
    c.run_dir = str(dst)
    return c, dst


def test_training_curves_per_step_in_tensorboard_and_a_metrics_csv(trained):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config, rows, run_dir = trained
    tags = {}
    for name in ("abpo", "no_update", "sft"):
        ea = ea_mod.EventAccumulator(str(run_dir / "tb" / name))
        ea.Reload()
        tags[name] = set(ea.Tags()["scalars"])
    step = {"step/loss", "step/kl", "step/clip_fraction", "step/grad_norm", "step/lr",
            "step/snips_weight", "step/w_min", "step/w_max", "step/w_ess_fraction",
            "step/mean_advantage", "step/anchor_advantage"}
    assert step <= tags["abpo"], step - tags["abpo"]
    assert {"round/hr_1", "round/ndcg_5", "round/train/loss"} <= tags["abpo"]
    assert {"step/sft_loss", "step/lr"} <= tags["sft"]
    assert not any(t.startswith("step/") for t in tags["no_update"])   # it takes no steps
    ea = ea_mod.EventAccumulator(str(run_dir / "tb" / "abpo"))
    ea.Reload()
    ess = [e.value for e in ea.Scalars("step/w_ess_fraction")]
    assert ess and all(0 < v <= 1 + 1e-6 for v in ess)
    # the step-only statistics stay out of metrics.jsonl (its rows are as before)
    assert not any(k.startswith(("train/w_", "train/step")) for r in rows for k in r)
    table = list(csv.DictReader(io.StringIO((run_dir / "metrics.csv").read_text())))
    jsonl = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(int(r["round"]), r["method"]) for r in table] == \
        [(r["round"], r["method"]) for r in jsonl]
    for got, want in zip(table, jsonl):
        assert math.isclose(float(got["hr@1"]), want["hr@1"])


def test_re_running_a_finished_run_says_it_is_finished(trained, tmp_path, capsys):
    from abpo_jax.train import rounds
    config, rows, _ = trained
    c, dst = _copy_run(trained, tmp_path)
    steps = sorted((dst / "checkpoints").iterdir())
    again = rounds.main(c)
    out = capsys.readouterr().out
    assert "already finished" in out and "nothing to do" in out and "RunState(" not in out
    assert sorted((dst / "checkpoints").iterdir()) == steps   # nothing trained, nothing saved
    assert [(r["round"], r["method"]) for r in again] == [(r["round"], r["method"]) for r in rows]


def test_eval_without_checkpoints_says_it_evaluates_the_untrained_model(tmp_path, capsys):
    from abpo_jax.train.rounds import evaluate_run
    config = tiny_run_config(tmp_path / "empty", METHODS)
    rows = evaluate_run(config, jax.devices()[:1])
    out = capsys.readouterr().out
    assert "no verified checkpoint; evaluating the untrained initial model" in out
    assert [r["method"] for r in rows] == ["untrained"]


def test_eval_and_recommend_take_a_run_dir_and_name_the_weights(trained, tmp_path, capsys):
    from abpo_jax import recommend
    from abpo_jax.train.rounds import evaluate_run
    config, rows, _ = trained
    c, dst = _copy_run(trained, tmp_path)
    c.rounds.num_rounds = 4          # another config: the run's own (config.json) is used
    c.data.history_len = 5
    c.recommend.method = "no_update"
    c.recommend.num_users = 2
    out_rows = recommend.main(c)
    out = capsys.readouterr().out
    assert "using the config" in out and "data.history_len" in out and "rounds.num_rounds" in out
    assert "weights: no_update after round 1, from checkpoint" in out
    assert out.count("--- top 5 of pi(no_update | x)") == 2 and len(out_rows) == 2
    rows_eval = {r["method"]: r for r in evaluate_run(c, jax.devices()[:1])}
    out = capsys.readouterr().out
    assert "weights: abpo after round 1, from checkpoint" in out
    final = {r["method"]: r for r in rows if r["round"] == 1}
    for m in METHODS:
        assert rows_eval[m]["round"] == 1
        np.testing.assert_allclose(rows_eval[m]["hr@1"], final[m]["hr@1"], rtol=1e-6)


def test_recommend_names_the_methods_when_asked_for_another(trained, tmp_path):
    from abpo_jax import recommend
    from abpo_jax.config import ConfigError
    c, _ = _copy_run(trained, tmp_path)
    c.recommend.method = "grpo"
    with pytest.raises(ConfigError, match="not one of the run's config.rounds.methods: abpo, "
                                          "no_update"):
        recommend.main(c)


def test_logs_summary_finds_every_methods_rounds(trained, capsys):
    from abpo_jax.data import logs_cli
    config, _, run_dir = trained
    logs_cli.main(config)
    out = capsys.readouterr().out
    for m in METHODS:
        assert f"{m}  ({run_dir / 'logs' / m})" in out
    assert out.count("round_00001") == 2 and "BAD" not in out


def test_deleted_config_json_is_checked_against_the_checkpoint_meta(trained, tmp_path):
    from abpo_jax.train.checkpoint import RunDirError, check_run_config
    c, dst = _copy_run(trained, tmp_path)
    (dst / "config.json").unlink()
    c.loss.beta = 0.5
    with pytest.raises(RunDirError, match=r"loss\.beta: 0\.04 -> 0\.5; recorded in "
                                          r"checkpoint \S+/checkpoints/\d+\)"):
        check_run_config(c)
    assert not (dst / "config.json").exists()
    c.loss.beta = 0.04
    check_run_config(c)              # the same config: resumes, config.json written again
    assert json.loads((dst / "config.json").read_text())["loss"]["beta"] == 0.04


def test_run_warnings_print_as_one_line(monkeypatch, capsys):
    from abpo_jax import cli
    from abpo_jax.train.checkpoint import RunWarning
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)   # restored after
    cli._one_line_warnings("train")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(RunWarning("checkpoint /x/3 is unreadable (ValueError: bad); falling "
                                 "back to an older one"))
    err = capsys.readouterr().err
    assert err == ("abpo-jax train: warning: checkpoint /x/3 is unreadable (ValueError: bad); "
                   "falling back to an older one\n")


def test_progress_is_lines_off_a_terminal_and_a_bar_on_one():
    from abpo_jax.train.outputs import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    assert list(progress(range(40), "update", stream=log)) == list(range(40))
    assert log.getvalue().splitlines() == ["update: 25% (10/40)", "update: 50% (20/40)",
                                           "update: 75% (30/40)", "update: 100% (40/40)"]
    quiet = io.StringIO()
    assert list(progress(range(5), "eval", stream=quiet)) == list(range(5))
    assert quiet.getvalue() == ""                 # short loops: no lines at all
    tty = Tty()
    list(progress(range(3), "sft", stream=tty))
    assert "\r" in tty.getvalue() and "sft" in tty.getvalue()   # tqdm's bar


def test_plots_have_titles_n_ci_and_no_axis_cut(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from abpo_jax.train import outputs

    captured = []
    real_save = outputs.save_round_plot

    def keep(fig, ax, metric, path):
        out = real_save(fig, ax, metric, path)     # the figure as saved (axis finished)
        captured.append((metric, ax.get_title(), ax.get_ylim(), len(ax.collections),
                         [list(ln.get_ydata()) for ln in ax.get_lines()]))
        return out

    outputs.save_round_plot, saved = keep, outputs.save_round_plot
    try:
        rows = [{"round": k, "method": "abpo", "hr@1": 0.80 + 0.02 * k, "snips_bias": s}
                for k, s in ((0, -0.1), (1, 0.2))]
        paths = outputs.plot_metrics(rows, tmp_path, ["hr@1", "snips_bias"], num_test_users=8,
                                     title="demo")
    finally:
        outputs.save_round_plot = saved
    assert [p.name for p in paths] == ["hr_at_1.png", "snips_bias.png"]
    (m1, title1, ylim1, bands1, _), (m2, title2, _, bands2, lines2) = captured
    assert title1 == "demo: hr@1 per round (8 test users, 1 seed; band: 95% CI over users)"
    assert bands1 == 1 and ylim1[0] == 0.0           # a share of 8 users: from zero, with CI
    assert bands2 == 0 and "8 test users" in title2
    assert [0.0, 0.0] in lines2                      # both signs: a zero line
    lo, hi = outputs.wilson_interval(0.5, 8)
    assert 0.2 < lo < 0.5 < hi < 0.8                  # 8 users: a wide interval
    plt.close("all")
