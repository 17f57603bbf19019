"""Jit-compiled autoregressive sampling: one prefill, then a KV-cache decode loop.

Layout: prompts are **left-padded** to a common length P (:func:`left_pad`) and their positions
count real tokens only (0 .. len-1 per row), so every prompt's last token sits at slot P-1 and all
rows write each new token into the same slot; padded slots are masked out of attention.
The B prompts are prefilled once into a read-only prefix cache that the G samples of each
prompt (rows b*G .. b*G+G-1) share, and the rows are decoded for at most `max_new_tokens`
steps in a `jax.lax.while_loop` that stops early once every row has emitted eos; the loop
carries only the new tokens' cache (:func:`prefill`).

Per step: z = model logits (float32). Reported per token:
  * `model_logprobs` = log softmax(z)[token]            (unconstrained model, temperature 1)
  * `self_certainty` = logsumexp(z) - mean(z)           (over the full vocabulary)
  * `logprobs` = log q(token), q the distribution actually sampled from: z restricted to the
    trie's allowed tokens (constrained mode), divided by the temperature, then top-k and top-p
    filtered (HF order), renormalised. Their sum over a completion is its text-mode propensity.
    Greedy decoding (temperature 0) is deterministic, so its `logprobs` are 0 (propensity 1).
Randomness: the key of step s and row r is fold_in(fold_in(rng, s), r).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from abpo_jax.losses.abpo import token_self_certainty
from abpo_jax.models.decoder import (decoding_cache, decoding_layout, decoding_prefix,
                                     init_cache)
from abpo_jax.sampling import trie as trie_lib


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Static sampling settings (one compiled program per distinct value)."""

    max_new_tokens: int = 32
    num_samples: int = 1          # G samples per prompt
    temperature: float = 1.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError(f"SamplingParams: max_new_tokens and num_samples must be >= 1: {self}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams: need temperature >= 0, top_k >= 0, "
                             f"0 < top_p <= 1: {self}")


@flax.struct.dataclass
class Samples:
    """Sampled completions, [B, G, N] (N = max_new_tokens); padding entries are 0."""

    tokens: jax.Array           # int32
    mask: jax.Array             # bool: real completion tokens, eos included
    logprobs: jax.Array         # float32: log q(token), the distribution sampled from
    model_logprobs: jax.Array   # float32: log softmax(z)[token], unconstrained model
    self_certainty: jax.Array   # float32: logsumexp(z) - mean(z)
    candidate: jax.Array        # int32 [B, G]: trie candidate reached (-1: none / unconstrained)


def left_pad(sequences: Sequence[Sequence[int]], length: int | None = None,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [B, P], mask bool [B, P]) with each sequence right-aligned."""
    p = max(map(len, sequences)) if length is None else length
    tokens = np.full((len(sequences), p), pad_id, np.int32)
    mask = np.zeros((len(sequences), p), bool)
    for i, s in enumerate(sequences):
        if not 0 < len(s) <= p:
            raise ValueError(f"left_pad: sequence {i} has {len(s)} tokens; need 1..{p}")
        tokens[i, p - len(s):], mask[i, p - len(s):] = s, True
    return tokens, mask


def filter_logits(z: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of logits [B, V]; removed entries become -inf.

    Top-p keeps the smallest set of highest-probability tokens whose mass reaches `top_p` (a
    token is kept if the mass strictly before it is < top_p), at least one token.
    """
    if top_k > 0 and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][:, -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if top_p < 1.0:
        sorted_z = -jnp.sort(-z, axis=-1)
        probs = jax.nn.softmax(sorted_z, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(sorted_z, kept - 1, axis=-1)
        z = jnp.where(z < threshold, -jnp.inf, z)
    return z


def prefill(model: nnx.Module, prompt_tokens: jax.Array, prompt_mask: jax.Array, n: int,
            g: int) -> tuple[Any, Any, jax.Array, jax.Array, jax.Array]:
    """Encode left-padded prompts [B, P] once into the read-only prefix of a decode loop, and
    an empty cache for the `n` new tokens of B*G rows (rows b*G .. b*G+G-1 belong to prompt b:
    they share prompt b's keys/values, never copied per row).

    Returns (prefix: the prompts' cache (:func:`decoding_prefix`); cache: the new tokens'
    cache, L per-layer arrays [B*G, n, ...] (:func:`decoding_cache`); logits [B*G, V] of the
    last prompt slot; next position [B*G]; key_ok bool [B*G, P+n]: the prefix and cache slots
    a new query may attend to so far), for ``model(token, pos, key_ok[:, None], cache,
    prefix)`` steps.
    """
    b, p = prompt_tokens.shape
    prompt_mask = prompt_mask.astype(bool)
    slots = jnp.arange(p)
    # Query i sees real prompt slots j <= i (padding queries see themselves).
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    attn = (prompt_mask[:, None, :] & (slots[None, None, :] <= slots[None, :, None]))
    attn = attn | (slots[None, None, :] == slots[None, :, None])
    prefix = init_cache(model.config, b, p)
    hidden, prefix = model.hidden_states(prompt_tokens, positions, attn, prefix)
    last = model.logits_from_hidden(hidden[:, -1:])[:, 0]  # LM head on the last slot only
    key_ok = jnp.pad(prompt_mask, ((0, 0), (0, n)))
    return (decoding_prefix(prefix), decoding_cache(init_cache(model.config, b * g, n)),
            jnp.repeat(last.astype(jnp.float32), g, axis=0),
            jnp.repeat(positions[:, -1] + 1, g, axis=0), jnp.repeat(key_ok, g, axis=0))


def draw(z: jax.Array, keys: jax.Array, temperature: float, top_k: int,
         top_p: float) -> tuple[jax.Array, jax.Array]:
    """(token [B], log q(token) [B]) from logits z [B, V] that are already constrained:
    q = softmax(filter_logits(z / temperature)); greedy argmax with log q = 0 at temperature 0.
    `keys` [B] holds one PRNG key per row."""
    if temperature == 0:
        return jnp.argmax(z, axis=-1).astype(jnp.int32), jnp.zeros(z.shape[:1], jnp.float32)
    z = filter_logits(z / temperature, top_k, top_p)
    token = jax.vmap(jax.random.categorical)(keys, z).astype(jnp.int32)
    logq = jnp.take_along_axis(jax.nn.log_softmax(z, -1), token[:, None], -1)[:, 0]
    return token, logq


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate(graphdef, params: SamplingParams, eos_id: int, state, prompt_tokens, prompt_mask,
              rng, trie: trie_lib.Trie | None) -> Samples:
    model = decoding_layout(nnx.merge(graphdef, state))
    b, p = prompt_tokens.shape
    g, n = params.num_samples, params.max_new_tokens
    slots = jnp.arange(p + n)
    prefix, cache, last, next_pos, key_ok = prefill(model, prompt_tokens, prompt_mask, n, g)
    rows = b * g
    if trie is not None and trie.child_tokens.ndim == 3:
        trie = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), trie)
    row_ids = jnp.arange(rows)

    def sample(step, z, node, done):
        if trie is not None:
            # Finished rows sit at a leaf (nothing allowed); keep their logits finite.
            z = jnp.where(done[:, None], z, trie_lib.constrain_logits(trie, node, z))
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(rng, step), row_ids)
        return draw(z, keys, params.temperature, params.top_k, params.top_p)

    def body(carry):
        step, cache, z, node, done, key_ok, pos, out = carry
        lse = jax.nn.logsumexp(z, axis=-1)
        token, logq = sample(step, z, node, done)
        live = ~done
        token = jnp.where(live, token, 0)
        model_lp = jnp.take_along_axis(z, token[:, None], -1)[:, 0] - lse
        record = (token, live, jnp.where(live, logq, 0.0), jnp.where(live, model_lp, 0.0),
                  jnp.where(live, token_self_certainty(z), 0.0))
        out = tuple(o.at[:, step].set(r) for o, r in zip(out, record))
        if trie is not None:
            node = jnp.where(live, trie_lib.advance(trie, node, token), node)
        done = done | (token == eos_id)
        key_ok = key_ok | (slots[None, :] == p + step)
        logits, cache = model(token[:, None], pos[:, None], key_ok[:, None, :], cache, prefix)
        return step + 1, cache, logits[:, -1].astype(jnp.float32), node, done, key_ok, pos + 1, out

    def cond(carry):
        return (carry[0] < n) & ~jnp.all(carry[4])

    out = (jnp.zeros((rows, n), jnp.int32), jnp.zeros((rows, n), bool),
           jnp.zeros((rows, n), jnp.float32), jnp.zeros((rows, n), jnp.float32),
           jnp.zeros((rows, n), jnp.float32))
    init = (jnp.int32(0), cache, last, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool),
            key_ok, next_pos, out)
    _, _, _, node, _, _, _, out = jax.lax.while_loop(cond, body, init)
    tokens, mask, logq, model_lp, certainty = (o.reshape(b, g, n) for o in out)
    candidate = (trie_lib.candidate_at(trie, node) if trie is not None
                 else jnp.full((rows,), -1, jnp.int32))
    return Samples(tokens=tokens, mask=mask, logprobs=logq, model_logprobs=model_lp,
                   self_certainty=certainty, candidate=candidate.reshape(b, g))


def generate(model: nnx.Module, prompt_tokens: Any, prompt_mask: Any, rng: jax.Array,
             params: SamplingParams, eos_id: int, trie: trie_lib.Trie | None = None) -> Samples:
    """Sample `params.num_samples` completions per left-padded prompt [B, P] (see module doc).

    With `trie` (one [N, K] trie for all prompts or a batched [B, N, K] one, from
    :mod:`abpo_jax.sampling.trie`) every finished sample is one of the prompt's candidates and
    `Samples.candidate` names it; give `max_new_tokens` >= the longest candidate sequence.
    """
    graphdef, state = nnx.split(model)
    if trie is not None:
        trie = jax.tree.map(jnp.asarray, trie)
    return _generate(graphdef, params, int(eos_id), state, jnp.asarray(prompt_tokens),
                     jnp.asarray(prompt_mask), rng, trie)
