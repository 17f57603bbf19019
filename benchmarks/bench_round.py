"""One continual round at deployment volume: deploy -> validate and store the log -> update ->
evaluate, for the tiny policy (C = 8, G = 4, 20,000 requests by default).

    abpo-jax bench --config.bench.only=round
    abpo-jax bench --config.bench.only=round --config.bench.round_requests=5000   # a quick look
    abpo-jax bench --config.bench.only=round --config.bench.round_ref_logp=forward  # before 52a215e

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
Jitted time is measured in place: the scorer and the train step are wrapped so each call is
timed until its results are ready (the loops read them right after anyway). Beside wall time,
process CPU time is reported (a machine shared with other jobs slows the wall clock).
"""

from __future__ import annotations

import pathlib
import tempfile
import time
import numpy as np

DEFAULTS = {"round_requests": 20_000, "round_ref_logp": "log"}
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


def round_config(run_dir: str, requests: int, ref_logp: str = DEFAULTS["round_ref_logp"]):
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
    c.train.ref_logp = ref_logp
    c.sim.mf_steps = 20
    c.eval.batch_size = 256
    c.outputs.progress = False
    c.outputs.tensorboard = False
    c.outputs.plots = False
    return validate(c)


class Stopwatch:
    """Wall and process-CPU seconds of a block (CPU: what this process used, so a machine
    shared with other jobs inflates the wall column, not this one)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.main = time.thread_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.main = time.thread_time() - self.main   # Python + dispatch (XLA: its own threads)


class JitClock:
    """Wraps jitted functions so every call is timed in place (results blocked on: the callers
    read them right after anyway), accumulating wall seconds per stage."""

    def __init__(self):
        self.stage, self.seconds = None, {}

    def wrap(self, fn):
        import jax

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            if self.stage is not None:
                self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + (
                    time.perf_counter() - t)
            return out
        return timed


def run(config=None) -> list[dict]:
    """The round with the user protocol's encoder shapes, then with the event rounds' ones."""
    quick = config is not None and bool(config.get("bench", {}).get("quick", False))
    rows = []
    for exact in (True,) if quick else (False, True):   # --quick: the code path, once
        rows += run_round(config, exact)
    return rows


def run_round(config, exact: bool) -> list[dict]:
    """The timed round; `exact`: the event-round encoder (completion length of the catalogue's
    completions, no padding room), else the user-protocol one."""
    import jax

    from abpo_jax.train import experiment
    from abpo_jax.train.rounds import round_batches

    settings = dict(DEFAULTS)
    bench = config.get("bench", None) if config is not None else None
    if bench is not None:
        settings.update({k: bench[k] for k in DEFAULTS if k in bench})
    if config is not None and bool(config.get("bench", {}).get("quick", False)):
        settings["round_requests"] = 256   # bench --quick: the code path
    n = int(settings["round_requests"])
    inter = synthetic_interactions(n + TEST_USERS + WARM_USERS)
    clock = JitClock()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = round_config(str(pathlib.Path(tmp) / "run"), n, str(settings["round_ref_logp"]))
        original = experiment.prepare_data
        experiment.prepare_data = lambda c: original(c, inter)
        try:
            exp = experiment.build(cfg)
        finally:
            experiment.prepare_data = original
        examples = list(exp.rollout.round_examples[0])
        policy, learner, params = exp.evaluator.policy, exp.learner, exp.init_params
        if exact:   # the event-round encoder's shapes (before anything compiles)
            policy.encoder.fit(examples + list(exp.evaluator.test_examples), exact=True)
        policy.score = clock.wrap(policy.score)   # every scorer call of deploy and evaluate
        scores, scoring = policy.scores, Stopwatch()

        def timed_scores(*args, **kwargs):   # deploy's own share: encode + score
            with Stopwatch() as sw:
                out = scores(*args, **kwargs)
            if clock.stage == "deploy+log":
                scoring.wall = sw.wall
            return out
        policy.scores = timed_scores

        def update(k: int) -> dict:
            state = {**learner.fresh_state(jax.tree.map(lambda x: x.copy(), params)),
                     **exp.frozen(params)}
            batches = round_batches(exp, k, "abpo")
            return learner.update("abpo", state, state["ref"], batches,
                                  exp.streams.train_round(k), start=0, hist=[],
                                  save=lambda *a: None)[0]

        # round 1: compile every program on a small round (the same shapes)
        warm = 4 * cfg.train.batch_size
        exp.rollout.round_examples = [examples[:warm], examples]
        cfg.train.steps_per_round = 2
        exp.rollout.deploy(1, "abpo", params)
        update(1)
        exp.evaluator.row(1, "abpo", params, list(exp.rollout.deploy(1, "abpo", params)))
        cfg.train.steps_per_round = 0
        name = "policy:abpo"
        learner.compiled[name] = clock.wrap(learner.compiled[name])

        # round 2, timed: deploy (scoring + logging), update, evaluate
        clock.stage = "deploy+log"
        with Stopwatch() as deploy:
            roundlog = exp.rollout.deploy(2, "abpo", params)
        clock.stage = "update"
        with Stopwatch() as upd:
            update(2)
        clock.stage = "evaluate"
        with Stopwatch() as ev:
            exp.evaluator.row(2, "abpo", params, list(roundlog))
        clock.stage = None

    tag = (" [event-round shapes]" if exact else "") + (
        " [pi_ref forward]" if settings["round_ref_logp"] == "forward" else "")
    scored = clock.seconds.get("deploy+log", 0.0)
    stages = {"deploy (encode + score)": (scoring.wall, scored, None),
              "log (sample, feedback, validate, write)": (deploy.wall - scoring.wall, 0.0,
                                                          None),
              "update": (upd.wall, clock.seconds.get("update", 0.0), upd.cpu),
              "evaluate": (ev.wall, clock.seconds.get("evaluate", 0.0), ev.cpu)}
    rows = []
    for stage, (wall, jitted, cpu) in stages.items():
        cpu_note = f", process CPU {cpu:.1f} s" if cpu is not None else ""
        rows.append({"benchmark": f"round{tag} {stage} ({n:,} requests, tiny, C=8, G=4)",
                     "metric": "requests/s", "ours": n / max(wall, 1e-9),
                     "notes": f"{wall:.1f} s wall, jitted {jitted:.1f} s{cpu_note}"})
    total = deploy.wall + upd.wall + ev.wall
    total_jit = sum(clock.seconds.values())
    cpu, main = deploy.cpu + upd.cpu + ev.cpu, deploy.main + upd.main + ev.main
    rows.append({"benchmark": f"round{tag} end to end ({n:,} requests, tiny, C=8, G=4)",
                 "metric": "requests/s", "ours": n / total,
                 "notes": f"{total:.1f} s wall, process CPU "
                          f"{deploy.cpu + upd.cpu + ev.cpu:.1f} s (deploy+log CPU "
                          f"{deploy.cpu:.1f} s); target >= 1,000 requests/s"})
    rows.append({"benchmark": f"round{tag} wall time outside jitted computations",
                 "metric": "share", "ours": 1.0 - total_jit / total,
                 "notes": f"jitted calls (timed in place) {total_jit:.1f} s of {total:.1f} s"})
    rows.append({"benchmark": f"round{tag} CPU time on the Python thread (not XLA's threads)",
                 "metric": "share", "ours": main / max(cpu, 1e-9),
                 "notes": f"{main:.1f} of {cpu:.1f} CPU s; requests per CPU second "
                          f"{n / max(cpu, 1e-9):.0f} (load-independent)"})
    return rows
