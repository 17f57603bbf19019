"""The closed-loop study at deployment volume: event rounds on all of MovieLens-1M.

    abpo-jax study --config=configs/study_events.py --config.study.workers=2
    abpo-jax study --config=configs/study_events.py --config.study.seeds=1 \
        --config.study.conditions='("base_replay:sim.feedback=replay",)'   # one cell, a look

Every interaction event is a request (`rounds.split=events`, DESIGN.md "Continual protocol at
deployment volume"): the first half of the timeline (by event count) is the warm period (SFT
warm start on its most recent next-item events), the rest is cut into 5 deployment windows and
a test window. Each round deploys the method's policy on 10,000 events of its window, logs them,
updates, and is evaluated on 1,000 events of the next window (validation, before they are
deployed on) and of the test window. A user appears in many requests of a round.

Time (bench_round, event-round shapes, this 2-core machine while other jobs loaded it: 57-86
requests/s end to end per trained method): one cell = 5 rounds x (4 trained methods + no_update)
x 10,000 requests is ~1 hour, so the 20-cell grid is ~10 hours with 2 workers here; on a cluster
run it as an array job (one cell per task, README "Studies across processes and machines").
A one-hour look on 2 cores: --config.rounds.requests_per_round=2000 --config.study.seeds=2
(8 cells of ~12 min, 2 at a time).

Conditions: base and popularity logging (logging logits + 1.0 log(1 + item count)), each with
the fitted MNL simulator (`mnl`) and with real behaviour (`replay`: a click iff the user
consumed the exposed item at that event, times 1 - external_ignore). Cells run as
`study.workers` local processes, or one per task of an array job (`study.cell`, README
"Studies across processes and machines").
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/study_events"
    c.data.max_users = 0              # all 6,040 users, 1M events
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.rounds.split = "events"
    c.rounds.num_rounds = 5
    c.rounds.warm_fraction = 0.5
    c.rounds.requests_per_round = 10_000
    c.rounds.eval_requests = 1_000
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.learning_rate = 1e-3
    c.train.sft_learning_rate = 3e-3
    c.train.batch_size = 64
    c.train.sft_steps = 200
    c.train.epochs_per_round = 1
    c.rounds.methods = ("abpo", "abpo_no_tempering", "grpo", "sft_positive", "no_update")
    c.sim.mf_steps = 200
    c.eval.batch_size = 256
    c.checkpoint.max_to_keep = 1
    c.study.seeds = 5
    c.study.workers = 2
    c.study.conditions = (
        "base_mnl:sim.feedback=mnl",
        "base_replay:sim.feedback=replay",
        "popularity_mnl:sim.feedback=mnl,policy.logging_popularity=1.0",
        "popularity_replay:sim.feedback=replay,policy.logging_popularity=1.0",
    )
    return c
