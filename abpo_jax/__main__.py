"""`python -m abpo_jax` == `abpo-jax`."""
from abpo_jax.cli import run

run()
