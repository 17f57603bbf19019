"""GEE click simulator: interactions/s of the jitted vectorised simulator vs a per-interaction
NumPy loop (the straightforward way to write the paper's simulator), same model and sizes.

    python benchmarks/bench_gee.py
"""

from __future__ import annotations

import time

import jax
import numpy as np

from abpo_jax.gee import click_model

POOL, PERSONAS, SLATE, T, RS = 5, 24, 3, 1.5, 11.0


def _loop_simulator(rng: np.random.Generator, scores: np.ndarray, s: int) -> np.ndarray:
    """Reference: one interaction at a time (persona, K-of-N slate, MNL choice)."""
    clicked = np.empty(s, np.int64)
    for i in range(s):
        p = rng.integers(scores.shape[1])
        slate = rng.choice(scores.shape[0], SLATE, replace=False)
        # the MNL written out in NumPy, as a straightforward simulator would
        weights = np.exp(np.append(scores[slate, p], RS) / T)
        probs = weights / weights.sum()
        c = rng.choice(SLATE + 1, p=probs)
        clicked[i] = slate[c] if c < SLATE else click_model.NO_CLICK
    return clicked


def run(config=None) -> list[dict]:
    """Rows: simulator throughput (ours vs loop) and the analytic-expectation cost."""
    from abpo_jax.bench import is_quick
    quick = config is not None and is_quick(config)   # bench --quick: the code path, seconds
    s = 5000 if quick else int(getattr(getattr(config, "gee", None), "interactions", 0)
                               or 5000) * 20
    scores = np.random.default_rng(0).uniform(1, 10, (POOL, PERSONAS))
    weights = np.ones(PERSONAS)

    def ours(key):
        out = click_model.simulate_interactions(key, scores, weights, num_interactions=s,
                                                slate_size=SLATE, temperature=T, rejection_score=RS)
        return jax.block_until_ready(out["clicked"])

    ours(jax.random.key(0))                                   # compile outside the timing
    reps = 1 if quick else 5
    t0 = time.perf_counter()
    for r in range(reps):
        clicked = ours(jax.random.key(r + 1))
    ours_rate = reps * s / (time.perf_counter() - t0)

    n_loop = 500 if quick else 5000
    t0 = time.perf_counter()
    loop_clicked = _loop_simulator(np.random.default_rng(0), scores, n_loop)
    loop_rate = n_loop / (time.perf_counter() - t0)

    expected, _ = click_model.expected_ctr(scores, weights, slate_size=SLATE, temperature=T,
                                           rejection_score=RS)
    ours_ctr = float(np.mean(np.asarray(clicked) != click_model.NO_CLICK))
    loop_ctr = float(np.mean(loop_clicked != click_model.NO_CLICK))
    t0 = time.perf_counter()
    big = np.random.default_rng(1).uniform(1, 10, (20, PERSONAS))
    click_model.expected_ctr(big, weights, slate_size=SLATE, temperature=T, rejection_score=RS)
    exp_ms = 1e3 * (time.perf_counter() - t0)
    return [
        {"benchmark": "gee click simulator", "metric": "interactions/s", "ours": ours_rate,
         "peer": loop_rate, "peer_name": "numpy per-interaction loop",
         "ratio": ours_rate / loop_rate,
         "notes": f"N={POOL}, K={SLATE}, P={PERSONAS}, S={s}; pool CTR ours {ours_ctr:.4f}, "
                  f"loop {loop_ctr:.4f}, analytic {expected:.4f}"},
        {"benchmark": "gee analytic CTR (N=20, 1140 slates)", "metric": "ms", "ours": exp_ms,
         "peer": None, "peer_name": None, "ratio": None, "notes": "exact expectation by "
                                                                  "enumerating K-subsets"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
