"""Orbax checkpoints of the continual run: train state, run metadata, grain iterator state.

One `CheckpointManager` per run directory. A checkpoint is a Composite of
`state` (restored born-sharded from an abstract tree), `meta` (JSON: a :class:`RunState` plus
the update's metric history) and optionally `iter` (a grain iterator). Restoring walks from the
newest step down, so a truncated or corrupt newest checkpoint falls back to the previous one
with a warning. Checkpoint ids only grow: a new one goes past every existing step.

Integrity: once a save has completed, process 0 writes `<step>/abpo_sha256.json` (sha256 of every
file of the step); restore verifies it first, so flipped bits fall back like a truncation. A
step without the manifest is accepted only while no step has one (a run dir from before the
manifests); otherwise it was killed between the save and the manifest and is skipped. A file the
resume needs besides the checkpoint (the round log of a mid-update step) that is unreadable is
not the checkpoint's fault: `restore_latest` raises :class:`RunDirError` naming it, before any new
save, so no good checkpoint is rotated out.

The run directory itself (`prepare_run_dir`, before any work): writable (a probe file is
created, written, synced and deleted), and `<run_dir>/config.json` records the run's config; a
run dir holding a run of another config is refused naming the differing fields unless
`config.checkpoint.resume_mismatch=allow`. Every checkpoint's meta carries the config too
(`config`, `config_sha256`), so a run dir whose config.json was deleted is still checked against
the config its checkpoints were written under.

The layout (`Layout`): mid-SFT the state is {"sft": train state}; from the end of round 0 on it
is {"methods": {method: train state + "ref" (pi_ref's params)}}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import warnings
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp

from abpo_jax.train.faults import kill_point
from abpo_jax.fileio import atomic_write_text, flat_items, sha256_file
from abpo_jax.train.outputs import is_main_process
from abpo_jax.train.state import abstract_like

log = logging.getLogger(__name__)


def checkpoint_dir(config) -> str:
    """`config.checkpoint.dir`, or `<run_dir>/checkpoints` when empty (absolute for Orbax)."""
    d = config.checkpoint.dir or os.path.join(config.run_dir, "checkpoints")
    return d if "://" in d else str(pathlib.Path(d).absolute())


PHASES = ("start", "sft", "update", "done")
CHECKSUMS = "abpo_sha256.json"   # per-step manifest: relative file path -> sha256


class RunWarning(UserWarning):
    """Something about the run dir the user should know (a checkpoint skipped, a changed
    config); the CLI prints it as one `abpo-jax <command>: warning: ...` line."""


class RunDirError(ValueError):
    """The run directory, or a file a resume needs, cannot be used; the message (one line) names
    it and says how to recover."""


class ResumeInputError(Exception):
    """Raised by an `iterator_for` callback: the input of a mid-update checkpoint (its round log)
    at `path` is unreadable (`cause`), or gone (`gone=True`: deleted on purpose, so the steps
    that need it are skipped and an older checkpoint re-logs the round)."""

    def __init__(self, path: os.PathLike | str, cause: BaseException | None = None,
                 gone: bool = False):
        super().__init__(f"{path}: {cause}" if cause is not None else f"{path} is gone")
        self.path, self.cause, self.gone = pathlib.Path(path), cause, gone


def directory_digests(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative posix path -> hex), the manifest excluded."""
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != CHECKSUMS}


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

    def describe(self) -> str:
        """Where the run stands, in words (for the resume line)."""
        if self.phase == "sft":
            return f"mid-SFT warm start, step {self.step}"
        if self.phase == "update":
            return f"mid-update of round {self.round}, method {self.method}, step {self.step}"
        if self.phase == "done":
            return (f"round {self.round} done up to method {self.method}" if self.round
                    else "SFT warm start (round 0) done")
        return "not started"

    def finished(self, num_rounds: int, methods: Sequence[str]) -> bool:
        """Every method has done every round: nothing left to train."""
        return (self.phase == "done" and self.round >= num_rounds
                and (not methods or self.method == methods[-1]))

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

    def __init__(self, directory: str, max_to_keep: int = 3, config: Any = None):
        self.directory = directory
        # the run's config rides in every checkpoint's meta (checked by check_run_config)
        self.config_meta = config_meta(config) if config is not None else {}
        self.local = "://" not in directory   # checksum manifests on local/mounted disks only
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True))

    def save(self, step: int, state: Any, meta: dict, data_iter: Any = None) -> None:
        """Write checkpoint `step` and wait for it (async write, so a kill can land mid-save)."""
        meta = {**meta, **self.config_meta}
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            import grain
            items["iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        kill_point("checkpoint")  # the write is in flight: a kill here leaves a partial step
        self.manager.wait_until_finished()
        self.write_checksums(step)

    def step_dir(self, step: int) -> pathlib.Path:
        return pathlib.Path(self.directory) / str(step)

    def write_checksums(self, step: int) -> None:
        """Process 0: the sha256 manifest of the finished step (atomic; after the save)."""
        d = self.step_dir(step)
        if self.local and is_main_process() and d.is_dir():
            atomic_write_text(d / CHECKSUMS, json.dumps(
                {"version": 1, "files": directory_digests(d)}, indent=0, sort_keys=True))

    def verify(self, step: int) -> None:
        """Raise ValueError when step's files do not match its manifest (bit flips, a changed,
        missing or extra file), or when it has none although other steps do."""
        d = self.step_dir(step)
        if not (self.local and d.is_dir()):
            return
        manifest = d / CHECKSUMS
        if not manifest.is_file():
            if any((self.step_dir(s) / CHECKSUMS).is_file() for s in self.steps() if s != step):
                raise ValueError(f"no {CHECKSUMS} (killed before its checksums were written)")
            return   # a run dir from before the manifests: nothing to check against
        try:
            expected = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest} is unreadable ({type(e).__name__})") from None
        actual = directory_digests(d)
        bad = sorted(f for f in set(expected) | set(actual) if expected.get(f) != actual.get(f))
        if bad:
            raise ValueError(f"sha256 mismatch in {len(bad)} file(s), e.g. {d / bad[0]} "
                             "(corrupt data)")

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
        Unreadable checkpoints (truncated, checksum mismatch) are skipped with a warning and the
        next-older one is tried. An unreadable input of a checkpoint (`iterator_for` raising
        :class:`ResumeInputError`) raises :class:`RunDirError` instead: the checkpoint is fine.
        """
        gone: set[tuple[int, str]] = set()   # mid-update (round, method) whose log was deleted
        for step in reversed(self.steps()):
            try:
                self.verify(step)
                run_state = RunState.from_meta(self.restore_meta(step))
            except Exception as e:  # noqa: BLE001 — any unreadable checkpoint means "older one"
                self._warn_unreadable(step, e)
                continue
            key = (run_state.round, run_state.method)
            if run_state.phase == "update" and key in gone:
                continue
            data_iter = None
            if iterator_for is not None:
                try:
                    data_iter = iterator_for(run_state)
                except ResumeInputError as e:
                    if e.gone:
                        gone.add(key)
                        warnings.warn(RunWarning(
                            f"checkpoint {self.directory}/{step} (mid-update of round "
                            f"{key[0]}, {key[1]}) needs {e.path}, which is gone; falling back "
                            "to an older checkpoint to re-log the round"))
                        continue
                    raise RunDirError(self._input_message(step, run_state, e)) from e
            try:
                state, meta = self.restore(step, abstract_state_for(run_state), data_iter)
                jax.block_until_ready(state)
                return Restored(step, state, run_state, meta, data_iter)
            except Exception as e:  # noqa: BLE001
                self._warn_unreadable(step, e)
        return None

    def _warn_unreadable(self, step: int, e: BaseException) -> None:
        why = " ".join(str(e).split())[:300]   # one line, whatever the library's message
        warnings.warn(RunWarning(f"checkpoint {self.directory}/{step} is unreadable "
                                 f"({type(e).__name__}: {why}); falling back to an older one"))

    def _input_message(self, step: int, rs: RunState, e: ResumeInputError) -> str:
        older = []
        for s in self.steps():
            if s < step:
                try:
                    o = RunState.from_meta(self.restore_meta(s))
                except Exception:  # noqa: BLE001 — an unreadable one cannot be resumed from
                    continue
                if not (o.phase == "update" and (o.round, o.method) == (rs.round, rs.method)):
                    older.append(s)
        then = (f"resumes from checkpoint {older[-1]}" if older
                else "restarts from round 0, as no kept checkpoint predates this update")
        cause = str(e.cause).splitlines()[0] if e.cause is not None else "unreadable"
        return (f"cannot resume checkpoint {self.directory}/{step} (mid-update of round "
                f"{rs.round}, method {rs.method}): its round log is unreadable: {cause}; every "
                f"checkpoint is kept. To recover, restore that file from a backup, or delete "
                f"{e.path} and re-run (the run then {then} and logs round {rs.round} again)")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# --- the run directory: writable, and one config per run ----------------------------------------

CONFIG_FILE = "config.json"
# Fields that change where or how a run reports, not what it computes: never a mismatch.
OUTPUT_ONLY_FIELDS = ("run_dir", "checkpoint.resume_mismatch", "outputs.", "distributed.",
                      "study.", "demo.", "train.compile_cache_dir", "train.compile_cache_min_secs",
                      "model.weight_cache_dir",
                      "recommend.",
                      "logs.dir", "logs.action", "logs.input", "logs.output", "logs.round",
                      "logs.overwrite")


def check_writable(directory: os.PathLike | str, what: str = "config.run_dir") -> None:
    """Create `directory`, then create + write + fsync + delete a probe file in it; RunDirError
    naming the path and the OS reason (read-only, full, no permission) otherwise."""
    d = pathlib.Path(directory)
    probe = d / f".abpo_write_probe.{os.getpid()}.{jax.process_index()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        reason = e.strerror or type(e).__name__
        raise RunDirError(f"{what}={str(directory)!r} is not writable ({reason}: "
                          f"{e.filename or d}); free space there or choose another "
                          f"{what.removeprefix('config.')}") from None


def _flat(node: Any) -> dict[str, Any]:
    return dict(flat_items(node))


def config_json(config: Any) -> dict:
    """The config as plain JSON data (tuples as lists), as stored in `config.json`."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _computed_fields(config: dict) -> dict:
    """The config without its output-only fields (what a run's results depend on)."""
    return {k: v for k, v in _flat(config).items() if not _output_only(k)}


def config_meta(config: Any) -> dict:
    """What a checkpoint's meta records of the run's config: the config and a sha256 of the
    fields that are not output-only (equal fingerprints = the same computation)."""
    data = config_json(config)
    digest = hashlib.sha256(json.dumps(_computed_fields(data), sort_keys=True).encode())
    return {"config": data, "config_sha256": digest.hexdigest()}


def checkpoint_config(ckpt_dir: str) -> tuple[dict, str] | None:
    """(config, where) from the newest local checkpoint whose meta records one; None if none.
    Reads the meta JSON directly (no Orbax manager): this runs before any work."""
    root = pathlib.Path(ckpt_dir)
    if "://" in ckpt_dir or not root.is_dir():
        return None
    for step in sorted((p for p in root.iterdir() if p.name.isdigit()),
                       key=lambda p: int(p.name), reverse=True):
        try:
            meta = json.loads((step / "meta" / "metadata").read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue   # an unreadable checkpoint: the next-older one speaks for the run
        if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            return meta["config"], f"checkpoint {step}"
    return None


def _output_only(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in OUTPUT_ONLY_FIELDS)


def config_differences(stored: dict, current: dict) -> list[str]:
    """`field: stored -> current` for every differing field that is not output-only."""
    a, b = _flat(stored), _flat(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if _output_only(key):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def _holds_a_run(run_dir: pathlib.Path, ckpt_dir: str) -> bool:
    """A run has left state here: checkpoints, metrics or round logs."""
    ck = pathlib.Path(ckpt_dir)
    return ((run_dir / "metrics.jsonl").exists() or (run_dir / "logs").is_dir()
            or ("://" not in ckpt_dir and ck.is_dir()
                and any(p.name.isdigit() for p in ck.iterdir())))


def check_run_config(config: Any) -> None:
    """Refuse a run dir that holds a run of another config; record this config otherwise.

    `<run_dir>/config.json` is written (atomically, process 0) when the run dir holds no run yet
    or the stored config matches; a mismatch raises RunDirError naming the differing fields,
    unless `config.checkpoint.resume_mismatch='allow'` (then the new config is recorded, with a
    warning).
    """
    run_dir = pathlib.Path(config.run_dir)
    path = run_dir / CONFIG_FILE
    current = config_json(config)
    allow = config.checkpoint.get("resume_mismatch", "refuse") == "allow"
    ckpt_dir = checkpoint_dir(config)
    # config.json deleted or damaged: the checkpoints' own record of the config decides
    from_ckpt = (checkpoint_config(ckpt_dir) if _holds_a_run(run_dir, ckpt_dir)
                 and not _readable_config(path) else None)
    if (path.is_file() or from_ckpt) and _holds_a_run(run_dir, ckpt_dir):
        try:
            if from_ckpt is not None:
                stored, where = from_ckpt
            else:
                stored, where = json.loads(path.read_text()), str(path)
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            if not allow:
                raise RunDirError(f"{path} is unreadable ({type(e).__name__}), so this run's "
                                  "config is unknown; pass "
                                  "--config.checkpoint.resume_mismatch=allow to resume it "
                                  "under the given config, or use another run_dir") from None
            stored, where = None, str(path)
        diff = [] if stored is None else config_differences(stored, current)
        if diff and not allow:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise RunDirError(
                f"config.run_dir={str(run_dir)!r} holds a run with another config ({shown}; "
                f"recorded in {where}); "
                "use another run_dir, or pass --config.checkpoint.resume_mismatch=allow to "
                "resume it under this config")
        if diff:
            warnings.warn(RunWarning(f"{run_dir}: resuming under a changed config "
                                     f"({'; '.join(diff)})"))
        if not diff and stored is not None and from_ckpt is None:
            return   # config.json already says it (else: rewritten from the checkpoints' record)
    if is_main_process():
        atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True))


def _readable_config(path: pathlib.Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _as_config_value(stored: Any, like: Any) -> Any:
    """A config.json value in the type of the field it goes to (JSON has lists, not tuples)."""
    if isinstance(like, tuple) and isinstance(stored, list):
        inner = like[0] if like else None
        return tuple(_as_config_value(v, inner) for v in stored)
    if isinstance(like, float) and isinstance(stored, int) and not isinstance(stored, bool):
        return float(stored)
    return stored


def adopt_run_config(config: Any, ignore: Sequence[str] = ()) -> Any:
    """For commands that read a run (eval, recommend): `config` with every computed field set
    to what `config.run_dir` was trained with (its config.json, else its checkpoints' meta), so
    `--config.run_dir=<run>` alone restores into the right model and data. Output-only fields
    and those under `ignore` (e.g. "recommend.") stay as given. Prints one line naming the
    fields taken from the run; returns `config` unchanged when the run records no config."""
    run_dir = pathlib.Path(config.run_dir)
    path = run_dir / CONFIG_FILE
    stored = (json.loads(path.read_text()), str(path)) if _readable_config(path) else \
        checkpoint_config(checkpoint_dir(config))
    if stored is None:
        return config
    current = _flat(config_json(config))
    taken = []
    config = config.copy_and_resolve_references() if hasattr(config, "unlock") else config
    with config.unlocked() if hasattr(config, "unlocked") else _nullcontext():
        for key, value in _flat(stored[0]).items():
            if _output_only(key) or any(key.startswith(i) for i in ignore) \
                    or key not in current or current[key] == value:
                continue
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[leaf] = _as_config_value(value, node[leaf])
            taken.append(key)
    if taken and is_main_process():
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        print(f"using the config {run_dir} was trained with ({stored[1]}): {shown} "
              "differ from the given config", flush=True)
    return config


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def method_round(run_state: RunState, methods: Sequence[str], method: str) -> int:
    """The last round `method` finished at `run_state` (methods update one after another in
    `methods` order within each round; a method mid-update has finished the round before)."""
    k = run_state.round
    if run_state.phase in ("start", "sft") or k == 0 or method not in methods \
            or run_state.method not in methods:
        return k if run_state.phase == "done" else 0
    i, j = methods.index(method), methods.index(run_state.method)
    return k if i < j or (i == j and run_state.phase == "done") else k - 1


def method_progress(run_state: RunState, methods: Sequence[str], method: str) -> str:
    """How far `method`'s params in a checkpoint at `run_state` got, in words."""
    if (run_state.phase == "update" and method == run_state.method
            and method in methods):
        return f"mid-update of round {run_state.round} (step {run_state.step})"
    done = method_round(run_state, methods, method)
    return f"after round {done}" + (" (the SFT warm start)" if done == 0 else "")


def weights_line(restored: "Restored | None", directory: str, method: str,
                 methods: Sequence[str], untrained: str) -> str:
    """One line naming the weights a command uses: the checkpoint (step, round, phase) it
    restored for `method`, or `untrained` when there is none."""
    if restored is None:
        return f"weights: {untrained} (no verified checkpoint in {directory})"
    rs = restored.run_state
    where = f"checkpoint {restored.step} in {directory}"
    if "methods" not in restored.state:
        return f"weights: {where}, mid-SFT (step {rs.step}), the same for every method"
    return f"weights: {method} {method_progress(rs, methods, method)}, from {where}"


def prepare_run_dir(config: Any, record_config: bool = True) -> None:
    """Before any work: the run dir (and a local checkpoint dir) are writable; with
    `record_config`, the stored config matches (`check_run_config`)."""
    check_writable(config.run_dir)
    ck = checkpoint_dir(config)
    if "://" not in ck:
        check_writable(ck, "config.checkpoint.dir" if config.checkpoint.dir else "config.run_dir")
    if record_config:
        check_run_config(config)
