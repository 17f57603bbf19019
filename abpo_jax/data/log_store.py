"""Round directories of bandit logs: validated streaming ingest, ArrayRecord shards, manifest.

Layout of one round (`<logs_dir>/round_00003/`):

    shard-00000.array_record ...   validated records (`LogRecord.to_bytes`), `group_size:1`
    quarantine.jsonl               every rejected record: position, reason, detail, raw
    request_ids.u64                sorted 64-bit hashes of the round's request ids (the
                                   cross-round duplicate check reads these, not the shards)
    manifest.json                  counts, per-shard sha256, schema version, policy revision,
                                   quarantine summary, source file sha256 -- written last: the
                                   commit marker

A round is written into `<logs_dir>/.tmp-round_00003-<pid>/`, every file fsynced, then the
directory is renamed into place (atomic on POSIX). A crash at any point leaves either no round or
a `.tmp-*` directory that `list_rounds` ignores and `clean_incomplete` (run by every ingest)
removes. One writer per logs directory. Opening a round verifies its manifest and checksums.

Ingest streams: memory is bounded by one shard writer plus 8 bytes per request id of this round
and 12 per id of the committed rounds (a request id may appear once per logs directory: a later
round repeating one quarantines it, so re-importing a log cannot silently double it), so a
1M-record log takes a few MB beyond the interpreter. The JSONL / CSV files a round is imported
from and exported to: `log_files.py`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import shutil
from collections import Counter
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
from array_record.python import array_record_module

from abpo_jax.data import records
from abpo_jax.fileio import sha256_file
from abpo_jax.data.logs import (DUPLICATE_REQUEST, MAX_RECORD_BYTES, MISSING_FIELD,
                                SCHEMA_VERSION, TOO_LARGE, BadRecord, LogRecord,
                                LogValidationError, short_repr, validate_record)

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
REQUEST_IDS = "request_ids.u64"
QUARANTINE_RAW_CHARS = 4096   # raw text kept for a too-large row (the file keeps the rest)
OVERWRITE_HINT = "pass overwrite=True (CLI: --config.logs.overwrite=True)"
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
    def hash(request_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")

    def add(self, request_id: str) -> bool:
        """Insert; return False when the id was already present."""
        return self.add_hash(self.hash(request_id))

    def add_hash(self, h: int) -> bool:
        """Insert a hash from `hash`; return False when it was already present."""
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

    def sorted_hashes(self) -> np.ndarray:
        """Every hash inserted, sorted (uint64)."""
        return np.sort(np.concatenate([self._sorted, np.fromiter(self._recent, np.uint64)]))


class CommittedIds:
    """Request-id hashes of a logs directory's committed rounds, to refuse re-imports."""

    def __init__(self, logs_dir: PathLike | None, exclude_round: int | None = None):
        hashes, rounds = [np.empty(0, np.uint64)], [np.empty(0, np.int32)]
        for path in list_rounds(logs_dir) if logs_dir is not None else []:
            index = int(path.name.removeprefix(ROUND_PREFIX))
            if index != exclude_round:
                h = _round_hashes(path)
                hashes.append(h)
                rounds.append(np.full(len(h), index, np.int32))
        all_hashes = np.concatenate(hashes)
        order = np.argsort(all_hashes)
        self._hashes, self._rounds = all_hashes[order], np.concatenate(rounds)[order]

    def round_of(self, h: int) -> int | None:
        """The committed round holding hash `h`, or None."""
        i = int(np.searchsorted(self._hashes, np.uint64(h)))
        if i < len(self._hashes) and int(self._hashes[i]) == h:
            return int(self._rounds[i])
        return None


def _round_hashes(path: pathlib.Path) -> np.ndarray:
    """Sorted request-id hashes of a committed round (from its index file, else its shards)."""
    index = path / REQUEST_IDS
    if index.is_file() and index.stat().st_size == 8 * len(open_round(path, verify=False)):
        return np.fromfile(index, "<u8").astype(np.uint64)
    # Rounds written before the index existed (or with a damaged one): hash the records.
    return np.sort(np.fromiter((SeenIds.hash(r.request_id) for r in open_round(path)),
                               np.uint64))


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A raw item a reader already judged bad; `ingest` quarantines it as is."""

    reason: str
    detail: str
    raw: str


def _jsonable(raw: Any) -> Any:
    """What the quarantine file keeps of a raw item: the item itself when JSON can hold it."""
    if isinstance(raw, Rejected):
        return raw.raw
    if isinstance(raw, LogRecord):
        raw = raw.to_dict()
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", "backslashreplace")
    try:
        json.dumps(raw, allow_nan=True)
        return raw
    except (TypeError, ValueError, RecursionError):
        return short_repr(raw, QUARANTINE_RAW_CHARS)


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
            shard["sha256"] = sha256_file(self.directory / shard["path"], fsync=True)


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
           max_record_bytes: int = MAX_RECORD_BYTES, source: str = "",
           source_sha256: str | None = None, overwrite: bool = False,
           committed_dir: PathLike | None = None, rejected_path: PathLike | None = None,
           require_extras: Sequence[str] = (),
           report: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Validate a stream of raw records and commit the good ones as round `round_index`.

    Args:
      items: (source position, raw record) pairs; raw = bytes | JSON text | dict | LogRecord |
        `Rejected` (a reader's verdict, quarantined as is).
      catalogue / num_users: known item ids / user count (see `validate_record`).
      max_bad_fraction: raise LogValidationError (and commit nothing) when
        quarantined / read exceeds it; the quarantine file is then kept (at `rejected_path`,
        default `<logs_dir>/rejected/<round>-<time>.quarantine.jsonl`) and named in the error.
        A round without a single valid record is refused the same way.
      records_per_shard: ArrayRecord shard size.
      max_record_bytes: a record whose encoding is larger is quarantined (`too_large`).
      source_sha256: checksum of the imported file, stored in the manifest.
      committed_dir: the rounds a request id must not already appear in (default `logs_dir`;
        the round being overwritten does not count).
      require_extras: extras keys every record must carry (`data.records.required`: what the
        run's loss reads); a record without one is quarantined (`missing_field`).
    Returns:
      The manifest (also written to `<round>/manifest.json`).
    """
    logs_dir = pathlib.Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    clean_incomplete(logs_dir)
    final = round_path(logs_dir, round_index)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already holds a committed round; {OVERWRITE_HINT} to "
                              "replace it")
    committed = CommittedIds(logs_dir if committed_dir is None else committed_dir,
                             exclude_round=round_index)
    tmp = logs_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        manifest = _write_round_files(
            items, tmp, round_index=round_index, catalogue=catalogue, num_users=num_users,
            records_per_shard=records_per_shard, max_record_bytes=max_record_bytes,
            committed=committed, require_extras=tuple(require_extras))
        manifest.update(round=round_index, source=source, source_sha256=source_sha256)
        refusal = _refusal(manifest, max_bad_fraction)
        if refusal:
            if rejected_path is None:
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                rejected_path = logs_dir / "rejected" / f"{final.name}-{stamp}.{QUARANTINE}"
            kept = pathlib.Path(rejected_path)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(tmp / QUARANTINE, kept)
            raise LogValidationError(f"{source or 'log'}: {refusal}; round {round_index} not "
                                     f"written. Quarantined records: {kept}")
        _commit(tmp, final, manifest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report is not None:
        report(format_summary(manifest))
    return manifest


def _refusal(manifest: dict[str, Any], max_bad_fraction: float) -> str:
    """Why a written round must not be committed ('' when it may be)."""
    n_in, n_bad = manifest["num_input"], manifest["num_quarantined"]
    if n_in == 0:
        return "no records (empty input)"
    first = manifest["first_quarantined"]
    example = f" First: {first['position']}: {first['reason']}: {first['detail']}" if first else ""
    if manifest["num_records"] == 0:
        return (f"none of the {n_in} records is valid. Reasons: {manifest['quarantine']}."
                f"{example}")
    bad = n_bad / n_in
    if bad > max_bad_fraction:
        return (f"{n_bad} of {n_in} records are bad ({bad:.1%} > logs.max_bad_fraction="
                f"{max_bad_fraction:.1%}). Reasons: {manifest['quarantine']}.{example}")
    return ""


def _write_round_files(items: Iterable[tuple[str, Any]], directory: pathlib.Path, *,
                       round_index: int, catalogue, num_users, records_per_shard: int,
                       max_record_bytes: int, committed: CommittedIds,
                       require_extras: tuple[str, ...] = ()) -> dict[str, Any]:
    shards = _ShardedWriter(directory, records_per_shard)
    seen = SeenIds()
    reasons: Counter[str] = Counter()
    revisions: Counter[str] = Counter()
    num_input = num_positive = 0
    first_bad = None
    with open(directory / QUARANTINE, "w") as quarantine:
        for position, raw in items:
            num_input += 1
            try:
                if isinstance(raw, Rejected):
                    raise BadRecord(raw.reason, raw.detail)
                record = validate_record(raw, catalogue=catalogue, num_users=num_users,
                                         round_index=round_index)
                gone = records.missing(record, require_extras)
                if gone:
                    raise BadRecord(MISSING_FIELD, f"extras key(s) {', '.join(gone)} missing "
                                                   "(this run's loss reads them)")
                data = record.to_bytes()
                if len(data) > max_record_bytes:
                    raise BadRecord(TOO_LARGE, f"record encodes to {len(data)} bytes > "
                                               f"logs.max_record_bytes={max_record_bytes}")
                h = SeenIds.hash(record.request_id)
                earlier = committed.round_of(h)
                if earlier is not None:
                    raise BadRecord(DUPLICATE_REQUEST,
                                    f"request_id {short_repr(record.request_id)} is already in "
                                    f"committed round {earlier} (imported before?)")
                if not seen.add_hash(h):
                    raise BadRecord(DUPLICATE_REQUEST,
                                    f"request_id {short_repr(record.request_id)} seen earlier")
            except BadRecord as e:
                reasons[e.reason] += 1
                if first_bad is None:
                    first_bad = {"position": position, "reason": e.reason,
                                 "detail": e.detail[:300]}
                quarantine.write(json.dumps({"position": position, "reason": e.reason,
                                             "detail": e.detail, "raw": _jsonable(raw)}) + "\n")
                continue
            shards.write(data)
            revisions[record.policy_revision] += 1
            num_positive += record.outcome
        shards.close()
        quarantine.flush()
        os.fsync(quarantine.fileno())
    with open(directory / REQUEST_IDS, "wb") as f:
        f.write(seen.sorted_hashes().astype("<u8").tobytes())
        f.flush()
        os.fsync(f.fileno())
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
        "first_quarantined": first_bad,
        "request_ids": REQUEST_IDS,
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
            digest = sha256_file(shard_path)
            if digest != shard["sha256"]:
                raise LogValidationError(f"{shard_path}: sha256 {digest} does not match the "
                                         f"manifest's {shard['sha256']} (corrupt shard)")
    return RoundLog(path, manifest)
