"""launch/tpu_train.sh: the exact gcloud commands, quoting of odd config values, errors, lint.

Two levels: `--dry-run` printouts parsed back with `shlex` (what a user would paste), and a
real run against a fake `gcloud` that plays a one-worker TPU VM on this machine (scp copies into
a fake $HOME, ssh runs `--command` in bash there), so the worker-side shell really parses the
command and a stub `abpo-jax` records the argv it received.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch" / "tpu_train.sh"
BASH = shutil.which("bash") or "/bin/bash"
BASE = ["--tpu", "my-tpu", "--zone", "us-west4-a", "--project", "my-proj"]
WHERE = ["--zone=us-west4-a", "--project=my-proj"]
ODD_VALUES = [
    "--config.data.path=/data/my dir/it's here",          # space + single quote
    '--config.run_dir=runs/"quoted" $HOME `whoami`',     # double quotes, $, backticks
    "--config.loss.rewards=('format', 'anchor_match')",  # tuple syntax, parentheses
    "--config.seed=1; rm -rf /",                          # a command separator stays literal
]


def _run(args: list[str], env: dict | None = None, check: bool = True
         ) -> subprocess.CompletedProcess:
    env = dict(env or os.environ)
    env.setdefault("ABPO_CHECK_PYTHON", sys.executable)   # validates the config (step 0)
    result = subprocess.run([BASH, str(SCRIPT), *args], cwd=ROOT, text=True,
                            capture_output=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.strip().splitlines()]


def _option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_dry_run_create_clone_install_train_commands():
    out = _run(["--dry-run", *BASE, "--repo", "https://example.org/abpo_jax.git",
                "--branch", "dev", "--create", "--spot", "--ckpt-dir", "gs://bucket/ckpt",
                "--config", "configs/ml1m.py", "--config.rounds.num_rounds=2"]).stdout
    cmds = _commands(out)
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", *WHERE,
                       "--accelerator-type=v5litepod-32", "--version=v2-alpha-tpuv5-lite",
                       "--scopes=https://www.googleapis.com/auth/cloud-platform", "--spot"]
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 3   # clone, install, train
    for c in ssh:
        assert c[5] == "my-tpu" and c[6:8] == WHERE and "--worker=all" in c
    clone, install, train = (_option(c, "--command") for c in ssh)
    assert "git clone --quiet --branch dev https://example.org/abpo_jax.git ~/abpo_jax" in clone
    assert "git -C ~/abpo_jax fetch --quiet origin dev" in clone
    assert "bash launch/install.sh --tpu" in install and "pip install --quiet gcsfs" in install
    assert "export ABPO_DISTRIBUTED=1; abpo-jax train --config=configs/ml1m.py " \
           "--config.checkpoint.dir=gs://bucket/ckpt --config.rounds.num_rounds=2 2>&1 | " \
           'tee -a "logs/train-$(hostname).log"' in train
    assert _option(ssh[2], "--output-directory") == "tpu_logs/my-tpu"
    assert ["mkdir", "-p", "tpu_logs/my-tpu"] in cmds


def test_setup_only_stops_before_training():
    cmds = _commands(_run(["--dry-run", *BASE, "--repo", "u", "--setup-only"]).stdout)
    commands = [_option(c, "--command") for c in cmds if c[4] == "ssh"]
    assert len(commands) == 2 and "install.sh" in commands[1]
    assert not any("abpo-jax" in c for c in commands)


def test_dry_run_local_copy_uses_scp_recurse_to_all_workers():
    cmds = _commands(_run(["--dry-run", *BASE, "--local", str(ROOT), "--skip-install"]).stdout)
    scp = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
    assert len(scp) == 1
    assert scp[0][5] == "--recurse" and scp[0][6].endswith("/abpo_jax")
    assert scp[0][7:] == ["my-tpu:~", *WHERE, "--worker=all"]
    assert not any("install.sh" in " ".join(c) for c in cmds)   # --skip-install


def test_odd_config_values_survive_both_shells_exactly():
    """Printout -> shlex (local shell) -> --command -> bash on the worker -> abpo-jax argv."""
    out = _run(["--dry-run", *BASE, "--skip-sync", "--skip-install", "--skip-check", ODD_VALUES[0],
                "--", *ODD_VALUES[1:]]).stdout
    train = _option(_commands(out)[-1], "--command")
    worker_argv = shlex.split(train.split("abpo-jax ", 1)[1].split(" 2>&1")[0])
    assert worker_argv == ["train", "--config=configs/ml1m_gemma3_1b_v5e32.py", *ODD_VALUES]


def _fake_tpu(tmp_path: pathlib.Path) -> tuple[dict, pathlib.Path, pathlib.Path]:
    """PATH with a fake gcloud (one worker whose $HOME is tmp/home) and the call log."""
    home, bindir, calls = tmp_path / "home", tmp_path / "bin", tmp_path / "gcloud_calls.jsonl"
    home.mkdir()
    bindir.mkdir()
    (bindir / "gcloud").write_text(f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
home = {str(home)!r}
if args[3] == "scp":
    src = args[args.index("--recurse") + 1]
    shutil.copytree(src, os.path.join(home, os.path.basename(src)), dirs_exist_ok=True)
elif args[3] == "ssh":
    command = [a for a in args if a.startswith("--command=")][0].split("=", 1)[1]
    env = dict(os.environ, HOME=home)
    sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
""")
    (bindir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    return env, home, calls


def _stub_venv(repo: pathlib.Path, argv_file: pathlib.Path) -> None:
    """A `.venv` whose `abpo-jax` only records its argv and environment."""
    vbin = repo / ".venv" / "bin"
    vbin.mkdir(parents=True)
    (vbin / "activate").write_text(f'PATH="{vbin}:$PATH"\n')
    (vbin / "abpo-jax").write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(argv_file)!r}, "w") as f:
    json.dump({{"argv": sys.argv[1:], "distributed": os.environ.get("ABPO_DISTRIBUTED")}}, f)
print("stub abpo-jax ran")
""")
    (vbin / "abpo-jax").chmod(0o755)


def test_real_run_against_fake_gcloud_local_copy(tmp_path):
    env, home, calls = _fake_tpu(tmp_path)
    argv_file = tmp_path / "argv.json"
    _stub_venv(home / "abpo_jax", argv_file)
    log_dir = tmp_path / "logs"
    result = _run([*BASE, "--local", str(ROOT), "--skip-install", "--log-dir", str(log_dir),
                   "--skip-check", *ODD_VALUES], env=env)
    copied = home / "abpo_jax"
    # tracked files arrive, ignored ones (the real .venv, caches) do not
    assert (copied / "launch" / "tpu_train.sh").read_bytes() == SCRIPT.read_bytes()
    assert (copied / "abpo_jax" / "config.py").exists()
    assert not (copied / ".venv" / "bin" / "python").exists()
    got = json.loads(argv_file.read_text())
    assert got == {"argv": ["train", "--config=configs/ml1m_gemma3_1b_v5e32.py", *ODD_VALUES],
                   "distributed": "1"}
    # the worker-side log file (one per host name) holds the command's output
    logs = list((copied / "logs").glob("train-*.log"))
    assert len(logs) == 1 and "stub abpo-jax ran" in logs[0].read_text()
    assert log_dir.is_dir() and "done" in result.stdout
    verbs = [json.loads(line)[3] for line in calls.read_text().splitlines()]
    assert verbs == ["scp", "ssh"]


def test_real_run_against_fake_gcloud_git_clone_then_fetch(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env, home, calls = _fake_tpu(tmp_path)
    upstream = tmp_path / "upstream"
    subprocess.run(["git", "init", "-q", "-b", "main", str(upstream)], check=True)
    (upstream / "hello.txt").write_text("v1\n")
    git_env = dict(env, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "-C", str(upstream), "add", "."], check=True)
    subprocess.run(["git", "-C", str(upstream), "commit", "-qm", "v1"], check=True, env=git_env)
    args = [*BASE, "--repo", str(upstream), "--skip-install", "--log-dir", str(tmp_path / "l")]
    first = _run(args, env=env, check=False)   # clones; the run step then finds no .venv
    assert (home / "abpo_jax" / "hello.txt").read_text() == "v1\n"
    assert first.returncode != 0
    _stub_venv(home / "abpo_jax", tmp_path / "argv.json")
    (upstream / "hello.txt").write_text("v2\n")
    subprocess.run(["git", "-C", str(upstream), "commit", "-qam", "v2"], check=True, env=git_env)
    _run(args, env=env)   # second run: fetch + checkout, then train
    assert (home / "abpo_jax" / "hello.txt").read_text() == "v2\n"
    assert json.loads((tmp_path / "argv.json").read_text())["argv"][0] == "train"


@pytest.mark.parametrize("drop, message", [
    ("--tpu", "missing --tpu NAME"),
    ("--zone", "missing --zone ZONE"),
    ("--project", "missing --project PROJECT"),
])
def test_missing_required_flag_fails_naming_it(drop, message):
    args = list(BASE)
    i = args.index(drop)
    del args[i:i + 2]
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "PROJECT_ID")}
    result = _run(["--dry-run", *args, "--repo", "u"], env=env, check=False)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


def test_other_bad_invocations_fail_clearly(tmp_path):
    cases = [
        (["--dry-run", *BASE], "missing --repo URL or --local DIR"),
        (["--dry-run", *BASE, "--repo", "u", "--local", "."], "either --repo or --local"),
        (["--dry-run", *BASE, "--repo", "u", "--bogus"], "unknown option '--bogus'"),
        (["--dry-run", *BASE, "--repo"], "option --repo needs a value"),
        (["--dry-run", *BASE, "--repo", "u", "--", "--seed=1"], "only --config.a.b=value"),
        (["--dry-run", *BASE, "--repo", "u", "--command", "train; ls"], "not an abpo-jax command"),
    ]
    for args, message in cases:
        result = _run(args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    # without --dry-run, a machine with no gcloud is told so before anything runs
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    result = _run([*BASE, "--repo", "u"], env=dict(os.environ, PATH=str(empty)), check=False)
    assert result.returncode == 2 and "gcloud not found" in result.stderr


def test_env_variables_stand_in_for_flags_and_help_works():
    env = dict(os.environ, TPU_NAME="env-tpu", ZONE="europe-west4-b", PROJECT_ID="p2",
               REPO_URL="https://example.org/r.git")
    cmds = _commands(_run(["--dry-run", "--skip-install"], env=env).stdout)
    assert cmds[0][5:8] == ["env-tpu", "--zone=europe-west4-b", "--project=p2"]
    help_text = _run(["--help"]).stdout
    assert help_text.startswith("usage: launch/tpu_train.sh") and "--dry-run" in help_text


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian/Ubuntu: apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/nope.py"], "config file not found: configs/nope.py"),
    (["--config.train.learing_rate=1e-3"], "did you mean --config.train.learning_rate?"),
    (["--config", "configs/tiny.py", "--config.loss.snips=maybe"],
     "config.loss.snips='maybe' is not allowed"),
])
def test_bad_config_fails_locally_before_any_gcloud_command(args, message):
    """Step 0: a missing config or a typo'd / bad field stops the launcher (also --dry-run)
    before a TPU VM is created: exit 2, the reason, and no gcloud command printed or run."""
    for mode in (["--dry-run"], []):
        result = _run([*mode, *BASE, "--repo", "u", "--create", *args],
                      env=dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:"
                               f"{os.environ.get('PATH', '')}"), check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "nothing was created" in result.stderr and not result.stdout


def test_good_config_is_validated_then_commands_follow():
    result = _run(["--dry-run", *BASE, "--repo", "u", "--config", "configs/tiny.py",
                   "--config.rounds.num_rounds=2"])
    assert "config OK (configs/tiny.py with 1 override(s)" in result.stderr
    assert result.stdout.startswith("gcloud compute tpus tpu-vm ssh")
    missing = _run(["--dry-run", *BASE, "--repo", "u"], check=False,
                   env=dict(os.environ, ABPO_CHECK_PYTHON="/no/such/python"))
    assert missing.returncode == 2 and "--skip-check" in missing.stderr
