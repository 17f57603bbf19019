"""ABPO / GRPO objectives as pure, registered jax.numpy functions (imports nothing of the package)."""
