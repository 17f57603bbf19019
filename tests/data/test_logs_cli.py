"""`abpo-jax logs` actions through `logs_cli.main(config)`."""

import json
import sys

import pytest

sys.path.insert(0, __import__("os").path.dirname(__file__))
from test_logs_store import good_record  # noqa: E402

from abpo_jax.config import base_config
from abpo_jax.data import log_store, logs_cli


def config(tmp_path, **logs_fields):
    c = base_config()
    c.run_dir = str(tmp_path / "run")
    for k, v in logs_fields.items():
        c.logs[k] = v
    return c


def test_import_summary_export_validate(tmp_path, capsys):
    src = tmp_path / "prod.jsonl"
    lines = [json.dumps(good_record(i)) for i in range(40)] + ["{broken"]
    src.write_text("\n".join(lines) + "\n")
    logs_cli.main(config(tmp_path, action="import", input=str(src), num_items=100))
    logs_cli.main(config(tmp_path, action="import", input=str(src), num_items=100))
    rounds = log_store.list_rounds(tmp_path / "run" / "logs")
    assert [p.name for p in rounds] == ["round_00000", "round_00001"]
    logs_cli.main(config(tmp_path))
    out = capsys.readouterr().out
    assert "round_00001" in out and "ok" in out and "corrupt" in out
    dst = tmp_path / "out.csv"
    logs_cli.main(config(tmp_path, action="export", output=str(dst)))
    assert len(dst.read_text().splitlines()) == 41
    logs_cli.main(config(tmp_path, action="validate", input=str(src)))
    quarantine = (tmp_path / "prod.quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == 1 and json.loads(quarantine[0])["position"] == f"{src}:41"


def test_too_many_bad_records_exit_with_message(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(json.dumps(good_record(i, outcome=3)) for i in range(5)))
    with pytest.raises(SystemExit, match="max_bad_fraction"):
        logs_cli.main(config(tmp_path, action="import", input=str(src)))
    with pytest.raises(SystemExit, match="choose one of"):
        logs_cli.main(config(tmp_path, action="nope"))
