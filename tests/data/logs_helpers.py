"""Valid bandit-log records and file writers shared by the log tests."""

import json
import pathlib

NUM_ITEMS = 100


def good_record(i: int, **overrides) -> dict:
    """A valid round-1 record (unique request id per i) as a JSON-able dict."""
    cands = [(i + k) % NUM_ITEMS for k in range(5)]
    d = {"schema_version": 1, "request_id": f"r00001-u{i}", "round": 1, "policy_revision": "rev-a",
         "user_id": i, "context_item_ids": [(i * 7) % NUM_ITEMS, (i * 3) % NUM_ITEMS],
         "candidate_item_ids": cands, "exposed_item_id": cands[i % 5],
         "propensity": 0.1 + 0.8 * (i % 7) / 7, "outcome": i % 2, "timestamp": 1700000000.0 + i}
    d.update(overrides)
    return d


def jsonl_line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


CSV_COLUMNS = ["schema_version", "request_id", "round", "policy_revision", "user_id",
               "context_item_ids", "candidate_item_ids", "exposed_item_id", "propensity",
               "outcome", "timestamp", "extras"]
CSV_HEADER = (",".join(CSV_COLUMNS) + "\r\n").encode()


def csv_line(record: dict, columns: list[str] = CSV_COLUMNS, **cells: str) -> bytes:
    """One CSV row (CRLF, as `csv.writer`) of a record; `cells` replace single cells verbatim."""
    d = dict(record)
    values = []
    for col in columns:
        if col in cells:
            values.append(cells[col])
        elif col == "extras":
            values.append("")
        elif isinstance(d[col], list):
            values.append(" ".join(map(str, d[col])))
        else:
            values.append(str(d[col]))
    return (",".join(values) + "\r\n").encode()


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path
