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

Every value must survive that encoding exactly: `extras` is an open dict of JSON values (str keys;
str / int / float / bool / None / list / dict, at most `MAX_DEPTH` deep, no lone surrogates), ids
fit in int64, and ingest refuses records whose encoding exceeds `MAX_RECORD_BYTES`.

Storage of rounds (ArrayRecord shards + manifest) lives in `log_store.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Collection, Mapping

SCHEMA_VERSION = 1
INT64_MAX = 2**63 - 1          # ids become numpy int64 downstream
MAX_DEPTH = 64                 # nesting of extras values (deeper is a producer bug, not data)
MAX_RECORD_BYTES = 1 << 20     # encoded record size; config `logs.max_record_bytes`

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
ROUND_MISMATCH = "round_mismatch"                  # record of another round than the one written
DUPLICATE_REQUEST = "duplicate_request_id"         # checked by the ingester (needs state)
TOO_LARGE = "too_large"                            # over MAX_RECORD_BYTES (checked by ingest)
REASONS = (CORRUPT, SCHEMA_MISMATCH, MISSING_FIELD, WRONG_TYPE, INVALID_VALUE, EMPTY_CANDIDATES,
           DUPLICATE_CANDIDATES, BAD_PROPENSITY, BAD_OUTCOME, UNKNOWN_ITEM,
           EXPOSED_NOT_IN_CANDIDATES, UNKNOWN_USER, ROUND_MISMATCH, DUPLICATE_REQUEST, TOO_LARGE)

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
RESERVED_KEYS = frozenset(FIELDS) | {"schema_version"}   # no extras key may shadow these


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


def short_repr(v: Any, width: int = 80) -> str:
    """repr cut to `width` characters; never raises (huge ints and deep nesting included)."""
    try:
        text = repr(v)
    except ValueError:      # int past Python's 4300-digit str limit
        text = f"<int of ~{int(v.bit_length() * 0.30103)} digits>"
    except RecursionError:
        text = f"<{type(v).__name__} nested too deeply to print>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):   # json keeps the last value silently; which one was meant?
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise BadRecord(CORRUPT, f"key {dup!r} appears twice in one object (ambiguous)")
    return d


def parse_json(text: bytes | str) -> Any:
    """json.loads that raises BadRecord(CORRUPT) for anything unreadable: bad UTF-8, deep
    nesting, integers past Python's 4300-digit limit, and keys repeated in one object."""
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord(CORRUPT, f"not JSON ({type(e).__name__}: {e})") from None
    except RecursionError:
        raise BadRecord(CORRUPT, "JSON nested too deeply to parse") from None
    except ValueError as e:   # e.g. an integer literal with 5,000 digits
        raise BadRecord(CORRUPT, f"unreadable JSON value ({e})") from None


def decode_raw(raw: bytes | str | Mapping[str, Any] | LogRecord) -> dict[str, Any]:
    """Raw input (record bytes, a JSON line, a dict or a LogRecord) -> dict; BadRecord if corrupt."""
    if isinstance(raw, LogRecord):
        shadowed = RESERVED_KEYS.intersection(raw.extras)
        if shadowed:
            raise BadRecord(INVALID_VALUE, f"extras key(s) {sorted(shadowed)} shadow schema fields")
        return raw.to_dict()
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, (bytes, bytearray, str)):
        raise BadRecord(CORRUPT, f"not a record: {type(raw).__name__}")
    obj = parse_json(raw)
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

# Lone surrogates decode from JSON escapes ("\ud800") but cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_type(name: str, kind: str, v: Any) -> None:
    if not _TYPE_CHECKS[kind](v):
        raise BadRecord(WRONG_TYPE, f"field {name!r} must be {kind}, got {short_repr(v)}")


def _check_text(where: str, s: str) -> None:
    m = _SURROGATE.search(s)
    if m:
        raise BadRecord(CORRUPT, f"{where} holds a lone surrogate U+{ord(m.group()):04X} "
                                 "(not encodable text)")


# C0 / C1 control characters (NUL, ESC, ...): never part of an identifier; a NUL in a request
# id or revision name is a truncated or corrupt write, and it breaks C-string tools. Tab, newline
# and carriage return are text (odd in an id, but a quoted CSV field holds them and they round-trip
# losslessly: tests/data/test_logs_hostile.py); a whitespace-only id is refused separately.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_identifier(where: str, s: str) -> None:
    m = _CONTROL.search(s)
    if m:
        raise BadRecord(INVALID_VALUE, f"{where} holds the control character "
                                       f"U+{ord(m.group()):04X} at {m.start()}")


_NUMBERS = frozenset((int, float, bool))


def check_json_value(v: Any, where: str, depth: int = 0) -> None:
    """Raise BadRecord unless `v` is a JSON value that encodes and decodes back unchanged."""
    t = type(v)
    if t is str:
        _check_text(where, v)
    elif v is None or t in (bool, int, float):
        pass
    elif t in (list, tuple, dict):
        if depth >= MAX_DEPTH:
            raise BadRecord(INVALID_VALUE, f"{where} is nested deeper than {MAX_DEPTH} levels")
        if t is dict:
            for k, x in v.items():
                if type(k) is not str:
                    raise BadRecord(WRONG_TYPE, f"{where} has a non-string key {short_repr(k)}")
                _check_text(f"{where} key", k)
                check_json_value(x, f"{where}.{k}", depth + 1)
        elif not _NUMBERS.issuperset(map(type, v)):   # fast path: lists of numbers
            for i, x in enumerate(v):
                check_json_value(x, f"{where}[{i}]", depth + 1)
    else:
        raise BadRecord(WRONG_TYPE, f"{where} is a {t.__module__}.{t.__name__}, not a JSON value "
                                    "(convert numpy values with .item() / .tolist())")


def _unknown(ids: list[int], catalogue: int | Collection[int] | None) -> list[int]:
    if catalogue is None:
        return [i for i in ids if not 0 <= i <= INT64_MAX]
    if isinstance(catalogue, int):
        return [i for i in ids if not 0 <= i < catalogue]
    return [i for i in ids if i not in catalogue]


def validate_record(raw: bytes | str | Mapping[str, Any] | LogRecord, *,
                    catalogue: int | Collection[int] | None = None,
                    num_users: int | None = None,
                    round_index: int | None = None) -> LogRecord:
    """Check one raw record and return it as a LogRecord; raise BadRecord(reason, detail).

    Args:
      raw: record bytes / JSON text / dict / LogRecord.
      catalogue: the known item ids: an int n (ids 0..n-1) or a collection; None = any id in
        0..2**63-1.
      num_users: user ids must lie in 0..num_users-1 when given (else in 0..2**63-1).
      round_index: the round being written; a record of another round is refused.
    A missing `schema_version` means the current one (production logs rarely carry it).
    Duplicate request ids and the encoded size are checked by the ingest (they need its state).
    """
    d = decode_raw(raw)
    version = d.get("schema_version", SCHEMA_VERSION)
    if not _is_int(version):   # `true == 1` in Python; a bool is not a version
        raise BadRecord(WRONG_TYPE, f"schema_version must be int, got {short_repr(version)}")
    if version != SCHEMA_VERSION:
        raise BadRecord(SCHEMA_MISMATCH,
                        f"schema_version {version}, this reader handles {SCHEMA_VERSION}")
    missing = [name for name in FIELDS if name not in d]
    if missing:
        raise BadRecord(MISSING_FIELD, f"missing field(s) {', '.join(missing)}")
    for name, kind in FIELDS.items():
        _check_type(name, kind, d[name])
    if not d["request_id"].strip():
        raise BadRecord(INVALID_VALUE, "empty request_id" if not d["request_id"] else
                        f"request_id={short_repr(d['request_id'])} is blank (whitespace only)")
    for name in ("round", "user_id"):
        if not 0 <= d[name] <= INT64_MAX:
            raise BadRecord(INVALID_VALUE, f"{name}={short_repr(d[name])} is not in 0..2**63-1")
    if round_index is not None and d["round"] != round_index:
        raise BadRecord(ROUND_MISMATCH,
                        f"record is for round {d['round']}, the round written is {round_index}")
    try:
        finite = math.isfinite(d["timestamp"])
    except OverflowError:      # an int too large for a float
        finite = False
    if not finite:
        raise BadRecord(INVALID_VALUE, f"timestamp={short_repr(d['timestamp'])} is not finite")
    candidates = list(d["candidate_item_ids"])
    if not candidates:
        raise BadRecord(EMPTY_CANDIDATES, "candidate_item_ids is empty")
    if len(set(candidates)) != len(candidates):
        raise BadRecord(DUPLICATE_CANDIDATES,
                        f"candidate_item_ids repeat an id: {short_repr(candidates)}")
    p = d["propensity"]
    if not (0.0 < p <= 1.0):   # also catches NaN (every comparison with NaN is False)
        raise BadRecord(BAD_PROPENSITY, f"propensity={short_repr(p)} is not in (0, 1]")
    if d["outcome"] not in (0, 1):
        raise BadRecord(BAD_OUTCOME, f"outcome={short_repr(d['outcome'])} is not 0 or 1")
    unknown = _unknown(list(d["context_item_ids"]) + candidates + [d["exposed_item_id"]],
                       catalogue)
    if unknown:
        raise BadRecord(UNKNOWN_ITEM,
                        f"item id(s) not in the catalogue: {short_repr(sorted(set(unknown)))}")
    if d["exposed_item_id"] not in candidates:
        raise BadRecord(EXPOSED_NOT_IN_CANDIDATES,
                        f"exposed_item_id={d['exposed_item_id']} is not a candidate")
    if num_users is not None and d["user_id"] >= num_users:
        raise BadRecord(UNKNOWN_USER, f"user_id={d['user_id']} >= num_users={num_users}")
    for name in ("request_id", "policy_revision"):
        _check_text(name, d[name])
        _check_identifier(name, d[name])
    check_json_value({k: v for k, v in d.items() if k not in RESERVED_KEYS}, "extras")
    return LogRecord.from_dict(d)
