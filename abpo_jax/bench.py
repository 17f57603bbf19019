"""`abpo-jax bench`: run the benchmarks in `benchmarks/bench_*.py`, print a table, write JSON.

Each benchmark module exposes `run(config) -> list[dict]`; a row holds `benchmark`, `metric`,
`ours`, and, where a peer (TRL, HF generate, naive scoring) ran the same work in the same process,
`peer`, `peer_name` and `ratio`. Results go to `<run_dir>/bench-<timestamp>.json` together with
the machine description and each benchmark's wall seconds, so runs can be compared over time.
`--config.bench.quick=True` (`abpo-jax bench --quick`) runs every benchmark at its CI size
(each reads `config.bench.quick` and shrinks itself: tiny models, few records), so none can rot
unnoticed: tests/test_bench_runner.py runs it.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pathlib
import platform
import sys
import time
import traceback

import ml_collections



def _benchmarks_dir() -> pathlib.Path:
    """`benchmarks/` of a source checkout, else `abpo_jax/benchmarks` of an installed wheel."""
    here = pathlib.Path(__file__).resolve().parent
    checkout = here.parent / "benchmarks"
    return checkout if checkout.is_dir() else here / "benchmarks"


BENCH_DIR = _benchmarks_dir()
# bench.* fields that take one of a run config field's values (abpo_jax.config.CHOICES): checked
# before any benchmark runs, so a typo is one line naming the bench field, not a traceback later.
CHOICE_OF = {"round_ref_logp": "train.ref_logp"}
COLUMNS = ("benchmark", "metric", "ours", "peer_name", "peer", "ratio", "notes")


def model_label(config) -> str:
    """The benchmarked model's name in a row: `config.model.source`, or for an `hf` directory its
    name (`runs/arch/gemma3_270m` -> gemma3_270m), marked when its weights are random."""
    m = config.model
    if m.source != "hf" or not m.path:
        return m.source
    name = pathlib.Path(m.path).name
    return f"{name} (random weights)" if m.get("random_init", False) else name


def is_quick(config) -> bool:
    """`config.bench.quick` (`abpo-jax bench --quick`): a benchmark then runs at its CI size."""
    bench = config.get("bench", None) if hasattr(config, "get") else None
    return bool(bench is not None and bench.get("quick", False))


def tiny_case(num_prompts: int, prompt_len: int, num_items: int, vocab: int = 256,
              seed: int = 0) -> tuple:
    """`bench --quick`'s stand-in for a pretrained model and real prompts: a tiny random Llama
    (`models.decoder.Decoder`), `num_prompts` random token prompts (the i-th 4 i tokens shorter,
    so left padding is exercised) and `num_items` distinct random items of 2-6 tokens, each
    ending in eos. Returns (model, prompts, items, eos, pad)."""
    import numpy as np
    from flax import nnx

    from abpo_jax.models.config import ModelConfig
    from abpo_jax.models.decoder import Decoder

    eos, pad = 2, 0
    model = Decoder(ModelConfig.tiny(vocab), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    items: list[list[int]] = []
    while len(items) < num_items:
        item = tuple(int(t) for t in rng.integers(3, vocab, size=rng.integers(2, 7)))
        if item not in seen:
            seen.add(item)
            items.append([*item, eos])
    prompts = [rng.integers(3, vocab, size=prompt_len - 4 * i).tolist()
               for i in range(num_prompts)]
    return model, prompts, items, eos, pad


def discover(only: str = "") -> dict[str, pathlib.Path]:
    """Benchmark name -> file, filtered by a comma-separated list of names (empty = all)."""
    found = {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {sorted(found)}")
    return {k: v for k, v in found.items() if not wanted or k in wanted}


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"benchmarks.bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of benchmark rows."""
    cells = [[_fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in cells])


def check_choices(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming `bench.<field>` if it is not one of its run field's choices."""
    from abpo_jax.config import CHOICES, ConfigError
    fields = config.get("bench", None) or {}
    for field, run_field in CHOICE_OF.items():
        if field in fields and fields[field] not in CHOICES[run_field]:
            raise ConfigError(f"bench.{field}={fields[field]!r}: must be one of "
                              f"{' | '.join(CHOICES[run_field])} (as {run_field})")


def main(config: ml_collections.ConfigDict) -> list[dict]:
    """Run the selected benchmarks; print the table; write JSON into the run directory."""
    import jax

    check_choices(config)
    only = config.get("bench", {}).get("only", "") if "bench" in config else ""
    quick = bool(config.get("bench", {}).get("quick", False)) if "bench" in config else False
    rows: list[dict] = []
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name, path in discover(only).items():
        start = time.perf_counter()
        try:
            module = _load(name, path)
            print(f"== benchmark {name} ({path.name})", flush=True)
            rows.extend(module.run(config))
        except Exception:  # one failing benchmark must not hide the others' numbers
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr)
        seconds[name] = round(time.perf_counter() - start, 1)
    print()
    print(format_table(rows))
    out_dir = pathlib.Path(config.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "timestamp": stamp,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()],
                    # huge pages for XLA:CPU's buffers (abpo_jax/host_memory.py) or not
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")},
        "quick": quick,
        "seconds": seconds,
        "rows": rows,
        "failures": failures,
    }
    out = out_dir / f"bench-{stamp}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    tmp.replace(out)
    print(f"\nwrote {out}")
    if failures:
        raise SystemExit(f"benchmarks failed: {sorted(failures)}")
    return rows
