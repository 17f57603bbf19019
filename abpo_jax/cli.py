"""The `abpo-jax` command line (also `python -m abpo_jax`).

    abpo-jax <command> [--config=NAME|FILE] [--config.a.b=value ...]

Each command has a default config (`Command.config`); `--config` picks another, a file path or
the name of a shipped config (`--config=tiny` = configs/tiny.py, also from an installed wheel),
and `--config.x=y` overrides single fields (ml_collections config_flags). The config is validated
before the command runs, so a bad value fails fast naming the field; `--validate-only` stops
there, without checking the files the config names (model.path): it is the TPU launcher's check,
on this machine, of a config for another one, before any VM is paid for. `abpo-jax <command> --help` says what
the command does, gives real examples and the fields that matter to it with their allowed
values; `--helpfull` lists every field. Errors meant for the user (bad config, bad data file,
bad checkpoint) and warnings are printed as one line each.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import pathlib
import re
import sys
import textwrap
import warnings
from typing import Any, Callable

from abpo_jax.fileio import flat_items


@dataclasses.dataclass(frozen=True)
class Command:
    """One `abpo-jax` command: its entry point, default config and help."""
    target: str       # module:function taking the validated ConfigDict
    config: str       # default config (a file in configs/)
    about: str        # one line
    detail: str       # what it does, reads and writes
    examples: tuple[tuple[str, str], ...]   # (command line, what it does)
    fields: tuple[str, ...]   # config fields shown by --help ("x." = the whole section)


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "abpo_jax.demo:main", "demo.py",
        "a result with CIs (tiny-policy study) + SmolLM2 through the same rounds, CPU-sized",
        "Part 1 runs the closed-loop study of the tiny item-token policy (methods x seeds, 95% "
        "CIs, paired tests, results page); part 2 runs SmolLM2-135M (LoRA) through one short "
        "continual round. Everything goes under config.run_dir (the study in <run_dir>/study).",
        (("abpo-jax demo", "both parts, ~10 min on 2 CPU cores, into runs/demo"),
         ("abpo-jax demo --config.demo.run_llm=False", "part 1 only (the statistics)"),
         ("abpo-jax demo --config.run_dir=runs/demo2 --config.demo.study.study.seeds=2",
          "a quicker look, elsewhere")),
        ("run_dir", "demo.run_study", "demo.run_llm", "demo.study.study.seeds",
         "demo.study.rounds.num_rounds", "demo.study.rounds.methods", "model.source",
         "model.lora.rank", "rounds.num_rounds", "rounds.methods")),
    "train": Command(
        "abpo_jax.train.rounds:main", "ml1m.py", "continual update rounds",
        "Round 0 warm-starts the policy by SFT; each round k >= 1 deploys pi_{k-1} per method, "
        "logs exposures with propensities and simulated clicks, updates with the method and "
        "evaluates. Re-running the same command resumes from the newest verified checkpoint. "
        "Writes <run_dir>/metrics.jsonl, metrics.csv, tb/ (TensorBoard), plots/, checkpoints/, "
        "logs/<method>/round_*.",
        (("abpo-jax train --config=tiny", "tiny item-id decoder, about a minute per round"),
         ("abpo-jax train --config=tiny --config.rounds.methods=\"('abpo','grpo')\" "
          "--config.run_dir=runs/tiny2", "two methods only, in another run dir"),
         ("abpo-jax train --config=ml1m --config.train.learning_rate=1e-5",
          "SmolLM2 on MovieLens-1M (a GPU/TPU job)"),
         ("tensorboard --logdir runs/tiny/tb", "watch the training curves")),
        ("run_dir", "seed", "rounds.", "train.", "loss.", "model.source", "model.path",
         "model.lora.rank", "model.dtype", "policy.mode", "policy.candidates",
         "policy.logging_temperature", "policy.logging_policy", "data.dataset",
         "data.users_per_round", "data.num_test_users", "checkpoint.", "outputs.")),
    "data": Command(
        "abpo_jax.data.summary:main", "demo.py",
        "dataset statistics, split sizes and a sample prompt",
        "Loads config.data's dataset (package data for ml-1m / ml-100k, config.data.path for "
        "amazon*), applies the k-core filter and the user split, and prints statistics, split "
        "and round sizes and one rendered prompt. Reads only; writes nothing.",
        (("abpo-jax data", "MovieLens-1M with the demo's sizes"),
         ("abpo-jax data --config=tiny", "the prompt the tiny item-id decoder sees"),
         ("abpo-jax data --config.data.dataset=ml-100k --config.data.history_len=3",
          "another dataset, a shorter history")),
        ("data.", "model.source", "rounds.num_rounds", "seed")),
    "eval": Command(
        "abpo_jax.train.rounds:evaluate_run", "demo.py",
        "evaluate a run's newest verified checkpoint (or the untrained model)",
        "Evaluates every method of the run in config.run_dir on the held-out test users (HR@K, "
        "NDCG@K, simulated CTR, exposure, coverage), under the config the run was trained with "
        "(its config.json; eval.* may differ), from its newest verified checkpoint, naming the "
        "weights. A run dir without checkpoints evaluates the untrained initial model (tiny) "
        "or the pretrained base model, and says so.",
        (("abpo-jax eval --config.run_dir=runs/tiny",
          "the tiny run's newest checkpoint, every method"),
         ("abpo-jax eval --config.run_dir=runs/tiny --config.eval.ks=\"(1,3)\"",
          "other cut-offs"),
         ("abpo-jax eval", "the demo's SmolLM2 run (runs/demo)")),
        ("run_dir", "eval.", "rounds.methods", "model.source", "policy.mode",
         "checkpoint.dir")),
    "recommend": Command(
        "abpo_jax.recommend:main", "demo.py",
        "show a trained policy's recommendations for held-out users",
        "Under the config the run in config.run_dir was trained with (its config.json), "
        "restores its newest verified checkpoint, takes config.recommend.method's weights and "
        "prints, for the first config.recommend.num_users held-out test users, their history, "
        "the held-out next item and the policy's top 5 of pi(item | x) over the candidate list "
        "(pretrained models also show the prompt and one sampled completion). It says which "
        "weights it uses; without checkpoints, the untrained initial model (tiny) or the "
        "pretrained base model.",
        (("abpo-jax recommend --config.run_dir=runs/tiny", "the tiny run's first method, 3 users"),
         ("abpo-jax recommend --config.run_dir=runs/tiny --config.recommend.method=grpo "
          "--config.recommend.num_users=5", "another method, 5 users"),
         ("abpo-jax recommend", "the demo's SmolLM2 run (runs/demo), or the base model")),
        ("run_dir", "recommend.", "policy.logging_temperature", "model.source", "model.path",
         "rounds.methods", "checkpoint.dir")),
    "logs": Command(
        "abpo_jax.data.logs_cli:main", "demo.py", "validate / import / export bandit logs",
        "Works on a run's bandit-log store (<run_dir>/logs/<method>/round_*, or config.logs.dir):"
        " lists rounds and verifies checksums, validates or imports your own .jsonl/.csv logs "
        "(bad records are quarantined with a reason), exports a round, removes interrupted "
        "writes.",
        (("abpo-jax logs --config.run_dir=runs/tiny", "every method's rounds, checksums verified"),
         ("abpo-jax logs --config.logs.action=validate --config.logs.input=prod.jsonl",
          "check a production log without storing it"),
         ("abpo-jax logs --config.logs.action=import --config.logs.input=prod.csv "
          "--config.logs.round=1", "store it as round 1 (in <run_dir>/logs)"),
         ("abpo-jax logs --config.run_dir=runs/tiny --config.logs.dir=runs/tiny/logs/abpo "
          "--config.logs.action=export --config.logs.output=r1.jsonl",
          "the latest round of abpo as JSON lines")),
        ("run_dir", "logs.")),
    "gee": Command(
        "abpo_jax.gee.loop:main", "gee.py", "Generative Explore-Exploit pool optimisation",
        "Simulates the GEE loop: an LLM generates items for a pool, an LLM judge scores them per "
        "persona, simulated users click (MNL with an outside option), and each strategy drops "
        "and regenerates items by CTR. Writes history.jsonl, results.txt, summary.json, "
        "ctr_per_round.png and tb/ under config.run_dir.",
        (("abpo-jax gee --config.gee.backend=scripted", "deterministic stand-in LLM; seconds"),
         ("abpo-jax gee --config.gee.num_personas=4 --config.gee.interactions=1000 "
          "--config.gee.rounds=4 --config.run_dir=runs/gee_small", "real SmolLM2, minutes"),
         ("abpo-jax gee --config.gee.strategies=\"('full-ctr','explore-exploit')\"",
          "two strategies only")),
        ("run_dir", "seed", "gee.")),
    "study": Command(
        "abpo_jax.study.runner:main", "study_tiny.py",
        "closed-loop study: methods x seeds x conditions, CIs, paired tests, results page",
        "Runs one continual run per (condition, seed) cell, all methods in each, then reports "
        "final-round means with 95% CIs and paired tests (Holm) in <study dir>/results.md, "
        "study.json and plots/. Finished cells are reused, so an interrupted study resumes.",
        (("abpo-jax study", "the tiny policy on MovieLens-1M, 5 seeds (~45 min on 2 cores)"),
         ("abpo-jax study --config.study.seeds=2 --config.run_dir=runs/study_quick",
          "a quick look"),
         ("abpo-jax study --config.study.report_only=True", "the results page of the cells so far")),
        ("run_dir", "seed", "study.", "rounds.num_rounds", "rounds.methods")),
    "bench": Command(
        "abpo_jax.bench:main", "bench.py", "benchmarks (table + JSON)",
        "Runs the benchmarks in benchmarks/bench_*.py (ours against a peer where one exists), "
        "prints a table and writes <run_dir>/bench-<time>.json with the machine description. "
        "--quick runs every benchmark at CI size.",
        (("abpo-jax bench --quick", "every benchmark, CI-sized (minutes on a CPU)"),
         ("abpo-jax bench --config.bench.only=losses,pipeline", "two benchmarks, full size"),
         ("abpo-jax bench", "everything, full size")),
        ("run_dir", "bench.")),
}


def _repo_or_package_configs() -> pathlib.Path:
    """The shipped configs: `configs/` of a source checkout, else `abpo_jax/configs` of a wheel."""
    here = pathlib.Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if (checkout / "tiny.py").is_file() else here / "configs"


CONFIG_DIR = _repo_or_package_configs()


def resolve_config(value: str) -> str:
    """`--config` value -> a config file: the path itself when it exists, else a shipped config
    of that name (`tiny`, `tiny.py`, `configs/tiny.py`); the value unchanged when neither exists.
    A `:suffix` (config_flags' config string) is kept."""
    path, sep, suffix = value.partition(":")
    if pathlib.Path(path).is_file():
        return value
    name = pathlib.Path(path).name
    shipped = CONFIG_DIR / (name if name.endswith(".py") else f"{name}.py")
    return f"{shipped}{sep}{suffix}" if shipped.is_file() else value


def _usage() -> str:
    lines = ["usage: abpo-jax <command> [--config=NAME|FILE] [--config.a.b=value ...]", "",
             "commands:"]
    lines += [f"  {name:<10} {cmd.about}  (default: --config={cmd.config.removesuffix('.py')})"
              for name, cmd in COMMANDS.items()]
    lines += ["", "abpo-jax <command> --help: what it does, examples, its fields; "
              "--helpfull: every field", f"shipped configs: "
              + ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py")))]
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


# Warnings meant for the user (data problems, checkpoint fallbacks): one line, no source line.
_USER_WARNINGS = ("DataWarning", "RunWarning")


def _one_line_warnings(command: str) -> None:
    """Print user warnings as `abpo-jax CMD: warning: ...` (other warnings keep Python's form)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if getattr(category, "__name__", "") in _USER_WARNINGS:
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


_FIELD_COMMENT = re.compile(r"^\s*(?:c|g|study_demo)\.([\w.]+)\s*=.*?#\s*(.+?)\s*$")


def field_comments(*sources: pathlib.Path) -> dict[str, str]:
    """Field path -> its trailing `# comment` where it is assigned in `sources` (config.py's
    base_config, the config file); the first source that documents a field wins."""
    out: dict[str, str] = {}
    for source in sources:
        try:
            lines = source.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            m = _FIELD_COMMENT.match(line)
            if m and m.group(1) not in out:
                out[m.group(1)] = m.group(2)
    return out


def _allowed(field: str) -> str:
    """`one of: a | b` from CHOICES / TUPLE_CHOICES / RANGES of abpo_jax.config (by the field's
    path, also inside a nested config such as demo.study.*)."""
    from abpo_jax.config import CHOICES, RANGES, TUPLE_CHOICES
    for start in range(field.count(".") + 1):
        key = field.split(".", start)[-1]
        if key in CHOICES:
            return "one of: " + " | ".join(map(str, CHOICES[key]))
        if key in TUPLE_CHOICES:
            return "a tuple of: " + " | ".join(TUPLE_CHOICES[key])
        if key in RANGES:
            return RANGES[key][1]
    return ""


def _selected(field: str, wanted: tuple[str, ...]) -> bool:
    return any(field == w or (w.endswith(".") and field.startswith(w)) for w in wanted)


def command_help(command: str, config_file: str | None = None, full: bool = False) -> str:
    """What `command` does, its usage, examples for it, and the config fields that matter to it
    (`full`: every field of the config) with value, meaning and allowed values."""
    cmd = COMMANDS[command]
    default_name = cmd.config.removesuffix(".py")
    path = pathlib.Path(resolve_config(config_file).split(":", 1)[0] if config_file
                        else CONFIG_DIR / cmd.config)
    lines = [f"abpo-jax {command}: {cmd.about}", ""]
    lines += textwrap.wrap(cmd.detail, 100)
    lines += ["", f"usage: abpo-jax {command} [--config=NAME|FILE] [--config.SECTION.FIELD=VALUE"
              " ...] [--validate-only]",
              f"config: {config_file or f'configs/{cmd.config}'}"
              + ("" if config_file else f" (default; --config={default_name})"), "", "examples:"]
    width = max(len(ex) for ex, _ in cmd.examples if len(ex) <= 60)
    for ex, what in cmd.examples:
        lines += ([f"  {ex:<{width}}  # {what}"] if len(ex) <= 60
                  else [f"  {ex}", f"  {'':<{width}}  # {what}"])
    try:
        from abpo_jax.config import from_file
        config = from_file(path)
    except Exception as e:  # help must not die on a broken config file; say why instead
        lines += ["", f"(cannot read the config's fields: {type(e).__name__}: {e})"]
        return "\n".join(lines)
    from abpo_jax import config as config_module
    notes = field_comments(path, pathlib.Path(config_module.__file__))
    fields = flat_items(config)
    if not full:   # in the order the command lists them
        fields = [(k, v) for w in cmd.fields for k, v in fields if _selected(k, (w,))]
    lines += ["", ("all fields" if full else f"fields for {command}")
              + f" (this config's values; override with --config.FIELD=VALUE"
              + ("" if full else "; every field: --helpfull") + "):"]
    for key, value in fields:
        note = notes.get(key, notes.get(key.split(".", 2)[-1], ""))
        allowed = _allowed(key)
        named = allowed.startswith("one of") and all(   # the comment already lists them
            re.search(rf"(^|[\s|(]){re.escape(c)}($|[\s|)])", note)
            for c in allowed.removeprefix("one of: ").split(" | "))
        if allowed and not named:
            note = f"{note}; {allowed}" if note else allowed
        text = f"  {key}={value!r}"
        lines += ([f"{text:<44}  {note}"] if note and len(text) <= 44 else
                  [text] + ([f"{'':<46}{note}"] if note else []))
    lines += ["", "tuples: --config.rounds.methods=\"('abpo','grpo')\"   "
              "booleans: --config.outputs.plots=False   all commands: abpo-jax --help"]
    return "\n".join(lines)


# Flags other trainers use (TRL / HF TrainingArguments) -> our field, for the hint.
_FOREIGN_FLAGS = {"learning_rate": "train.learning_rate", "lr": "train.learning_rate",
                  "per_device_train_batch_size": "train.batch_size",
                  "batch_size": "train.batch_size", "num_train_epochs": "train.epochs_per_round",
                  "gradient_accumulation_steps": "train.grad_accum",
                  "output_dir": "run_dir", "seed": "seed", "beta": "loss.beta",
                  "num_generations": "loss.num_generations", "max_steps": "train.steps_per_round",
                  "warmup_steps": "train.warmup_steps", "weight_decay": "train.weight_decay",
                  "max_grad_norm": "train.grad_clip", "temperature": "policy.temperature"}


def _all_field_paths(rest: list[str]) -> list[str]:
    """Every field path of the command's config (for hints); empty when it cannot be read."""
    try:
        from abpo_jax.config import from_file
        return [k for k, _ in flat_items(from_file(resolve_config(
            _config_arg(rest) or "").split(":", 1)[0]))]
    except Exception:  # noqa: BLE001 — a hint is optional
        return []


def unknown_flag_hint(flag: str, fields: list[str]) -> str:
    """`--name=...` that is not ours: the config field it probably means."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    target = _FOREIGN_FLAGS.get(name)
    if target is None:
        leaf = {f.rsplit(".", 1)[-1]: f for f in fields}
        close = difflib.get_close_matches(name, list(leaf), n=1, cutoff=0.75)
        target = leaf[close[0]] if close else None
    value = flag.split("=", 1)[1] if "=" in flag else "VALUE"
    return (f"unknown flag {flag.split('=', 1)[0]}; config fields are set as "
            f"--config.SECTION.FIELD=VALUE" + (f", e.g. --config.{target}={value}"
                                               if target else ""))


def unknown_field_hint(error: BaseException, overrides: list[str], fields: list[str]) -> str:
    """One line for an override naming no field: the field as typed and the closest ones."""
    text = str(error.args[0]) if error.args else str(error)
    missing = re.findall(r"[\w-]+", text.splitlines()[0]) if text else []
    bad = next((o.split("=", 1)[0].removeprefix("--config.") for o in overrides
                if missing and missing[0] in o.split("=", 1)[0].split(".")), None)
    if bad is None:
        return f"unknown config field in overrides: {' '.join(text.split())}"
    close = difflib.get_close_matches(bad, fields, n=1, cutoff=0.6)
    return (f"unknown config field --config.{bad}"
            + (f"; did you mean --config.{close[0]}?" if close else
               "; abpo-jax <command> --helpfull lists every field"))


def tuple_hint(overrides: list[str], config: Any) -> str:
    """For a tuple field given as `a,b` (one string with a comma): how to write a tuple."""
    for o in overrides:
        key, _, value = o.removeprefix("--config.").partition("=")
        node = config
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if (isinstance(node, tuple) and len(node) == 1 and isinstance(node[0], str)
                and "," in node[0] and not value.lstrip().startswith(("(", "["))):
            items = ",".join(repr(v.strip()) for v in value.split(","))
            return f" (a tuple is written --config.{key}=\"({items})\")"
    return ""


def _config_path_of(arg: str, rest: list[str], i: int) -> str | None:
    if arg.startswith("--config="):
        return arg.split("=", 1)[1]
    return rest[i + 1] if arg == "--config" and i + 1 < len(rest) else None


def run(argv: list[str] | None = None) -> None:
    """Console entry point: dispatch `argv[1]` to its command with the parsed config."""
    if argv is None:    # a process of its own (not a call from Python): huge pages first
        from abpo_jax import host_memory
        host_memory.ensure(sys.argv)
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 3 and argv[1] == "help" and argv[2] in COMMANDS:   # `abpo-jax help train`
        argv = [argv[0], argv[2], "--help"]
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help", "--helpfull"):
        print(_usage())
        return
    command = argv[1]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        sys.exit(f"abpo-jax: unknown command {command!r}; did you mean {close[0]!r}?" if close
                 else f"abpo-jax: unknown command {command!r}\n\n{_usage()}")
    cmd = COMMANDS[command]
    rest = argv[2:]
    if any(a in ("-h", "--help", "-help", "help", "--helpfull") for a in rest):
        print(command_help(command, _config_arg(rest), full="--helpfull" in rest))
        return
    validate_only = "--validate-only" in rest
    quick = command == "bench" and "--quick" in rest   # = --config.bench.quick=True
    rest = [a for a in rest if a != "--validate-only" and not (quick and a == "--quick")]
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        rest = [f"--config={CONFIG_DIR / cmd.config}"] + rest
    for i, a in enumerate(rest):
        path = _config_path_of(a, rest, i)
        if path is None:
            continue
        resolved = resolve_config(path)
        # ml_collections defers a missing file's error to first use; fail here instead
        if not pathlib.Path(resolved.split(":", 1)[0]).is_file():
            sys.exit(f"abpo-jax {command}: config file not found: {path} (shipped configs: "
                     + ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py"))) + ")")
        if a == "--config":
            rest[i + 1] = resolved
        else:
            rest[i] = f"--config={resolved}"
    overrides = [a for a in rest if a.startswith("--config.")]
    foreign = [a for a in rest if a.startswith("-") and not a.startswith("--config")]
    if foreign:   # e.g. --learning_rate=1e-3 (a TRL habit): name the field it means
        sys.exit(f"abpo-jax {command}: {unknown_flag_hint(foreign[0], _all_field_paths(rest))}")

    from absl import flags
    from ml_collections import config_flags

    from abpo_jax.config import ConfigError, validate

    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                    lock_config=True)

    try:  # parse here, not in app.run, so a bad override is one clear line, not a traceback
        flags.FLAGS([f"abpo-jax {command}"] + rest)
    except (KeyError, AttributeError) as e:
        sys.exit(f"abpo-jax {command}: "
                 f"{unknown_field_hint(e, overrides, _all_field_paths(rest))}")
    except (flags.Error, ValueError, TypeError) as e:
        sys.exit(f"abpo-jax {command}: {' '.join(str(e).split())}")
    config = flags.FLAGS.config
    if quick:
        config.bench.quick = True
    try:   # --validate-only checks for another machine (the TPU launcher): not its files
        validate(config, files=not validate_only)
        if validate_only:   # a whole config nested in this one (the demo's study) too
            for key, node in config.items():
                if hasattr(node, "items") and "study" in node and hasattr(node.study, "items"):
                    validate(node.study)
    except ConfigError as e:
        sys.exit(f"abpo-jax {command}: {e}{tuple_hint(overrides, config)}")
    if validate_only:
        print(f"abpo-jax {command}: config OK ({_config_arg(rest)} with {len(overrides)} "
              f"override(s); run_dir={config.get('run_dir')!r}); nothing run (--validate-only; "
              "the files it names, e.g. model.path, are checked where it runs)")
        return
    _one_line_warnings(command)
    from abpo_jax import compile_cache

    try:
        compile_cache.enable(config)   # before anything compiles: a re-run or resume compiles nothing
        _resolve(cmd.target)(config)
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
