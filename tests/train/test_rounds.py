"""A 2-round continual run of the tiny config: outputs, checkpoints, and what each method does."""

import math
import pathlib

import jax
import numpy as np
import pytest

from helpers import load_config

from abpo_jax.config import validate

METHODS = ("abpo", "sft_positive", "no_update")


def tiny_config(run_dir: pathlib.Path, sim_cache: pathlib.Path):
    c = load_config("tiny.py")
    c.run_dir = str(run_dir)
    c.data.max_users = 300
    c.data.num_test_users = 16
    c.data.users_per_round = 16
    c.rounds.num_rounds = 2
    c.rounds.methods = METHODS
    c.train.batch_size = 8
    c.train.sft_steps = 3
    c.train.epochs_per_round = 1
    c.eval.batch_size = 16
    c.sim.mf_steps = 20
    c.sim.cache_dir = str(sim_cache)
    c.checkpoint.max_to_keep = 10
    c.outputs.progress = False
    c.mesh.fsdp = 1
    return validate(c)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from abpo_jax.train import rounds
    from abpo_jax.train.experiment import build
    run_dir = tmp_path_factory.mktemp("rounds")
    config = tiny_config(run_dir, tmp_path_factory.mktemp("sim"))
    run = build(config, devices=jax.devices()[:1])
    rows = rounds.run(run)
    return run, rows, run_dir


def test_two_rounds_write_finite_metrics_and_outputs(finished):
    run, rows, run_dir = finished
    assert sorted((r["round"], r["method"]) for r in rows) == sorted(
        (k, m) for k in range(3) for m in METHODS)
    for r in rows:
        for key in ("hr@1", "hr@5", "ndcg@5", "coverage", "gini", "sim_ctr", "exposed_share"):
            assert math.isfinite(r[key]), (r["round"], r["method"], key)
        assert 0.0 <= r["hr@1"] <= r["hr@5"] <= 1.0
        if r["round"] >= 1:
            for key in ("snips_ctr", "log_sim_ctr", "snips_bias", "kl_exposure"):
                assert math.isfinite(r[key]), (r["round"], r["method"], key)
    assert (run_dir / "metrics.jsonl").stat().st_size > 0
    assert (run_dir / "plots" / "hr_at_1.png").stat().st_size > 0
    assert any((run_dir / "tb").rglob("events.out.tfevents.*"))
    for m in METHODS:
        for k in (1, 2):
            assert (run_dir / "logs" / m / f"round_{k:05d}" / "manifest.json").exists()
    assert len(run.ckpt.steps()) >= 3


def _params(run, step, method):
    from abpo_jax.train.checkpoint import RunState
    if step is None:
        tree = run.ckpt.restore_latest(run.layout.abstract).state
    else:
        run_state = RunState.from_meta(run.ckpt.restore_meta(step))
        tree, _ = run.ckpt.restore(step, run.layout.abstract(run_state))
    return [np.asarray(x) for x in jax.tree.leaves(tree["methods"][method]["params"])]


def test_no_update_keeps_params_and_others_move(finished):
    run, rows, _ = finished
    first = run.ckpt.steps()[0]  # end of round 0: every method holds the SFT policy
    assert run.ckpt.restore_meta(first)["round"] == 0
    for a, b in zip(_params(run, first, "no_update"), _params(run, None, "no_update")):
        np.testing.assert_array_equal(a, b)
    for m in ("abpo", "sft_positive"):
        moved = max(np.abs(a - b).max()
                    for a, b in zip(_params(run, first, m), _params(run, None, m)))
        assert moved > 0, m
    # Unchanged params -> unchanged held-out ranking metrics.
    by = {(r["round"], r["method"]): r for r in rows}
    for key in ("hr@1", "hr@5", "ndcg@5", "sim_ctr"):
        assert by[(0, "no_update")][key] == by[(2, "no_update")][key]


def test_eval_command_reproduces_final_row(finished):
    from abpo_jax.train.rounds import evaluate_run
    run, rows, _ = finished
    rows_eval = {r["method"]: r for r in evaluate_run(run.config, jax.devices()[:1])}
    assert rows_eval.keys() == set(METHODS)
    final = {r["method"]: r for r in rows if r["round"] == 2}
    for m in METHODS:
        assert rows_eval[m]["round"] == 2
        for key in ("hr@1", "hr@5", "ndcg@5", "sim_ctr"):
            np.testing.assert_allclose(rows_eval[m][key], final[m][key], rtol=1e-6)


def test_logged_policy_logp_is_the_deployed_policys_forward(finished):
    """Every item-mode record carries the deployed policy's own log pi~ (`policy_logp`: pi_ref's
    log-probs of the update under train.ref_logp=log, which this run uses). Round 1 was deployed
    by the round-0 (SFT) policy: featurized as the update featurizes the log and scored as the
    step scores pi_ref (batches of train.batch_size = 8, deploy scored eval.batch_size = 16 at a
    time): equal to the bit on this CPU; allowed 1e-5 absolute, a few ulp of summed token
    log-probs ~1-10, since kernels that block by batch size may round another shape
    differently. Reversing the candidates moves them by > 1e-2 (checked last)."""
    from abpo_jax.data import log_store, records
    from abpo_jax.sampling.group_scoring import score_candidates
    from abpo_jax.train.checkpoint import RunState
    from abpo_jax.train.learner import rl_batch
    from abpo_jax.train.rollout import round_path

    run, _, _ = finished
    assert run.mode.ref_from_log
    recs = list(log_store.open_round(round_path(run.rollout.logs_root, "abpo", 1)))
    logged = np.stack([records.policy_logp(r) for r in recs])   # None for none of them
    first = run.ckpt.steps()[0]  # end of round 0: the policy that deployed round 1
    tree, _ = run.ckpt.restore(first, run.layout.abstract(RunState.from_meta(
        run.ckpt.restore_meta(first))))
    params = tree["methods"]["abpo"]["params"]
    learner, bs = run.learner, int(run.config.train.batch_size)
    score = jax.jit(lambda p, c: score_candidates(
        learner.split.merge(p, learner.frozen), c,
        shared_rows=run.mode.policy.encoder.shared_rows)[0])
    fresh = []
    for i in range(0, len(recs), bs):
        batch = rl_batch(run.mode.featurize_batch(recs[i:i + bs]))
        np.testing.assert_array_equal(batch.policy_logp, logged[i:i + bs])
        with jax.set_mesh(learner.mesh):
            fresh.append(np.asarray(score(params, batch.cands)))
    fresh = np.concatenate(fresh)
    np.testing.assert_allclose(logged, fresh, rtol=0, atol=1e-5)
    assert np.abs(fresh - fresh[:, ::-1]).max() > 1e-2   # the check can tell candidates apart
