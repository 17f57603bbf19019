"""Decoding over a read-only prompt prefix (`Decoder(..., cache, prefix)`, what the samplers and
beam search run) == decoding with every row's own full cache (prompt and new tokens in one).

The reference repeats each prompt's cache for its G rows and attends over P+n slots; the prefix
path keeps the prompt's keys/values once per prompt and a cache of the n new tokens per row.
Cases the samplers' tests may not reach: prompts of different lengths in one batch (left
padding), a sliding window that spans prefix and new tokens (Gemma-3 layers), both layer
layouts, and a beam-style reshuffle of rows between steps (only the new tokens' cache is
reordered; the reference reorders the whole cache).

Tolerance: both paths compute the same float32 attention; only the split of the score and
value products into prefix and new-token parts (and XLA's fusion) differs, which reassociates a
few sums (a few ulps of logits of size ~1), so rtol = atol = 1e-5 (~80 ulps), far below what a
wrong mask, position or row order changes (> 1e-2).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder, init_cache
from abpo_jax.sampling.generate import left_pad, prefill

V, G, N = 64, 2, 6
TOL = dict(rtol=1e-5, atol=1e-5)
PROMPTS = [[5, 9, 11, 4, 30], [7, 8], [20, 21, 22, 23, 24, 25, 26]]
CONFIGS = {
    "llama": ModelConfig.tiny(V, num_layers=2),
    "gemma3": ModelConfig.tiny(V, family="gemma3", num_layers=3, tie_embeddings=True,
                               layer_types=("sliding", "full", "sliding"), sliding_window=3,
                               rope_local_base_freq=10.0, query_pre_attn_scalar=24.0,
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
}
# Row r takes the cache of row PARENTS[step][r] before step `step` (rows b*G .. b*G+G-1 stay
# with prompt b, as in beam search); the first step keeps the rows. The last step feeds two
# tokens per row at once (causal between them).
PARENTS = [np.arange(len(PROMPTS) * G), np.array([1, 1, 2, 3, 5, 4]),
           np.array([0, 0, 3, 2, 4, 4]), np.array([1, 0, 2, 2, 5, 5]),
           np.array([0, 1, 3, 3, 4, 5])]
WIDTHS = [1, 1, 1, 1, 2]


def _reorder(cache, rows):
    """Rows of a stacked [L, B, ...] or per-layer (decoding_cache) cache taken in `rows`."""
    if isinstance(cache.k, tuple):
        return cache.replace(k=tuple(x[rows] for x in cache.k),
                             v=tuple(x[rows] for x in cache.v), positions=cache.positions[rows])
    return cache.replace(k=cache.k[:, rows], v=cache.v[:, rows], positions=cache.positions[rows])


def _decode(model, cache, key_ok, pos, p, steps, prefix=None):
    """Logits of each step's tokens [R, T] after reordering the cache rows to `parents`."""
    slots, index, out = np.arange(key_ok.shape[1]), 0, []
    for parents, token in steps:
        t = token.shape[1]
        cache = _reorder(cache, parents)
        key_ok = key_ok | ((slots >= p + index) & (slots < p + index + t))[None]
        causal = slots[None] <= (p + index + np.arange(t))[:, None]       # [T, P+N]
        logits, cache = model(token, pos[:, None] + np.arange(t), key_ok[:, None] & causal,
                              cache, prefix)
        out.append(np.asarray(logits))
        pos, index = pos + t, index + t
    return np.concatenate(out, axis=1)


def _full_cache_reference(model, tokens, mask, steps):
    """Old layout: each row's own cache of P+N slots, prompt repeated G times."""
    b, p = tokens.shape
    tokens, mask = np.repeat(tokens, G, 0), np.repeat(mask, G, 0)
    slots = np.arange(p + N)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    key_ok = np.pad(mask, ((0, 0), (0, N)))
    attn = (key_ok[:, None] & (slots[None, None] <= np.arange(p)[None, :, None])) | (
        slots[None, None] == np.arange(p)[None, :, None])
    cache = init_cache(model.config, b * G, p + N)
    _, cache = model.hidden_states(jnp.asarray(tokens), jnp.asarray(positions),
                                   jnp.asarray(attn), cache)
    return _decode(model, cache, key_ok, positions[:, -1] + 1, p, steps)


def _prefix(model, tokens, mask, steps):
    prefix, cache, _, pos, key_ok = prefill(model, jnp.asarray(tokens), jnp.asarray(mask), N, G)
    return _decode(model, cache, np.asarray(key_ok), np.asarray(pos), tokens.shape[1], steps,
                   prefix)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefix_decoding_equals_full_cache_across_reorders(name, scan):
    config = dataclasses.replace(CONFIGS[name], scan_layers=scan)
    model = Decoder(config, rngs=nnx.Rngs(1))
    tokens, mask = left_pad(PROMPTS, 8)
    rng = np.random.default_rng(0)
    steps = [(parents, rng.integers(3, V, size=(len(PROMPTS) * G, t)).astype(np.int32))
             for parents, t in zip(PARENTS, WIDTHS)]
    want = _full_cache_reference(model, tokens, mask, steps)
    # "loop" is also what decoding_layout makes of a scanned model (same seed, same weights)
    np.testing.assert_allclose(_prefix(model, tokens, mask, steps), want, **TOL)
