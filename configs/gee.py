"""Generative Explore-Exploit with SmolLM2 as generator and judge (paper defaults).

    abpo-jax gee
    abpo-jax gee --config.gee.rounds=5 --config.gee.strategies='("full-ctr","explore-exploit")'
"""

from abpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/gee"
    return c
