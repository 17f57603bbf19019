"""Orbax checkpoints of the continual run: train state, run metadata, grain iterator state.

One `CheckpointManager` per run directory. A checkpoint is a Composite of
`state` (restored born-sharded from an abstract tree), `meta` (JSON: a :class:`RunState` plus
the update's metric history) and optionally `iter` (a grain iterator). Restoring walks from the
newest step down, so a truncated or corrupt newest checkpoint falls back to the previous one
with a warning. Checkpoint ids only grow: a new one goes past every existing step.

The layout (`Layout`): mid-SFT the state is {"sft": train state}; from the end of round 0 on it
is {"methods": {method: train state + "ref" (pi_ref's params)}}.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import warnings
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp

from abpo_jax.train.faults import kill_point
from abpo_jax.train.state import abstract_like

log = logging.getLogger(__name__)


def checkpoint_dir(config) -> str:
    """`config.checkpoint.dir`, or `<run_dir>/checkpoints` when empty (absolute for Orbax)."""
    d = config.checkpoint.dir or os.path.join(config.run_dir, "checkpoints")
    return d if "://" in d else str(pathlib.Path(d).absolute())


PHASES = ("start", "sft", "update", "done")


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where a run stands: `phase` start | sft (mid-SFT) | update (mid-update of `method` in
    `round`) | done (`method` of `round` finished; round 0 = SFT evaluated), `step` done so far
    within the phase."""
    phase: str = "start"
    round: int = 0
    method: str = ""
    step: int = 0

    def to_meta(self, **extra: Any) -> dict:
        return {**dataclasses.asdict(self), **extra}

    @classmethod
    def from_meta(cls, meta: dict) -> "RunState":
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


@dataclasses.dataclass(frozen=True)
class Layout:
    """The checkpoint tree of every phase, as abstract (shape, dtype, sharding) targets."""
    methods: Sequence[str]
    sft_state: Callable[[], dict]      # a fresh SFT train state
    method_state: Callable[[], dict]   # a fresh round train state, "ref" included

    def abstract(self, run_state: RunState) -> dict:
        if run_state.phase == "sft":
            return {"sft": abstract_like(self.sft_state())}
        one = abstract_like(self.method_state())
        return {"methods": {m: one for m in self.methods}}


@dataclasses.dataclass
class Restored:
    """A restored checkpoint: its id, state tree, run state, metadata, grain iterator."""
    step: int
    state: Any
    run_state: RunState
    meta: dict
    data_iter: Any = None


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

    def next_step(self) -> int:
        """An id past every existing checkpoint, including an unreadable newest one."""
        return max([0, *self.steps()]) + 1

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

    def restore_latest(self, abstract_state_for: Callable[[RunState], Any],
                       iterator_for: Callable[[RunState], Any] | None = None
                       ) -> Restored | None:
        """Newest restorable checkpoint; None when there is none.

        `abstract_state_for(run_state)` gives the abstract tree for that checkpoint;
        `iterator_for(run_state)` the grain iterator to restore in place (or None: not saved).
        Unreadable checkpoints are skipped with a warning (and the next-older one is tried).
        """
        for step in reversed(self.steps()):
            try:
                run_state = RunState.from_meta(self.restore_meta(step))
                data_iter = iterator_for(run_state) if iterator_for is not None else None
                state, meta = self.restore(step, abstract_state_for(run_state), data_iter)
                jax.block_until_ready(state)
                return Restored(step, state, run_state, meta, data_iter)
            except Exception as e:  # noqa: BLE001 — any unreadable checkpoint means "older one"
                warnings.warn(f"checkpoint {self.directory}/{step} is unreadable "
                              f"({type(e).__name__}: {e}); falling back to an older one")
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
