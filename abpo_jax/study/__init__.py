"""`abpo-jax study`: methods x seeds x conditions of continual runs, with statistics."""
