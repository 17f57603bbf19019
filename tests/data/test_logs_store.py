"""Bandit-log schema, validation + quarantine, atomic round storage, import/export."""

import json
import math
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest

from abpo_jax.data import log_files, log_store, logs
from abpo_jax.data.logs import LogRecord, LogValidationError

from .logs_helpers import NUM_ITEMS, good_record


def malformed_corpus() -> list[tuple[object, str]]:
    """(raw record, expected reason) for every kind of bad record we guard against."""
    g = lambda i, **kw: good_record(i, **kw)
    missing = g(902)
    del missing["propensity"]
    return [
        (b"\xff\xfe\x00garbage", logs.CORRUPT),
        (json.dumps(g(900)).encode()[:37], logs.CORRUPT),            # truncated bytes
        (b"[1, 2, 3]", logs.CORRUPT),                                 # not an object
        (g(901, schema_version=2), logs.SCHEMA_MISMATCH),
        (missing, logs.MISSING_FIELD),
        (g(903, user_id="903"), logs.WRONG_TYPE),
        (g(904, candidate_item_ids=[1, "x", 3], exposed_item_id=1), logs.WRONG_TYPE),
        (g(905, propensity=0.0), logs.BAD_PROPENSITY),
        (g(906, propensity=float("nan")), logs.BAD_PROPENSITY),
        (g(907, propensity=1.5), logs.BAD_PROPENSITY),
        (g(908, outcome=2), logs.BAD_OUTCOME),
        (g(909, exposed_item_id=99 if 99 not in g(909)["candidate_item_ids"] else 0),
         logs.EXPOSED_NOT_IN_CANDIDATES),
        (g(910, candidate_item_ids=[1, 2, NUM_ITEMS + 5], exposed_item_id=1), logs.UNKNOWN_ITEM),
        (g(911, context_item_ids=[-3]), logs.UNKNOWN_ITEM),
        (g(912, candidate_item_ids=[], exposed_item_id=1), logs.EMPTY_CANDIDATES),
        (g(913, candidate_item_ids=[4, 4, 5], exposed_item_id=4), logs.DUPLICATE_CANDIDATES),
        (g(914, user_id=-1), logs.INVALID_VALUE),
        (g(915, timestamp=float("inf")), logs.INVALID_VALUE),
        (g(916, user_id=5000), logs.UNKNOWN_USER),
        (g(3), logs.DUPLICATE_REQUEST),                               # same id as good #3
    ]


def test_record_bytes_roundtrip_keeps_extras():
    r = logs.validate_record(good_record(4, slate_position=2, note="x"))
    assert r.extras == {"slate_position": 2, "note": "x"}
    assert LogRecord.from_bytes(r.to_bytes()) == r
    assert r.exposed_index == 4 % 5
    assert isinstance(r.candidate_item_ids, tuple)


def test_malformed_corpus_quarantined_with_reasons(tmp_path, capsys):
    goods = [good_record(i) for i in range(50)]
    bad = malformed_corpus()
    assert len({reason for _, reason in bad}) >= 10
    items = [(f"mem#{i}", g) for i, g in enumerate(goods)]
    items += [(f"bad#{j}", raw) for j, (raw, _) in enumerate(bad)]
    manifest = log_store.ingest(items, tmp_path, 1, catalogue=NUM_ITEMS, num_users=1000,
                                max_bad_fraction=0.5, records_per_shard=16, source="mem")
    assert manifest["num_input"] == len(items)
    assert manifest["num_records"] == len(goods)
    assert manifest["num_records"] + manifest["num_quarantined"] == manifest["num_input"]
    expected = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert manifest["quarantine"] == expected
    # Each quarantine line names its source position and the right reason.
    rdir = log_store.round_path(tmp_path, 1)
    lines = [json.loads(l) for l in (rdir / "quarantine.jsonl").read_text().splitlines()]
    assert [(l["position"], l["reason"]) for l in lines] == [
        (f"bad#{j}", reason) for j, (_, reason) in enumerate(bad)]
    # All good records come back, bit-identical, in order, across several shards.
    log = log_store.open_round(rdir)
    assert len(log.manifest["shards"]) == math.ceil(50 / 16)
    assert [r.to_dict() for r in log] == goods
    assert manifest["policy_revision"] == "rev-a"
    out = capsys.readouterr().out
    assert "quarantined" in out and logs.BAD_PROPENSITY in out


def test_too_many_bad_records_stop_with_clear_error(tmp_path):
    items = [(f"m#{i}", good_record(i)) for i in range(10)]
    items += [(f"b#{i}", good_record(100 + i, outcome=5)) for i in range(2)]
    with pytest.raises(LogValidationError, match=r"2 of 12 records are bad.*max_bad_fraction"):
        log_store.ingest(items, tmp_path, 1, max_bad_fraction=0.1, report=None)
    assert log_store.list_rounds(tmp_path) == []
    assert not log_store.round_path(tmp_path, 1).exists()
    rejected = list((tmp_path / "rejected").glob("*.jsonl"))
    assert len(rejected) == 1 and len(rejected[0].read_text().splitlines()) == 2
    # Under the limit the same input is committed.
    log_store.ingest(items, tmp_path, 1, max_bad_fraction=0.2, report=None)
    assert len(log_store.open_round(log_store.round_path(tmp_path, 1))) == 10


def test_exception_mid_write_leaves_no_round(tmp_path):
    def records():
        for i in range(100):
            if i == 60:
                raise RuntimeError("injected crash")
            yield good_record(i, round=2)

    with pytest.raises(RuntimeError, match="injected"):
        log_store.write_round(records(), tmp_path, 2, records_per_shard=16, report=None)
    assert list(tmp_path.iterdir()) == []
    assert log_store.list_rounds(tmp_path) == []


def test_killed_writer_leaves_no_complete_round(tmp_path):
    marker = tmp_path / "marker"
    logs_dir = tmp_path / "logs"
    script = textwrap.dedent(f"""
        import pathlib, time, sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from logs_helpers import good_record
        from abpo_jax.data import log_store
        def records():
            for i in range(10**6):
                if i == 300:
                    pathlib.Path({str(marker)!r}).write_text("x")
                    time.sleep(600)
                yield good_record(i, round=3)
        log_store.write_round(records(), {str(logs_dir)!r}, 3, records_per_shard=64)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "writer died early"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = list(logs_dir.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    assert any(p.suffix == ".array_record" for p in leftovers[0].iterdir())   # shards were written
    assert log_store.list_rounds(logs_dir) == []
    with pytest.raises(LogValidationError, match="incomplete"):
        log_store.open_round(leftovers[0])
    # The next run cleans up and commits normally.
    log_store.write_round([good_record(i, round=3) for i in range(5)], logs_dir, 3, report=None)
    assert [p.name for p in logs_dir.iterdir()] == ["round_00003"]


def test_round_without_manifest_ignored_and_cleaned(tmp_path):
    log_store.write_round([good_record(i) for i in range(5)], tmp_path, 1, report=None)
    log_store.write_round([good_record(i, round=2, request_id=f"r2-{i}") for i in range(5)],
                          tmp_path, 2, report=None)
    (log_store.round_path(tmp_path, 2) / "manifest.json").unlink()
    assert log_store.list_rounds(tmp_path) == [log_store.round_path(tmp_path, 1)]
    assert log_store.clean_incomplete(tmp_path) == [log_store.round_path(tmp_path, 2)]
    with pytest.raises(FileExistsError, match=r"--config\.logs\.overwrite=True"):
        log_store.write_round([good_record(0)], tmp_path, 1, report=None)


def test_checksum_verified_on_open(tmp_path):
    log_store.write_round([good_record(i) for i in range(20)], tmp_path, 1, report=None)
    rdir = log_store.round_path(tmp_path, 1)
    shard = rdir / "shard-00000.array_record"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LogValidationError, match="sha256"):
        log_store.open_round(rdir)
    manifest = json.loads((rdir / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (rdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LogValidationError, match="schema_version"):
        log_store.open_round(rdir, verify=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_export_import_roundtrip(tmp_path, suffix):
    goods = [good_record(i, **({"campaign": "c1"} if i % 2 else {})) for i in range(30)]
    log_store.write_round(goods, tmp_path / "a", 1, report=None)
    path = tmp_path / f"export{suffix}"
    assert log_files.export_log(log_store.round_path(tmp_path / "a", 1), path) == 30
    manifest = log_files.import_log(path, tmp_path / "b", 1, catalogue=NUM_ITEMS, report=None)
    assert manifest["num_quarantined"] == 0
    back = [r.to_dict() for r in log_store.open_round(log_store.round_path(tmp_path / "b", 1))]
    assert back == goods


def test_import_handwritten_csv_reports_line_numbers(tmp_path):
    path = tmp_path / "prod.csv"
    path.write_text(
        "request_id,round,policy_revision,user_id,context_item_ids,candidate_item_ids,"
        "exposed_item_id,propensity,outcome,timestamp,region\n"
        "a,0,prod-7,1,3 4,5;6;7,6,0.25,1,17.5,eu\n"
        "b,0,prod-7,2,,\"[5,6,7]\",9,0.25,0,18,eu\n"          # exposed not in candidates
        "c,0,prod-7,3,,5 6,5,abc,0,19,us\n")               # propensity not a number
    manifest = log_files.import_log(path, tmp_path / "logs", 0, max_bad_fraction=1.0,
                                    report=None)
    assert manifest["num_records"] == 1
    assert manifest["quarantine"] == {logs.EXPOSED_NOT_IN_CANDIDATES: 1, logs.WRONG_TYPE: 1}
    (rec,) = list(log_store.open_round(log_store.round_path(tmp_path / "logs", 0)))
    assert rec.context_item_ids == (3, 4) and rec.candidate_item_ids == (5, 6, 7)
    assert rec.extras == {"region": "eu"}
    q = (log_store.round_path(tmp_path / "logs", 0) / "quarantine.jsonl").read_text()
    assert f"{path}:3" in q and f"{path}:4" in q


def _ingest_peak_bytes(logs_dir, n: int) -> int:
    records = (good_record(i, request_id=f"req-{i}") for i in range(n))
    tracemalloc.start()
    manifest = log_store.write_round(records, logs_dir, 1, records_per_shard=2000, report=None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert manifest["num_records"] == n
    return peak


def test_streaming_ingest_memory_is_bounded(tmp_path):
    small = _ingest_peak_bytes(tmp_path / "a", 3_000)
    large = _ingest_peak_bytes(tmp_path / "b", 12_000)
    # Holding 9k more records would take ~3.4 MB (~380 B each); streaming grows only by the
    # request-id hashes (a set below SeenIds' buffer size, then 8 B each).
    assert large - small < 1.5e6, (small, large)


def test_seen_ids_exact_across_buffer_merges():
    seen = log_store.SeenIds(buffer_size=8)
    assert all(seen.add(f"id{i}") for i in range(100))
    assert not any(seen.add(f"id{i}") for i in range(0, 100, 7))
    assert seen.add("id100")
