"""Round directories of bandit logs: validated streaming ingest, ArrayRecord shards, manifest.

Layout of one round (`<logs_dir>/round_00003/`):

    shard-00000.array_record ...   validated records (`LogRecord.to_bytes`), `group_size:1`
    quarantine.jsonl               every rejected record: position, reason, detail, raw
    manifest.json                  counts, per-shard sha256, schema version, policy revision,
                                   quarantine summary -- written last: the commit marker

A round is written into `<logs_dir>/.tmp-round_00003-<pid>/`, every file fsynced, then the
directory is renamed into place (atomic on POSIX). A crash at any point leaves either no round or
a `.tmp-*` directory that `list_rounds` ignores and `clean_incomplete` (run by every ingest)
removes. One writer per logs directory. Opening a round verifies its manifest and checksums.

Ingest streams: memory is bounded by one shard writer plus 8 bytes per request id (for the
duplicate check), so a 1M-record log takes a few MB beyond the interpreter.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import shutil
from collections import Counter
from typing import Any, Callable, Collection, Iterable, Iterator

import numpy as np
from array_record.python import array_record_module

from abpo_jax.data.logs import (DUPLICATE_REQUEST, FIELDS, SCHEMA_VERSION, BadRecord, LogRecord,
                                LogValidationError, validate_record)

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
MANIFEST_VERSION = 1
ROUND_PREFIX = "round_"
TMP_PREFIX = ".tmp-"

PathLike = str | os.PathLike


def round_path(logs_dir: PathLike, round_index: int) -> pathlib.Path:
    """Directory of round `round_index` under `logs_dir`."""
    return pathlib.Path(logs_dir) / f"{ROUND_PREFIX}{round_index:05d}"


class SeenIds:
    """Set of request ids in ~8 bytes each: 64-bit hashes, a sorted array plus a small buffer.

    A false "duplicate" needs a 64-bit hash collision (p ~ n^2 / 2^65, ~3e-8 for 1M ids).
    """

    def __init__(self, buffer_size: int = 16384):
        self._sorted = np.empty(0, np.uint64)
        self._recent: set[int] = set()
        self._buffer_size = buffer_size

    @staticmethod
    def _hash(request_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")

    def add(self, request_id: str) -> bool:
        """Insert; return False when the id was already present."""
        h = self._hash(request_id)
        if h in self._recent:
            return False
        i = int(np.searchsorted(self._sorted, np.uint64(h)))
        if i < len(self._sorted) and int(self._sorted[i]) == h:
            return False
        self._recent.add(h)
        if len(self._recent) >= self._buffer_size:
            merged = np.concatenate([self._sorted, np.fromiter(self._recent, np.uint64)])
            self._sorted = np.sort(merged)
            self._recent.clear()
        return True


def _sha256(path: pathlib.Path, fsync: bool = False) -> str:
    """sha256 of `path` (streamed in 1 MiB chunks); optionally fsync it first."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(raw: Any) -> Any:
    if isinstance(raw, LogRecord):
        return raw.to_dict()
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    try:
        json.dumps(raw, allow_nan=True)
        return raw
    except (TypeError, ValueError):
        return repr(raw)


class _ShardedWriter:
    """Appends record bytes to numbered ArrayRecord shards of at most `records_per_shard`."""

    def __init__(self, directory: pathlib.Path, records_per_shard: int):
        self.directory = directory
        self.records_per_shard = records_per_shard
        self.shards: list[dict[str, Any]] = []
        self._writer = None
        self._count = 0

    def write(self, data: bytes) -> None:
        if self._writer is None:
            name = f"shard-{len(self.shards):05d}.array_record"
            self._writer = array_record_module.ArrayRecordWriter(
                str(self.directory / name), "group_size:1")
            self.shards.append({"path": name, "num_records": 0})
            self._count = 0
        self._writer.write(data)
        self._count += 1
        if self._count >= self.records_per_shard:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            shard = self.shards[-1]
            shard["num_records"] = self._count
            shard["sha256"] = _sha256(self.directory / shard["path"], fsync=True)


def clean_incomplete(logs_dir: PathLike) -> list[pathlib.Path]:
    """Remove interrupted writes (`.tmp-*`) and round dirs without a manifest; return them."""
    logs_dir = pathlib.Path(logs_dir)
    removed = []
    if not logs_dir.is_dir():
        return removed
    for p in sorted(logs_dir.iterdir()):
        incomplete_round = p.name.startswith(ROUND_PREFIX) and not (p / MANIFEST).is_file()
        if p.is_dir() and (p.name.startswith(TMP_PREFIX) or incomplete_round):
            shutil.rmtree(p)
            removed.append(p)
    return removed


def list_rounds(logs_dir: PathLike) -> list[pathlib.Path]:
    """Committed round directories (those holding a manifest), in round order."""
    logs_dir = pathlib.Path(logs_dir)
    if not logs_dir.is_dir():
        return []
    return sorted(p for p in logs_dir.iterdir()
                  if p.is_dir() and p.name.startswith(ROUND_PREFIX) and (p / MANIFEST).is_file())


def format_summary(manifest: dict[str, Any]) -> str:
    """One human-readable paragraph: counts, then quarantined counts per reason."""
    lines = [f"{manifest.get('source', '?')}: {manifest['num_input']} records read, "
             f"{manifest['num_records']} kept, {manifest['num_quarantined']} quarantined"]
    lines += [f"  {reason:<28} {count}" for reason, count in sorted(manifest["quarantine"].items())]
    return "\n".join(lines)


def ingest(items: Iterable[tuple[str, Any]], logs_dir: PathLike, round_index: int, *,
           catalogue: int | Collection[int] | None = None, num_users: int | None = None,
           max_bad_fraction: float = 0.05, records_per_shard: int = 100_000,
           source: str = "", overwrite: bool = False,
           report: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Validate a stream of raw records and commit the good ones as round `round_index`.

    Args:
      items: (source position, raw record) pairs; raw = bytes | JSON text | dict | LogRecord.
      catalogue / num_users: known item ids / user count (see `validate_record`).
      max_bad_fraction: raise LogValidationError (and commit nothing) when
        quarantined / read exceeds it; the quarantine file is then kept under
        `<logs_dir>/rejected/` and named in the error.
      records_per_shard: ArrayRecord shard size.
    Returns:
      The manifest (also written to `<round>/manifest.json`).
    """
    logs_dir = pathlib.Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    clean_incomplete(logs_dir)
    final = round_path(logs_dir, round_index)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already holds a committed round; pass overwrite=True "
                              "to replace it")
    tmp = logs_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        manifest = _write_round_files(
            items, tmp, catalogue=catalogue, num_users=num_users,
            records_per_shard=records_per_shard)
        manifest.update(round=round_index, source=source)
        bad = manifest["num_quarantined"] / max(manifest["num_input"], 1)
        if bad > max_bad_fraction:
            rejected = logs_dir / "rejected"
            rejected.mkdir(exist_ok=True)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            kept = rejected / f"{final.name}-{stamp}.{QUARANTINE}"
            shutil.move(tmp / QUARANTINE, kept)
            raise LogValidationError(
                f"{source or 'log'}: {manifest['num_quarantined']} of {manifest['num_input']} "
                f"records are bad ({bad:.1%} > logs.max_bad_fraction={max_bad_fraction:.1%}); "
                f"round {round_index} not written. Reasons: {manifest['quarantine']}. "
                f"Quarantined records: {kept}")
        _commit(tmp, final, manifest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report is not None:
        report(format_summary(manifest))
    return manifest


def _write_round_files(items: Iterable[tuple[str, Any]], directory: pathlib.Path, *,
                       catalogue, num_users, records_per_shard: int) -> dict[str, Any]:
    shards = _ShardedWriter(directory, records_per_shard)
    seen = SeenIds()
    reasons: Counter[str] = Counter()
    revisions: Counter[str] = Counter()
    num_input = num_positive = 0
    with open(directory / QUARANTINE, "w") as quarantine:
        for position, raw in items:
            num_input += 1
            try:
                record = validate_record(raw, catalogue=catalogue, num_users=num_users)
                if not seen.add(record.request_id):
                    raise BadRecord(DUPLICATE_REQUEST,
                                    f"request_id {record.request_id!r} seen earlier")
            except BadRecord as e:
                reasons[e.reason] += 1
                quarantine.write(json.dumps({"position": position, "reason": e.reason,
                                             "detail": e.detail, "raw": _jsonable(raw)}) + "\n")
                continue
            shards.write(record.to_bytes())
            revisions[record.policy_revision] += 1
            num_positive += record.outcome
        shards.close()
        quarantine.flush()
        os.fsync(quarantine.fileno())
    num_records = sum(s["num_records"] for s in shards.shards)
    return {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": SCHEMA_VERSION,
        "encoding": "json-utf8",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "num_input": num_input,
        "num_records": num_records,
        "num_positive": num_positive,
        "num_quarantined": num_input - num_records,
        "quarantine": dict(sorted(reasons.items())),
        "quarantine_file": QUARANTINE,
        "policy_revision": revisions.most_common(1)[0][0] if revisions else None,
        "policy_revisions": dict(revisions),
        "shards": shards.shards,
    }


def _commit(tmp: pathlib.Path, final: pathlib.Path, manifest: dict[str, Any],
            overwrite: bool) -> None:
    """Write the manifest (the commit marker) and rename the directory into place."""
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists() and overwrite:
        trash = final.with_name(f"{TMP_PREFIX}trash-{final.name}-{os.getpid()}")
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def write_round(records: Iterable[LogRecord | dict[str, Any]], logs_dir: PathLike,
                round_index: int, *, source: str = "generated", **kwargs: Any) -> dict[str, Any]:
    """`ingest` for in-memory records; positions are `<source>#<index>`."""
    items = ((f"{source}#{i}", r) for i, r in enumerate(records))
    return ingest(items, logs_dir, round_index, source=source, **kwargs)


@dataclasses.dataclass(frozen=True)
class RoundLog:
    """A committed, verified round: its directory and manifest."""

    path: pathlib.Path
    manifest: dict[str, Any]

    @property
    def shard_paths(self) -> list[pathlib.Path]:
        return [self.path / s["path"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return self.manifest["num_records"]

    def __iter__(self) -> Iterator[LogRecord]:
        """Stream the records shard by shard (bounded memory)."""
        for shard in self.shard_paths:
            reader = array_record_module.ArrayRecordReader(str(shard))
            try:
                for start in range(0, reader.num_records(), 4096):
                    stop = min(start + 4096, reader.num_records())
                    for data in reader.read(range(start, stop)):
                        yield LogRecord.from_bytes(data)
            finally:
                reader.close()


def open_round(path: PathLike, *, verify: bool = True) -> RoundLog:
    """Open a committed round; with `verify`, check manifest, shard sizes and sha256 checksums."""
    path = pathlib.Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise LogValidationError(f"{path}: no {MANIFEST}; the round is incomplete (interrupted "
                                 "write?) and must be re-written")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise LogValidationError(f"{manifest_path}: corrupt manifest ({e})") from None
    for key, expected in (("manifest_version", MANIFEST_VERSION),
                          ("schema_version", SCHEMA_VERSION)):
        if manifest.get(key) != expected:
            raise LogValidationError(f"{manifest_path}: {key}={manifest.get(key)!r}, this "
                                     f"reader handles {expected}")
    if verify:
        for shard in manifest["shards"]:
            shard_path = path / shard["path"]
            if not shard_path.is_file():
                raise LogValidationError(f"{manifest_path}: shard {shard_path} is missing")
            digest = _sha256(shard_path)
            if digest != shard["sha256"]:
                raise LogValidationError(f"{shard_path}: sha256 {digest} does not match the "
                                         f"manifest's {shard['sha256']} (corrupt shard)")
    return RoundLog(path, manifest)


# --- import / export -------------------------------------------------------------------------

def read_jsonl(path: PathLike) -> Iterator[tuple[str, bytes]]:
    """(`file:line`, raw line bytes) for each non-blank line; decoding is left to validation."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{line_no}", line


def _parse_cell(kind: str, text: str) -> Any:
    """CSV text -> typed value; unparseable text is returned as is (validation names it)."""
    text = text.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "int_list":
            if text.startswith("["):
                return json.loads(text)
            return [int(x) for x in text.replace(";", " ").replace(",", " ").split()]
    except ValueError:
        return text
    return text


def read_csv(path: PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, record dict) per CSV row. Lists: `[1,2]` or `1 2` / `1;2`; column
    `extras` may hold a JSON object; other unknown columns are kept as string extras."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            record: dict[str, Any] = {}
            for key, value in row.items():
                if key is None or value is None:
                    continue   # short row: the field counts as missing
                if value == "" and FIELDS.get(key) != "int_list":
                    continue   # empty scalar cell: missing; an empty list cell is []
                if key in FIELDS:
                    record[key] = _parse_cell(FIELDS[key], value)
                elif key == "schema_version":
                    record[key] = _parse_cell("int", value)
                elif key == "extras":
                    try:
                        record.update(json.loads(value))
                    except (json.JSONDecodeError, TypeError):
                        record[key] = value
                else:
                    record[key] = value
            yield f"{path}:{reader.line_num}", record


def import_log(path: PathLike, logs_dir: PathLike, round_index: int,
               **kwargs: Any) -> dict[str, Any]:
    """Validate and ingest a user's JSONL (`.jsonl`/`.json`) or CSV (`.csv`) log as a round."""
    suffix = pathlib.Path(path).suffix.lower()
    readers = {".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_csv}
    if suffix not in readers:
        raise ValueError(f"{path}: unknown log format {suffix!r}; use .jsonl or .csv")
    return ingest(readers[suffix](path), logs_dir, round_index, source=str(path), **kwargs)


def export_log(round_dir: PathLike, path: PathLike) -> int:
    """Write a committed round as JSONL or CSV (by suffix); return the record count."""
    log = open_round(round_dir)
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{path}: unknown export format {suffix!r}; use .jsonl or .csv")
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", newline="") as f:
        if suffix == ".csv":
            writer = csv.writer(f)
            writer.writerow(["schema_version", *FIELDS, "extras"])
        for record in log:
            if suffix == ".jsonl":
                f.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
            else:
                d = record.to_dict()
                writer.writerow([d["schema_version"]] + [
                    " ".join(map(str, d[k])) if FIELDS[k] == "int_list" else d[k]
                    for k in FIELDS] + [json.dumps(dict(record.extras)) if record.extras else ""])
            count += 1
    tmp.replace(path)
    return count
