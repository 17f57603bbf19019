"""Jit-compiled trie-constrained beam search with the KV cache (catalogue-mode evaluation).

The ReRe / MiniOneRec protocol ranks the whole catalogue by constrained beam search: for each
prompt the K beams' finished items, best first, are the top-K recommendation (HR@K / NDCG@K in
:mod:`abpo_jax.eval.catalogue`). MiniOneRec's `evaluate.py` calls Hugging Face

    model.generate(num_beams=K, num_return_sequences=K, do_sample=False, length_penalty=0.0,
                   logits_processor=[prefix-trie constraint], max_new_tokens=...)

(`evaluate.sh` passes `--length_penalty 0.0`, also its default), and this module computes what
that call returns (transformers 5 `GenerationMixin._beam_search`), with the trie on device:

  * step score of token t after beam y: log softmax(z)[t] of the model logits z at temperature
    1 (the unconstrained model log-prob; the constraint removes tokens, it does not
    renormalise), -inf where the trie disallows t;
  * beam score = sum of its step scores; a finished hypothesis (eos emitted, i.e. a trie leaf
    reached) scores sum / L ** length_penalty, L its number of tokens, eos included — with
    MiniOneRec's length_penalty = 0 that is the item completion's sequence log-prob
    log pi(o_item | x);
  * per step the 2K best of the K x V continuations are taken; those of them among the first K
    that end in eos enter the pool of K finished hypotheses (the best K are kept), the K best
    that do not end in eos are the next beams and the cache rows are reordered to them;
  * a prompt stops (its pool is frozen) once its pool is full and its best running beam,
    normalised by the current length, cannot beat the pool's worst (HF `early_stopping=False`);
    the loop ends when every prompt stopped or after `max_new_tokens` steps.

HF starts the K-1 copies of the first beam at -1e9 and masks with -inf; here they are dead
(-inf) from the start. The two differ only in hypotheses scored below -1e9, so both return the
same items whenever the catalogue holds at least K items (every running beam sits at a trie
node with a leaf below it, so K valid items always finish).

Layout: prompts are left-padded (:func:`abpo_jax.sampling.generate.left_pad`) and prefilled once
into a read-only prefix that prompt b's K beams share; rows b*K .. b*K+K-1 of the generated
tokens' cache are its beams, and a reshuffle reorders only that cache (at most N slots per row,
not the prompt's P). Cost per step: one decode of B*K rows, a log-softmax over V and a top-2K
over the K beams' trie edges (K * max_children entries, not K*V).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.models.decoder import decoding_layout
from abpo_jax.sampling import trie as trie_lib
from abpo_jax.sampling.generate import prefill


@dataclasses.dataclass(frozen=True)
class BeamParams:
    """Static beam-search settings (one compiled program per distinct value)."""

    num_beams: int = 10           # K: beams, and items returned per prompt
    max_new_tokens: int = 32      # >= the longest item completion (eos included)
    length_penalty: float = 0.0   # MiniOneRec evaluate.sh: 0.0 (rank by sequence log-prob)

    def __post_init__(self):
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError(f"BeamParams: num_beams and max_new_tokens must be >= 1: {self}")


@flax.struct.dataclass
class Beams:
    """The K finished hypotheses of each prompt, best first, [B, K] (tokens [B, K, N])."""

    items: jax.Array      # int32: trie candidate (catalogue item) of each hypothesis; -1 = none
    scores: jax.Array     # float32: HF sequences_scores, logprobs / lengths ** length_penalty
    logprobs: jax.Array   # float32: summed model log-probs of the completion, eos included
    tokens: jax.Array     # int32: completion tokens, 0 after eos
    lengths: jax.Array    # int32: completion tokens, eos included


def _gather_rows(cache, rows: jax.Array):
    """The generated tokens' per-layer cache (:func:`~abpo_jax.sampling.generate.prefill`)
    with its rows replaced by rows[i]; the prompt's prefix is shared by a prompt's beams."""
    def take(x: jax.Array) -> jax.Array:
        return jnp.take(x, rows, axis=0)
    return cache.replace(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)),
                         positions=take(cache.positions))


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, M, ...] gathered along axis 1 by idx [B, J] -> [B, J, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _beam_search(graphdef, params: BeamParams, eos_id: int, state, prompt_tokens, prompt_mask,
                 trie) -> Beams:
    model = decoding_layout(nnx.merge(graphdef, state))
    b, p = prompt_tokens.shape
    k, n, lp = params.num_beams, params.max_new_tokens, params.length_penalty
    rows = b * k
    slots = jnp.arange(p + n)
    prefix, cache, z, pos, key_ok = prefill(model, prompt_tokens, prompt_mask, n, k)
    first_k = jnp.arange(2 * k) < k
    prompt_row = jnp.arange(b)[:, None] * k
    neg_inf = jnp.float32(-jnp.inf)

    def body(carry):
        step, cache, z, node, key_ok, pos, run, fin, active = carry
        run_score, run_tokens = run
        fin_score, fin_logp, fin_item, fin_tokens, fin_len = fin
        length = (step + 1).astype(jnp.float32)   # tokens of a hypothesis after this step
        norm = length ** lp

        # Only the trie's edges out of each beam's node are scored (a gather of M <= max_children
        # logits per row, M padded to >= 2): the top-2K runs over K*M entries, not K*V, and
        # no [rows, V] mask is built. Empty edge slots score -inf (token 0, the sink).
        edge_tokens, edge_nodes = trie_lib.node_children(trie, node)        # [rows, M]
        if edge_tokens.shape[1] < 2:
            edge_tokens = jnp.pad(edge_tokens, ((0, 0), (0, 1)), constant_values=-1)
            edge_nodes = jnp.pad(edge_nodes, ((0, 0), (0, 1)), constant_values=trie.sink)
        m = edge_tokens.shape[1]
        # log_softmax as before the gather, so the scores are bitwise the dense version's
        picked = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), jnp.maximum(edge_tokens, 0),
                                     axis=1)
        logp = jnp.where(edge_tokens >= 0, picked, neg_inf)
        total = (run_score.reshape(rows, 1) + logp).reshape(b, k * m)
        top, idx = jax.lax.top_k(total, 2 * k)                    # [B, 2K], best first
        src, slot = idx // m, idx % m
        src_rows = (prompt_row + src).reshape(-1)
        token = jnp.maximum(edge_tokens[src_rows, slot.reshape(-1)], 0).reshape(b, 2 * k)
        child = edge_nodes[src_rows, slot.reshape(-1)].reshape(b, 2 * k)
        seqs = _take(run_tokens, src).at[:, :, step].set(token)  # [B, 2K, N]
        is_eos = (token == eos_id) & (top > neg_inf)

        # Finished: eos among the first K continuations, while the prompt is still searching.
        done_now = is_eos & first_k[None] & active[:, None]
        leaf = trie_lib.candidate_at(trie, child.reshape(-1)).reshape(b, 2 * k)
        merged = jnp.concatenate([fin_score, jnp.where(done_now, top / norm, neg_inf)], axis=1)
        _, keep = jax.lax.top_k(merged, k)
        fin = (_take(merged, keep),
               _take(jnp.concatenate([fin_logp, top], 1), keep),
               _take(jnp.concatenate([fin_item, leaf], 1), keep),
               _take(jnp.concatenate([fin_tokens, seqs], 1), keep),
               _take(jnp.concatenate([fin_len, jnp.full((b, 2 * k), step + 1, jnp.int32)], 1),
                     keep))

        # Running: the K best continuations that did not end in eos.
        run_score, order = jax.lax.top_k(jnp.where(is_eos, neg_inf, top), k)
        run_tokens = _take(seqs, order)
        next_token = _take(token, order).reshape(-1)
        parent = (prompt_row + _take(src, order)).reshape(-1)
        cache = _gather_rows(cache, parent)
        node = _take(child, order).reshape(-1)

        # HF early_stopping=False: can the best running beam (at today's length) still enter?
        full = jnp.all(fin[0] > neg_inf, axis=1)
        worst = jnp.where(full, jnp.min(fin[0], axis=1), -1e9)
        active = active & (run_score[:, 0] / norm > worst)

        key_ok = key_ok | (slots[None, :] == p + step)
        logits, cache = model(next_token[:, None], pos[:, None], key_ok[:, None, :], cache,
                              prefix)
        return (step + 1, cache, logits[:, -1].astype(jnp.float32), node, key_ok, pos + 1,
                (run_score, run_tokens), fin, active)

    def cond(carry):
        return (carry[0] < n) & jnp.any(carry[-1])

    # Only beam 0 of each prompt is live at the start (the other K-1 are copies of it).
    run = (jnp.full((b, k), neg_inf).at[:, 0].set(0.0), jnp.zeros((b, k, n), jnp.int32))
    fin = (jnp.full((b, k), neg_inf), jnp.full((b, k), neg_inf), jnp.full((b, k), -1, jnp.int32),
           jnp.zeros((b, k, n), jnp.int32), jnp.zeros((b, k), jnp.int32))
    init = (jnp.int32(0), cache, z, jnp.zeros((rows,), jnp.int32), key_ok, pos, run, fin,
            jnp.ones((b,), bool))
    fin_score, fin_logp, fin_item, fin_tokens, fin_len = jax.lax.while_loop(cond, body, init)[7]
    found = fin_score > neg_inf
    return Beams(items=jnp.where(found, fin_item, -1), scores=fin_score,
                 logprobs=jnp.where(found, fin_logp, neg_inf),
                 tokens=jnp.where(found[..., None], fin_tokens, 0),
                 lengths=jnp.where(found, fin_len, 0))


def beam_search(model: nnx.Module, prompt_tokens: Any, prompt_mask: Any,
                trie: trie_lib.Trie | trie_lib.EdgeTrie, params: BeamParams,
                eos_id: int) -> Beams:
    """K = `params.num_beams` distinct trie items per left-padded prompt [B, P], best first.

    `trie`: one trie shared by every prompt (usually the catalogue's
    :func:`~abpo_jax.sampling.trie.build_catalogue_trie`) whose sequences all end in `eos_id`.
    With at least K items every returned item is valid (>= 0); see the module docstring for the
    scores.
    """
    if isinstance(trie, trie_lib.Trie) and trie.child_tokens.ndim != 2:
        raise ValueError("beam_search: one trie shared by every prompt (got a batched trie)")
    graphdef, state = nnx.split(model)
    return _beam_search(graphdef, params, int(eos_id), state, jnp.asarray(prompt_tokens),
                        jnp.asarray(prompt_mask), jax.tree.map(jnp.asarray, trie))
