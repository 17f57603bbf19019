"""`abpo-jax logs`: inspect, validate, import and export bandit-log rounds.

    abpo-jax logs --config.run_dir=runs/tiny                # every method's rounds, checksums
    abpo-jax logs --config.logs.action=validate --config.logs.input=prod.jsonl
    abpo-jax logs --config.logs.action=import --config.logs.input=prod.csv --config.logs.round=1
    abpo-jax logs --config.logs.action=export --config.logs.round=1 --config.logs.output=r1.jsonl
    abpo-jax logs --config.logs.action=clean                # remove interrupted writes

Logs live in `config.logs.dir` (default `<run_dir>/logs`); a run's are per method,
`<run_dir>/logs/<method>/round_*`, which the summary lists method by method (export needs one
method: `--config.logs.dir=<run_dir>/logs/<method>`). An import goes into the round its
records name (`--config.logs.round=N` to choose), refuses a file already imported and a round
already committed (`--config.logs.overwrite=True` replaces it). Every bad input is one line on
stderr and a non-zero exit, checked before any work where it can be.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, NoReturn

from abpo_jax.data import log_files, log_store
from abpo_jax.data.logs import LogValidationError

ACTIONS = ("summary", "validate", "import", "export", "clean")


def _field(config: Any, name: str, default: Any) -> Any:
    logs = config.get("logs", None)
    return logs.get(name, default) if logs is not None else default


def logs_dir(config: Any) -> pathlib.Path:
    """`config.logs.dir`, or `<run_dir>/logs` when empty."""
    return pathlib.Path(_field(config, "dir", "") or pathlib.Path(config.run_dir) / "logs")


def method_stores(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """Round stores under `directory`: {"": directory} when it holds rounds itself, else
    {method: directory/method} for each subdirectory that does (a run's `logs/<method>/`)."""
    if log_store.list_rounds(directory):
        return {"": directory}
    if not directory.is_dir():
        return {}
    return {sub.name: sub for sub in sorted(directory.iterdir())
            if sub.is_dir() and log_store.list_rounds(sub)}


def _summary(directory: pathlib.Path) -> None:
    stores = method_stores(directory)
    if not stores:
        print(f"{directory}: no committed rounds (neither {directory}/round_* nor "
              f"{directory}/<method>/round_*)")
        return
    for method, store in stores.items():
        if method:
            print(f"\n{method}  ({store})")
        _summary_table(store)


def _summary_table(directory: pathlib.Path) -> None:
    rounds = log_store.list_rounds(directory)
    print(f"{'round':<14}{'records':>9}{'positive':>10}{'quarantined':>13}  revision  checksums")
    for path in rounds:
        try:
            m = log_store.open_round(path).manifest
            status = "ok"
        except LogValidationError as e:
            m, status = json.loads((path / log_store.MANIFEST).read_text()), f"BAD: {e}"
        print(f"{path.name:<14}{m['num_records']:>9}{m['num_positive']:>10}"
              f"{m['num_quarantined']:>13}  {m['policy_revision']}  {status}")


def _fail(action: str, message: str) -> NoReturn:
    sys.exit(f"abpo-jax logs {action}: {message}")


def _check_input(action: str, source: str) -> pathlib.Path:
    """The input file, or exit with one line saying what is wrong with it."""
    if not source:
        _fail(action, "needs --config.logs.input=FILE (.jsonl/.csv)")
    path = pathlib.Path(source)
    if path.is_dir():
        _fail(action, f"input {path} is a directory; give a .jsonl or .csv file")
    if not path.is_file():
        _fail(action, f"input file not found: {path}")
    if path.suffix.lower() not in log_files.READERS:
        _fail(action, f"input {path}: unknown log format {path.suffix!r}; use .jsonl or .csv")
    if not os.access(path, os.R_OK):
        _fail(action, f"input {path} is not readable (permissions)")
    return path


def _unwritable(path: pathlib.Path) -> str:
    """Why files cannot be created in directory `path` (or where it would be made); '' if they can.

    Probes with a real temporary file: permission bits say nothing for root or a read-only mount.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        return f"cannot create files in {existing} ({e.strerror})"
    return ""


def _check_output(action: str, output: str) -> pathlib.Path:
    if not output:
        _fail(action, "needs --config.logs.output=FILE (.jsonl/.csv)")
    path = pathlib.Path(output)
    if path.suffix.lower() not in log_files.EXPORT_SUFFIXES:
        _fail(action, f"output {path}: unknown export format {path.suffix!r}; use .jsonl or .csv")
    if path.is_dir():
        _fail(action, f"output {path} is a directory; give a file name")
    if not path.parent.is_dir():
        _fail(action, f"output directory {path.parent} does not exist")
    problem = _unwritable(path.parent)
    if problem:
        _fail(action, f"cannot write {path}: {problem}")
    return path


def _records_round(config: Any, source: pathlib.Path, directory: pathlib.Path) -> int:
    """Round to import into: `logs.round`, else the records' own, else the next free one."""
    index = int(_field(config, "round", -1))
    if index >= 0:
        return index
    index = log_files.peek_round(source)
    if index is not None:
        return index
    rounds = log_store.list_rounds(directory)
    return int(rounds[-1].name.removeprefix(log_store.ROUND_PREFIX)) + 1 if rounds else 0


def _export_round(config: Any, action: str, directory: pathlib.Path) -> pathlib.Path:
    rounds = log_store.list_rounds(directory)
    methods = [m for m in method_stores(directory) if m]
    if not rounds and methods:
        _fail(action, f"{directory} holds the logs of {len(methods)} method(s) "
              f"({', '.join(methods)}); choose one with --config.logs.dir={directory}/"
              f"{methods[0]}")
    names = ", ".join(p.name.removeprefix(log_store.ROUND_PREFIX).lstrip("0") or "0"
                      for p in rounds)
    if not rounds:
        _fail(action, f"no committed rounds in {directory} (set --config.logs.dir)")
    index = int(_field(config, "round", -1))
    path = rounds[-1] if index < 0 else log_store.round_path(directory, index)
    if path not in rounds:
        _fail(action, f"no committed round {index} in {directory} (committed: {names})")
    return path


def _keep_quarantine(config: Any, source: pathlib.Path) -> pathlib.Path:
    """Where `validate` writes a file's quarantined records: `--config.logs.output` (.jsonl)
    when given, else the temp dir; never beside the input (validation changes nothing there)."""
    output = str(_field(config, "output", ""))
    if output:
        path = pathlib.Path(output)
        if path.suffix.lower() != ".jsonl":
            _fail("validate", f"output {path}: the quarantine is written as JSON lines; "
                  "give a .jsonl file")
        problem = _unwritable(path.parent)
        if problem:
            _fail("validate", f"cannot write {path}: {problem}")
        return path
    name = source.with_suffix(".quarantine.jsonl").name
    return pathlib.Path(tempfile.gettempdir()) / f"abpo_jax-validate-{name}"


def main(config: Any) -> None:
    """Run `config.logs.action` (see the module docstring)."""
    action = _field(config, "action", "summary")
    if action not in ACTIONS:
        _fail(action, f"config.logs.action={action!r}; choose one of {', '.join(ACTIONS)}")
    directory = logs_dir(config)
    kwargs = dict(catalogue=int(_field(config, "num_items", 0)) or None,
                  num_users=int(_field(config, "num_users", 0)) or None,
                  max_bad_fraction=float(_field(config, "max_bad_fraction", 0.05)),
                  max_record_bytes=int(_field(config, "max_record_bytes",
                                              log_store.MAX_RECORD_BYTES)),
                  records_per_shard=int(_field(config, "records_per_shard", 100_000)))
    # Every check that needs no data runs first, so a bad path is one line before any work.
    if action in ("validate", "import"):
        source = _check_input(action, str(_field(config, "input", "")))
    problem = _unwritable(directory) if action in ("import", "clean") else ""
    if problem:
        _fail(action, f"cannot write the logs directory {directory}: {problem}")
    if action == "export":
        output = _check_output(action, str(_field(config, "output", "")))
        round_dir = _export_round(config, action, directory)
    try:
        if action == "summary":
            _summary(directory)
        elif action == "clean":
            removed = log_store.clean_incomplete(directory)
            print(f"removed {len(removed)} incomplete write(s)" +
                  "".join(f"\n  {p}" for p in removed))
        elif action == "validate":
            # A dry-run import into a scratch directory, checked against the committed rounds.
            index = _records_round(config, source, directory)
            kept = _keep_quarantine(config, source)
            with tempfile.TemporaryDirectory() as scratch:
                manifest = log_files.import_log(
                    source, scratch, index, committed_dir=directory, rejected_path=kept,
                    **kwargs)
                if manifest["num_quarantined"]:
                    shutil.copy(log_store.round_path(scratch, index) / log_store.QUARANTINE, kept)
                    print(f"quarantined records: {kept}")
            committed = log_store.list_rounds(directory)
            against = (f"no record or file already committed in {directory}" if committed else
                       f"not checked against committed rounds: {directory} holds none "
                       "(--config.logs.dir or --config.run_dir names the store to check)")
            print(f"{source}: {manifest['num_records']} record(s) valid as round {index}, "
                  f"{manifest['num_quarantined']} quarantined; {against}")
        elif action == "import":
            index = _records_round(config, source, directory)
            log_files.import_log(source, directory, index,
                                 overwrite=bool(_field(config, "overwrite", False)), **kwargs)
            print(f"committed {log_store.round_path(directory, index)}")
        elif action == "export":
            print(f"wrote {log_files.export_log(round_dir, output)} records to {output}")
    except (LogValidationError, FileExistsError, ValueError, OSError) as e:
        # OSError: a disk that fills or a file that vanishes mid-way; one line, no traceback.
        _fail(action, str(e) if not isinstance(e, OSError) or not e.filename else
              f"{e.strerror}: {e.filename}")
