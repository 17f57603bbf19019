"""The ABPO objective (`abpo.py`): pure jax.numpy, imports nothing of the package."""
