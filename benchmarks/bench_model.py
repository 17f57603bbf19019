"""Policy model: SmolLM2-135M GGUF load, prefill and KV-cache decode vs Hugging Face (PyTorch).

    python benchmarks/bench_model.py          # ~2 min on a 2-core CPU
    abpo-jax bench --config.bench.only=model

Peer: transformers' own GGUF loader (`LlamaForCausalLM.from_pretrained(gguf_file=...)`) and the
resulting PyTorch model in float32 on the same inputs. Ours: `load_smollm2()` and the Decoder
under one `jax.jit` (graphdef closed over; compile excluded by a warm-up call and reported).
Wall times on a shared CPU are load-dependent: the 1-minute load average is in the notes.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DEFAULTS = {"batch": 2, "prompt_len": 64, "repeats": 3}
QUICK = {"batch": 1, "prompt_len": 16, "repeats": 1}   # bench --quick: the code path


def _best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _row(name: str, metric: str, ours: float, peer: float | None, notes: str,
         higher_is_better: bool = True) -> dict:
    ratio = None
    if peer:
        ratio = ours / peer if higher_is_better else peer / ours
    return {"benchmark": name, "metric": metric, "ours": round(ours, 3),
            "peer": None if peer is None else round(peer, 3),
            "peer_name": "transformers (torch, f32)" if peer is not None else None,
            "ratio": None if ratio is None else round(ratio, 2), "notes": notes}


def run(config: Any = None) -> list[dict]:
    """Rows: GGUF load seconds, prefill tokens/s, decode tokens/s (ours vs transformers)."""
    from abpo_jax.models import loaders
    from abpo_jax.models.decoder import causal_mask, init_cache

    from abpo_jax.bench import is_quick
    opts = dict(DEFAULTS)
    bench_cfg = getattr(config, "bench", None) if config is not None else None
    for key in opts:
        if bench_cfg is not None and key in bench_cfg:
            opts[key] = int(bench_cfg[key])
    if config is not None and is_quick(config):
        opts.update(QUICK)
    b, t, repeats = opts["batch"], opts["prompt_len"], opts["repeats"]

    start = time.perf_counter()
    model, mc = loaders.load_smollm2()
    jax.block_until_ready(nnx.state(model))
    load_s = time.perf_counter() - start

    try:
        import torch
        import transformers
    except ImportError:
        torch = transformers = None
    if config is not None and is_quick(config):   # quick: no 30 s transformers GGUF load
        transformers = None
    hf = None
    hf_load_s = None
    if transformers is not None:
        path = loaders.smollm2_gguf_path()
        directory, name = path.rsplit("/", 1)
        start = time.perf_counter()
        hf = transformers.LlamaForCausalLM.from_pretrained(directory, gguf_file=name,
                                                           dtype=torch.float32).eval()
        hf_load_s = time.perf_counter() - start
    load_note = f"load avg {os.getloadavg()[0]:.1f}"
    rows = [_row("smollm2 GGUF load (dequantize + place)", "seconds", load_s, hf_load_s,
                 load_note, higher_is_better=False)]

    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, mc.vocab_size, (b, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

    @jax.jit
    def prefill(state, tokens, positions):
        return nnx.merge(graphdef, state)(tokens, positions, causal_mask(positions, positions))[0]

    start = time.perf_counter()
    prefill(state, tokens, positions).block_until_ready()
    compile_s = time.perf_counter() - start
    ours = _best(lambda: prefill(state, tokens, positions).block_until_ready(), repeats)
    peer = None
    if hf is not None:
        hf_tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)
        with torch.no_grad():
            peer = _best(lambda: hf(hf_tokens), repeats)
    rows.append(_row(f"smollm2 prefill B={b} T={t}", "tokens/s", b * t / ours,
                     None if peer is None else b * t / peer,
                     f"compile {compile_s:.1f}s excluded; {load_note}"))

    s_max = t + 8

    @jax.jit
    def decode(state, token, position, cache):
        slots = jnp.arange(s_max)[None, None, :]
        mask = jnp.broadcast_to(slots <= position[:, :, None], (b, 1, s_max))
        return nnx.merge(graphdef, state)(token, position, mask, cache)

    cache = init_cache(mc, b, s_max)
    cache = cache.replace(index=jnp.asarray(t, jnp.int32))  # as after a t-token prefill
    token = tokens[:, :1]
    pos = jnp.full((b, 1), t, jnp.int32)
    decode(state, token, pos, cache)[0].block_until_ready()
    ours = _best(lambda: decode(state, token, pos, cache)[0].block_until_ready(), repeats)
    peer = None
    if hf is not None:
        with torch.no_grad():
            past = hf(hf_tokens, use_cache=True).past_key_values
            nxt = hf_tokens[:, :1]
            copies = iter([copy.deepcopy(past) for _ in range(repeats)])  # HF caches grow
            peer = _best(lambda: hf(nxt, past_key_values=next(copies)), repeats)
    rows.append(_row(f"smollm2 decode step B={b} after {t}", "tokens/s", b / ours,
                     None if peer is None else b / peer,
                     f"one token per sequence per step; {load_note}"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
