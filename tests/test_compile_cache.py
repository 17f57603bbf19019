"""The persistent compilation cache: a second process compiling the same program reads it from
`train.compile_cache_dir` instead of compiling (JAX's `/jax/compilation_cache/cache_hits`)."""

import json
import os
import subprocess
import sys

import ml_collections

from abpo_jax import compile_cache

PROGRAM = r"""
import json, sys
import ml_collections
from abpo_jax import compile_cache
config = ml_collections.ConfigDict({"run_dir": sys.argv[1], "train": {"compile_cache_dir": ""}})
directory = compile_cache.enable(config)
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + 1.5)
f(jnp.ones((17, 5))).block_until_ready()
print(json.dumps({"dir": directory,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(run_dir):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(run_dir)], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_second_process_hits_the_cache(tmp_path):
    first = _run(tmp_path)
    assert first["dir"] == str(tmp_path / "jax_cache")
    assert first["misses"] >= 1 and first["hits"] == 0
    assert any((tmp_path / "jax_cache").iterdir())   # entries written
    second = _run(tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0


def test_cache_dir_default_configured_and_off():
    c = ml_collections.ConfigDict({"run_dir": "runs/x", "train": {"compile_cache_dir": ""}})
    assert compile_cache.cache_dir(c) == os.path.join("runs/x", "jax_cache")
    c.train.compile_cache_dir = "/tmp/cc"
    assert compile_cache.cache_dir(c) == "/tmp/cc"
    c.train.compile_cache_dir = "off"
    assert compile_cache.cache_dir(c) is None and compile_cache.enable(c) is None
