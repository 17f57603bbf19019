"""Per-token scores from the LM head without a [tokens, vocabulary] array for large vocabularies.

Training and item scoring need, for each scored token, log softmax(z)[target] and the
self-certainty logsumexp(z) - mean(z) over the full vocabulary (losses.abpo), z = the tied LM
head's logits. With Gemma-3's 262k vocabulary the plain way holds z [N, 262k] (1 GB per 1,000
tokens in float32) in the forward and a softmax of the same size in the backward.
:func:`token_scores_from_hidden` instead scans over vocabulary chunks: the forward keeps an
online logsumexp, the sum of z and the target's logit; the backward recomputes each chunk's
logits and forms its share of the hidden-state and embedding gradients. Peak memory is one
[N, chunk] block. Small vocabularies (SmolLM2's 49k, the item-id models') take the plain path,
whose numbers are unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from abpo_jax.losses.abpo import token_self_certainty

Array = jax.Array
# Vocabulary chunk of the scanned head: [N, 32k] float32 blocks (128 MB per 1,000 tokens).
LM_HEAD_CHUNK = 32768


def token_scores(logits: Array, targets: Array) -> tuple[Array, Array]:
    """log softmax(z)[target] and self-certainty (`losses.abpo.token_self_certainty`), over
    the last axis (XLA shares the one logsumexp)."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1), token_self_certainty(logits)


def _chunk_logits(x: Array, w: Array, i: Array, chunk: int, bf16: bool,
                  softcap: float | None) -> Array:
    """z [N, chunk] of vocabulary rows [i*chunk, (i+1)*chunk) of the tied head w [V, D]."""
    wc = jax.lax.dynamic_slice_in_dim(w, i * chunk, chunk, axis=0)
    if bf16:
        x, wc = x.astype(jnp.bfloat16), wc.astype(jnp.bfloat16)
    z = jax.lax.dot_general(x, wc.astype(x.dtype), (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return jnp.tanh(z / softcap) * softcap if softcap else z


def _forward(x: Array, w: Array, targets: Array, chunk: int, bf16: bool,
             softcap: float | None) -> tuple[Array, Array, Array]:
    """(target logit, logsumexp, sum of z), each [N], by an online scan over the chunks."""
    n = x.shape[0]

    def body(carry, i):
        run_max, run_sum, z_sum, picked = carry
        z = _chunk_logits(x, w, i, chunk, bf16, softcap)
        new_max = jnp.maximum(run_max, jnp.max(z, axis=1))
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.exp(z - new_max[:, None]),
                                                                 axis=1)
        local = targets - i * chunk
        inside = (local >= 0) & (local < chunk)
        hit = jnp.take_along_axis(z, jnp.clip(local, 0, chunk - 1)[:, None], axis=1)[:, 0]
        return (new_max, run_sum, z_sum + jnp.sum(z, axis=1),
                jnp.where(inside, hit, picked)), None

    zeros = jnp.zeros((n,), jnp.float32)
    init = (jnp.full((n,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    (run_max, run_sum, z_sum, picked), _ = jax.lax.scan(
        body, init, jnp.arange(w.shape[0] // chunk))
    return picked, run_max + jnp.log(run_sum), z_sum


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked_scores(x: Array, w: Array, targets: Array, chunk: int, bf16: bool,
                    softcap: float | None) -> tuple[Array, Array]:
    picked, lse, z_sum = _forward(x, w, targets, chunk, bf16, softcap)
    return picked - lse, lse - z_sum / w.shape[0]


def _chunked_fwd(x, w, targets, chunk, bf16, softcap):
    picked, lse, z_sum = _forward(x, w, targets, chunk, bf16, softcap)
    return (picked - lse, lse - z_sum / w.shape[0]), (x, w, targets, lse)


def _chunked_bwd(chunk, bf16, softcap, res, g):
    """d logp / dz = onehot - p, d SC / dz = p - 1/V (p = softmax z), per chunk; through the
    soft-cap, dz/draw = 1 - (z/cap)^2; then dx = dz . W_chunk and dW_chunk = dz^T x."""
    x, w, targets, lse = res
    g_logp, g_sc = g
    v = w.shape[0]

    def body(dx, i):
        z = _chunk_logits(x, w, i, chunk, bf16, softcap)
        p = jnp.exp(z - lse[:, None])
        onehot = (targets - i * chunk)[:, None] == jnp.arange(chunk)[None, :]
        dz = p * (g_sc - g_logp)[:, None] + jnp.where(onehot, g_logp[:, None], 0.0) \
            - (g_sc / v)[:, None]
        if softcap:
            dz = dz * (1.0 - (z / softcap) ** 2)
        wc = jax.lax.dynamic_slice_in_dim(w, i * chunk, chunk, axis=0)
        operands = (dz.astype(jnp.bfloat16), wc.astype(jnp.bfloat16),
                    x.astype(jnp.bfloat16)) if bf16 else (dz, wc.astype(jnp.float32),
                                                          x.astype(jnp.float32))
        dz_, wc_, x_ = operands
        dx = dx + jax.lax.dot_general(dz_, wc_, (((1,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        dw = jax.lax.dot_general(dz_, x_, (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        return dx, dw.astype(w.dtype)

    dx, dw = jax.lax.scan(body, jnp.zeros(x.shape, jnp.float32), jnp.arange(v // chunk))
    return dx.astype(x.dtype), dw.reshape(w.shape), None


_chunked_scores.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_head(config: Any, chunk: int = LM_HEAD_CHUNK) -> bool:
    """Whether `token_scores_from_hidden` scans the head: a tied vocabulary that is a multiple
    of `chunk` larger than it (Gemma-3's 262k; not SmolLM2's 49k or item-id vocabularies)."""
    return bool(config.tie_embeddings and config.vocab_size > chunk
                and config.vocab_size % chunk == 0)


def token_scores_from_hidden(model: Any, hidden: Array, targets: Array,
                             chunk: int = LM_HEAD_CHUNK) -> tuple[Array, Array]:
    """(log softmax(z)[target], logsumexp(z) - mean(z)) for final-norm hidden states
    [..., D] and targets [...] of `model` (a Decoder): the scanned head above when its
    tied vocabulary is a multiple of `chunk` larger than it, else `token_scores` of the plain
    logits. Differentiable in the hidden states and the embedding."""
    c = model.config
    if not chunked_head(c, chunk):
        return token_scores(model.logits_from_hidden(hidden), targets)
    lead = hidden.shape[:-1]
    logp, certainty = _chunked_scores(
        hidden.reshape(-1, hidden.shape[-1]), model.embed_tokens.embedding[...],
        targets.reshape(-1).astype(jnp.int32), chunk, c.matmul_precision == "bfloat16",
        c.final_logit_softcapping)
    return logp.reshape(lead), certainty.reshape(lead)
