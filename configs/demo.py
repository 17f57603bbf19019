"""Demo: continual ABPO rounds on a MovieLens-1M slice with the embedded SmolLM2-135M, on a CPU.

    abpo-jax demo                         # this config is the demo's default
    abpo-jax demo --config.rounds.num_rounds=3 --config.run_dir=runs/my_demo

Round 0 warm-starts SmolLM2-135M-Instruct (LoRA rank 8 on q/v) with 8 SFT steps on next-item
targets; then 2 rounds of deploy -> log -> update -> evaluate for ABPO, GRPO and no-update, on
16 fresh users per round, evaluated on 16 held-out users (H=5 history items, C=8 candidates,
G=4). Sized for about ten minutes on an idle 2-core CPU after install, most of it XLA compiling
the 30-layer steps; outputs (metrics.jsonl, table, plots, TensorBoard) land in runs/demo.
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/demo"
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.data.max_users = 2000
    c.data.num_test_users = 16
    c.data.users_per_round = 16
    c.model.lora.rank = 8
    c.loss.num_generations = 4
    c.train.batch_size = 4
    c.train.learning_rate = 1e-4
    c.train.sft_steps = 8
    c.rounds.num_rounds = 2
    c.rounds.methods = ("abpo", "grpo", "no_update")
    c.sim.mf_steps = 100
    c.eval.batch_size = 8
    return c
