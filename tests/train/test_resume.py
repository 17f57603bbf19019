"""Kill / resume determinism of the continual run (subprocesses, deterministic kill points).

`ABPO_KILL_AT=<point>:<n>` SIGKILLs the run at the n-th pass through a named point (mid-SFT,
mid-rollout, mid-update, mid-checkpoint write); re-running the same command must reach the same
final parameters and metrics as an uninterrupted run. A corrupt newest checkpoint falls back to
the previous one with a warning.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Tiny config, 1 round of ABPO with 3 update steps; checkpoints after every step.
SCRIPT = r"""
import os, sys, importlib.util
import numpy as np
spec = importlib.util.spec_from_file_location("tiny", os.path.join(sys.argv[2], "configs", sys.argv[4]))
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
c = mod.get_config()
c.run_dir = sys.argv[1]
c.seed = 3
c.data.max_users = 300
c.data.num_test_users = 16
c.data.users_per_round = 24
c.rounds.num_rounds = 1
c.rounds.methods = ("abpo",)
c.train.batch_size = 8
c.train.sft_steps = 2
c.train.epochs_per_round = 1
c.eval.batch_size = 16
c.sim.mf_steps = 20
c.sim.cache_dir = sys.argv[3]
c.checkpoint.every_steps = 1
c.checkpoint.max_to_keep = 2
c.outputs.progress = False
c.outputs.tensorboard = False
c.outputs.plots = False
c.mesh.fsdp = 1
from abpo_jax.config import validate
validate(c)
import jax
from abpo_jax.train import rounds
from abpo_jax.train.experiment import build
run = build(c, devices=jax.devices()[:1])
rounds.run(run)
tree = run.ckpt.restore_latest(run.layout.abstract).state
leaves = jax.tree.leaves(tree["methods"]["abpo"]["params"])
np.savez(os.path.join(c.run_dir, "final.npz"), *[np.asarray(x) for x in leaves])
"""


def _env(cache: pathlib.Path, kill: str | None) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env.pop("ABPO_KILL_AT", None)
    if kill:
        env["ABPO_KILL_AT"] = kill
    return env


def _run(run_dir: pathlib.Path, cache: pathlib.Path, kill: str | None = None,
         config: str = "tiny.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir), str(ROOT),
                           str(cache / "sim"), config], env=_env(cache, kill), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def _rows(run_dir: pathlib.Path) -> list[dict]:
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[(row["round"], row["method"])] = row
    return [rows[k] for k in sorted(rows)]


def _final(run_dir: pathlib.Path) -> list[np.ndarray]:
    with np.load(run_dir / "final.npz") as z:
        return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]


def _reference(tmp_path_factory, config: str):
    cache = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path_factory.mktemp("reference")
    out = _run(run_dir, cache, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    return cache, run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference(tmp_path_factory, "tiny.py")


@pytest.fixture(scope="module")
def text_reference(tmp_path_factory):
    return _reference(tmp_path_factory, "text_tiny.py")


def _assert_same_run(a: pathlib.Path, b: pathlib.Path) -> None:
    for x, y in zip(_final(a), _final(b), strict=True):
        np.testing.assert_array_equal(x, y)
    ra, rb = _rows(a), _rows(b)
    assert [(r["round"], r["method"]) for r in ra] == [(r["round"], r["method"]) for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                np.testing.assert_allclose(x[key], y[key], rtol=1e-6, err_msg=key)
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("kill", ["sft:1", "rollout:1", "update:2", "checkpoint:4"])
def test_killed_run_resumes_to_the_same_result(reference, tmp_path, kill):
    cache, ref_dir = reference
    killed = _run(tmp_path, cache, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "final.npz").exists()
    resumed = _run(tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill != "sft:1":
        assert "resuming from checkpoint" in resumed.stdout
    _assert_same_run(ref_dir, tmp_path)


def test_corrupt_newest_checkpoint_falls_back(reference, tmp_path):
    cache, ref_dir = reference
    killed = _run(tmp_path, cache, "update:3")  # after the last step, before its checkpoint
    assert killed.returncode == -signal.SIGKILL
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    newest = tmp_path / "checkpoints" / str(steps[-1])
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate every file
    resumed = _run(tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "unreadable" in resumed.stderr and "falling back" in resumed.stderr
    _assert_same_run(ref_dir, tmp_path)


@pytest.mark.parametrize("kill", ["update:2"])   # mid-update: its round log was sampled
def test_text_mode_killed_run_resumes_to_the_same_result(text_reference, tmp_path, kill):
    """Text mode: sampled deployment and rollouts (keys fold in round and step) resume to
    the same parameters and metrics."""
    cache, ref_dir = text_reference
    killed = _run(tmp_path, cache, kill, config="text_tiny.py")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _run(tmp_path, cache, config="text_tiny.py")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stdout
    _assert_same_run(ref_dir, tmp_path)
