"""Continual update rounds (the main experiment): `abpo-jax demo` / `abpo-jax train`.

    abpo-jax demo                                   # configs/demo.py: ML-1M slice + SmolLM2
    abpo-jax train --config=configs/tiny.py         # tiny item-id decoder, seconds per round
    abpo-jax eval --config=configs/tiny.py          # newest checkpoint of each method

Round 0: SFT warm start on next-item targets of the warm users (the prior serving policy),
evaluated before any bandit update. Round k >= 1, for each method of `rounds.methods`: deploy
pi_{k-1} on the round's fresh users -> log exposures with exact propensities and simulated
outcomes (validated, stored) -> update with the method -> evaluate on held-out test users ->
checkpoint. The roles live in their own modules (`experiment.build` makes them): `Rollout`
(deploy and log), `Learner` (jitted steps and loops), `Evaluator` (table rows), `Policy`
(request -> tokens -> log pi~). RNG streams: `train/seeds.py`.

Resume order (re-running the same command continues from the newest readable checkpoint and
reaches the same parameters and metrics as an uninterrupted run):
  1. phase "sft" (mid-SFT): restore the SFT state, finish the SFT steps;
  2. end of round 0 ("done", round 0): every method holds the SFT policy;
  3. phase "update" (mid-update of (k, method)): the round's log is committed, so deploy reuses
     it; the grain iterator and metric history come back with the state;
  4. "done" (k, method): skip every (round, method) up to and including it.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from abpo_jax.data import log_store
from abpo_jax.eval import metric_table
from abpo_jax.config import validate
from abpo_jax.train.checkpoint import (ResumeInputError, Restored, RunState, adopt_run_config,
                                       method_round, weights_line)
from abpo_jax.train.distributed import initialize_distributed
from abpo_jax.train.experiment import Experiment, build
from abpo_jax.train.learner import log_batches
from abpo_jax.train.outputs import is_main_process, plot_metrics, print_table
from abpo_jax.train.rollout import round_path


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def round_batches(exp: Experiment, k: int, method: str):
    """The grain iterator over `method`'s committed round-k log (fresh or to restore into)."""
    roundlog = log_store.open_round(round_path(exp.rollout.logs_root, method, k))
    return log_batches([str(p) for p in roundlog.shard_paths], exp.mode.featurize,
                       steps=exp.learner.update_steps(),
                       batch_size=int(exp.config.train.batch_size),
                       seed=exp.streams.log_shuffle(k), num_records=len(roundlog),
                       featurize_batch=getattr(exp.mode, "featurize_batch", None))


def run(exp: Experiment) -> list[dict]:
    """Execute (or resume) the continual rounds of a built experiment; the metric rows."""
    c, t0, learner, methods = exp.config, time.time(), exp.learner, exp.methods

    def save(tree: dict, run_state: RunState, hist: list | None = None, data_iter=None):
        # every metric row so far rides along: a lost metrics.jsonl is rebuilt from it
        exp.ckpt.save(exp.ckpt.next_step(), tree, run_state.to_meta(
            train_hist=hist or [], metrics=exp.writer.rows()), data_iter)

    def iterator_for(rs: RunState):
        if rs.phase != "update":
            return None
        path = round_path(exp.rollout.logs_root, rs.method, rs.round)
        if not path.exists():   # deleted on purpose: an older checkpoint re-logs the round
            raise ResumeInputError(path, gone=True)
        try:
            return round_batches(exp, rs.round, rs.method)
        except (log_store.LogValidationError, OSError, ValueError) as e:
            raise ResumeInputError(path, e) from e

    # --- restore ---------------------------------------------------------------------------
    restored: Restored | None = exp.ckpt.restore_latest(exp.layout.abstract, iterator_for)
    rs = RunState() if restored is None else restored.run_state
    if restored is not None:
        exp.writer.merge(restored.meta.get("metrics", []))
        if is_main_process() and rs.finished(int(c.rounds.num_rounds), methods):
            print(f"{exp.writer.run_dir}: already finished ({c.rounds.num_rounds} round(s) of "
                  f"{', '.join(methods)}; checkpoint {restored.step}); nothing to do. Its "
                  "metrics follow; raise --config.rounds.num_rounds to continue it")
        elif is_main_process():
            print(f"resuming from checkpoint {restored.step}: {rs.describe()}")

    # --- round 0: SFT warm start, evaluated once for every method ---------------------------
    if rs.phase in ("start", "sft"):
        params = exp.init_params
        if c.train.sft_steps > 0:
            state = (restored.state["sft"] if rs.phase == "sft"
                     else learner.fresh_state(exp.init_params, sft=True))
            state = learner.sft(state, exp.sft_examples, exp.encoder, rs.step, save=lambda s, n,
                                _: save({"sft": s}, RunState("sft", 0, "", n)))
            params = state["params"]
        row = exp.evaluator.row(0, "sft", params)
        for m in methods:
            exp.writer.write({**row, "method": m})
        # Every method owns its buffers: the train steps donate them.
        methods_tree = {m: {**learner.fresh_state(_copy(params)),
                            **exp.frozen(params)} for m in methods}
        rs = RunState("done", 0, methods[-1])
        save({"methods": methods_tree}, rs)
    else:
        methods_tree = restored.state["methods"]

    # --- rounds k >= 1: deploy -> log -> update -> evaluate -> checkpoint -------------------
    last = (rs.round, methods.index(rs.method))
    for k in range(max(rs.round, 1), int(c.rounds.num_rounds) + 1):
        for mi, method in enumerate(methods):
            if rs.phase == "done" and (k, mi) <= last:
                continue
            resuming = rs.phase == "update" and (k, mi) == last
            mstate = methods_tree[method]
            if not resuming:
                # pi_{k-1} deploys; pi_ref = pi_{k-1} (or the round-0 policy).
                if c.rounds.reference == "previous":
                    mstate = {**mstate, "ref": _copy(mstate["params"])}
                if c.train.reset_optimizer:
                    mstate = {**mstate, "opt": learner.fresh_state(mstate["params"])["opt"]}
            roundlog = exp.rollout.deploy(k, method, exp.logging.deployed(mstate, resuming))
            train: dict = {}
            if method != "no_update":
                batches = restored.data_iter if resuming else round_batches(exp, k, method)
                ref = mstate["ref"]

                def save_update(s: dict, n: int, hist: list) -> None:
                    tree = {**methods_tree, method: {**mstate, **s, "ref": ref}}
                    save({"methods": tree}, RunState("update", k, method, n), hist, batches)

                state, train = learner.update(
                    method, mstate, ref, batches, exp.streams.train_round(k),
                    start=rs.step if resuming else 0,
                    hist=restored.meta.get("train_hist", []) if resuming else [],
                    save=save_update, round_index=k)
                mstate = {**mstate, **state, "ref": ref}
            methods_tree[method] = mstate
            records = list(roundlog)
            exp.evaluator.exposures.add(method, k, records)
            exp.writer.write(exp.evaluator.row(k, method, mstate["params"], records, train))
            rs, last = RunState("done", k, method), (k, mi)
            save({"methods": methods_tree}, rs)

    # --- outputs ---------------------------------------------------------------------------
    exp.ckpt.close()
    rows = exp.writer.rows()
    finish(exp, rows, time.time() - t0)
    return rows


def finish(exp: Experiment, rows: list[dict], seconds: float) -> None:
    """Table, plots, TensorBoard flush (main process only)."""
    exp.writer.close()
    if not is_main_process():
        return
    ks = tuple(exp.config.eval.ks)
    print_table(rows, metric_table.present(metric_table.names(ks, "table"), rows))
    if exp.config.outputs.plots:
        plot_metrics(rows, exp.writer.run_dir / "plots", metric_table.names(ks, "plot"),
                     num_test_users=len(exp.evaluator.test_examples),
                     title=exp.writer.run_dir.name)
    print(f"run dir: {exp.writer.run_dir}  ({seconds:.0f} s)")


def main(config) -> list[dict]:
    """`abpo-jax demo` / `abpo-jax train`: run (or resume) the continual rounds."""
    initialize_distributed(config)  # multi-host: before anything touches the devices
    return run(build(config))


def evaluate_run(config, devices: Sequence[jax.Device] | None = None) -> list[dict]:
    """`abpo-jax eval`: evaluate the newest verified checkpoint of each method of the run in
    `config.run_dir` (under the config it was trained with), saying which; without one, the
    untrained initial model (tiny) or the pretrained base model, saying so."""
    config = validate(adopt_run_config(config, ignore=("eval.", "recommend.")))
    exp = build(config, devices, record_config=False)
    restored = exp.ckpt.restore_latest(exp.layout.abstract)
    if restored is None or "methods" not in restored.state:
        tiny = config.model.source == "tiny"
        what = ("the untrained initial model" if tiny
                else f"the pretrained base model ({config.model.source}, not fine-tuned)")
        where = ("only a mid-SFT checkpoint" if restored is not None
                 else "no verified checkpoint")
        if is_main_process():
            print(f"{exp.ckpt.directory}: {where}; evaluating {what}", flush=True)
        rows = [exp.evaluator.row(0, "untrained" if tiny else "base", exp.init_params)]
    else:
        methods = list(exp.methods)
        for m in methods:
            if is_main_process():
                print(weights_line(restored, exp.ckpt.directory, m, methods, ""), flush=True)
        rows = [exp.evaluator.row(method_round(restored.run_state, methods, m), m,
                                  restored.state["methods"][m]["params"]) for m in methods]
    columns = metric_table.names(tuple(config.eval.ks), "table")
    print_table(rows, metric_table.present(columns, rows), "evaluation")
    return rows
