"""The `abpo-jax` command line (also `python -m abpo_jax`).

    abpo-jax <command> [--config=configs/<name>.py] [--config.a.b=value ...]

Each command has a default config (below); `--config` picks another file and `--config.x=y`
overrides single fields (ml_collections config_flags). The config is validated before the
command runs, so a bad value fails fast naming the field.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from typing import Callable

# command -> (module:function taking the validated ConfigDict, default config file, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("abpo_jax.train.rounds:main", "demo.py",
             "continual ABPO rounds on MovieLens-1M + SmolLM2 sized for a CPU"),
    "train": ("abpo_jax.train.rounds:main", "ml1m.py", "continual update rounds"),
    "data": ("abpo_jax.data.summary:main", "demo.py",
             "dataset statistics, split sizes and a sample prompt"),
    "eval": ("abpo_jax.eval.evaluate:main", "demo.py", "evaluate a checkpoint or the base model"),
    "recommend": ("abpo_jax.sampling.recommend:main", "demo.py",
                  "print the policy's constrained recommendation for real prompts"),
    "logs": ("abpo_jax.data.logs_cli:main", "demo.py",
             "validate / import / export bandit logs"),
    "gee": ("abpo_jax.gee.loop:main", "gee.py", "Generative Explore-Exploit pool optimisation"),
    "bench": ("abpo_jax.bench:main", "bench.py", "benchmarks (table + JSON)"),
}

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _usage() -> str:
    lines = ["usage: abpo-jax <command> [--config=FILE] [--config.a.b=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}  (default: configs/{cfg})"
              for name, (_, cfg, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: dispatch `argv[1]` to its command with the parsed config."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = argv[1]
    if command not in COMMANDS:
        sys.exit(f"abpo-jax: unknown command {command!r}\n\n{_usage()}")
    target, default_cfg, _ = COMMANDS[command]
    rest = argv[2:]
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        rest = [f"--config={CONFIG_DIR / default_cfg}"] + rest
    for i, a in enumerate(rest):
        path = a.split("=", 1)[1] if a.startswith("--config=") else (
            rest[i + 1] if a == "--config" and i + 1 < len(rest) else None)
        # ml_collections defers a missing file's error to first use; fail here instead
        if path is not None and not pathlib.Path(path.split(":", 1)[0]).is_file():
            sys.exit(f"abpo-jax {command}: config file not found: {path} "
                     f"(the shipped ones are in {CONFIG_DIR})")

    from absl import flags
    from ml_collections import config_flags

    from abpo_jax.config import ConfigError, validate

    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                    lock_config=True)

    try:  # parse here, not in app.run, so a bad override is one clear line, not a traceback
        flags.FLAGS([f"abpo-jax {command}"] + rest)
    except (KeyError, AttributeError) as e:
        sys.exit(f"abpo-jax {command}: unknown config field in overrides: {e}")
    except (flags.Error, ValueError, TypeError) as e:
        sys.exit(f"abpo-jax {command}: {e}")
    config = flags.FLAGS.config
    try:
        validate(config)
    except ConfigError as e:
        sys.exit(f"abpo-jax {command}: {e}")
    _resolve(target)(config)

if __name__ == "__main__":
    run()
