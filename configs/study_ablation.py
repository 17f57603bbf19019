"""Why did the first spec's updates hurt? Each suspected cause as a switch, one condition each.

    abpo-jax study --config=configs/study_ablation.py          # ~15 min on 2 CPU cores

The causes an audit of the first spec found (issue 13; DESIGN.md "ABPO objective"), each
reverted alone on top of the revised defaults, plus all of them together (`old_spec`), and
the learning-rate / KL / epochs questions:

    revised            the revised defaults
    old_spec           every reverted switch below at once (the first spec)
    anchor_no_format   (1) the anchor gets the outcome only, rollouts also get `format`
    zscore             (2) advantages divided by the group std (tied groups: A_0 = -sqrt(G))
    unobserved_zero    (3) rollouts naming another item score 0, not the SNIPS value
    lr_high            learning rate 1e-2 instead of 1e-3
    beta0_epochs3      no KL penalty and three passes over each round's log

(4), GRPO inheriting the tempered outcome, is a method here: `grpo_tempered` beside `grpo`.
Smaller slices than configs/study_tiny.py (600 test users, 512 requests per round, 2 rounds,
2 seeds — what the CPU budget allowed):
the first spec's failure was a 0.3 NDCG@5 collapse, far above this grid's resolution.
"""

from abpo_jax.config import base_config

REVERTED = ("loss.anchor_rewards=outcome", "loss.std=population", "loss.unobserved_reward=zero")


def get_config():
    c = base_config()
    c.run_dir = "runs/study_ablation"
    c.data.max_users = 0
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.num_test_users = 600
    c.data.users_per_round = 512
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.learning_rate = 1e-3
    c.train.sft_learning_rate = 3e-3
    c.train.batch_size = 64
    c.train.sft_steps = 100
    c.rounds.num_rounds = 2
    c.methods.grpo_tempered = {"kind": "policy_gradient", "anchor": "off"}
    c.rounds.methods = ("abpo", "abpo_baseline_only", "grpo", "grpo_tempered", "no_update")
    c.sim.mf_steps = 200
    c.eval.batch_size = 256
    c.checkpoint.max_to_keep = 1
    c.study.seeds = 2
    c.study.conditions = (
        "revised:",
        "old_spec:" + ",".join(REVERTED + ("loss.kl_tokens=all", "loss.certainty_norm=batch")),
        "anchor_no_format:" + REVERTED[0],
        "zscore:" + REVERTED[1],
        "unobserved_zero:" + REVERTED[2],
        "lr_high:train.learning_rate=0.01",
        "beta0_epochs3:loss.beta=0.0,train.epochs_per_round=3",
    )
    return c
