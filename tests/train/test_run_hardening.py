"""Hostile run dirs and checkpoints: each kind gets its expected outcome, nothing silently lost.

One tiny reference run (1 round of ABPO, a checkpoint after every step) is finished once; each
case copies its run dir, breaks it the way the table says, re-runs it in-process and checks the
outcome: `recovered` (warning, then the same final parameters and metric rows as the reference),
or `refused` (a one-line user error naming the file or field, the checkpoints untouched).

CORPUS (kind -> expected outcome):
"""

import errno
import json
import pathlib
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from test_rounds import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]

CORPUS = {
    # checkpoints
    "bit flip in the newest checkpoint's data": "recovered: sha256 mismatch, older checkpoint",
    "newest checkpoint truncated": "recovered: older checkpoint",
    "checksum manifest deleted (others have one)": "recovered: older checkpoint",
    "checksum manifest garbage": "recovered: older checkpoint",
    "foreign file added to a checkpoint": "recovered: older checkpoint",
    "every checkpoint bit-flipped": "recovered: restart from round 0, same result",
    # round logs a mid-update resume needs
    "corrupt round-log shard (mid-update)": "refused: names the shard, checkpoints kept",
    "corrupt round-log manifest (mid-update)": "refused: names the manifest, checkpoints kept",
    "round-log dir deleted (mid-update)": "recovered: older checkpoint re-logs the round",
    # metrics.jsonl
    "metrics.jsonl deleted": "recovered: rebuilt from checkpoint meta",
    "metrics.jsonl torn last line": "recovered: rebuilt from checkpoint meta",
    "metrics.jsonl binary garbage": "recovered: rebuilt from checkpoint meta",
    "metrics.jsonl duplicated rows": "recovered: one row per (round, method)",
    "resume after a kill mid-update": "recovered: no duplicate rows",
    # config stored with the run
    "same run dir, different config": "refused: names the differing field",
    "different config + resume_mismatch=allow": "recovered: resumes under the new config",
    "output-only fields changed": "recovered: not a mismatch",
    "config.json garbage": "refused: names config.json",
    "config.json deleted (older run dir)": "recovered: config recorded again",
    # the run dir itself
    "run_dir is a file": "refused: not writable, names the path",
    "run_dir below a file": "refused: not writable, names the path",
    "run_dir on a read-only fs (/sys)": "refused: CLI one line, before any work",
    "run_dir full (ENOSPC on the probe)": "refused: not writable, No space left",
    "ENOSPC raised mid-run": "refused: CLI one line naming the path",
    "tensorstore-style wrapped ENOSPC": "refused: CLI one line",
    # sizes checked before data preparation
    "batch_size/grad_accum not divisible by data*fsdp": "refused: ConfigError, no data prepared",
    "batch_size not divisible by grad_accum": "refused: ConfigError, no data prepared",
    "mesh.data larger than the devices": "refused: ConfigError names config.mesh",
    "eval.batch_size not divisible by data*fsdp": "refused: ConfigError, no data prepared",
    "users_per_round < batch_size": "refused: ConfigError, no data prepared",
    # simulator cache
    "simulator cache truncated": "recovered: refit with a warning naming the file",
    "simulator cache garbage": "recovered: refit with a warning naming the file",
    "simulator cache missing an array": "recovered: refit with a warning naming the file",
}
__doc__ += "\n".join(f"    {k}: {v}" for k, v in CORPUS.items())


def _config(run_dir, sim_cache):
    c = tiny_config(run_dir, sim_cache)
    c.rounds.num_rounds = 1
    c.rounds.methods = ("abpo",)
    c.data.users_per_round = 24   # 3 update steps of 8
    c.train.sft_steps = 2
    c.checkpoint.every_steps = 1
    c.checkpoint.max_to_keep = 20
    c.outputs.plots = False
    c.outputs.tensorboard = False
    return c


def _run(config):
    from abpo_jax.train import rounds
    from abpo_jax.train.experiment import build
    run = build(config, devices=jax.devices()[:1])
    rows = rounds.run(run)
    params = [np.asarray(x) for x in jax.tree.leaves(
        run.ckpt.restore_latest(run.layout.abstract).state["methods"]["abpo"]["params"])]
    return rows, params


def _key_rows(rows):
    return [(r["round"], r["method"], r["hr@1"], r["ndcg@5"]) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    sim = tmp_path_factory.mktemp("sim")
    run_dir = tmp_path_factory.mktemp("reference")
    rows, params = _run(_config(run_dir, sim))
    return run_dir, sim, rows, params


def _copy(reference, tmp_path) -> pathlib.Path:
    dst = tmp_path / "run"
    shutil.copytree(reference[0], dst)
    return dst


def _steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _step_dir(run_dir, step):
    return run_dir / "checkpoints" / str(step)


def _meta(run_dir, step):
    return json.loads((_step_dir(run_dir, step) / "meta" / "metadata").read_text())


def _data_files(step_dir):
    return sorted((f for f in (step_dir / "state").rglob("*") if f.is_file()),
                  key=lambda f: -f.stat().st_size)


def _flip(path, at=0.5):
    b = bytearray(path.read_bytes())
    b[int(len(b) * at)] ^= 0x10
    path.write_bytes(bytes(b))


def _resume_equals(reference, run_dir, expect_warning=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, params = _run(_config(run_dir, reference[1]))
    messages = " | ".join(str(w.message) for w in caught)
    if expect_warning:
        assert expect_warning in messages, messages
    for a, b in zip(params, reference[3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert _key_rows(rows) == _key_rows(reference[2])
    file_rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert _key_rows(file_rows) == _key_rows(reference[2])   # file rebuilt, no duplicates
    return messages


def _make_mid_update(run_dir):
    """Drop the checkpoints after the newest mid-update one: a run killed mid-update."""
    steps = _steps(run_dir)
    mid = [s for s in steps if _meta(run_dir, s)["phase"] == "update"]
    for s in steps:
        if s > mid[-1]:
            shutil.rmtree(_step_dir(run_dir, s))
    return mid[-1]


def _snapshot(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}


# --- checkpoints ---------------------------------------------------------------------------------

def test_reference_checkpoints_carry_checksums_and_rows(reference):
    run_dir = reference[0]
    for s in _steps(run_dir):
        assert (_step_dir(run_dir, s) / "abpo_sha256.json").is_file(), s
    assert len(_meta(run_dir, _steps(run_dir)[-1])["metrics"]) == 2
    assert (run_dir / "config.json").is_file()


def test_bit_flip_in_checkpoint_is_detected_and_falls_back(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    _flip(_data_files(_step_dir(run_dir, _steps(run_dir)[-1]))[0])
    _resume_equals(reference, run_dir, "sha256 mismatch")


def test_truncated_checkpoint_falls_back(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    f = _data_files(_step_dir(run_dir, _steps(run_dir)[-1]))[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _resume_equals(reference, run_dir, "falling back")


@pytest.mark.parametrize("damage", ["deleted", "garbage", "foreign file"])
def test_damaged_checksum_manifest_falls_back(reference, tmp_path, damage):
    run_dir = _copy(reference, tmp_path)
    newest = _step_dir(run_dir, _steps(run_dir)[-1])
    if damage == "deleted":
        (newest / "abpo_sha256.json").unlink()
    elif damage == "garbage":
        (newest / "abpo_sha256.json").write_bytes(b"\xff\x00{not json")
    else:
        (newest / "state" / "notes.txt").write_text("hello")
    _resume_equals(reference, run_dir, "falling back")


def test_every_checkpoint_corrupt_restarts_to_the_same_result(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    for s in _steps(run_dir):
        _flip(_data_files(_step_dir(run_dir, s))[0])
    _resume_equals(reference, run_dir, "sha256 mismatch")


# --- round logs a mid-update resume needs ------------------------------------------------------

@pytest.mark.parametrize("what", ["shard", "manifest"])
def test_corrupt_round_log_is_named_and_checkpoints_kept(reference, tmp_path, what):
    from abpo_jax.train.checkpoint import RunDirError
    run_dir = _copy(reference, tmp_path)
    _make_mid_update(run_dir)
    round_dir = run_dir / "logs" / "abpo" / "round_00001"
    manifest = json.loads((round_dir / "manifest.json").read_text())
    target = (round_dir / manifest["shards"][0]["path"] if what == "shard"
              else round_dir / "manifest.json")
    _flip(target, 0.3) if what == "shard" else target.write_text("{torn")
    before = _snapshot(run_dir)
    with pytest.raises(RunDirError) as e:
        _run(_config(run_dir, reference[1]))
    msg = str(e.value)
    assert str(target) in msg and "\n" not in msg
    assert "every checkpoint is kept" in msg and f"delete {round_dir}" in msg
    assert _snapshot(run_dir) == before   # nothing redone, nothing rotated out


def test_deleted_round_log_relogs_from_an_older_checkpoint(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    _make_mid_update(run_dir)
    shutil.rmtree(run_dir / "logs" / "abpo" / "round_00001")
    _resume_equals(reference, run_dir, "which is gone")


# --- metrics.jsonl ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "torn", "garbage", "duplicated"])
def test_metrics_file_is_rebuilt_and_deduplicated(reference, tmp_path, damage):
    run_dir = _copy(reference, tmp_path)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    if damage == "deleted":
        path.unlink()
    elif damage == "torn":
        path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 100)
    else:
        path.write_text("\n".join(lines + lines) + "\n")
    _resume_equals(reference, run_dir)


def test_metrics_writer_cannot_tear_and_replaces_rows(tmp_path):
    from abpo_jax.train.outputs import MetricsWriter
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"round": 0, "method": "a", "x": 1.0})
    w.write({"round": 0, "method": "a", "x": 2.0})
    w.write({"round": 1, "method": "a", "x": 3.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["x"] for ln in lines] == [2.0, 3.0]
    # an old torn tail is dropped on load, the next write does not glue onto it
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:7])
    w2 = MetricsWriter(tmp_path, tensorboard=False)
    w2.merge([{"round": 1, "method": "a", "x": 3.0}])
    w2.write({"round": 2, "method": "a", "x": 4.0})
    assert [r["x"] for r in w2.rows()] == [2.0, 3.0, 4.0]
    assert [json.loads(ln)["x"] for ln in
            (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2.0, 3.0, 4.0]
    assert not list(tmp_path.glob(".*tmp"))


def test_resume_mid_update_has_no_duplicate_rows(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    _make_mid_update(run_dir)
    _resume_equals(reference, run_dir)


# --- config stored with the run -------------------------------------------------------------------

def test_different_config_is_refused_naming_the_field(reference, tmp_path):
    from abpo_jax.train.checkpoint import RunDirError
    run_dir = _copy(reference, tmp_path)
    c = _config(run_dir, reference[1])
    c.loss.beta = 0.5
    before = _snapshot(run_dir)
    with pytest.raises(RunDirError, match=r"loss\.beta: 0\.04 -> 0\.5") as e:
        _run(c)
    assert "resume_mismatch=allow" in str(e.value) and "\n" not in str(e.value)
    assert _snapshot(run_dir) == before


def test_different_config_allowed_explicitly(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    c = _config(run_dir, reference[1])
    c.eval.ks = (1, 5)
    c.checkpoint.resume_mismatch = "allow"
    with pytest.warns(UserWarning, match="changed config"):
        _run(c)
    assert json.loads((run_dir / "config.json").read_text())["eval"]["ks"] == [1, 5]


def test_output_only_fields_are_not_a_mismatch(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    c = _config(run_dir, reference[1])
    c.outputs.plots, c.outputs.progress = True, True
    c.train.compile_cache_dir = "off"
    rows, _ = _run(c)
    assert _key_rows(rows) == _key_rows(reference[2])


def test_garbage_config_json_falls_back_to_the_checkpoint_record(reference, tmp_path):
    """The checkpoints' meta records the run's config too: a damaged config.json is checked
    against (and rebuilt from) that record, so a different config is still refused."""
    from abpo_jax.train.checkpoint import RunDirError
    run_dir = _copy(reference, tmp_path)
    (run_dir / "config.json").write_bytes(b"\xff\xfe garbage")
    c = _config(run_dir, reference[1])
    c.loss.beta = 0.5
    with pytest.raises(RunDirError, match=r"loss\.beta: 0\.04 -> 0\.5; recorded in checkpoint"):
        _run(c)
    _resume_equals(reference, run_dir)    # the same config: resumes, config.json rewritten
    assert json.loads((run_dir / "config.json").read_text())["loss"]["beta"] == 0.04


def test_missing_config_json_is_recorded_again(reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    (run_dir / "config.json").unlink()
    _resume_equals(reference, run_dir)
    assert (run_dir / "config.json").is_file()


def test_config_recorded_before_a_run_can_be_fixed(tmp_path):
    """A config error before any run state leaves no mismatch behind (fix and re-run works)."""
    from abpo_jax.train.checkpoint import check_run_config
    c = _config(tmp_path / "r", tmp_path / "sim")
    (tmp_path / "r").mkdir()
    check_run_config(c)
    c.loss.beta = 0.3
    check_run_config(c)   # no checkpoints / logs / metrics yet: just re-recorded
    assert json.loads((tmp_path / "r" / "config.json").read_text())["loss"]["beta"] == 0.3


# --- the run dir itself ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "below a file"])
def test_unwritable_run_dir_is_refused_before_any_work(tmp_path, kind, monkeypatch):
    from abpo_jax.train import experiment
    from abpo_jax.train.checkpoint import RunDirError
    (tmp_path / "f").write_text("x")
    run_dir = tmp_path / "f" if kind == "file" else tmp_path / "f" / "run"
    monkeypatch.setattr(experiment, "prepare_data", lambda *a: pytest.fail("data prepared"))
    with pytest.raises(RunDirError, match="not writable") as e:
        experiment.build(_config(run_dir, tmp_path / "sim"), devices=jax.devices()[:1])
    assert str(run_dir) in str(e.value)


def test_full_run_dir_is_refused(tmp_path, monkeypatch):
    from abpo_jax.train import checkpoint
    real_open = open

    def full(path, mode="r", *a, **k):
        if ".abpo_write_probe" in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(checkpoint.RunDirError, match="No space left on device"):
        checkpoint.check_writable(tmp_path / "run")


def test_cli_read_only_run_dir_is_one_line_before_any_work():
    out = subprocess.run(
        [sys.executable, "-m", "abpo_jax", "train", f"--config={ROOT / 'configs/tiny.py'}",
         "--config.run_dir=/sys/abpo_hardening_probe/run"], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "/sys/abpo_hardening_probe" in lines[0] and "not permitted" in lines[0], lines[0]


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl"),
    ValueError("INTERNAL: Error writing to file /runs/x/checkpoints/3/d/abc: "
               "No space left on device [OS error 28]\n" + "tensorstore frame\n" * 500),
])
def test_cli_disk_errors_are_one_line(exc):
    from abpo_jax.cli import disk_error_line
    wrapped = RuntimeError("async save failed")
    wrapped.__cause__ = exc
    line = disk_error_line(wrapped)
    assert line is not None and "\n" not in line and "No space left on device" in line
    assert "/runs/x/" in line
    assert disk_error_line(RuntimeError("something else")) is None


# --- sizes before data preparation --------------------------------------------------------------

@pytest.mark.parametrize("field,value,devices,match", [
    ("train.batch_size", 6, 4, r"batch_size/grad_accum=6 must be divisible by .*data\*fsdp=4"),
    ("train.grad_accum", 3, 1, r"divisible by config.train.grad_accum=3"),
    ("mesh.data", 4, 1, r"config.mesh \(data=4"),
    ("eval.batch_size", 6, 4, r"config.eval.batch_size=6"),
    ("data.users_per_round", 4, 1, r"users_per_round=4"),
])
def test_sizes_are_checked_before_data_preparation(tmp_path, monkeypatch, field, value,
                                                   devices, match):
    from abpo_jax.config import ConfigError
    from abpo_jax.train import experiment
    c = _config(tmp_path / "run", tmp_path / "sim")
    section, name = field.split(".")
    c[section][name] = value
    if devices > 1:
        c.mesh.fsdp = -1
    monkeypatch.setattr(experiment, "prepare_data", lambda *a: pytest.fail("data prepared"))
    with pytest.raises(ConfigError, match=match):
        experiment.build(c, devices=jax.devices()[:devices])


# --- simulator cache -----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing array"])
def test_damaged_simulator_cache_is_refit_with_a_warning(tmp_path, damage):
    from abpo_jax.data.datasets import DataWarning
    from abpo_jax.sim.users import load_or_fit_preferences
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 300), rng.integers(0, 30, 300)
    kw = dict(cache_dir=tmp_path, dim=4, steps=5, seed=0)
    fresh = load_or_fit_preferences(users, items, 20, 30, **kw)
    (path,) = tmp_path.glob("prefs-*.npz")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    else:
        np.savez(path, user_factors=fresh.user_factors)
    with pytest.warns(DataWarning, match=str(path).replace(".", r"\.")):
        again = load_or_fit_preferences(users, items, 20, 30, **kw)
    np.testing.assert_array_equal(again.item_factors, fresh.item_factors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the refit rewrote the cache: read cleanly now
        load_or_fit_preferences(users, items, 20, 30, **kw)
