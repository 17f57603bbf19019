"""Train state, the jitted train step, checkpoints and the continual rounds."""
