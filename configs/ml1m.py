"""Reference settings: MovieLens-1M, SmolLM2-135M-Instruct, H=10, C=20, G=8, five methods.

    abpo-jax train --config=configs/ml1m.py
    abpo-jax train --config=configs/ml1m.py --config.model.source=hf --config.model.path=/ckpt/Qwen2.5-0.5B

Full-size run for an accelerator (hours on a CPU): 5 event rounds of 10,240 requests each (the
events of each window of the ML-1M timeline after a warm period of half the events), evaluated
on 1,024 events of the next window (valid_*) and of the test window.
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/ml1m"
    c.rounds.num_rounds = 5
    # event rounds: every interaction of a window is a request (DESIGN.md "Continual protocol
    # at deployment volume"); 10,240 per round = 160 steps of 64 (divides a v5e-32 mesh)
    c.rounds.split = "events"
    c.rounds.warm_fraction = 0.5
    c.rounds.requests_per_round = 10_240
    c.rounds.eval_requests = 1_024
    c.train.batch_size = 32
    c.train.sft_steps = 500
    return c
