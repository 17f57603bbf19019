"""Bandit-log schema: one `LogRecord` per exposure, its byte encoding, and validation on ingest.

A record says: for request `request_id` of round `round`, the policy `policy_revision` showed user
`user_id` (history `context_item_ids`) the item `exposed_item_id`, drawn from
`candidate_item_ids` with probability `propensity`; the user answered `outcome` (1 = positive,
0 = no response). Unknown keys are kept in `extras`.

Encoding: compact UTF-8 JSON, one object per ArrayRecord entry. Chosen over msgpack because it is
the same text as the JSONL import/export and the quarantine file (one parser, one set of error
messages, records greppable with `strings`), needs no pinned dependency, and carries its
`schema_version` in every record. Decoding costs a few microseconds per record, orders of
magnitude below what a train step consumes (see `benchmarks/bench_pipeline.py`).

Storage of rounds (ArrayRecord shards + manifest) lives in `log_store.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Collection, Mapping

SCHEMA_VERSION = 1

# Reason codes for quarantined records, in the order the checks run (the first failing one wins).
CORRUPT = "corrupt"                                # undecodable bytes / not a JSON object
SCHEMA_MISMATCH = "schema_version"                 # record written under another schema
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"                    # negative round/user id, NaN timestamp, ...
EMPTY_CANDIDATES = "empty_candidates"
DUPLICATE_CANDIDATES = "duplicate_candidates"
BAD_PROPENSITY = "propensity_out_of_range"         # not in (0, 1] or NaN
BAD_OUTCOME = "outcome_not_binary"
UNKNOWN_ITEM = "unknown_item"
EXPOSED_NOT_IN_CANDIDATES = "exposed_not_in_candidates"
UNKNOWN_USER = "unknown_user"
DUPLICATE_REQUEST = "duplicate_request_id"         # checked by the ingester (needs state)
REASONS = (CORRUPT, SCHEMA_MISMATCH, MISSING_FIELD, WRONG_TYPE, INVALID_VALUE, EMPTY_CANDIDATES,
           DUPLICATE_CANDIDATES, BAD_PROPENSITY, BAD_OUTCOME, UNKNOWN_ITEM,
           EXPOSED_NOT_IN_CANDIDATES, UNKNOWN_USER, DUPLICATE_REQUEST)

# field -> kind, in record order ("schema_version" is handled apart: absent means current).
FIELDS: dict[str, str] = {
    "request_id": "str",
    "round": "int",
    "policy_revision": "str",
    "user_id": "int",
    "context_item_ids": "int_list",
    "candidate_item_ids": "int_list",
    "exposed_item_id": "int",
    "propensity": "float",
    "outcome": "int",
    "timestamp": "float",
}


class LogValidationError(ValueError):
    """A log could not be ingested (too many bad records, or a bad round on disk)."""


class BadRecord(ValueError):
    """One record failed validation; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class LogRecord:
    """One logged exposure (see the module docstring for the meaning of each field)."""

    request_id: str
    round: int
    policy_revision: str
    user_id: int
    context_item_ids: tuple[int, ...]
    candidate_item_ids: tuple[int, ...]
    exposed_item_id: int
    propensity: float
    outcome: int
    timestamp: float
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def exposed_index(self) -> int:
        """Position of the exposed item in the candidate list."""
        return self.candidate_item_ids.index(self.exposed_item_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: schema_version, the schema fields, then the extras."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for name in FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extras)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LogRecord":
        """Decode bytes written by `to_bytes` (no validation beyond the structure)."""
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LogRecord":
        kwargs = {name: d[name] for name in FIELDS}
        kwargs["context_item_ids"] = tuple(kwargs["context_item_ids"])
        kwargs["candidate_item_ids"] = tuple(kwargs["candidate_item_ids"])
        kwargs["propensity"] = float(kwargs["propensity"])
        kwargs["timestamp"] = float(kwargs["timestamp"])
        extras = {k: v for k, v in d.items() if k not in FIELDS and k != "schema_version"}
        return cls(**kwargs, extras=extras,
                   schema_version=d.get("schema_version", SCHEMA_VERSION))


def decode_raw(raw: bytes | str | Mapping[str, Any] | LogRecord) -> dict[str, Any]:
    """Raw input (record bytes, a JSON line, a dict or a LogRecord) -> dict; BadRecord if corrupt."""
    if isinstance(raw, LogRecord):
        return raw.to_dict()
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord(CORRUPT, f"not a JSON object ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise BadRecord(CORRUPT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _is_int(v: Any) -> bool:
    return type(v) is int   # not bool, not float: ids and flags must be exact integers


def _is_int_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and (not v or set(map(type, v)) == {int})


_TYPE_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "float": lambda v: type(v) in (int, float),
    "int_list": _is_int_list,
}


def _check_type(name: str, kind: str, v: Any) -> None:
    if not _TYPE_CHECKS[kind](v):
        raise BadRecord(WRONG_TYPE, f"field {name!r} must be {kind}, got {v!r:.80}")


def _unknown(ids: list[int], catalogue: int | Collection[int] | None) -> list[int]:
    if catalogue is None:
        return [i for i in ids if i < 0]
    if isinstance(catalogue, int):
        return [i for i in ids if not 0 <= i < catalogue]
    return [i for i in ids if i not in catalogue]


def validate_record(raw: bytes | str | Mapping[str, Any] | LogRecord, *,
                    catalogue: int | Collection[int] | None = None,
                    num_users: int | None = None) -> LogRecord:
    """Check one raw record and return it as a LogRecord; raise BadRecord(reason, detail).

    Args:
      raw: record bytes / JSON text / dict / LogRecord.
      catalogue: the known item ids: an int n (ids 0..n-1) or a collection; None = any id >= 0.
      num_users: user ids must lie in 0..num_users-1 when given.
    A missing `schema_version` means the current one (production logs rarely carry it).
    Duplicate request ids are not checked here (that needs the ingest's state).
    """
    d = decode_raw(raw)
    version = d.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise BadRecord(SCHEMA_MISMATCH,
                        f"schema_version {version!r}, this reader handles {SCHEMA_VERSION}")
    missing = [name for name in FIELDS if name not in d]
    if missing:
        raise BadRecord(MISSING_FIELD, f"missing field(s) {', '.join(missing)}")
    for name, kind in FIELDS.items():
        _check_type(name, kind, d[name])
    if not d["request_id"]:
        raise BadRecord(INVALID_VALUE, "empty request_id")
    for name in ("round", "user_id"):
        if d[name] < 0:
            raise BadRecord(INVALID_VALUE, f"{name}={d[name]} is negative")
    if not math.isfinite(d["timestamp"]):
        raise BadRecord(INVALID_VALUE, f"timestamp={d['timestamp']!r} is not finite")
    candidates = list(d["candidate_item_ids"])
    if not candidates:
        raise BadRecord(EMPTY_CANDIDATES, "candidate_item_ids is empty")
    if len(set(candidates)) != len(candidates):
        raise BadRecord(DUPLICATE_CANDIDATES, f"candidate_item_ids repeat an id: {candidates}")
    p = d["propensity"]
    if not (0.0 < p <= 1.0):   # also catches NaN (every comparison with NaN is False)
        raise BadRecord(BAD_PROPENSITY, f"propensity={p!r} is not in (0, 1]")
    if d["outcome"] not in (0, 1):
        raise BadRecord(BAD_OUTCOME, f"outcome={d['outcome']!r} is not 0 or 1")
    unknown = _unknown(list(d["context_item_ids"]) + candidates + [d["exposed_item_id"]],
                       catalogue)
    if unknown:
        raise BadRecord(UNKNOWN_ITEM, f"item id(s) not in the catalogue: {sorted(set(unknown))}")
    if d["exposed_item_id"] not in candidates:
        raise BadRecord(EXPOSED_NOT_IN_CANDIDATES,
                        f"exposed_item_id={d['exposed_item_id']} is not a candidate")
    if num_users is not None and d["user_id"] >= num_users:
        raise BadRecord(UNKNOWN_USER, f"user_id={d['user_id']} >= num_users={num_users}")
    return LogRecord.from_dict(d)
