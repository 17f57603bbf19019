"""Weightless architecture directories: `config.json` + tokenizer files, no weights.

`model.source=hf model.random_init=True` builds the same architecture from one with random
weights -- megabytes where the weights are hundreds, for throughput benchmarks on a machine the
weights cannot reach (`launch/device_check.sh --prepare`)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.loaders import gguf_fields, hf_config_dict, packaged_gguf_path
from abpo_jax.models.tokenizer import load_tokenizer


def save_hf_architecture(config: ModelConfig, tokenizer: Any,
                         directory: str | os.PathLike) -> pathlib.Path:
    """Write `config.json` and the tokenizer files, no weights: a directory that
    `model.source=hf model.random_init=True` builds the same architecture from (megabytes where
    the weights are hundreds), for throughput benchmarks on a machine the weights cannot reach."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    tokenizer.save_hf_dir(d)
    return d


def save_packaged_architecture(source: str, directory: str | os.PathLike,
                               weight_cache: str | None = "") -> pathlib.Path:
    """`save_hf_architecture` for a packaged model (smollm2 | gemma3_270m), read from its GGUF's
    metadata (the tensors are not read)."""
    import gguf

    path = packaged_gguf_path(source, weight_cache)
    config = ModelConfig(**gguf_fields(gguf.GGUFReader(path), path))
    return save_hf_architecture(config, load_tokenizer(source, weight_cache=weight_cache),
                                directory)
