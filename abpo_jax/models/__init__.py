"""Decoder LLMs in Flax NNX, their loaders, tokenizers and sharding rules."""
