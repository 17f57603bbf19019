"""`abpo-jax logs`: inspect, validate, import and export bandit-log rounds.

    abpo-jax logs                                           # list rounds, verify checksums
    abpo-jax logs --config.logs.action=validate --config.logs.input=prod.jsonl
    abpo-jax logs --config.logs.action=import --config.logs.input=prod.csv --config.logs.round=1
    abpo-jax logs --config.logs.action=export --config.logs.round=1 --config.logs.output=r1.jsonl
    abpo-jax logs --config.logs.action=clean                # remove interrupted writes

Logs live in `config.logs.dir` (default `<run_dir>/logs`).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile
from typing import Any

from abpo_jax.data import log_store
from abpo_jax.data.logs import LogValidationError

ACTIONS = ("summary", "validate", "import", "export", "clean")


def _field(config: Any, name: str, default: Any) -> Any:
    logs = config.get("logs", None)
    return logs.get(name, default) if logs is not None else default


def logs_dir(config: Any) -> pathlib.Path:
    """`config.logs.dir`, or `<run_dir>/logs` when empty."""
    return pathlib.Path(_field(config, "dir", "") or pathlib.Path(config.run_dir) / "logs")


def _summary(directory: pathlib.Path) -> None:
    rounds = log_store.list_rounds(directory)
    if not rounds:
        print(f"{directory}: no committed rounds")
        return
    print(f"{'round':<14}{'records':>9}{'positive':>10}{'quarantined':>13}  revision  checksums")
    for path in rounds:
        try:
            m = log_store.open_round(path).manifest
            status = "ok"
        except LogValidationError as e:
            m, status = json.loads((path / log_store.MANIFEST).read_text()), f"BAD: {e}"
        print(f"{path.name:<14}{m['num_records']:>9}{m['num_positive']:>10}"
              f"{m['num_quarantined']:>13}  {m['policy_revision']}  {status}")


def _round_index(config: Any, directory: pathlib.Path, *, new: bool) -> int:
    index = int(_field(config, "round", -1))
    if index >= 0:
        return index
    rounds = log_store.list_rounds(directory)
    last = int(rounds[-1].name.removeprefix(log_store.ROUND_PREFIX)) if rounds else -1
    if not new and last < 0:
        sys.exit(f"abpo-jax logs: no committed rounds in {directory}")
    return last + 1 if new else last


def main(config: Any) -> None:
    """Run `config.logs.action` (see the module docstring)."""
    action = _field(config, "action", "summary")
    if action not in ACTIONS:
        sys.exit(f"abpo-jax logs: config.logs.action={action!r}; choose one of {', '.join(ACTIONS)}")
    directory = logs_dir(config)
    source = _field(config, "input", "")
    kwargs = dict(catalogue=int(_field(config, "num_items", 0)) or None,
                  max_bad_fraction=float(_field(config, "max_bad_fraction", 0.05)),
                  records_per_shard=int(_field(config, "records_per_shard", 100_000)))
    if action in ("validate", "import") and not source:
        sys.exit(f"abpo-jax logs: action {action} needs --config.logs.input=FILE (.jsonl/.csv)")
    try:
        if action == "summary":
            _summary(directory)
        elif action == "clean":
            removed = log_store.clean_incomplete(directory)
            print(f"removed {len(removed)} incomplete write(s)" +
                  "".join(f"\n  {p}" for p in removed))
        elif action == "validate":
            # A dry-run ingest into a scratch directory; the quarantine file is kept if bad.
            with tempfile.TemporaryDirectory() as scratch:
                manifest = log_store.import_log(source, scratch, 0, **kwargs)
                if manifest["num_quarantined"]:
                    kept = pathlib.Path(source).with_suffix(".quarantine.jsonl")
                    shutil.copy(log_store.round_path(scratch, 0) / log_store.QUARANTINE, kept)
                    print(f"quarantined records: {kept}")
        elif action == "import":
            index = _round_index(config, directory, new=True)
            log_store.import_log(source, directory, index, **kwargs)
            print(f"committed {log_store.round_path(directory, index)}")
        elif action == "export":
            output = _field(config, "output", "")
            if not output:
                sys.exit("abpo-jax logs: export needs --config.logs.output=FILE (.jsonl/.csv)")
            path = log_store.round_path(directory, _round_index(config, directory, new=False))
            print(f"wrote {log_store.export_log(path, output)} records to {output}")
    except (LogValidationError, FileExistsError, ValueError) as e:
        sys.exit(f"abpo-jax logs {action}: {e}")
