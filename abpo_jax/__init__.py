"""abpo_jax: continual updates of a deployed LLM recommender from its own bandit logs."""

__version__ = "0.1.0"
