"""Multi-host start-up and process-0-only side effects.

Every host of a TPU pod runs the same `abpo-jax train` command (`launch/tpu_train.sh`). Before
any JAX computation each process calls :func:`initialize_distributed`, which joins the JAX
distributed system when the run spans more than one process:

* explicit settings: `config.distributed.{coordinator_address,num_processes,process_id}`, each
  falling back to the env variables `ABPO_COORDINATOR`, `ABPO_NUM_PROCESSES`, `ABPO_PROCESS_ID`
  (used by the CPU multi-process test and by clusters without auto-detection);
* auto-detected: on a Cloud TPU VM (TPU chips present, not Colab), under Slurm / Open MPI with
  more than one task, or when the launcher exports `ABPO_DISTRIBUTED=1`, it calls
  `jax.distributed.initialize()` with no arguments and JAX reads the topology itself;
* otherwise (one CPU/GPU process, a Colab TPU) it does nothing.

Orbax checkpointing must run on *every* process (it coordinates the hosts itself); plain files
(metrics, plots, tables, log shards) are written by process 0 only (:func:`on_main_process`),
followed by :func:`barrier` when other processes read them back.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Callable, TypeVar

import jax
from jax.experimental import multihost_utils

from abpo_jax.config import ConfigError
# One definition of "the writer process" for the whole package (train/outputs.py owns it).
from abpo_jax.train.outputs import is_main_process

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_COORDINATOR = "ABPO_COORDINATOR"
ENV_NUM_PROCESSES = "ABPO_NUM_PROCESSES"
ENV_PROCESS_ID = "ABPO_PROCESS_ID"
ENV_FORCE = "ABPO_DISTRIBUTED"   # "1": always initialize (auto-detect), "0": never
_ENV = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
        "process_id": ENV_PROCESS_ID}

__all__ = ["initialize_distributed", "distributed_settings", "is_main_process",
           "on_main_process", "main_process_only", "barrier"]


def _field(config: Any, name: str, default: Any) -> Any:
    """`config.distributed.<name>`, or `default` when the config has no such field."""
    section = getattr(config, "distributed", None) if config is not None else None
    if section is None or name not in section:
        return default
    return section[name]


def _int_setting(config: Any, field: str, env: str, unset: int) -> int | None:
    value = _field(config, field, unset)
    if value != unset:
        return int(value)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"env {env}={raw!r} is not an integer") from None


def distributed_settings(config: Any = None) -> dict[str, Any] | None:
    """Explicit (coordinator_address, num_processes, process_id), or None when none is given.

    Config fields win over the env variables. A partial setting is an error naming what is
    missing, since a half-configured process would hang waiting for its peers.
    """
    address = _field(config, "coordinator_address", "") or os.environ.get(ENV_COORDINATOR, "")
    num = _int_setting(config, "num_processes", ENV_NUM_PROCESSES, 0)
    pid = _int_setting(config, "process_id", ENV_PROCESS_ID, -1)
    given = {"coordinator_address": address or None, "num_processes": num, "process_id": pid}
    if all(v is None for v in given.values()):
        return None
    missing = [f"config.distributed.{k} (env {_ENV[k]})" for k, v in given.items() if v is None]
    if missing:
        raise ConfigError("multi-host settings are incomplete: missing " + ", ".join(missing))
    if given["num_processes"] < 1 or not 0 <= given["process_id"] < given["num_processes"]:
        raise ConfigError(
            f"multi-host settings are inconsistent: process_id={given['process_id']} must be in "
            f"[0, num_processes={given['num_processes']})")
    return given


def on_cloud_tpu_vm() -> bool:
    """TPU chips attached to this host (Cloud TPU VM), excluding Colab's single-host TPUs."""
    if "COLAB_RELEASE_TAG" in os.environ or "COLAB_TPU_ADDR" in os.environ:
        return False
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _cluster_with_many_tasks() -> bool:
    """Slurm or Open MPI launched this process as one of several (JAX auto-detects both)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(var, "1") or 1) > 1:
            return True
    return False


def initialize_distributed(config: Any = None) -> bool:
    """Join the JAX distributed system when this run spans several processes.

    Call first in a command's `main(config)`, before anything touches `jax.devices()` or runs a
    computation. Returns True when `jax.distributed.initialize` was called (now or earlier).
    `config.distributed.mode`: `auto` (default; see the module docstring), `on` (always call
    it, letting JAX auto-detect what is not given), `off` (never).
    """
    if jax.distributed.is_initialized():
        return True
    mode = _field(config, "mode", "auto")
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"config.distributed.mode={mode!r} is not allowed; choose one of: "
                          "auto, on, off")
    force = os.environ.get(ENV_FORCE, "")
    if mode == "off" or force == "0":
        return False
    explicit = distributed_settings(config)
    timeout = int(_field(config, "initialization_timeout", 300))
    if explicit is not None:
        log.info("jax.distributed.initialize(%s)", explicit)
        jax.distributed.initialize(**explicit, initialization_timeout=timeout)
    elif mode == "on" or force == "1" or on_cloud_tpu_vm() or _cluster_with_many_tasks():
        log.info("jax.distributed.initialize() with cluster auto-detection")
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        return False
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def on_main_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`fn(*args, **kwargs)` on process 0 only (e.g. a file write); None elsewhere."""
    return fn(*args, **kwargs) if is_main_process() else None


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (a no-op with one process).

    Use after process-0 writes that other processes read back (e.g. a round's log shards).
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
