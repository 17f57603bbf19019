"""Bandit-log throughput: validated ingest of a 1M-record log (time, peak memory) and the grain
pipeline's records/s, against what a train step consumes (8 prompts per >= 0.5 s step on CPU).

    python benchmarks/bench_pipeline.py            # defaults below, a few minutes on 2 cores
    abpo-jax bench --config.bench.only=pipeline
    abpo-jax bench --quick --config.bench.only=pipeline   # QUICK sizes: seconds (CI)

The featurizer is this file's own (`numeric_features`: the numbers a learner batches), so the
benchmark measures the store and the grain pipeline, whatever the train modes featurize.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

H, C, NUM_ITEMS = 10, 20, 3706          # ML-1M catalogue, default prompt sizes
TRAIN_RECORDS_PER_S = 8 / 0.5           # train.batch_size prompts per (optimistic) CPU step
DEFAULTS = {"ingest_records": 1_000_000, "pipeline_records": 50_000}
QUICK = {"ingest_records": 2_000, "pipeline_records": 2_000}   # --quick: the code path, not a number


def synthetic_records(n: int):
    """n valid records shaped like a real round (H=10 history, C=20 candidates)."""
    for i in range(n):
        cands = [(i * 31 + 7 * k) % NUM_ITEMS for k in range(C)]
        yield {"schema_version": 1, "request_id": f"r00001-u{i}", "round": 1,
               "policy_revision": "bench", "user_id": i,
               "context_item_ids": [(i + 13 * k) % NUM_ITEMS for k in range(H)],
               "candidate_item_ids": cands, "exposed_item_id": cands[i % C],
               "propensity": 0.05 + (i % 17) / 20, "outcome": int(i % 3 == 0),
               "timestamp": 1.7e9 + i}


def _ingest_child(n: int, logs_dir: str) -> None:
    """Runs in a fresh interpreter so its peak RSS is the ingest's alone."""
    from abpo_jax.data import log_store

    start, cpu_start = time.perf_counter(), time.process_time()
    manifest = log_store.write_round(
        synthetic_records(n), logs_dir, 1,
        catalogue=NUM_ITEMS, report=None)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu_start,
                      "records": manifest["num_records"],
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _run_child(n: int, logs_dir: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--ingest-child", str(n), logs_dir],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def numeric_features(record, history_len: int = H, num_candidates: int = C) -> dict:
    """A record as fixed-size numpy arrays (padded history and candidates, exposed index,
    propensity, outcome): what any learner's featurizer at least does per record."""
    history = np.zeros(history_len, np.int32)
    ctx = np.asarray(record.context_item_ids[-history_len:], np.int32)
    history[history_len - len(ctx):] = ctx
    cands = np.zeros(num_candidates, np.int32)
    cands[:len(record.candidate_item_ids)] = record.candidate_item_ids
    return {"user": np.int64(record.user_id), "history": history, "candidates": cands,
            "exposed": np.int32(record.exposed_index), "propensity": np.float32(record.propensity),
            "outcome": np.int32(record.outcome)}


def _pipeline_rate(shards, batch_size: int, history_len: int = H) -> tuple[float, int]:
    from abpo_jax.data import pipeline

    it = pipeline.log_iterator(shards, batch_size=batch_size, seed=0, process_index=0,
                               process_count=1,
                               featurize=lambda r: numeric_features(r, history_len, C))
    next(it)   # open the shards, warm the featurizer
    start = time.perf_counter()
    count = 0
    for batch in it:
        count += len(batch["user"])
    return count / (time.perf_counter() - start), count


def run(config=None) -> list[dict]:
    from abpo_jax.bench import is_quick
    bench = config.get("bench", None) if config is not None else None
    quick = config is not None and is_quick(config)
    settings = dict(QUICK if quick else DEFAULTS)
    if bench is not None and not quick:
        settings.update({k: bench[k] for k in DEFAULTS if k in bench})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _run_child(1000, os.path.join(tmp, "base"))
        big = _run_child(settings["ingest_records"], os.path.join(tmp, "big"))
        n = big["records"]
        rows.append({"benchmark": f"log ingest {n:,} records (validate+write)", "metric": "records/s",
                     "ours": n / big["seconds"], "peer": TRAIN_RECORDS_PER_S,
                     "peer_name": "train step need (8/0.5s)",
                     "ratio": n / big["seconds"] / TRAIN_RECORDS_PER_S,
                     "notes": f"{big['seconds']:.0f} s wall, {big['cpu_seconds']:.0f} s CPU"})
        rows.append({"benchmark": f"log ingest {n:,} records", "metric": "peak RSS MB",
                     "ours": big["maxrss_kb"] / 1024, "peer": baseline["maxrss_kb"] / 1024,
                     "peer_name": "same ingest of 1k records", "ratio":
                     big["maxrss_kb"] / baseline["maxrss_kb"],
                     "notes": "streaming; growth = 8 B/request id + shard buffers"})

        from abpo_jax.data import log_store

        m = settings["pipeline_records"]
        log_store.write_round(synthetic_records(m),
                              os.path.join(tmp, "pipe"), 1, report=None)
        shards = log_store.open_round(log_store.round_path(os.path.join(tmp, "pipe"), 1)).shard_paths
        for batch_size in (8, 256):
            rate, count = _pipeline_rate(shards, batch_size)
            rows.append({"benchmark": f"grain pipeline batch={batch_size} ({count:,} records)",
                         "metric": "records/s", "ours": rate, "peer": TRAIN_RECORDS_PER_S,
                         "peer_name": "train step need (8/0.5s)",
                         "ratio": rate / TRAIN_RECORDS_PER_S,
                         "notes": "read+shuffle+decode+featurize+batch, 1 thread"})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--ingest-child":
        _ingest_child(int(sys.argv[2]), sys.argv[3])
    else:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
        for row in run():
            print(row)
