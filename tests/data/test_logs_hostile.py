"""A corpus of hostile bandit-log files (JSONL and CSV), each with the outcome it must get.

Every quarantine case hides one bad row among `N_GOOD` good ones: the import must go on, put that
row in the quarantine file with its reason and line number, and keep every good record unchanged
(accepted + quarantined == rows read: nothing is silently lost). Whole-file cases are accepted as
a whole or refused with one line naming why; refused files commit nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable

import pytest

from abpo_jax.data import log_files, log_store, logs
from abpo_jax.data.logs import LogRecord, LogValidationError

from .logs_helpers import CSV_COLUMNS, CSV_HEADER, NUM_ITEMS, csv_line, good_record, jsonl_line

N_GOOD = 20
BAD_AFTER = 10          # the bad row follows the 10th good one
BIG = 10 * 2**20        # the 10 MB cell / line


def goods() -> list[dict]:
    return [good_record(i) for i in range(N_GOOD)]


def jsonl_with(bad: bytes) -> bytes:
    lines = [jsonl_line(g) for g in goods()]
    return b"".join(lines[:BAD_AFTER]) + bad.rstrip(b"\n") + b"\n" + b"".join(lines[BAD_AFTER:])


def csv_with(bad: bytes) -> bytes:
    lines = [csv_line(g) for g in goods()]
    return CSV_HEADER + b"".join(lines[:BAD_AFTER]) + bad + b"".join(lines[BAD_AFTER:])


def j(**overrides) -> bytes:
    """A JSONL line of a good record (request id of its own) with fields replaced."""
    return json.dumps(good_record(900, **overrides)).encode()


def jraw(field: str, literal: str) -> bytes:
    """A JSONL line whose `field` is the JSON text `literal` verbatim."""
    d = good_record(900)
    d[field] = "@@"
    return json.dumps(d).replace('"@@"', literal).encode()


def c(**cells: str) -> bytes:
    """A CSV row of a good record (request id of its own) with cells replaced verbatim."""
    return csv_line(good_record(900), **cells)


def deep(n: int) -> str:
    return "[" * n + "]" * n


@dataclasses.dataclass
class Case:
    """One hostile file. `quarantined`: (reason, detail substring) of the single bad row;
    `refused`: substring of the one-line refusal; neither: every row is accepted."""

    id: str
    fmt: str                               # "jsonl" | "csv"
    data: Callable[[], bytes]
    quarantined: tuple[str, str] | None = None
    refused: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)
    bad_line: int | None = None            # default: the row after the 10th good one
    expected: Callable[[], list[dict]] = goods   # records an accepting import keeps


def q(id_, fmt, bad, reason, detail, **kw) -> Case:
    wrap = jsonl_with if fmt == "jsonl" else csv_with
    return Case(id_, fmt, lambda: wrap(bad() if callable(bad) else bad), (reason, detail), **kw)


JSONL_BAD = [
    q("deep_nesting_recursion", "jsonl", lambda: jraw("slot", deep(200_000)), logs.CORRUPT,
      "nested too deeply"),
    q("deep_nesting_parsed", "jsonl", lambda: jraw("slot", deep(200)), logs.INVALID_VALUE,
      "deeper than 64"),
    q("int_5000_digits_field", "jsonl", lambda: jraw("user_id", "7" * 5000), logs.CORRUPT,
      "digits"),
    q("int_5000_digits_extras", "jsonl", lambda: jraw("slot", "7" * 5000), logs.CORRUPT, "digits"),
    q("lone_surrogate_request_id", "jsonl", jraw("request_id", '"a\\ud800b"'), logs.CORRUPT,
      "lone surrogate"),
    q("lone_surrogate_extras_key", "jsonl", j(**{"k\ud800": 1}).replace(b"\\\\", b"\\"),
      logs.CORRUPT, "lone surrogate"),
    q("lone_surrogate_extras_value", "jsonl", jraw("note", '["x", "\\udc80"]'), logs.CORRUPT,
      "lone surrogate"),
    # json.loads decodes bytes with "surrogatepass": the check on the decoded text catches it.
    q("surrogate_bytes_cesu8", "jsonl", j(note="@").replace(b"@", b"\xed\xa0\x80"),
      logs.CORRUPT, "lone surrogate"),
    q("byte_0xff", "jsonl", j(note="@").replace(b"@", b"\xff"), logs.CORRUPT,
      "UnicodeDecodeError"),
    q("nul_byte_in_string", "jsonl", j(note="@").replace(b"@", b"\x00"), logs.CORRUPT,
      "control character"),
    q("round_of_another_round", "jsonl", j(round=2), logs.ROUND_MISMATCH, "round 2"),
    q("user_id_2_pow_70", "jsonl", j(user_id=2**70), logs.INVALID_VALUE, "2**63"),
    q("user_id_past_num_users", "jsonl", j(user_id=5000), logs.UNKNOWN_USER, "num_users=1000",
      kwargs={"num_users": 1000}),
    q("item_id_2_pow_70_no_catalogue", "jsonl",
      j(candidate_item_ids=[1, 2**70], exposed_item_id=1), logs.UNKNOWN_ITEM, "catalogue",
      kwargs={"catalogue": None}),
    q("round_2_pow_70", "jsonl", j(round=2**70), logs.INVALID_VALUE, "round="),
    q("schema_version_true", "jsonl", j(schema_version=True), logs.WRONG_TYPE, "schema_version"),
    q("schema_version_float", "jsonl", j(schema_version=1.0), logs.WRONG_TYPE, "schema_version"),
    q("schema_version_string", "jsonl", j(schema_version="1"), logs.WRONG_TYPE, "schema_version"),
    q("schema_version_null", "jsonl", j(schema_version=None), logs.WRONG_TYPE, "schema_version"),
    q("schema_version_future", "jsonl", j(schema_version=2), logs.SCHEMA_MISMATCH, "handles 1"),
    q("nan_propensity_literal", "jsonl", jraw("propensity", "NaN"), logs.BAD_PROPENSITY, "nan"),
    q("infinity_timestamp_literal", "jsonl", jraw("timestamp", "Infinity"), logs.INVALID_VALUE,
      "inf"),
    q("minus_infinity_propensity", "jsonl", jraw("propensity", "-Infinity"), logs.BAD_PROPENSITY,
      "inf"),
    q("timestamp_int_past_float", "jsonl", jraw("timestamp", "1" + "0" * 400), logs.INVALID_VALUE,
      "not finite"),
    q("propensity_1e999", "jsonl", jraw("propensity", "1e999"), logs.BAD_PROPENSITY, "inf"),
    q("duplicate_key", "jsonl", j(propensity=0.5)[:-1] + b', "propensity": 7}', logs.CORRUPT,
      "'propensity' appears twice"),
    q("duplicate_key_nested", "jsonl", jraw("meta", '{"a": 1, "a": 2}'), logs.CORRUPT,
      "'a' appears twice"),
    q("negative_propensity_string", "jsonl", j(propensity="-0.5"), logs.WRONG_TYPE, "propensity"),
    q("outcome_bool", "jsonl", j(outcome=True), logs.WRONG_TYPE, "outcome"),
    q("user_id_float", "jsonl", j(user_id=1.0), logs.WRONG_TYPE, "user_id"),
    q("candidate_bool", "jsonl", j(candidate_item_ids=[True, 1], exposed_item_id=1),
      logs.WRONG_TYPE, "candidate_item_ids"),
    q("top_level_array", "jsonl", b"[1, 2, 3]", logs.CORRUPT, "list"),
    q("top_level_string", "jsonl", b'"a record"', logs.CORRUPT, "str"),
    q("top_level_null", "jsonl", b"null", logs.CORRUPT, "NoneType"),
    q("empty_object", "jsonl", b"{}", logs.MISSING_FIELD, "request_id"),
    q("not_json", "jsonl", b"hello world", logs.CORRUPT, "not JSON"),
    q("python_literal", "jsonl", b"{'request_id': 'x'}", logs.CORRUPT, "not JSON"),
    q("two_objects_one_line", "jsonl", j() + b" " + j(request_id="other"), logs.CORRUPT,
      "Extra data"),
    q("duplicate_request_id", "jsonl", j(request_id="r00001-u3"), logs.DUPLICATE_REQUEST,
      "r00001-u3"),
    q("empty_request_id", "jsonl", j(request_id=""), logs.INVALID_VALUE, "empty request_id"),
    q("propensity_zero", "jsonl", j(propensity=0.0), logs.BAD_PROPENSITY, "(0, 1]"),
    q("exposed_not_candidate", "jsonl", j(exposed_item_id=99), logs.EXPOSED_NOT_IN_CANDIDATES,
      "99"),
    q("line_10mb", "jsonl", lambda: j(note="x" * BIG), logs.TOO_LARGE, "max_record_bytes"),
    q("record_2mb_under_line_bound", "jsonl", lambda: j(note="x" * (2 << 20)), logs.TOO_LARGE,
      "encodes to"),
    Case("truncated_last_line", "jsonl", lambda: b"".join(map(jsonl_line, goods())) + j()[:40],
         (logs.CORRUPT, "not JSON"), bad_line=N_GOOD + 1),
]

CSV_BAD = [
    q("byte_0xff_cell", "csv", c(policy_revision="rev\xff").replace(b"\xc3\xbf", b"\xff"),
      logs.CORRUPT, "'policy_revision' is not valid UTF-8 (byte 0xff)"),
    q("surrogate_bytes_cesu8", "csv", c(policy_revision="@").replace(b"@", b"\xed\xa0\x80"),
      logs.CORRUPT, "not valid UTF-8"),
    q("cell_10mb", "csv", lambda: c(policy_revision="x" * BIG), logs.TOO_LARGE,
      "max_record_bytes"),
    q("quoted_cell_10mb_multiline", "csv",
      lambda: c(extras='"' + ("y" * 1000 + "\n") * (BIG // 1000) + '"'), logs.TOO_LARGE,
      "max_record_bytes"),
    q("extras_list", "csv", c(extras='"[1, 2]"'), logs.WRONG_TYPE, "JSON object, got list"),
    q("extras_json_string", "csv", c(extras='"""x"""'), logs.WRONG_TYPE, "got str"),
    q("extras_number", "csv", c(extras="5"), logs.WRONG_TYPE, "got int"),
    q("extras_not_json", "csv", c(extras="{broken"), logs.WRONG_TYPE, "not JSON"),
    q("extras_deep_nesting", "csv", lambda: c(extras=deep(200_000)), logs.WRONG_TYPE,
      "nested too deeply"),
    q("extras_duplicate_key", "csv", c(extras='"{""a"": 1, ""a"": 2}"'), logs.WRONG_TYPE,
      "appears twice"),
    q("extras_lone_surrogate", "csv", c(extras='"{""a"": ""\\ud800""}"'), logs.CORRUPT,
      "lone surrogate"),
    q("extras_overrides_bad_propensity", "csv",
      c(propensity="abc", extras='"{""propensity"": 0.5}"'), logs.INVALID_VALUE,
      "extras cell sets ['propensity']"),
    q("extras_overrides_good_column", "csv", c(extras='"{""user_id"": 3}"'), logs.INVALID_VALUE,
      "extras cell sets ['user_id']"),
    q("extra_cell", "csv", c(extras="").replace(b"\r\n", b",surplus\r\n"), logs.CORRUPT,
      "13 cells, the header has 12"),
    q("list_cell_deep_nesting", "csv", lambda: c(candidate_item_ids=deep(200_000)),
      logs.WRONG_TYPE, "candidate_item_ids"),
    q("list_cell_floats", "csv", c(candidate_item_ids='"[1.5, 2]"'), logs.WRONG_TYPE,
      "candidate_item_ids"),
    q("list_cell_word", "csv", c(candidate_item_ids="1 x 3"), logs.WRONG_TYPE,
      "candidate_item_ids"),
    q("int_5000_digits", "csv", c(user_id="7" * 5000), logs.WRONG_TYPE, "user_id"),
    q("user_id_2_pow_70", "csv", c(user_id=str(2**70)), logs.INVALID_VALUE, "2**63"),
    q("user_id_underscores", "csv", c(user_id="1_000"), logs.WRONG_TYPE, "user_id"),
    q("user_id_arabic_digits", "csv", c(user_id="١٢"), logs.WRONG_TYPE, "user_id"),
    q("user_id_blank", "csv", c(user_id=" "), logs.MISSING_FIELD, "user_id"),
    q("round_of_another_round", "csv", c(round="2"), logs.ROUND_MISMATCH, "round 2"),
    q("schema_version_true", "csv", c(schema_version="true"), logs.WRONG_TYPE, "schema_version"),
    q("schema_version_float", "csv", c(schema_version="1.0"), logs.WRONG_TYPE, "schema_version"),
    q("negative_propensity", "csv", c(propensity="-0.5"), logs.BAD_PROPENSITY, "-0.5"),
    q("nan_propensity", "csv", c(propensity="nan"), logs.BAD_PROPENSITY, "nan"),
    q("inf_timestamp", "csv", c(timestamp="inf"), logs.INVALID_VALUE, "inf"),
    q("outcome_word", "csv", c(outcome="true"), logs.WRONG_TYPE, "outcome"),
    q("empty_request_id", "csv", c(request_id=""), logs.INVALID_VALUE, "empty request_id"),
    q("duplicate_request_id", "csv", c(request_id="r00001-u3"), logs.DUPLICATE_REQUEST,
      "r00001-u3"),
    q("short_row", "csv", b"1,r-short,1,rev-a,3\r\n", logs.MISSING_FIELD, "context_item_ids"),
    # A stray quote opens a field that never closes: the lines behind it must not be swallowed.
    q("stray_quote", "csv", c(policy_revision='"rev-a'), logs.MISSING_FIELD, "outcome"),
    Case("truncated_last_row", "csv",
         lambda: CSV_HEADER + b"".join(map(csv_line, goods())) + c()[:25],
         (logs.MISSING_FIELD, "candidate_item_ids"), bad_line=N_GOOD + 2),
]


PROD_COLUMNS = [c for c in CSV_COLUMNS if c not in ("schema_version", "extras")]


def big_note() -> list[dict]:
    return [good_record(i, note="z" * 500_000 if i == 3 else "") for i in range(N_GOOD)]


def _whole(rows: list[bytes], header: bytes = CSV_HEADER) -> bytes:
    return header + b"".join(rows)


ACCEPTED = [
    Case("crlf_line_ends", "jsonl",
         lambda: b"".join(jsonl_line(g).replace(b"\n", b"\r\n") for g in goods())),
    Case("trailing_blank_lines", "jsonl", lambda: b"".join(map(jsonl_line, goods())) +
         b"\n\n   \n\t\n"),
    Case("utf8_bom", "jsonl", lambda: b"\xef\xbb\xbf" + b"".join(map(jsonl_line, goods()))),
    Case("no_final_newline", "jsonl", lambda: b"".join(map(jsonl_line, goods())).rstrip()),
    Case("record_500kb_extras", "jsonl", lambda: b"".join(map(jsonl_line, big_note())),
         expected=lambda: big_note()),
    Case("utf8_bom_before_header", "csv",
         lambda: b"\xef\xbb\xbf" + _whole([csv_line(g) for g in goods()])),
    Case("lf_line_ends", "csv",
         lambda: _whole([csv_line(g).replace(b"\r\n", b"\n") for g in goods()],
                        CSV_HEADER.replace(b"\r\n", b"\n"))),
    Case("trailing_blank_lines", "csv",
         lambda: _whole([csv_line(g) for g in goods()]) + b"\r\n\r\n ,  \r\n"),
    Case("header_names_padded", "csv", lambda: _whole(
        [csv_line(g) for g in goods()], CSV_HEADER.replace(b",", b" , "))),
    Case("quoted_newline_in_request_id", "csv", lambda: _whole(
        [csv_line(g, request_id=f'"req\n{i}"') for i, g in enumerate(goods())]),
        expected=lambda: [dict(g, request_id=f"req\n{i}") for i, g in enumerate(goods())]),
    # A production export: no schema_version / extras columns, the BOM sits before request_id.
    Case("utf8_bom_before_production_header", "csv", lambda: b"\xef\xbb\xbf" + _whole(
        [csv_line(g, PROD_COLUMNS) for g in goods()], (",".join(PROD_COLUMNS) + "\n").encode())),
    Case("columns_reordered", "csv", lambda: _whole(
        [csv_line(g, CSV_COLUMNS[::-1]) for g in goods()],
        (",".join(CSV_COLUMNS[::-1]) + "\n").encode())),
]

REFUSED = [
    Case("empty_file", "jsonl", lambda: b"", refused="no records"),
    Case("only_blank_lines", "jsonl", lambda: b"\n \r\n\t\n", refused="no records"),
    Case("only_bad_lines", "jsonl", lambda: b"garbage\n" * 20_000,
         refused="none of the 20000 records is valid"),
    Case("too_many_bad_lines", "jsonl",
         lambda: b"".join(map(jsonl_line, goods())) + b"garbage\n" * 5,
         refused="5 of 25 records are bad (20.0% > logs.max_bad_fraction=5.0%)"),
    Case("pretty_json_array", "jsonl",
         lambda: json.dumps(goods(), indent=1).encode(), refused="not JSON Lines"),
    Case("empty_file", "csv", lambda: b"", refused="empty file"),
    Case("header_only", "csv", lambda: CSV_HEADER, refused="no records"),
    Case("bom_and_header_only", "csv", lambda: b"\xef\xbb\xbf" + CSV_HEADER, refused="no records"),
    Case("no_header", "csv", lambda: b"".join(map(csv_line, goods())), refused="lacks column"),
    Case("header_repeats_column", "csv",
         lambda: _whole([csv_line(g) + b"" for g in goods()],
                        CSV_HEADER.replace(b",extras", b",propensity")),
         refused="repeats column(s) ['propensity']"),
    Case("header_invalid_utf8", "csv",
         lambda: _whole([csv_line(g) for g in goods()], CSV_HEADER.replace(b"extras", b"ex\xfftras")),
         refused="header is not valid UTF-8"),
]

CASES = JSONL_BAD + CSV_BAD + ACCEPTED + REFUSED


def _import(tmp_path, case: Case):
    path = tmp_path / f"{case.id}.{case.fmt}"
    path.write_bytes(case.data())
    kwargs = {"catalogue": NUM_ITEMS, "report": None, **case.kwargs}
    return path, lambda: log_files.import_log(path, tmp_path / "logs", 1, **kwargs)


def _data_rows(path, fmt: str) -> int:
    """Rows of the file that hold something (what import must account for)."""
    lines = [l for l in path.read_bytes().splitlines() if l.strip(b" \t\r\n,")]
    return len(lines) - (fmt == "csv")


def test_corpus_size():
    assert len(CASES) >= 25 and len({(c.id, c.fmt) for c in CASES}) == len(CASES)
    assert len(JSONL_BAD + CSV_BAD) >= 40


@pytest.mark.parametrize("case", JSONL_BAD + CSV_BAD, ids=lambda c: f"{c.fmt}-{c.id}")
def test_bad_row_is_quarantined_and_nothing_else_is_lost(tmp_path, case):
    path, run = _import(tmp_path, case)
    manifest = run()
    reason, detail = case.quarantined
    lines = [json.loads(l) for l in
             (log_store.round_path(tmp_path / "logs", 1) / "quarantine.jsonl").read_text()
             .splitlines()]
    assert [(l["reason"]) for l in lines] == [reason], lines[0]["detail"] if lines else None
    assert detail in lines[0]["detail"]
    bad_line = case.bad_line or BAD_AFTER + 1 + (case.fmt == "csv")
    assert lines[0]["position"].split(":")[-1].split("-")[0] == str(bad_line)
    assert manifest["num_records"] == N_GOOD and manifest["num_quarantined"] == 1
    if not case.id.startswith(("quoted_cell", "stray_quote")):   # those span several lines
        assert manifest["num_input"] == _data_rows(path, case.fmt)
    back = list(log_store.open_round(log_store.round_path(tmp_path / "logs", 1)))
    assert [r.to_bytes() for r in back] == [LogRecord.from_dict(g).to_bytes() for g in goods()]


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: f"{c.fmt}-{c.id}")
def test_odd_but_valid_file_is_accepted_whole(tmp_path, case):
    path, run = _import(tmp_path, case)
    manifest = run()
    assert manifest["num_quarantined"] == 0, manifest["first_quarantined"]
    expected = case.expected()
    assert manifest["num_records"] == len(expected) == manifest["num_input"]
    back = list(log_store.open_round(log_store.round_path(tmp_path / "logs", 1)))
    assert [r.to_bytes() for r in back] == [LogRecord.from_dict(g).to_bytes() for g in expected]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: f"{c.fmt}-{c.id}")
def test_unusable_file_is_refused_in_one_line(tmp_path, case):
    _, run = _import(tmp_path, case)
    with pytest.raises(LogValidationError) as e:
        run()
    assert case.refused in str(e.value) and "\n" not in str(e.value)
    assert log_store.list_rounds(tmp_path / "logs") == []


def tricky_records() -> list[dict]:
    """Records whose CSV / JSONL form is easy to get wrong."""
    return [
        good_record(0, policy_revision=""),
        good_record(1, request_id="  padded id  "),
        good_record(2, request_id='quote " comma , semi ; new\nline\r\ttab'),
        good_record(3, request_id="ünï©ødé ✓", policy_revision="rev\u2028sep"),
        good_record(4, context_item_ids=[], propensity=1.0, timestamp=-0.5),
        good_record(5, note="n" * 600_000),              # > csv's default 128 KiB field limit
        good_record(6, extras={"nested": [1, {"a": None}]}, flag=False, big=10**30),
        good_record(7, ratio=float("nan"), score=0.1 + 0.2, weird_key_="", **{"": "empty key"}),
        # (a NUL inside an id is quarantined since issue 26: tests/data/test_logs_leftovers.py)
        good_record(8, request_id="nul\\x00 escaped, not a NUL"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_import_roundtrip_is_lossless(tmp_path, fmt):
    records = tricky_records()
    log_store.write_round(records, tmp_path / "a", 1, report=None)
    path = tmp_path / f"r1.{fmt}"
    assert log_files.export_log(log_store.round_path(tmp_path / "a", 1), path) == len(records)
    manifest = log_files.import_log(path, tmp_path / "b", 1, catalogue=NUM_ITEMS, report=None)
    assert manifest["num_quarantined"] == 0, manifest["first_quarantined"]
    a = list(log_store.open_round(log_store.round_path(tmp_path / "a", 1)))
    b = list(log_store.open_round(log_store.round_path(tmp_path / "b", 1)))
    assert [r.to_bytes() for r in b] == [r.to_bytes() for r in a]
    assert b[0].policy_revision == "" and b[1].request_id == "  padded id  "
    assert type(b[0].schema_version) is int and math.isnan(b[7].extras["ratio"])
    # A second export of the re-imported round is byte-identical to the first.
    again = tmp_path / f"again.{fmt}"
    log_files.export_log(log_store.round_path(tmp_path / "b", 1), again)
    assert again.read_bytes() == path.read_bytes()


def test_csv_reader_restores_the_global_field_limit(tmp_path):
    import csv
    before = csv.field_size_limit()
    path = tmp_path / "x.csv"
    path.write_bytes(csv_with(c(extras="{broken")))
    list(log_files.read_csv(path))
    assert csv.field_size_limit() == before


def test_in_memory_records_with_non_json_extras_are_quarantined(tmp_path):
    """Producers (the round runner) put open extras in records: a value JSON would change or
    cannot hold is refused by name instead of crashing the ingest or coming back different."""
    np = pytest.importorskip("numpy")
    def record(i: int, extras: dict) -> LogRecord:
        return dataclasses.replace(LogRecord.from_dict(good_record(i)), extras=extras)

    bad = [
        (record(900, {"p": np.float32(0.5)}), logs.WRONG_TYPE, "numpy"),
        (record(901, {"probs": np.zeros(3)}), logs.WRONG_TYPE, "numpy"),
        (good_record(902, extras={1: "int key"}), logs.WRONG_TYPE, "non-string key"),
        (record(903, {"propensity": 0.9}), logs.INVALID_VALUE, "shadow"),
        (good_record(904, blob=b"bytes"), logs.WRONG_TYPE, "bytes"),
        (42, logs.CORRUPT, "not a record"),
        (None, logs.CORRUPT, "not a record"),
    ]
    items = [(f"m#{i}", g) for i, g in enumerate(goods())] + [
        (f"bad#{k}", raw) for k, (raw, _, _) in enumerate(bad)]
    manifest = log_store.ingest(items, tmp_path, 1, max_bad_fraction=0.5, report=None)
    assert manifest["num_records"] == N_GOOD and manifest["num_quarantined"] == len(bad)
    lines = [json.loads(l) for l in
             (log_store.round_path(tmp_path, 1) / "quarantine.jsonl").read_text().splitlines()]
    for line, (_, reason, detail) in zip(lines, bad):
        assert line["reason"] == reason and detail in line["detail"], line


def test_own_csv_export_of_a_10mb_record_reimports(tmp_path):
    """A round whose records exceed the default bound (written with a raised
    `logs.max_record_bytes`) exports to CSV and re-imports under the same bound; under the
    default bound the big row is quarantined by line number and the others are kept."""
    bound = 16 << 20
    records = [good_record(i, note="q" * BIG if i == 2 else "") for i in range(N_GOOD)]
    log_store.write_round(records, tmp_path / "a", 1, max_record_bytes=bound, report=None)
    path = tmp_path / "big.csv"
    log_files.export_log(log_store.round_path(tmp_path / "a", 1), path)
    manifest = log_files.import_log(path, tmp_path / "b", 1, max_record_bytes=bound, report=None)
    assert manifest["num_records"] == N_GOOD
    back = list(log_store.open_round(log_store.round_path(tmp_path / "b", 1)))
    assert [r.to_bytes() for r in back] == [LogRecord.from_dict(g).to_bytes() for g in records]
    manifest = log_files.import_log(path, tmp_path / "c", 1, report=None)
    assert manifest["num_records"] == N_GOOD - 1 and manifest["quarantine"] == {logs.TOO_LARGE: 1}
    assert manifest["first_quarantined"]["position"] == f"{path}:4"
