"""The `abpo-jax` command line (also `python -m abpo_jax`).

    abpo-jax <command> [--config=configs/<name>.py] [--config.a.b=value ...]

Each command has a default config (below); `--config` picks another file and `--config.x=y`
overrides single fields (ml_collections config_flags). The config is validated before the
command runs, so a bad value fails fast naming the field. `abpo-jax <command> --help` prints what
the command does, its config and the fields with their defaults. Errors meant for the user
(bad config, bad data file, bad checkpoint) and data warnings are printed as one line each.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import textwrap
import warnings
from typing import Any, Callable

# command -> (module:function taking the validated ConfigDict, default config file, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("abpo_jax.demo:main", "demo.py",
             "a result with CIs (tiny-policy study) + SmolLM2 through the same rounds, CPU-sized"),
    "train": ("abpo_jax.train.rounds:main", "ml1m.py", "continual update rounds"),
    "data": ("abpo_jax.data.summary:main", "demo.py",
             "dataset statistics, split sizes and a sample prompt"),
    "eval": ("abpo_jax.train.rounds:evaluate_run", "demo.py",
             "evaluate a checkpoint or the base model"),
    "recommend": ("abpo_jax.sampling.recommend:main", "demo.py",
                  "print the policy's constrained recommendation for real prompts"),
    "logs": ("abpo_jax.data.logs_cli:main", "demo.py",
             "validate / import / export bandit logs"),
    "gee": ("abpo_jax.gee.loop:main", "gee.py", "Generative Explore-Exploit pool optimisation"),
    "study": ("abpo_jax.study.runner:main", "study_tiny.py",
              "closed-loop study: methods x seeds x conditions, CIs, paired tests, results page"),
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


# Exceptions whose message is a complete sentence for the user: printed as one line, no
# traceback. Looked up only in modules already imported, so the CLI imports nothing for them.
_USER_ERRORS = {"abpo_jax.config": "ConfigError", "abpo_jax.data.datasets": "DataError",
                "abpo_jax.models.loaders": "CheckpointError",
                "abpo_jax.train.checkpoint": "RunDirError",
                "abpo_jax.data.logs": "LogValidationError"}

# OS errors that mean "this disk / directory cannot take the run's files": one line, no traceback
_DISK_ERRNOS = {"ENOSPC": "No space left on device", "EROFS": "Read-only file system",
                "EACCES": "Permission denied", "EPERM": "Operation not permitted",
                "EDQUOT": "Disk quota exceeded"}


def disk_error_line(exc: BaseException) -> str | None:
    """One line for a full / read-only / forbidden disk anywhere in `exc`'s cause chain (also
    when a library re-raised it as another type), naming the path; None for any other error."""
    import errno as errno_mod
    codes = {getattr(errno_mod, n) for n in _DISK_ERRNOS if hasattr(errno_mod, n)}
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in codes:
            where = e.filename or "(path not given)"
            reason = e.strerror or _DISK_ERRNOS.get(errno_mod.errorcode[e.errno], "OS error")
            return f"cannot write {where}: {reason}"
        text = str(e)
        for reason in _DISK_ERRNOS.values():
            if reason in text:
                first = text.strip().splitlines()[0] if text.strip() else reason
                return f"{reason}: {first[:300]}"
        e = e.__cause__ or e.__context__
    return None


def _user_error_types() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in _USER_ERRORS.items()
                 if m in sys.modules and hasattr(sys.modules[m], name))


def _one_line_warnings(command: str) -> None:
    """Print data warnings as `abpo-jax CMD: warning: ...` (other warnings keep Python's form)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if getattr(category, "__name__", "") == "DataWarning":
            print(f"abpo-jax {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _config_arg(rest: list[str]) -> str | None:
    """The value of `--config=FILE` / `--config FILE` in `rest`, if given."""
    for i, a in enumerate(rest):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(rest):
            return rest[i + 1]
    return None


def _flat_fields(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in node.items():
        if hasattr(value, "items"):
            out += _flat_fields(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def command_help(command: str, config_file: str | None = None) -> str:
    """What `command` does, its config file, the config docstring's run commands and every
    field of that config with its value, section by section."""
    _, default_cfg, about = COMMANDS[command]
    path = pathlib.Path(config_file.split(":", 1)[0]) if config_file else CONFIG_DIR / default_cfg
    lines = [f"abpo-jax {command}: {about}", "",
             f"usage: abpo-jax {command} [--config=FILE] [--config.SECTION.FIELD=VALUE ...]",
             f"config: {config_file or f'configs/{default_cfg}'}"
             + ("" if config_file else " (default)")]
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        # a backslash-newline inside the docstring already joined continued commands
        examples = [" ".join(ln.split()) for ln in doc.splitlines()
                    if ln.strip().startswith("abpo-jax")]
        if examples:
            lines += ["", "run (from the config's docstring):"] + [f"  {ln}" for ln in examples]
        from abpo_jax.config import from_file
        config = from_file(path)
    except Exception as e:  # help must not die on a broken config file; say why instead
        lines += ["", f"(cannot read the config's fields: {type(e).__name__}: {e})"]
        return "\n".join(lines)
    lines += ["", "fields (defaults of this config; override with --config.SECTION.FIELD=VALUE):"]
    top = [f"{k}={v!r}" for k, v in config.items() if not hasattr(v, "items")]
    if top:
        lines.append(textwrap.fill(" ".join(top), 100, initial_indent="  ",
                                   subsequent_indent="      "))
    for section, node in config.items():
        if hasattr(node, "items"):
            body = " ".join(f"{k}={v!r}" for k, v in _flat_fields(node))
            lines.append(textwrap.fill(f"{section}: {body}", 100, initial_indent="  ",
                                       subsequent_indent="      ", break_long_words=False))
    lines += ["", "field meanings and allowed values: abpo_jax/config.py; all commands: abpo-jax --help"]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: dispatch `argv[1]` to its command with the parsed config."""
    if argv is None:    # a process of its own (not a call from Python): huge pages first
        from abpo_jax import host_memory
        host_memory.ensure(sys.argv)
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 3 and argv[1] == "help" and argv[2] in COMMANDS:   # `abpo-jax help train`
        argv = [argv[0], argv[2], "--help"]
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = argv[1]
    if command not in COMMANDS:
        sys.exit(f"abpo-jax: unknown command {command!r}\n\n{_usage()}")
    target, default_cfg, _ = COMMANDS[command]
    rest = argv[2:]
    if any(a in ("-h", "--help", "-help", "--helpfull", "help") for a in rest):
        print(command_help(command, _config_arg(rest)))
        return
    quick = command == "bench" and "--quick" in rest   # = --config.bench.quick=True
    rest = [a for a in rest if not (quick and a == "--quick")]
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
    if quick:
        config.bench.quick = True
    try:
        validate(config, files=True)
    except ConfigError as e:
        sys.exit(f"abpo-jax {command}: {e}")
    _one_line_warnings(command)
    from abpo_jax import compile_cache

    try:
        compile_cache.enable(config)   # before anything compiles: a re-run or resume compiles nothing
        _resolve(target)(config)
    except Exception as e:
        if isinstance(e, _user_error_types()):
            sys.exit(f"abpo-jax {command}: {e}")
        disk = disk_error_line(e)
        if disk is not None:
            sys.exit(f"abpo-jax {command}: {disk} (config.run_dir={config.get('run_dir')!r}; "
                     "free space or choose a writable run_dir)")
        raise

if __name__ == "__main__":
    run()
