"""Datasets, splits, prompts, bandit logs and grain pipelines (knows nothing of models)."""
