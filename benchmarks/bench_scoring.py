"""Shared-prefix group scoring vs naive per-sequence scoring (G completions of each prompt).

    python benchmarks/bench_scoring.py          # SmolLM2-135M, real ML-1M prompts, ~2 min
    abpo-jax bench --config.bench.only=scoring

Work: teacher-forced log-probs of G=8 candidate completions for each of B prompts (the
item-mode policy's inner loop). Ours: one packed row per prompt (prompt once + G completions,
block mask). Peers, same model and jit: (a) naive: every prompt+completion its own row, LM head
only on completion positions (TRL's `logits_to_keep` trick), (b) the plain causal scorer
`sequence_logprobs` (LM head on every position). Compile time is excluded (warm-up call) and
the log-probs of all three are checked to agree.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DEFAULTS = {"num_prompts": 2, "num_generations": 8, "repeats": 1}


@functools.partial(jax.jit, static_argnums=0)
def _naive_completion_logprobs(graphdef, state, tokens, mask, targets_at):
    """Per-row scoring of [R, T] right-padded prompt+completion rows; LM head only at the
    `targets_at` [R, L] positions (-1 = padding), predicting tokens[targets_at + 1]."""
    from abpo_jax.sampling.group_scoring import token_scores

    model = nnx.merge(graphdef, state)
    t = tokens.shape[1]
    attn = jnp.tril(jnp.ones((t, t), bool))[None] & mask[:, None, :]
    attn = attn | jnp.eye(t, dtype=bool)[None]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
    hidden, _ = model.hidden_states(tokens, positions, attn)
    at = jnp.maximum(targets_at, 0)
    logits = model.logits_from_hidden(jnp.take_along_axis(hidden, at[..., None], axis=1))
    logp, _ = token_scores(logits, jnp.take_along_axis(tokens, at + 1, axis=1))
    return jnp.where(targets_at >= 0, logp, 0.0).sum(-1)


def _timed(fn, repeats: int) -> tuple[float, float, Any]:
    """(first-call seconds incl. compile, best steady-state seconds, result)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best, out


def run(config: Any) -> list[dict]:
    from abpo_jax.sampling.group_scoring import (bucket, pack_group, score_packed,
                                                 sequence_logprobs)
    from abpo_jax.recommend import held_out_requests
    from abpo_jax.train.policy import load_pretrained
    from abpo_jax.sampling.trie import candidate_token_sequences

    from abpo_jax.bench import is_quick, tiny_case
    opts = {**DEFAULTS, **dict(config.get("bench_scoring", {}) or {})}
    quick = is_quick(config)
    if quick:   # bench --quick: the code path on a tiny random Llama (seconds)
        opts.update(repeats=1)
    b, g, repeats = opts["num_prompts"], opts["num_generations"], opts["repeats"]
    if quick:
        model, prompts, items, _, _ = tiny_case(b, 24, g * b)
        comps = [items[g * i:g * (i + 1)] for i in range(b)]
    else:
        model, tok = load_pretrained(config)
        req = held_out_requests(config, tok, b)
        prompts = [tok.encode(p) for p in req.prompts]
        comps = [candidate_token_sequences(tok, cs[:g]) for cs in req.completions]
    p_len = bucket(max(map(len, prompts)), 16)
    l_len = bucket(max(len(o) for cs in comps for o in cs), 4)

    packed = jax.tree.map(jnp.asarray, pack_group(prompts, comps, p_len, l_len, g))
    first_ours, ours_s, scores = _timed(lambda: score_packed(model, packed).sequence_logprobs,
                                        repeats)

    # Naive rows: prompt + completion, right-padded to P + L.
    rows, targets_at = [], []
    for x, cs in zip(prompts, comps):
        for o in cs:
            rows.append(list(x) + list(o))
            targets_at.append([len(x) - 1 + j for j in range(len(o))] + [-1] * (l_len - len(o)))
    tokens = np.zeros((len(rows), p_len + l_len), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    mask = np.arange(tokens.shape[1])[None] < np.array([len(r) for r in rows])[:, None]
    graphdef, state = nnx.split(model)
    args = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(np.array(targets_at, np.int32)))
    first_naive, naive_s, naive = _timed(
        lambda: _naive_completion_logprobs(graphdef, state, *args), repeats)
    first_full, full_s, full = _timed(lambda: sequence_logprobs(model, args[0], args[1])[0],
                                      repeats)
    completion_region = np.zeros_like(mask)
    for i, t in enumerate(targets_at):
        completion_region[i, [j + 1 for j in t if j >= 0]] = True
    full_sums = (np.asarray(full) * completion_region).sum(-1)

    ours_flat = np.asarray(scores).reshape(-1)
    err = max(np.abs(ours_flat - np.asarray(naive)).max(), np.abs(ours_flat - full_sums).max())
    n_seq = b * g
    shape = f"B={b} prompts x G={g}, prompt<= {p_len} tok, completion<= {l_len} tok"
    base = {"metric": "sequences/s", "ours": n_seq / ours_s}
    return [
        {**base, "benchmark": "group_scoring_vs_naive", "peer": n_seq / naive_s,
         "peer_name": "per-sequence rows (LM head on completion only)",
         "ratio": naive_s / ours_s,
         "notes": f"{shape}; max |dlogp|={err:.1e}; compile ours {first_ours - ours_s:.1f}s, "
                  f"naive {first_naive - naive_s:.1f}s"},
        {**base, "benchmark": "group_scoring_vs_full_logits", "peer": n_seq / full_s,
         "peer_name": "sequence_logprobs (LM head everywhere)", "ratio": full_s / ours_s,
         "notes": f"{shape}; compile peer {first_full - full_s:.1f}s"},
    ]


if __name__ == "__main__":
    from abpo_jax.config import base_config

    for row in run(base_config()):
        print(row)
