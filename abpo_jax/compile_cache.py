"""JAX's persistent compilation cache for the run commands.

Compiled XLA programs are written to `config.train.compile_cache_dir` (default
`<run_dir>/jax_cache`, so re-running or resuming the same command finds them; "off" disables)
and read back by any later process whose program, jax/jaxlib version, backend and flags match
(JAX keys each entry on all of these, so a stale entry is never used). `abpo-jax` enables it
before a command runs (`cli.py`), before anything is compiled.
"""

from __future__ import annotations

import pathlib
from typing import Any

OFF = "off"


def cache_dir(config: Any) -> str | None:
    """The cache directory of `config` (None when `train.compile_cache_dir` is "off")."""
    train = config.get("train", {}) if hasattr(config, "get") else {}
    configured = str(train.get("compile_cache_dir", "") or "")
    if configured == OFF:
        return None
    if configured:
        return configured
    return str(pathlib.Path(str(config.get("run_dir", "runs/default"))) / "jax_cache")


def enable(config: Any) -> str | None:
    """Point JAX's persistent compilation cache at `cache_dir(config)`; returns the directory.

    Every program is cached whatever its compile time (`min_compile_time_secs` 0): on a
    re-run the many small programs of a round add up too.
    """
    import jax

    directory = cache_dir(config)
    if directory is None:
        return None
    if "://" not in directory:  # gs:// and other URLs are handled by JAX's cache itself
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    min_secs = float(config.get("train", {}).get("compile_cache_min_secs", 0.0))
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
