"""The closed-loop study on CPU: the tiny item-token decoder on all of MovieLens-1M.

    abpo-jax study --config=configs/study_tiny.py                      # ~45 min, 2 CPU cores
    abpo-jax study --config=configs/study_tiny.py --config.study.seeds=2   # a quick look

Each cell is one continual run of every method (round 0 = SFT warm start on the warm users,
then 2 rounds of deploy -> log -> update -> evaluate) under one condition and seed; results
land in runs/study_tiny/study (study.json, results.md, plots/).

Sizes (README "Closed-loop study"): 1,000 held-out test users and 768 logged requests per
round, 5 seeds; the results page reports the resolution these sizes reached (the smallest
NDCG@5 difference a paired test over the seeds detects with 80% power). The ablations of the
objective (abpo_baseline_only and the first spec's switches) are in configs/study_ablation.py.

Conditions: `base` (on-policy logging at temperature 1, 20% external no-response), `mismatch`
(logging temperature 2: the log's propensities differ from the policy's), `ambiguity` (50%
external no-response), `popularity` (logging logits + 1.0 log(1 + item count): exposure bias).
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/study_tiny"
    c.data.max_users = 0              # all 6,040 users
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.num_test_users = 1000
    c.data.users_per_round = 768
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.learning_rate = 1e-3
    c.train.sft_learning_rate = 3e-3
    c.train.batch_size = 64
    c.train.sft_steps = 100
    c.train.epochs_per_round = 1
    c.rounds.num_rounds = 2
    c.rounds.methods = ("abpo", "abpo_no_snips", "abpo_no_tempering", "grpo", "sft_positive",
                        "no_update")
    c.sim.mf_steps = 200
    c.eval.batch_size = 256
    c.checkpoint.max_to_keep = 1
    c.study.seeds = 5
    c.study.conditions = (
        "base:",
        "mismatch:policy.logging_temperature=2.0",
        "ambiguity:sim.external_ignore=0.5",
        "popularity:policy.logging_popularity=1.0",
    )
    return c
