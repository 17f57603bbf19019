"""Demo: continual ABPO rounds on a MovieLens-1M slice with the embedded SmolLM2-135M, on a CPU.

    abpo-jax demo                         # this config is the demo's default
    abpo-jax demo --config.rounds.num_rounds=3 --config.run_dir=runs/my_demo

Round 0 warm-starts SmolLM2-135M-Instruct (LoRA rank 8 on q/v) with 4 SFT steps on next-item
targets; then 2 rounds of deploy -> log -> update -> evaluate for ABPO, GRPO and no-update, on
8 fresh users per round (2 update steps of 4 prompts), evaluated on 8 held-out users (H=3
history items, C=6 candidates, G=4). Sized for about ten minutes on an idle 2-core CPU (an
ABPO step over 4 packed prompts is ~30 s there; compiling the 30-layer steps takes minutes).
The slices are tiny, so the numbers are noisy: it shows the pipeline, not a result. Outputs
(metrics.jsonl, per-round table, plots, TensorBoard) land in runs/demo.
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/demo"
    c.data.history_len = 3
    c.data.num_candidates = 6
    c.data.max_users = 2000
    c.data.num_test_users = 8
    c.data.users_per_round = 8
    c.model.lora.rank = 8
    c.loss.num_generations = 4
    c.train.batch_size = 4
    c.train.learning_rate = 1e-4
    c.train.sft_steps = 4
    c.rounds.num_rounds = 2
    c.rounds.methods = ("abpo", "grpo", "no_update")
    c.sim.mf_steps = 100
    c.eval.batch_size = 8
    return c
