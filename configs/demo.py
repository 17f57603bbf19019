"""Demo: a closed-loop result with confidence intervals, then SmolLM2 through the same rounds.

    abpo-jax demo                                  # this config; ~10 min on 2 CPU cores
    abpo-jax demo --config.demo.run_llm=False      # part 1 only (the statistics)
    abpo-jax demo --config.demo.study.study.seeds=3

Part 1 (`c.demo.study`): the closed-loop study on the tiny item-token decoder over MovieLens-1M
at deployment volume (event rounds: 2 rounds of 2,000 logged requests, evaluated on 1,000
requests of the next window and of the test window; real-behaviour feedback, 5 seeds, two
worker processes) for ABPO, GRPO, the counterfactual baselines (BanditNet, IPS-weighted SFT),
SFT on clicks and no update; it prints final-round means with 95% CIs, which differences are
significant (paired t over seeds, Holm), and one sentence naming the methods that beat both
no_update and sft_positive significantly. Outputs: runs/demo/study (study.json, results.md,
plots/ with the paired differences from no_update). For the full study see
configs/study_events.py.

Part 2 (the top level of this config, also the default of `data`, `eval`, `recommend`, `logs`):
SmolLM2-135M-Instruct with LoRA (rank 8 on q/v) warm-started by 4 SFT steps, then one round of
deploy -> log -> update -> evaluate for ABPO and no-update on 8 fresh users (H=3, C=6, G=4).
The slices are tiny: it shows the real LLM in the pipeline, not a result. Outputs: runs/demo.
"""

from abpo_jax.config import base_config


def study_config():
    """Part 1: the tiny policy's study at volume, meant for ~10 minutes on 2 CPU cores (not yet
    timed on a quiet machine)."""
    c = base_config()
    c.run_dir = "runs/demo"
    c.data.max_users = 0
    c.data.history_len = 5
    c.data.num_candidates = 8
    c.rounds.split = "events"
    c.rounds.requests_per_round = 2000
    c.rounds.eval_requests = 1000
    c.sim.feedback = "replay"
    c.model.source = "tiny"
    c.loss.num_generations = 4
    c.train.learning_rate = 1e-3
    c.train.sft_learning_rate = 3e-3
    c.train.batch_size = 64
    c.train.sft_steps = 60
    c.rounds.num_rounds = 2
    c.rounds.methods = ("abpo", "grpo", "banditnet", "ips_sft", "sft_positive", "no_update")
    c.sim.mf_steps = 200
    c.eval.batch_size = 256
    c.checkpoint.max_to_keep = 1
    c.study.seeds = 5
    c.study.workers = 2
    c.study.conditions = ("base:",)
    return c


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
    c.rounds.num_rounds = 1
    c.rounds.methods = ("abpo", "no_update")
    c.sim.mf_steps = 100
    c.eval.batch_size = 8
    c.demo = study_demo = c.__class__()
    study_demo.run_study = True
    study_demo.run_llm = True
    study_demo.study = study_config()
    return c
