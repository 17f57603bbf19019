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
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
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
        # files, not pipes: a full pipe would block a chatty process while we poll
        with open(workdir / f"p{pid}.out", "w") as out, open(workdir / f"p{pid}.err", "w") as err:
            procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                          stdout=out, stderr=err))
    # Poll both: when one process fails, its peer may wait forever in a collective.
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(5)   # grace for the peer's own error message, then stop it
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for pid, p in enumerate(procs):
        p.wait()
        results.append(subprocess.CompletedProcess(
            p.args, p.returncode, (workdir / f"p{pid}.out").read_text(),
            (workdir / f"p{pid}.err").read_text()))
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


# ---- initialize_distributed decisions, in-process (jax.distributed.initialize is recorded) ---

@pytest.fixture
def recorded_init(monkeypatch):
    """Clean ABPO_/cluster env; `jax.distributed.initialize` replaced by a recorder."""
    import jax

    from abpo_jax.train import distributed

    for var in ("ABPO_COORDINATOR", "ABPO_NUM_PROCESSES", "ABPO_PROCESS_ID", "ABPO_DISTRIBUTED",
                "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "COLAB_RELEASE_TAG", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    return calls


def _cfg(**fields):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.distributed = ml_collections.ConfigDict(dict(
        dict(mode="auto", coordinator_address="", num_processes=0, process_id=-1), **fields))
    return c


def test_single_process_does_not_initialize(recorded_init):
    from abpo_jax.train.distributed import initialize_distributed
    assert initialize_distributed(None) is False
    assert initialize_distributed(_cfg()) is False
    assert recorded_init == []


def test_explicit_settings_env_and_config(recorded_init, monkeypatch):
    from abpo_jax.train.distributed import initialize_distributed
    monkeypatch.setenv("ABPO_COORDINATOR", "10.0.0.2:1234")
    monkeypatch.setenv("ABPO_NUM_PROCESSES", "4")
    monkeypatch.setenv("ABPO_PROCESS_ID", "3")
    assert initialize_distributed(None) is True
    # config fields win over the env; unset fields fall back to it
    assert initialize_distributed(_cfg(process_id=1, initialization_timeout=60)) is True
    assert recorded_init == [
        dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
             initialization_timeout=300),
        dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=1,
             initialization_timeout=60)]


def test_auto_detection_and_switches(recorded_init, monkeypatch):
    from abpo_jax.train import distributed
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.initialize_distributed(None) is True          # Slurm, several tasks
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize_distributed(None) is False
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
    assert distributed.initialize_distributed(None) is True          # TPU VM
    assert distributed.initialize_distributed(_cfg(mode="off")) is False
    monkeypatch.setenv("ABPO_DISTRIBUTED", "0")
    assert distributed.initialize_distributed(None) is False
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    monkeypatch.setenv("ABPO_DISTRIBUTED", "1")
    assert distributed.initialize_distributed(None) is True          # launcher forces it
    assert distributed.initialize_distributed(_cfg(mode="on")) is True
    assert recorded_init == [dict(initialization_timeout=300)] * 4


def test_colab_tpu_is_not_a_pod(monkeypatch):
    from abpo_jax.train import distributed
    monkeypatch.setattr(distributed.glob, "glob", lambda pattern: ["/dev/accel0"])
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    assert distributed.on_cloud_tpu_vm() is True
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert distributed.on_cloud_tpu_vm() is False


@pytest.mark.parametrize("env, config, message", [
    ({"ABPO_COORDINATOR": "h:1"}, None, "missing config.distributed.num_processes (env "
                                        "ABPO_NUM_PROCESSES), config.distributed.process_id"),
    ({"ABPO_NUM_PROCESSES": "two"}, None, "env ABPO_NUM_PROCESSES='two' is not an integer"),
    ({"ABPO_COORDINATOR": "h:1", "ABPO_NUM_PROCESSES": "2", "ABPO_PROCESS_ID": "2"}, None,
     "process_id=2 must be in [0, num_processes=2)"),
    ({}, {"mode": "sometimes"}, "config.distributed.mode='sometimes' is not allowed"),
])
def test_bad_settings_fail_clearly(recorded_init, monkeypatch, env, config, message):
    from abpo_jax.config import ConfigError
    from abpo_jax.train.distributed import initialize_distributed
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        initialize_distributed(_cfg(**config) if config else None)
    assert message in str(err.value)
    assert recorded_init == []


def test_main_process_helpers_single_process():
    from abpo_jax.train.distributed import barrier, on_main_process
    assert on_main_process(lambda a, b=0: a + b, 1, b=2) == 3      # process 0 of 1
    barrier("no-op with one process")


def _v5e32_config():
    from helpers import load_config
    return load_config("ml1m_gemma3_1b_v5e32.py")


def test_v5e32_config_validates_and_fills_the_slice():
    """configs/ml1m_gemma3_1b_v5e32.py: 4 hosts x 8 chips, HF checkpoint, batch divides the mesh."""
    from abpo_jax.config import validate
    from abpo_jax.train.state import build_mesh

    config = validate(_v5e32_config())
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (4, 8, 1)
    with pytest.raises(ValueError, match="needs 32 devices"):
        build_mesh(config)                             # 8 test devices: fails fast, names it
    # the real size: a fresh process with 32 fake devices builds the (4, 8, 1) mesh
    code = ("import importlib.machinery as m; from abpo_jax.train.state import build_mesh; "
            f"c = m.SourceFileLoader('v', {str(ROOT / 'configs/ml1m_gemma3_1b_v5e32.py')!r})"
            ".load_module().get_config(); print(dict(build_mesh(c).shape))")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=32")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{'data': 4, 'fsdp': 8, 'tensor': 1}"
    assert config.train.batch_size % 32 == 0 and config.eval.batch_size % 32 == 0
    assert (config.model.source, config.model.dtype) == ("hf", "bfloat16")
    assert config.model.path == os.path.expanduser("~/models/gemma-3-1b-it")
    assert config.data.dataset == "ml-1m" and config.rounds.num_rounds == 5   # from ml1m.py


@pytest.mark.slow
def test_v5e32_config_event_rounds_fit_movielens_1m():
    from abpo_jax.data.events import event_rounds
    from abpo_jax.data.splits import prepare_data

    config = _v5e32_config()
    data = prepare_data(config)
    rounds = event_rounds(config, data.split.sequences, data.interactions.num_items)
    assert len(rounds.deploy) == 5 and all(len(r) == 10_240 for r in rounds.deploy)
    assert len(rounds.test) == 1_024 and len(rounds.timeline.warm()) > 0
    assert 10_240 % (config.train.batch_size) == 0


def _tiny_round_config(run_dir: pathlib.Path):
    """configs/tiny.py cut to the bone: 1 round, 1 method, 1 update step, 4 users a slice."""
    from helpers import load_config

    config = load_config("tiny.py")
    config.run_dir = str(run_dir)
    config.rounds.num_rounds = 1
    config.rounds.methods = ("abpo",)
    config.data.max_users = 40
    config.data.users_per_round = config.data.num_test_users = 4
    config.train.batch_size = 4                   # 1 prompt per device of the 2x2 mesh
    config.train.sft_steps = 2
    config.train.epochs_per_round = 1             # 4 users / batch 4: one update step
    config.sim.mf_steps = 5
    config.eval.batch_size = 4
    config.model.tiny.hidden, config.model.tiny.intermediate = 32, 64
    config.outputs.progress = config.outputs.tensorboard = False
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1   # data over processes
    return config


def _round_worker(workdir: pathlib.Path) -> None:
    """One process of a one-round tiny continual run."""
    from abpo_jax.config import validate
    from abpo_jax.train import rounds

    rounds.main(validate(_tiny_round_config(workdir / "run")))


@pytest.mark.slow
def test_two_processes_run_one_tiny_round(tmp_path):
    results = _run_two([__file__, "--round", str(tmp_path)], tmp_path, timeout=300)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    steps = [p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps, "no checkpoint written"
    # process 0 alone writes the run's plain files: one row per (round, method), not two
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r["method"]) for r in rows) == [(0, "abpo"), (1, "abpo")]
    assert list(run.rglob("*.png"))
    # one committed round log, written once (no per-process duplicate, no leftover temp dir)
    assert sorted(p.name for p in (run / "logs" / "abpo").iterdir()) == ["round_00001"]

    # Independent reference: the same run in one process on 4 devices. Each process fed only
    # its own slice of every batch, so the global batches hold the same records: round 0 (SFT
    # on the same examples, the simulator, evaluation) and round 1's log (scoring, exposures,
    # propensities, outcomes) must agree, and so must the first update's loss (its value does
    # not depend on the rollout draws). The post-update metrics are not compared: the global
    # batch holds the records in another order ([p0 slice, p1 slice] vs the shuffled order),
    # so each record gets other rollout draws from the step's RNG.
    import jax

    from abpo_jax.config import validate
    from abpo_jax.data import log_store
    from abpo_jax.train import rounds
    from abpo_jax.train.experiment import build

    ref = rounds.run(build(validate(_tiny_round_config(tmp_path / "ref")), jax.devices()[:4]))
    assert [(r["round"], r["method"]) for r in ref] == [(0, "abpo"), (1, "abpo")]
    rows = sorted(rows, key=lambda r: r["round"])
    assert rows[0].keys() == ref[0].keys()
    for key, value in ref[0].items():
        assert rows[0][key] == (pytest.approx(value, rel=1e-4, abs=1e-6)
                                if isinstance(value, float) else value), key
    for key in ("log_ctr", "train/loss"):
        assert rows[1][key] == pytest.approx(ref[1][key], rel=1e-4, abs=1e-6), key
    got, want = (list(log_store.open_round(log_store.round_path(d / "logs" / "abpo", 1)))
                 for d in (run, tmp_path / "ref"))
    assert len(got) == 4 and got == want


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))   # run as a script: `helpers` lives in tests/
    if sys.argv[1] == "--round":
        _round_worker(pathlib.Path(sys.argv[2]))
    else:
        _worker(pathlib.Path(sys.argv[1]))
