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

Time, measured on this 2-core machine with study.workers=2 (one round of 10,000 requests per
cell, 5 seeds): 6 methods x 2 conditions (docs/study_events_mnl) ran 4 cells in ~10 min (two at
a time) on an otherwise idle machine, 8 mostly policy-gradient methods x 1 condition
(docs/study_events_ablation) 67 min for 5 cells while other jobs loaded it. With 5 rounds, 6
methods and one condition (docs/study_events_replay_5rounds) a cell took 35-51 min (load 7-12:
two helpers' benchmarks beside it), 5 cells in 88 min wall with 2-3 processes; on a machine
with one helper beside it (docs/study_events_popularity_5rounds, load ~5) 17-20 min each, 5 cells
in 35 min wall with 3 processes (cell 4 as its own `study.cell=4` process). The full grid below
(5 rounds, 20 cells) is hours here; on a cluster run it as an array job (one cell per task,
README "Studies across processes and machines"), or start with
--config.rounds.num_rounds=1 and two conditions, as the committed pages did.

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
