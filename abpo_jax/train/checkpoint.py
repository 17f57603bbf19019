"""Orbax checkpoints of the continual run: train state, run metadata, grain iterator state.

One `CheckpointManager` per run directory. A checkpoint is a Composite of
`state` (params + optimizer state per method, RNG key data; restored born-sharded from an
abstract tree), `meta` (JSON: round, phase, method index, step, log manifests) and optionally
`iter` (a grain iterator). Restoring walks from the newest step down, so a truncated or corrupt
newest checkpoint falls back to the previous one with a warning.
"""

from __future__ import annotations

import logging
import os
import pathlib
import warnings
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from abpo_jax.train.faults import kill_point

log = logging.getLogger(__name__)


def checkpoint_dir(config) -> str:
    """`config.checkpoint.dir`, or `<run_dir>/checkpoints` when empty (absolute for Orbax)."""
    d = config.checkpoint.dir or os.path.join(config.run_dir, "checkpoints")
    return d if "://" in d else str(pathlib.Path(d).absolute())


class Checkpointer:
    """Save / restore-latest-good over an Orbax `CheckpointManager`."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True))

    def save(self, step: int, state: Any, meta: dict, data_iter: Any = None) -> None:
        """Write checkpoint `step` and wait for it (async write, so a kill can land mid-save)."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            import grain
            items["iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        kill_point("checkpoint")  # the write is in flight: a kill here leaves a partial step
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None
                ) -> tuple[Any, dict]:
        """Restore `state` into the shapes/shardings of `abstract_state` (+ iterator in place)."""
        items = dict(state=ocp.args.StandardRestore(abstract_state),
                     meta=ocp.args.JsonRestore())
        if data_iter is not None:
            import grain
            items["iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], out["meta"]

    def restore_latest(self, abstract_state_for: Callable[[dict], Any],
                       iterator_for: Callable[[dict], Any] | None = None
                       ) -> tuple[int, Any, dict] | None:
        """Newest restorable checkpoint as (step, state, meta); None when there is none.

        `abstract_state_for(meta)` gives the abstract tree for that checkpoint's metadata;
        `iterator_for(meta)` the grain iterator to restore in place (or None: not saved).
        Unreadable checkpoints are skipped with a warning (and the next-older one is tried).
        """
        for step in reversed(self.steps()):
            try:
                meta = self.restore_meta(step)
                data_iter = iterator_for(meta) if iterator_for is not None else None
                state, meta = self.restore(step, abstract_state_for(meta), data_iter)
                jax.block_until_ready(state)
                return step, state, meta
            except Exception as e:  # noqa: BLE001 — any unreadable checkpoint means "older one"
                warnings.warn(f"checkpoint {self.directory}/{step} is unreadable "
                              f"({type(e).__name__}: {e}); falling back to an older one")
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
