"""Hostile-input leftovers (issue 26): a blank request id and control characters (NUL) in the
identity fields are quarantined, never stored; `logs validate` writes its quarantine where it
is told (or the temp dir), never beside the input, and says what it checked against."""

import json
import re

import pytest

from abpo_jax.config import base_config
from abpo_jax.data import log_files, log_store, logs, logs_cli

from .logs_helpers import good_record

BAD = [("request_id", "   ", "is blank (whitespace only)"),
       ("request_id", "\t\n", "is blank (whitespace only)"),
       ("policy_revision", "rev\x00a", "control character U+0000"),
       ("request_id", "r\x1b[31m", "control character U+001B")]


@pytest.mark.parametrize("field, value, message", BAD)
def test_blank_or_control_identifiers_are_invalid(field, value, message):
    with pytest.raises(logs.BadRecord, match=re.escape(message)) as e:
        logs.validate_record(good_record(0, **{field: value}))
    assert e.value.reason == logs.INVALID_VALUE
    logs.validate_record(good_record(0, request_id=" padded id ", policy_revision="rev a"))


def test_they_are_quarantined_on_import_and_the_rest_stored(tmp_path):
    src = tmp_path / "prod.jsonl"
    records = [good_record(i) for i in range(40)]
    for i, (field, value, _) in enumerate(BAD):
        records[i][field] = value
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = log_files.import_log(src, tmp_path / "logs", 1, max_bad_fraction=0.2)
    assert manifest["num_records"] == 36 and manifest["num_quarantined"] == 4
    stored = list(log_store.open_round(log_store.round_path(tmp_path / "logs", 1)))
    assert all(r.request_id.strip() and "\x00" not in r.policy_revision for r in stored)
    q = (log_store.round_path(tmp_path / "logs", 1) / log_store.QUARANTINE).read_text()
    assert [json.loads(ln)["reason"] for ln in q.splitlines()] == ["invalid_value"] * 4


def test_validate_without_an_output_leaves_the_input_directory_alone(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(logs_cli.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    src = inbox / "prod.jsonl"
    src.write_text("".join(json.dumps(good_record(i)) + "\n" for i in range(20)) + "{broken\n")
    c = base_config()
    c.run_dir = str(tmp_path / "nowhere")
    c.logs.action, c.logs.input = "validate", str(src)
    logs_cli.main(c)
    out = capsys.readouterr().out
    assert [p.name for p in inbox.iterdir()] == ["prod.jsonl"]
    kept = tmp_path / "tmp" / "abpo_jax-validate-prod.quarantine.jsonl"
    assert f"quarantined records: {kept}" in out and len(kept.read_text().splitlines()) == 1
    assert "20 record(s) valid as round 1, 1 quarantined; not checked against committed " \
           f"rounds: {tmp_path / 'nowhere' / 'logs'} holds none" in out
    c.logs.output = str(tmp_path / "q.csv")
    with pytest.raises(SystemExit, match="give a .jsonl file"):
        logs_cli.main(c)
