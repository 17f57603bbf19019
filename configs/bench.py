"""Benchmarks: our sampler vs HF generate, packed vs naive group scoring, log pipeline, steps.

    abpo-jax bench
    abpo-jax bench --config.bench.only=sampling
    abpo-jax bench --quick     # CI-sized (= --config.bench.quick=True)
"""

import ml_collections

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/bench"
    c.bench = ml_collections.ConfigDict()
    c.bench.only = ""   # comma-separated benchmark names; empty = all
    c.bench.ingest_records = 1_000_000   # bench_pipeline: size of the bounded-memory ingest
    c.bench.pipeline_records = 50_000    # bench_pipeline: records streamed through grain
    c.bench.quick = False       # CI-sized: only benchmarks with `supports_quick`, tiny models
    c.bench.train_steps = 2     # bench_train_step: timed steps after the first (compiling) one
    c.bench.train_peer = True   # bench_train_step: race the transformers+torch step
    c.bench.train_peer_steps = 1
    c.bench.beam_num_prompts = 4  # bench_beam: prompts searched (SmolLM2 over the ML-1M catalogue)
    c.bench.beam_item_text = "title"  # bench_beam: the catalogue's completions: title | id
    c.bench.beam_width = 10     # bench_beam: K (eval.beam's default)
    c.bench.beam_peer = True    # bench_beam: race HF generate (False: ours only, e.g. before/after)
    c.bench.train_two_pass = True   # bench_train_step: also the step before single-pass (before/after)
    c.bench.train_bf16_matmul = True  # bench_train_step: also model.matmul_precision=bfloat16 rows
    c.bench.text_steps = 2      # bench_text_step: timed steps after the first (compiling) one
    c.bench.text_peer = True    # bench_text_step: race TRL's GRPOTrainer
    c.bench.round_requests = 20_000   # bench_round: requests of the timed round (tiny policy, C=8, G=4)
    c.bench.round_ref_logp = "log"    # bench_round: train.ref_logp of the update (forward: before/after)
    return c
