"""Demo: continual ABPO rounds on a MovieLens-1M slice with the embedded SmolLM2-135M, on a CPU.

    abpo-jax demo                         # this config is the demo's default
    abpo-jax demo --config.rounds.num_rounds=3 --config.run_dir=runs/my_demo

Sized to finish in about ten minutes on a 2-core CPU after install (LoRA, small slices).
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/demo"
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.max_users = 2000
    c.data.num_test_users = 32
    c.data.users_per_round = 32
    c.model.lora.rank = 8
    c.loss.num_generations = 4
    c.train.batch_size = 4
    c.train.sft_steps = 8
    c.rounds.num_rounds = 2
    c.rounds.methods = ("abpo", "grpo", "no_update")
    c.sim.mf_steps = 100
    c.eval.batch_size = 8
    return c
