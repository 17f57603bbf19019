"""Generative Explore-Exploit with SmolLM2 as generator and judge (paper defaults).

    abpo-jax gee
    abpo-jax gee --config.gee.rounds=5 --config.gee.strategies='("full-ctr","explore-exploit")'
    abpo-jax gee --config.gee.backend=scripted      # deterministic stand-in LLM; seconds

CPU-cheap real run (SmolLM2-135M judge + generator, ~minutes on 2 cores):

    abpo-jax gee --config.gee.num_personas=4 --config.gee.interactions=1000 \
        --config.gee.rounds=4 --config.run_dir=runs/gee_small

Writes <run_dir>/history.jsonl, results.txt, summary.json, ctr_per_round.png, judge_cache.json
(and logs/<strategy>/ bandit logs with --config.gee.export_logs=True).
"""

import ml_collections

from abpo_jax.config import base_config


def gee_config() -> ml_collections.ConfigDict:
    """The `gee` section with every field and its default (Senel et al. 2024 settings)."""
    g = ml_collections.ConfigDict()
    g.topic = "wireless headphones"   # the product category the items (questions) are about
    g.strategies = ("full-ctr", "partial-ctr", "random-ctr", "no-drop", "explore-exploit")
    g.backend = "smollm2"             # smollm2 (our JAX SmolLM2) | scripted (deterministic stand-in)
    # population
    g.num_personas = 0                # 0 = all personas (24 built in, or the file's)
    g.persona_file = ""               # lines `name: description`; "" = built-in personas
    g.persona_weights = ()            # population shares per persona; () = uniform
    # click model (MNL with an outside option) and simulation
    g.temperature = 1.5               # T
    g.rejection_score = 11.0          # RS: score of the no-click option
    g.slate_size = 3                  # K items shown per interaction (uniform K-subset of the pool)
    g.pool_size = 5                   # N
    g.interactions = 5000             # S interactions per round
    g.rounds = 15                     # simulated rounds (round 0 = initial pool)
    # pool updates
    g.ctr_window = "cumulative"       # CTR used by the strategies: cumulative | round (last round)
    g.random_ctr_max = 0.15           # random-ctr draws CTRs from U[0, this]
    g.max_per_topic = 2               # explore-exploit: at most this many pool items per topic
    g.fixed_pool = True               # explore-exploit drops extra worst items to keep N
    # generator
    g.max_new_tokens = 40
    g.gen_temperature = 0.8
    g.gen_top_p = 0.95
    g.max_retries = 3                 # re-generations of a malformed output
    # judge
    g.judge_score = "expected"        # expected (E[score] over "1".."10") | argmax
    g.judge_batch_size = 16
    g.cache_path = ""                 # "" = <run_dir>/judge_cache.json
    # bridge to ABPO
    g.export_logs = False             # also write each strategy's interactions as a bandit log
    return g


def get_config():
    c = base_config()
    c.run_dir = "runs/gee"
    c.gee = gee_config()
    return c
