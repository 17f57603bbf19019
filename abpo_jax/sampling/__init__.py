"""Autoregressive sampling, trie-constrained decoding and shared-prefix group scoring."""
