"""Generative Explore-Exploit (Senel et al., ACL 2024): training-free pool optimisation."""
