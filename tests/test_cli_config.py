"""The lead's config validation and CLI: bad values fail naming the field and the allowed values,
`--config.a.b=` overrides reach the command, and `python -m abpo_jax data` runs."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from abpo_jax import cli
from helpers import load_config

from abpo_jax.config import CHOICES, TUPLE_CHOICES, ConfigError, base_config, validate

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "abpo_jax", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_default_and_shipped_configs_validate():
    validate(base_config())
    for path in sorted((REPO / "configs").glob("*.py")):
        validate(load_config(path.name))


@pytest.mark.parametrize("path", sorted(CHOICES))
def test_bad_choice_names_field_and_allowed_values(path):
    # the gee section lives in its own config file
    config = load_config("gee.py") if path.startswith("gee.") else base_config()
    section, field = path.rsplit(".", 1)
    node = config
    for part in section.split("."):
        node = node[part]
    node[field] = "bogus"
    with pytest.raises(ConfigError) as e:
        validate(config)
    message = str(e.value)
    assert f"config.{path}='bogus'" in message
    assert all(str(v) in message for v in CHOICES[path])


@pytest.mark.parametrize("path, value, allowed", [
    ("data.history_len", 0, "> 0"),
    ("data.num_candidates", 1, ">= 2"),
    ("data.k_core", -1, ">= 0"),
    ("loss.tempering_threshold", 1.5, "in [0, 1]"),
    ("sim.external_ignore", -0.1, "in [0, 1]"),
    ("loss.beta", math.nan, ">= 0"),          # NaN must not slip through a comparison
    ("train.batch_size", 0, "> 0"),
    ("mesh.fsdp", 0, "-1 (fill) or >= 1"),
    ("mesh.data", -2, "-1 (fill) or >= 1"),
    ("logs.max_bad_fraction", 2.0, "in [0, 1]"),
])
def test_out_of_range_names_field_and_range(path, value, allowed):
    config = base_config()
    section, field = path.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=re.escape(f"config.{path}=") + ".*" +
                       re.escape(f"it must be {allowed}")):
        validate(config)


def test_bad_tuple_entry_names_field_and_choices():
    config = base_config()
    config.rounds.methods = ("abpo", "ppo")
    with pytest.raises(ConfigError, match=r"config\.rounds\.methods contains 'ppo'.*"
                                          r"abpo, grpo, anchor_no_snips, sft_positive, no_update"):
        validate(config)
    config = base_config()
    config.loss.rewards = ("format", "clicks")
    with pytest.raises(ConfigError, match=r"config\.loss\.rewards contains 'clicks'"):
        validate(config)
    config = load_config("gee.py")
    config.gee.strategies = ("full-ctr", "greedy")
    with pytest.raises(ConfigError, match=r"config\.gee\.strategies contains 'greedy'"):
        validate(config)
    assert set(TUPLE_CHOICES) == {"rounds.methods", "loss.rewards", "gee.strategies"}


def test_cli_usage_and_unknown_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout
    out = run_cli("frobnicate")
    assert out.returncode != 0 and "unknown command 'frobnicate'" in out.stderr


def test_cli_rejects_bad_override_naming_field():
    out = run_cli("data", "--config.data.dataset=movielens")
    assert out.returncode != 0
    assert ("config.data.dataset='movielens' is not allowed; choose one of: ml-1m, ml-100k, "
            "amazon2018, amazon2023") in out.stderr
    out = run_cli("data", "--config.data.num_candidates=1")
    assert out.returncode != 0 and "config.data.num_candidates=1 is out of range" in out.stderr
    out = run_cli("data", "--config.data.no_such_field=3")
    assert out.returncode != 0 and "unknown config field" in out.stderr
    assert "no_such_field" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("data", "--config=configs/no_such_config.py")
    assert out.returncode != 0 and "config file not found: configs/no_such_config.py" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_overrides_reach_the_command():
    out = run_cli("data", "--config.data.dataset=ml-100k", "--config.data.history_len=3",
                  "--config.data.num_candidates=4", "--config.model.source=tiny",
                  "--config.rounds.num_rounds=1")
    assert out.returncode == 0, out.stderr
    assert "ml-100k" in out.stdout and "H=3, C=4, style=ids_only" in out.stdout
    match = re.search(r"<history> ([\d ]+) </history> <candidates> ([\d ]+) </candidates>",
                      out.stdout)
    assert match, out.stdout
    assert len(match.group(1).split()) == 3 and len(match.group(2).split()) == 4
    assert "round 1 (fresh users)" in out.stdout and "round 2" not in out.stdout


def test_python_m_abpo_jax_data_runs_on_movielens_1m():
    out = run_cli("data")
    assert out.returncode == 0, out.stderr
    for text in ("ml-1m", "6,040", "3,706", "1,000,209", "Candidates (ID: title):",
                 "<item_id>"):
        assert text in out.stdout
