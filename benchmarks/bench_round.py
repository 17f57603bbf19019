"""One continual round at deployment volume: deploy -> validate and store the log -> update ->
evaluate, for the tiny policy (C = 8, G = 4, 20,000 requests by default).

    abpo-jax bench --config.bench.only=round
    abpo-jax bench --config.bench.only=round --config.bench.round_requests=5000   # a quick look

Rows: requests/s of each stage and end to end, and the share of the round's wall time spent
outside jitted computations (DESIGN.md: the round must be bound by the model's compute, not by
Python; target >= 1,000 requests/s end to end on 2 CPU cores).

How it is measured. The experiment is built as `abpo-jax train` builds it (`experiment.build`)
on a synthetic interaction set with enough users for one request per user (the round's cost
does not depend on where requests come from). Round 1 runs at a small size to compile every
program; round 2, on the full requests, is timed stage by stage:
  deploy   = the deployed policy scores every request (`Policy.scores`),
  log      = the rest of `Rollout.deploy`: exposures sampled, simulator outcomes, records built,
             validated and written as ArrayRecord shards + manifest,
  update   = one pass of `train.batch_size` batches over the log (grain read + featurize +
             jitted steps),
  evaluate = `Evaluator.row` with the round's records (held-out test requests + the log's
             SNIPS estimate: scores the log's requests again).
Jitted time is measured apart, on inputs already on the device: the scorer on pre-encoded
batches and the train step on one pre-placed batch, times the number of calls each stage makes.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from typing import Any

import numpy as np

DEFAULTS = {"round_requests": 20_000}
NUM_ITEMS, EVENTS_PER_USER, TEST_USERS, WARM_USERS = 3706, 12, 1000, 200


def synthetic_interactions(num_users: int, seed: int = 0):
    """`num_users` users with EVENTS_PER_USER interactions each over an ML-1M-sized catalogue
    (Zipf-like item popularity), time-ordered by user."""
    from abpo_jax.data.datasets import Interactions
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.8
    n = num_users * EVENTS_PER_USER
    items = rng.choice(NUM_ITEMS, size=n, p=popularity / popularity.sum()).astype(np.int32)
    users = np.repeat(np.arange(num_users, dtype=np.int32), EVENTS_PER_USER)
    return Interactions(
        name="bench", user=users, item=items, timestamp=np.arange(n, dtype=np.int64),
        rating=np.full(n, 4.0, np.float32),
        raw_user_ids=tuple(map(str, range(num_users))),
        raw_item_ids=tuple(map(str, range(NUM_ITEMS))),
        item_titles=tuple(f"item {i}" for i in range(NUM_ITEMS)))


def round_config(run_dir: str, requests: int):
    from abpo_jax.config import base_config, validate
    c = base_config()
    c.run_dir = run_dir
    c.data.k_core = 0
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.num_test_users = TEST_USERS
    c.data.users_per_round = requests
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.batch_size = 64
    c.train.sft_steps = 0
    c.rounds.num_rounds = 1
    c.rounds.methods = ("abpo",)
    c.sim.mf_steps = 20
    c.eval.batch_size = 256
    c.outputs.progress = False
    c.outputs.tensorboard = False
    c.outputs.plots = False
    return validate(c)


def _timed(fn) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def jit_seconds_per_call(fn, args: tuple, repeats: int = 5) -> float:
    """Median wall time of one call of a compiled function on device inputs (results
    blocked on)."""
    import jax
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(config=None) -> list[dict]:
    import jax

    from abpo_jax.train import experiment
    from abpo_jax.train.learner import STATE_KEYS, rl_batch
    from abpo_jax.train.rounds import round_batches

    settings = dict(DEFAULTS)
    bench = config.get("bench", None) if config is not None else None
    if bench is not None:
        settings.update({k: bench[k] for k in DEFAULTS if k in bench})
    n = int(settings["round_requests"])
    inter = synthetic_interactions(n + TEST_USERS + WARM_USERS)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = round_config(str(pathlib.Path(tmp) / "run"), n)
        original = experiment.prepare_data
        experiment.prepare_data = lambda c: original(c, inter)
        try:
            exp = experiment.build(cfg)
        finally:
            experiment.prepare_data = original
        examples = list(exp.rollout.round_examples[0])
        policy, learner, params = exp.rollout.policy, exp.learner, exp.init_params

        def fresh():
            return {**learner.fresh_state(jax.tree.map(lambda x: x.copy(), params)),
                    **experiment.frozen_policies(cfg, params)}

        def update(k: int) -> dict:
            state = fresh()
            batches = round_batches(exp, k, "abpo")
            return learner.update("abpo", state, state["ref"], batches,
                                  exp.streams.train_round(k), start=0, hist=[],
                                  save=lambda *a: None)[0]

        # round 1: compile everything on a small round (the same shapes)
        warm = 4 * cfg.train.batch_size
        exp.rollout.round_examples = [examples[:warm], examples]
        cfg.train.steps_per_round = 2
        exp.rollout.deploy(1, "abpo", params)
        update(1)
        exp.evaluator.row(1, "abpo", params, list(exp.rollout.deploy(1, "abpo", params)))
        cfg.train.steps_per_round = 0

        # round 2, timed
        roundlog, t_deploy_all = _timed(lambda: exp.rollout.deploy(2, "abpo", params))
        _, t_score = _timed(lambda: policy.scores(params, examples, "score"))
        t_log = t_deploy_all - t_score
        state, t_update = _timed(lambda: update(2))
        records, t_read = _timed(lambda: list(roundlog))
        _, t_eval = _timed(lambda: exp.evaluator.row(2, "abpo", params, records))
        t_eval += t_read

        # jitted work alone, on device inputs
        bs = policy.batch_size
        cands = jax.device_put(policy.encoder.encode(examples[:bs]), policy.batch_sharding)
        with jax.set_mesh(policy.mesh):
            per_score = jit_seconds_per_call(policy.score, (params, policy.frozen, cands))
        score_calls = -(-n // bs)
        eval_calls = -(-len(exp.evaluator.test_examples) // bs) + score_calls
        steps = learner.update_steps()
        batch = learner._micro(rl_batch(next(round_batches(exp, 2, "abpo"))))
        step = learner.compiled["policy:abpo"]
        full = fresh()
        st, ref = {k: full[k] for k in STATE_KEYS}, full["ref"]
        key = exp.streams.train_round(2)
        with jax.set_mesh(learner.mesh):
            st, _ = step(st, learner.frozen, ref, batch, key)   # warm (the state is donated)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                st, m = step(st, learner.frozen, ref, batch, key)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t)
        per_step = float(np.median(times))

    jit = {"deploy": score_calls * per_score, "log": 0.0, "update": steps * per_step,
           "evaluate": eval_calls * per_score}
    wall = {"deploy": t_score, "log": t_log, "update": t_update, "evaluate": t_eval}
    rows = []
    for stage in ("deploy", "log", "update", "evaluate"):
        rows.append({"benchmark": f"round {stage} ({n:,} requests, tiny, C=8, G=4)",
                     "metric": "requests/s", "ours": n / wall[stage],
                     "notes": f"{wall[stage]:.1f} s, jitted {jit[stage]:.1f} s "
                              f"({jit[stage] / wall[stage]:.0%})"})
    total, total_jit = sum(wall.values()), sum(jit.values())
    rows.append({"benchmark": f"round end to end ({n:,} requests, tiny, C=8, G=4)",
                 "metric": "requests/s", "ours": n / total,
                 "notes": f"{total:.1f} s; target >= 1,000 requests/s"})
    rows.append({"benchmark": "round wall time outside jitted computations",
                 "metric": "share", "ours": 1.0 - total_jit / total,
                 "notes": f"jitted {total_jit:.1f} s of {total:.1f} s "
                          f"({steps} steps x {per_step * 1e3:.1f} ms, "
                          f"{score_calls + eval_calls} scorer calls x {per_score * 1e3:.1f} ms)"})
    return rows
