"""Test setup: 8 fake CPU devices for sharding tests (must precede any jax import), and one
persistent compilation cache per test process."""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_COMPILE_CACHE: list[str] = []


def pytest_configure(config):
    """Many tests build the same tiny runs in-process (study cells, rounds, resume); JAX's
    in-memory cache misses them (each run jits fresh closures), its persistent cache does not.
    Set before the first compile (JAX decides at that point whether the cache is used); one
    directory per process (each xdist worker its own: no concurrent writers), removed at the
    end. Subprocess runs keep their own `<run_dir>/jax_cache`, as a user's would."""
    import jax

    directory = tempfile.mkdtemp(prefix="abpo_jax_test_jit_")
    _COMPILE_CACHE.append(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
    for directory in _COMPILE_CACHE:
        shutil.rmtree(directory, ignore_errors=True)
