"""`abpo-jax logs` actions through `logs_cli.main(config)` and the real command line."""

import json
import os
import subprocess
import sys

import pytest

from abpo_jax.config import base_config
from abpo_jax.data import log_store, logs_cli

from .logs_helpers import good_record


def config(tmp_path, **logs_fields):
    c = base_config()
    c.run_dir = str(tmp_path / "run")
    for k, v in logs_fields.items():
        c.logs[k] = v
    return c


def write_jsonl(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


def test_import_summary_export_validate(tmp_path, capsys):
    src = write_jsonl(tmp_path / "prod.jsonl", [good_record(i) for i in range(40)], ["{broken\n"])
    logs_cli.main(config(tmp_path, action="import", input=str(src), num_items=100))
    # The records say round 1: that is where they go, not "the next free round".
    rounds = log_store.list_rounds(tmp_path / "run" / "logs")
    assert [p.name for p in rounds] == ["round_00001"]
    logs_cli.main(config(tmp_path))
    out = capsys.readouterr().out
    assert "round_00001" in out and "ok" in out and "corrupt" in out
    dst = tmp_path / "out.csv"
    logs_cli.main(config(tmp_path, action="export", output=str(dst)))
    assert len(dst.read_text().splitlines()) == 41
    src2 = write_jsonl(tmp_path / "next.jsonl",
                       [good_record(i, round=2, request_id=f"r2-{i}") for i in range(29)],
                       ["{broken\n"])
    kept = tmp_path / "checked" / "next.quarantine.jsonl"
    kept.parent.mkdir()
    logs_cli.main(config(tmp_path, action="validate", input=str(src2), output=str(kept)))
    quarantine = kept.read_text().splitlines()
    assert len(quarantine) == 1 and json.loads(quarantine[0])["position"] == f"{src2}:30"
    out = capsys.readouterr().out
    assert "29 record(s) valid as round 2, 1 quarantined; no record or file already " \
           f"committed in {tmp_path / 'run' / 'logs'}" in out
    # validation writes nothing beside the input (its directory is the user's)
    assert sorted(p.name for p in tmp_path.glob("next*")) == ["next.jsonl"]


def test_too_many_bad_records_exit_with_message(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [good_record(i, outcome=3) for i in range(5)])
    with pytest.raises(SystemExit, match="none of the 5 records is valid"):
        logs_cli.main(config(tmp_path, action="import", input=str(src)))
    with pytest.raises(SystemExit, match="choose one of"):
        logs_cli.main(config(tmp_path, action="nope"))


def test_reimport_refused_in_one_line_and_overwrite_names_the_flag(tmp_path, capsys):
    src = write_jsonl(tmp_path / "prod.jsonl", [good_record(i) for i in range(10)])
    logs_cli.main(config(tmp_path, action="import", input=str(src)))
    with pytest.raises(SystemExit) as e:   # the same file into the next round
        logs_cli.main(config(tmp_path, action="import", input=str(src), round=2))
    assert "already committed as" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="already committed"):   # validate predicts it
        logs_cli.main(config(tmp_path, action="validate", input=str(src), round=2))
    with pytest.raises(SystemExit, match=r"--config\.logs\.overwrite=True"):
        logs_cli.main(config(tmp_path, action="import", input=str(src), round=1))
    # Our own CSV export of the round goes back to round 1, which is taken.
    dst = tmp_path / "r1.csv"
    logs_cli.main(config(tmp_path, action="export", output=str(dst)))
    with pytest.raises(SystemExit, match=r"round_00001 already holds.*overwrite=True"):
        logs_cli.main(config(tmp_path, action="import", input=str(dst)))
    # The same requests relabelled as round 2 in another file: refused by request id.
    relabelled = write_jsonl(tmp_path / "again.jsonl",
                             [good_record(i, round=2) for i in range(10)])
    with pytest.raises(SystemExit, match="already in committed round 1"):
        logs_cli.main(config(tmp_path, action="import", input=str(relabelled)))
    logs_cli.main(config(tmp_path, action="import", input=str(src), overwrite=True))
    assert [p.name for p in log_store.list_rounds(tmp_path / "run" / "logs")] == ["round_00001"]


def test_empty_file_commits_nothing(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    with pytest.raises(SystemExit, match="no records"):
        logs_cli.main(config(tmp_path, action="import", input=str(src)))
    assert log_store.list_rounds(tmp_path / "run" / "logs") == []


@pytest.mark.parametrize("action,fields,message", [
    ("import", {"input": "{tmp}/missing.jsonl"}, "input file not found"),
    ("validate", {"input": "{tmp}"}, "is a directory"),
    ("import", {"input": "{tmp}/notes.txt"}, "unknown log format"),
    ("import", {"input": ""}, "needs --config.logs.input"),
    ("export", {"output": "{tmp}/no/such/dir/out.csv"}, "does not exist"),
    ("export", {"output": "{tmp}/notes.txt/out.csv"}, "does not exist"),
    ("export", {"output": "/proc/out.csv"}, "cannot write /proc/out.csv"),
    ("export", {"output": "{tmp}"}, "unknown export format"),
    ("export", {"output": "{tmp}/out.parquet"}, "unknown export format"),
    ("export", {"output": "{tmp}/out.csv", "round": 7}, "no committed round 7"),
    ("import", {"input": "{tmp}/ok.jsonl", "dir": "{tmp}/notes.txt/logs"}, "not a directory"),
    ("import", {"input": "{tmp}/ok.jsonl", "dir": "/proc/logs"}, "cannot write the logs"),
])
def test_bad_paths_fail_in_one_line_before_any_work(tmp_path, action, fields, message):
    (tmp_path / "notes.txt").write_text("x")
    write_jsonl(tmp_path / "ok.jsonl", [good_record(0)])
    log_store.write_round([good_record(i) for i in range(3)], tmp_path / "run" / "logs", 1,
                          report=None)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    fields = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(SystemExit) as e:
        logs_cli.main(config(tmp_path, action=action, **fields))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # nothing written


def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "abpo_jax", "logs", "--config.logs.action=import",
         f"--config.logs.input={tmp_path / 'missing.jsonl'}", f"--config.run_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"abpo-jax logs import: input file not found: {tmp_path / 'missing.jsonl'}"]
