"""Two CPU processes joined by `initialize_distributed` behave as one multi-host run.

The test starts this file twice as a worker (`python tests/test_multihost.py WORKDIR`) with an
explicit coordinator on 127.0.0.1 and 2 fake CPU devices each (4 global devices). The workers:
all-reduce across the processes (checked against the hand-computed sum), save and restore one
Orbax checkpoint of a globally sharded array through the train Checkpointer, write a file on
process 0 only, and - once the continual-rounds runner exists - run one tiny round together.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROWS, COLS = 2, 3   # per-process block of the global array


def _local_block(pid: int):
    import numpy as np
    return np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) + 100.0 * pid


def _worker(workdir: pathlib.Path) -> None:
    """One process of the two-process run; prints one JSON line of results."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from abpo_jax.train.checkpoint import Checkpointer
    from abpo_jax.train.distributed import barrier, initialize_distributed, on_main_process

    joined = initialize_distributed(None)   # settings come from the ABPO_* env variables
    pid = jax.process_index()
    mesh = jax.make_mesh((2, 2, 1), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    x = jax.make_array_from_process_local_data(sharding, _local_block(pid))

    # Cross-process all-reduce: an explicit psum over both mesh axes and a jitted global sum.
    psum = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b.sum(), ("data", "fsdp")),
                                 mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P()))
    total_psum = float(psum(x).addressable_data(0))
    global_sum = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))
    total_jit = float(global_sum(x).addressable_data(0))

    # Orbax multi-host save + restore (every process takes part; Orbax coordinates).
    ckpt = Checkpointer(str(workdir / "checkpoints"), max_to_keep=1)
    ckpt.save(1, {"x": x}, {"round": 1})
    abstract = {"x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)}
    restored, meta = ckpt.restore(1, abstract)
    ckpt.close()
    restored_ok = all(
        np.array_equal(np.asarray(r.data), np.asarray(o.data))
        for r, o in zip(restored["x"].addressable_shards, x.addressable_shards))

    on_main_process((workdir / "written_by.txt").write_text, f"process {pid}\n")
    barrier("marker-written")
    print(json.dumps({
        "joined": joined, "pid": pid, "process_count": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "psum": total_psum, "jit_sum": total_jit, "restored_ok": bool(restored_ok),
        "meta": meta, "marker": (workdir / "written_by.txt").read_text().strip(),
    }), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(args: list[str], workdir: pathlib.Path, timeout: float = 240
             ) -> list[subprocess.CompletedProcess]:
    """Start the two processes, wait for both; kill both if either hangs."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", ABPO_COORDINATOR=f"127.0.0.1:{port}",
                   ABPO_NUM_PROCESSES="2", ABPO_PROCESS_ID=str(pid),
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        procs.append(subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.mark.slow
def test_two_processes_allreduce_checkpoint_and_main_only_write(tmp_path):
    results = _run_two([__file__, str(tmp_path)], tmp_path)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    rows = sorted((json.loads(r.stdout.strip().splitlines()[-1]) for r in results),
                  key=lambda row: row["pid"])
    # sum over both processes' blocks: 2 * (0+1+...+5) + 100 * 6 (process 1's offset)
    expected = 2 * sum(range(ROWS * COLS)) + 100.0 * ROWS * COLS
    for pid, row in enumerate(rows):
        assert row["pid"] == pid and row["joined"] is True
        assert (row["process_count"], row["devices"], row["local_devices"]) == (2, 4, 2)
        assert row["psum"] == expected and row["jit_sum"] == expected
        assert row["restored_ok"] and row["meta"] == {"round": 1}
        assert row["marker"] == "process 0"
    # one checkpoint step written by the pair, not one per process
    steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["1"]


def test_v5e32_config_validates_and_fills_the_slice():
    """configs/ml1m_gemma3_1b_v5e32.py: 4 hosts x 8 chips, HF checkpoint, batch divides the mesh."""
    import importlib.machinery

    from abpo_jax.config import validate
    from abpo_jax.train.state import mesh_shape

    path = ROOT / "configs" / "ml1m_gemma3_1b_v5e32.py"
    config = validate(importlib.machinery.SourceFileLoader("v5e32", str(path)).load_module()
                      .get_config())
    assert mesh_shape(config, 32) == (4, 8, 1)        # v5litepod-32: 4 hosts x 8 chips
    with pytest.raises(ValueError, match="needs 32 devices"):
        mesh_shape(config, 8)                          # fails fast on the wrong slice
    assert config.train.batch_size % 32 == 0 and config.eval.batch_size % 32 == 0
    assert (config.model.source, config.model.dtype) == ("hf", "bfloat16")
    assert config.model.path == os.path.expanduser("~/models/gemma-3-1b-it")
    assert config.data.dataset == "ml-1m" and config.rounds.num_rounds == 5   # from ml1m.py


@pytest.mark.slow
def test_v5e32_config_user_slices_fit_movielens_1m():
    import importlib.machinery

    from abpo_jax.data.splits import prepare_data

    path = ROOT / "configs" / "ml1m_gemma3_1b_v5e32.py"
    config = importlib.machinery.SourceFileLoader("v5e32", str(path)).load_module().get_config()
    slices = prepare_data(config).slices      # raises when the users do not suffice
    assert len(slices.rounds) == 5 and all(len(r) == 960 for r in slices.rounds)
    assert len(slices.test) == 1000 and len(slices.warm) > 0


def _round_worker(workdir: pathlib.Path) -> None:
    """One process of a one-round tiny continual run (needs rounds.py and configs/tiny.py)."""
    import importlib.util

    from abpo_jax.config import validate
    from abpo_jax.train import rounds

    spec = importlib.util.spec_from_file_location("tiny_cfg", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.run_dir = str(workdir / "run")
    config.rounds.num_rounds = 1
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
    rounds.main(validate(config))


@pytest.mark.slow
def test_two_processes_run_one_tiny_round(tmp_path):
    if not (ROOT / "abpo_jax/train/rounds.py").exists() or not (ROOT / "configs/tiny.py").exists():
        pytest.skip("needs abpo_jax/train/rounds.py and configs/tiny.py (train engineer)")
    results = _run_two([__file__, "--round", str(tmp_path)], tmp_path, timeout=400)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    ckpt_dir = tmp_path / "run" / "checkpoints"
    steps = [p for p in ckpt_dir.iterdir() if p.name.isdigit()]
    assert steps, f"no checkpoint written under {ckpt_dir}"
    # process 0 alone writes the run's plain files (metrics rows, plots)
    assert list((tmp_path / "run").glob("*.png")) or (tmp_path / "run" / "metrics.jsonl").exists()


if __name__ == "__main__":
    if sys.argv[1] == "--round":
        _round_worker(pathlib.Path(sys.argv[2]))
    else:
        _worker(pathlib.Path(sys.argv[1]))
