"""Tiny: the continual ABPO experiment with a from-scratch decoder over item-id tokens.

    abpo-jax train --config=configs/tiny.py
    abpo-jax train --config=configs/tiny.py --config.rounds.num_rounds=5 --config.seed=1

Same pipeline as the demo (MovieLens-1M slice, user simulator, logging policy, five methods) but
the policy is a 2-layer decoder over `<history> ids </history> <candidates> ids </candidates>`
prompts (item tokenizer, `ids_only` style), trained from scratch by the round-0 SFT. About a
minute per round on a 2-core CPU; the tests use it with even smaller sizes.
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/tiny"
    c.data.max_users = 600
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.num_test_users = 64
    c.data.users_per_round = 64
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.learning_rate = 1e-3
    c.train.sft_learning_rate = 3e-3
    c.train.batch_size = 16
    c.train.sft_steps = 60
    c.train.epochs_per_round = 2
    c.rounds.num_rounds = 3
    c.sim.mf_steps = 200
    c.eval.batch_size = 64
    return c
