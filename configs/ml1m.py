"""Reference settings: MovieLens-1M, SmolLM2-135M-Instruct, H=10, C=20, G=8, five methods.

    abpo-jax train --config=configs/ml1m.py
    abpo-jax train --config=configs/ml1m.py --config.model.source=hf --config.model.path=/ckpt/Qwen2.5-0.5B

Full-size run for an accelerator (hours on a CPU).
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/ml1m"
    c.rounds.num_rounds = 5
    c.data.num_test_users = 1000
    c.data.users_per_round = 960   # 1000 test + 5 x 960 fit ML-1M's 6,040 users
    c.train.batch_size = 32
    c.train.sft_steps = 500
    return c
