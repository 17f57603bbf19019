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
    with pytest.raises(ConfigError, match=r"config\.rounds\.methods contains 'ppo', which is "
                                          r"not in config\.methods; choose from: abpo, "
                                          r"abpo_baseline_only, .*grpo, .*no_update, sft_positive"):
        validate(config)
    config = base_config()
    config.methods.abpo.anchor = "sideways"     # a method's override is validated like the field
    with pytest.raises(ConfigError, match=r"config\.methods\.abpo\.anchor='sideways'"):
        validate(config)
    config = base_config()
    config.loss.rewards = ("format", "clicks")
    with pytest.raises(ConfigError, match=r"config\.loss\.rewards contains 'clicks'"):
        validate(config)
    config = load_config("gee.py")
    config.gee.strategies = ("full-ctr", "greedy")
    with pytest.raises(ConfigError, match=r"config\.gee\.strategies contains 'greedy'"):
        validate(config)
    config = base_config()
    config.loss.format_rewards = ("tag_count", "brevity")
    with pytest.raises(ConfigError, match=r"config\.loss\.format_rewards contains 'brevity'"):
        validate(config)
    # rounds.methods is checked against the config's own method table (config.methods)
    assert set(TUPLE_CHOICES) == {"loss.rewards", "loss.format_rewards", "gee.strategies"}


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


# --- issue 14: --help after every command, one-line errors before any work -------------------


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_after_every_command(command):
    """Per command: what it does, 2-4 examples of *that* command, the fields that matter to it
    with their allowed values (CHOICES); never the demo's study section for another command."""
    cmd = cli.COMMANDS[command]
    for flag in ("--help", "-h"):
        out = run_cli(command, flag, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Unknown command line flag" not in out.stderr and "Traceback" not in out.stderr
        text = out.stdout
        assert text.startswith(f"abpo-jax {command}: {cmd.about}")
        assert f"config: configs/{cmd.config} (default" in text
        assert f"usage: abpo-jax {command} [--config=NAME|FILE]" in text
        assert f"fields for {command} (this config's values" in text
        assert "cannot read the config's fields" not in text
    assert 2 <= len(cmd.examples) <= 4
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    assert examples.count(f"abpo-jax {command}") >= 2
    if command != "demo":
        assert "demo.study" not in text and "abpo-jax demo" not in text
    # a field with a CHOICES entry shows its allowed values (or its comment already lists them)
    fields = text.split("fields for", 1)[1]
    for key, allowed in CHOICES.items():
        line = next((ln for ln in fields.splitlines() if ln.strip().startswith(f"{key}=")), None)
        if line is not None:
            assert all(str(a) in line for a in allowed), line


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_examples_are_valid_command_lines(command):
    """Every example of --help parses and validates (`--validate-only`: nothing runs)."""
    import shlex
    for example, _ in cli.COMMANDS[command].examples:
        argv = shlex.split(example)
        if argv[0] != "abpo-jax":
            continue
        out = run_cli(*argv[1:], "--validate-only", timeout=60)
        assert out.returncode == 0, (example, out.stderr)
        assert "config OK" in out.stdout and "nothing run" in out.stdout


def test_helpfull_lists_every_field_and_help_the_relevant_ones():
    text = cli.command_help("train")
    for field in ("data.dataset='ml-1m'", "loss.epsilon_low=0.2", "model.source='smollm2'",
                  "rounds.num_rounds=", "train.batch_size=", "checkpoint.max_to_keep="):
        assert field in text, field
    assert "loss.tempering='one_minus_c'" in text and "one | one_minus_c | c | threshold" in text
    assert "gee." not in text and "logs.action" not in text
    full = cli.command_help("train", full=True)
    assert "all fields" in full and "logs.action='summary'" in full and "gee." not in full
    assert len(full.splitlines()) > len(text.splitlines())
    # --config=NAME|FILE picks the config whose fields are shown; a broken one is said, not raised
    assert "model.source='tiny'" in cli.command_help("train", "configs/tiny.py")
    assert "model.source='tiny'" in cli.command_help("train", "tiny")
    assert "cannot read the config's fields" in cli.command_help("train", "configs/nope.py")
    out = run_cli("help", "demo")
    assert out.returncode == 0 and out.stdout.startswith("abpo-jax demo:")
    out = run_cli("recommend", "--helpfull")
    assert out.returncode == 0 and "all fields" in out.stdout and "logs.action=" in out.stdout


def test_typo_foreign_flag_and_tuple_hints_are_one_clean_line():
    out = run_cli("train", "--config=tiny", "--config.train.learing_rate=1e-3")
    _one_line_failure(out, "unknown config field --config.train.learing_rate; did you mean "
                      "--config.train.learning_rate?")
    assert "\\n" not in out.stderr and "\\'" not in out.stderr   # no leaked repr
    _one_line_failure(run_cli("train", "--config=tiny", "--learning_rate=1e-3"),
                      "unknown flag --learning_rate", "--config.train.learning_rate=1e-3")
    _one_line_failure(run_cli("train", "--config=tiny", "--num_generations", "4"),
                      "--config.loss.num_generations")
    _one_line_failure(run_cli("train", "--config=tiny", "--config.rounds.methods=abpo,grpo"),
                      "contains 'abpo,grpo'",
                      "a tuple is written --config.rounds.methods=\"('abpo','grpo')\"")
    _one_line_failure(run_cli("trian"), "unknown command 'trian'; did you mean 'train'?")


def test_shipped_configs_resolve_by_name_and_validate_only_runs_nothing(tmp_path):
    assert cli.resolve_config("tiny") == str(cli.CONFIG_DIR / "tiny.py")
    assert cli.resolve_config("tiny.py") == str(cli.CONFIG_DIR / "tiny.py")
    assert cli.resolve_config("configs/tiny.py:x") in ("configs/tiny.py:x",
                                                       f"{cli.CONFIG_DIR / 'tiny.py'}:x")
    own = tmp_path / "tiny.py"       # an existing file wins over the shipped one of that name
    own.write_text("from abpo_jax.config import base_config\nget_config = base_config\n")
    assert cli.resolve_config(str(own)) == str(own)
    out = run_cli("train", "--config=tiny", f"--config.run_dir={tmp_path / 'r'}",
                  "--validate-only")
    assert out.returncode == 0 and "config OK" in out.stdout and "tiny.py" in out.stdout
    assert not (tmp_path / "r").exists()          # nothing ran, nothing was written
    _one_line_failure(run_cli("train", "--config=nope", "--validate-only"),
                      "config file not found: nope", "shipped configs:", "tiny")


def _gguf_like(path: pathlib.Path, head: bytes) -> str:
    path.write_bytes(head + b"\0" * 32)
    return str(path)


# (kind, overrides, files, expected ConfigError message or None = valid)
HOSTILE_CONFIGS = [
    ("eval.ks has 0", {"eval.ks": (0,)}, False, r"config\.eval\.ks=\(0,\) is out of range"),
    ("eval.ks empty", {"eval.ks": ()}, False, r"config\.eval\.ks=\(\) is out of range"),
    ("eval.ks negative", {"eval.ks": (5, -1)}, False, r"config\.eval\.ks=\(5, -1\)"),
    ("epsilon_low 2.0", {"loss.epsilon_low": 2.0}, False,
     r"config\.loss\.epsilon_low=2\.0 is out of range; it must be in \[0, 1\)"),
    ("epsilon_low 1.0", {"loss.epsilon_low": 1.0}, False, r"config\.loss\.epsilon_low=1\.0"),
    ("epsilon_low NaN", {"loss.epsilon_low": math.nan}, False, r"config\.loss\.epsilon_low=nan"),
    ("tiny heads vs kv_heads", {"model.tiny.heads": 5}, False,
     r"config\.model\.tiny\.heads=5 is not a multiple of config\.model\.tiny\.kv_heads=2"),
    ("tiny kv_heads 0", {"model.tiny.kv_heads": 0}, False,
     r"config\.model\.tiny\.kv_heads=0 is out of range"),
    ("tiny layers 0", {"model.tiny.layers": 0}, False, r"config\.model\.tiny\.layers=0"),
    ("hf without a path", {"model.source": "hf"}, True,
     r"config\.model\.path is empty; config\.model\.source='hf' needs a Hugging Face"),
    ("hf path missing", {"model.source": "hf", "model.path": "/no/such/ckpt"}, True,
     r"config\.model\.path='/no/such/ckpt' does not exist; config\.model\.source='hf'"),
    ("hf path is a text file", {"model.source": "hf", "model.path": "README.md"}, True,
     r"config\.model\.path='README\.md' is not a directory or a \.safetensors file"),
    ("gguf without a path", {"model.source": "gguf"}, True, r"config\.model\.path is empty"),
    ("gguf path is a .bin pickle", {"model.source": "gguf", "model.path": "BIN"}, True,
     r"config\.model\.path='.*model\.bin' is not a GGUF file \(it starts with b'\\x80\\x04"),
    ("gguf path is a directory", {"model.source": "gguf", "model.path": "configs"}, True,
     r"config\.model\.path='configs' is not a file"),
    ("gguf path with GGUF magic", {"model.source": "gguf", "model.path": "GGUF"}, True, None),
    ("hf path missing, files not checked (config for another machine)",
     {"model.source": "hf", "model.path": "/no/such/ckpt"}, False, None),
    ("k_core negative", {"data.k_core": -1}, False, r"config\.data\.k_core=-1 is out of range"),
]


@pytest.mark.parametrize("kind, overrides, files, message", HOSTILE_CONFIGS,
                         ids=[case[0] for case in HOSTILE_CONFIGS])
def test_hostile_configs(tmp_path, monkeypatch, kind, overrides, files, message):
    monkeypatch.chdir(REPO)
    config = base_config()
    for path, value in overrides.items():
        if value == "BIN":
            value = _gguf_like(tmp_path / "model.bin", b"\x80\x04\x95")
        elif value == "GGUF":
            value = _gguf_like(tmp_path / "m.gguf", b"GGUF")
        section, field = path.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        node[field] = value
    if message is None:
        validate(config, files=files)
        return
    with pytest.raises(ConfigError, match=message) as e:
        validate(config, files=files)
    assert "\n" not in str(e.value)


def _one_line_failure(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_model_path_and_config_errors_are_one_line_before_any_work(tmp_path):
    bin_file = _gguf_like(tmp_path / "pytorch_model.bin", b"\x80\x04\x95")
    _one_line_failure(run_cli("train", "--config.model.source=gguf",
                              f"--config.model.path={bin_file}"),
                      "config.model.path=", "pytorch_model.bin", "is not a GGUF file")
    _one_line_failure(run_cli("demo", "--config.model.source=hf"),
                      "abpo-jax demo: config.model.path is empty")
    _one_line_failure(run_cli("eval", "--config.model.source=hf",
                              f"--config.model.path={tmp_path / 'missing'}"),
                      "config.model.path=", "does not exist")
    _one_line_failure(run_cli("train", "--config=configs/tiny.py", "--config.model.tiny.heads=5"),
                      "config.model.tiny.heads=5 is not a multiple of config.model.tiny.kv_heads")
    _one_line_failure(run_cli("eval", "--config.eval.ks=(0,)"), "config.eval.ks=(0,)")
    _one_line_failure(run_cli("train", "--config.loss.epsilon_low=2.0"),
                      "config.loss.epsilon_low=2.0 is out of range")


_RERE_HEADER = ("user_id,item_asins,item_asin,history_item_id,item_id,history_item_title,"
                "item_title,history_rating,rating,history_timestamp,timestamp\n")


def test_cli_data_errors_are_one_line(tmp_path):
    amazon = ("--config.data.dataset=amazon2018",)
    _one_line_failure(run_cli("data", *amazon, f"--config.data.path={tmp_path / 'nope'}"),
                      "abpo-jax data:", "nope: file or directory not found")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    _one_line_failure(run_cli("data", *amazon, f"--config.data.path={tmp_path / 'x.csv'}"),
                      "not an Amazon 2018 CSV this loader reads")
    rows = "".join(f'u{k},"[\'A\']",B,"[0]",1,"[\'a\']",b,"[5.0]",4.0,"[{k}]",{k + 1}\n'
                   for k in range(4))
    (tmp_path / "S_test.csv").write_text(_RERE_HEADER + rows)
    (tmp_path / "S_info.txt").write_text("a\t0\nb\t1\n")
    out = run_cli("data", *amazon, f"--config.data.path={tmp_path / 'S_test.csv'}")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "abpo-jax data: config.data.k_core=5 removed every interaction" in out.stderr


@pytest.mark.skipif(not (REPO.parent / "shared/data/amazon2018/Office_Products_test.csv").is_file(),
                    reason="Amazon 2018 sample only in the team checkout (../shared/data)")
def test_cli_data_warns_in_one_line_when_k_core_removes_most():
    out = run_cli("data", "--config.data.dataset=amazon2018",
                  f"--config.data.path={REPO.parent / 'shared/data/amazon2018'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("abpo-jax data: warning: config.data.k_core=5 kept 1,183 of 3,231 users (37%) and "
            "7,548 of 22,447 interactions (34%)") in out.stderr
    assert "UserWarning" not in out.stderr and "warnings.warn" not in out.stderr
