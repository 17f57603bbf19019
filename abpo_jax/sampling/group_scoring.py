"""Teacher-forced log-probs of many completions of one prompt in one shared-prefix packed pass.

Packed row layout for one prompt with K completions (static sizes P, K, L; T = P + K*L):

    [ prompt (right-padded to P) | completion 0 (padded to L) | ... | completion K-1 ]

Each completion attends to the real prompt tokens and causally to itself only (block mask from
a per-token segment id: 0 = prompt, k+1 = completion k, -1 = padding), and its positions continue
from the prompt length, so every completion sees exactly what it would see scored alone after
the prompt. The prompt is encoded once instead of K times. The first token of every completion
is predicted from the prompt's last logits; token j > 0 from the logits of its own token j-1.

Also here: :func:`sequence_logprobs` (plain causal scoring of ordinary batches, the naive
reference), :func:`candidate_distribution` (the item-mode policy), the one token path to it that
training, evaluation, `recommend` and GEE share (:func:`pack_candidates` ->
:func:`score_candidates`: log pi~, sequence log-probs, self-certainty of the item-id span) and
:func:`candidate_log_policy` (strings in, log pi(item | x) [B, C] out, with padded-length buckets
so repeated calls reuse compiled code).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from abpo_jax.losses.abpo import sequence_self_certainty, token_self_certainty
# (token_scores stays importable from here: text_learner, tests)
from abpo_jax.models.lm_head import chunked_head, token_scores, token_scores_from_hidden
from abpo_jax.sampling.trie import candidate_token_sequences


@flax.struct.dataclass
class PackedGroup:
    """Host-built packed batch; see the module docstring for the layout."""

    tokens: jax.Array             # int32 [B, T]
    positions: jax.Array          # int32 [B, T]
    segments: jax.Array           # int32 [B, T]: 0 prompt, k+1 completion k, -1 pad
    prompt_lengths: jax.Array     # int32 [B]
    completion_tokens: jax.Array  # int32 [B, K, L]
    completion_mask: jax.Array    # bool  [B, K, L]


@flax.struct.dataclass
class GroupScores:
    """Per-completion teacher-forced scores (padding entries are 0)."""

    sequence_logprobs: jax.Array  # float32 [B, K]: sum_t log pi(o_t | x, o_<t)
    token_logprobs: jax.Array     # float32 [B, K, L]
    mask: jax.Array               # bool [B, K, L]
    self_certainty: jax.Array     # float32 [B, K, L]: logsumexp(z) - mean(z) of the step's logits


def bucket(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` >= n (>= multiple): padded sizes shared across calls."""
    return max(multiple, multiple * math.ceil(n / multiple))


def pack_group(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]],
               prompt_len: int | None = None, completion_len: int | None = None,
               num_completions: int | None = None, pad_id: int = 0) -> PackedGroup:
    """Pack B prompts, each with its own list of completions (ragged lengths and counts).

    Sizes default to the batch maxima; pass them to get fixed shapes (missing completions are
    all-padding and score 0 with an all-False mask).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"pack_group: {len(prompts)} prompts but {len(completions)} "
                         "completion lists")
    b = len(prompts)
    p = max(len(x) for x in prompts) if prompt_len is None else prompt_len
    k = max(len(c) for c in completions) if num_completions is None else num_completions
    lens = [len(o) for c in completions for o in c]
    l = max(lens, default=1) if completion_len is None else completion_len
    for i, (x, cs) in enumerate(zip(prompts, completions)):
        if not 0 < len(x) <= p:
            raise ValueError(f"pack_group: prompt {i} has {len(x)} tokens; need 1..{p}")
        if len(cs) > k or any(len(o) > l for o in cs):
            raise ValueError(f"pack_group: prompt {i} has {len(cs)} completions of lengths "
                             f"{[len(o) for o in cs]}; limits are {k} and {l}")
    t = p + k * l
    tokens = np.full((b, t), pad_id, np.int32)
    positions = np.zeros((b, t), np.int32)
    segments = np.full((b, t), -1, np.int32)
    comp = np.full((b, k, l), pad_id, np.int32)
    cmask = np.zeros((b, k, l), bool)
    for i, (x, cs) in enumerate(zip(prompts, completions)):
        n = len(x)
        tokens[i, :n], positions[i, :n], segments[i, :n] = x, np.arange(n), 0
        for j, o in enumerate(cs):
            s = p + j * l
            tokens[i, s:s + len(o)] = o
            positions[i, s:s + len(o)] = n + np.arange(len(o))
            segments[i, s:s + len(o)] = j + 1
            comp[i, j, :len(o)], cmask[i, j, :len(o)] = o, True
    return PackedGroup(tokens=tokens, positions=positions, segments=segments,
                       prompt_lengths=np.array([len(x) for x in prompts], np.int32),
                       completion_tokens=comp, completion_mask=cmask)


def packed_attention_mask(segments: jax.Array, positions: jax.Array) -> jax.Array:
    """bool [B, T, T]: query i sees key j iff both are real, j is in the prompt or in i's own
    segment, and pos_j <= pos_i. Padding queries see themselves so no softmax row is empty."""
    valid = segments >= 0
    same = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    causal = positions[:, None, :] <= positions[:, :, None]
    mask = valid[:, :, None] & valid[:, None, :] & same & causal
    return mask | jnp.eye(segments.shape[1], dtype=bool)[None]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _score_packed(graphdef, state, packed: PackedGroup, shared_rows: int = 0) -> GroupScores:
    model = nnx.merge(graphdef, state)
    b, k, l = packed.completion_tokens.shape
    if 0 < shared_rows < l and not chunked_head(model.config):
        tokens, positions, segments, rows = _compact_layout(packed, shared_rows)
        hidden, _ = model.hidden_states(tokens, positions,
                                        packed_attention_mask(segments, positions))
        logp, certainty = _shared_row_scores(model, hidden, rows, packed.completion_tokens,
                                             shared_rows)
        m = packed.completion_mask
        logp, certainty = jnp.where(m, logp, 0.0), jnp.where(m, certainty, 0.0)
        return GroupScores(sequence_logprobs=logp.sum(-1), token_logprobs=logp, mask=m,
                           self_certainty=certainty)
    mask = packed_attention_mask(packed.segments, packed.positions)
    hidden, _ = model.hidden_states(packed.tokens, packed.positions, mask)
    p = packed.tokens.shape[1] - k * l
    # Row of the logits that predicts completion token (k, j): the prompt's last token for
    # j = 0, otherwise token j-1 of the same completion block.
    block = p + jnp.arange(k)[:, None] * l + jnp.arange(l)[None, :] - 1
    rows = jnp.where(jnp.arange(l)[None, None, :] == 0,
                     packed.prompt_lengths[:, None, None] - 1, block[None])
    # Only these K*L rows go through the LM head (not the prompt's P rows), and a large
    # vocabulary's head in chunks (models/lm_head.py).
    picked = jnp.take_along_axis(hidden, rows.reshape(b, k * l)[..., None], axis=1)
    if chunked_head(model.config):
        logp, certainty = token_scores_from_hidden(
            model, picked, packed.completion_tokens.reshape(b, k * l))
        logp, certainty = logp.reshape(b, k, l), certainty.reshape(b, k, l)
    else:   # the plain head, as the same program as always (runs' numbers stay bitwise)
        logits = model.logits_from_hidden(picked)
        logp, certainty = token_scores(logits.reshape(b, k, l, -1), packed.completion_tokens)
    m = packed.completion_mask
    logp, certainty = jnp.where(m, logp, 0.0), jnp.where(m, certainty, 0.0)
    return GroupScores(sequence_logprobs=logp.sum(-1), token_logprobs=logp, mask=m,
                       self_certainty=certainty)


def _compact_layout(packed: PackedGroup, shared_rows: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(tokens, positions, segments [B, T'], rows [B, K, L]) of the decoder input without the
    columns no score needs: the completions' common prefix (`shared_rows - 1` tokens) once per
    prompt instead of K times, and no completion's last column (it predicts nothing and no
    later token of its block attends to it). T' = P + (s-1) + K(L-s) instead of P + KL (the
    tiny policy, C = 8: 37 tokens instead of 52).

    Every query sees the same keys at the same positions as in the full layout: the shared
    prefix is marked as prompt (segment 0), so every completion attends to it, and its
    positions follow the prompt's, so the prompt (earlier positions) does not. rows[b, k, j]:
    the column whose logits predict completion token j (the prompt's last token for j = 0,
    the shared prefix's token j-1 for j < s, else token j-1 of completion k)."""
    b, k, l = packed.completion_tokens.shape
    p = packed.tokens.shape[1] - k * l
    pre, own = shared_rows - 1, l - shared_rows
    n = packed.prompt_lengths[:, None]
    comp, cmask = packed.completion_tokens, packed.completion_mask
    own_mask = cmask[:, :, pre:l - 1]
    own_pos = jnp.where(own_mask, n[..., None] + pre + jnp.arange(own), 0)
    own_seg = jnp.where(own_mask, jnp.arange(1, k + 1)[None, :, None], -1)
    tokens = jnp.concatenate([packed.tokens[:, :p], comp[:, 0, :pre],
                              comp[:, :, pre:l - 1].reshape(b, k * own)], axis=1)
    positions = jnp.concatenate([packed.positions[:, :p],
                                 jnp.where(cmask[:, 0, :pre], n + jnp.arange(pre), 0),
                                 own_pos.reshape(b, k * own)], axis=1)
    segments = jnp.concatenate([packed.segments[:, :p], jnp.where(cmask[:, 0, :pre], 0, -1),
                                own_seg.reshape(b, k * own)], axis=1)
    j = jnp.arange(l)[None, None, :]
    rows = jnp.where(j == 0, n[..., None] - 1,
                     jnp.where(j < shared_rows, p + j - 1,
                               p + pre + jnp.arange(k)[None, :, None] * own + j - shared_rows))
    return tokens, positions.astype(jnp.int32), segments.astype(jnp.int32), rows


def _shared_row_scores(model: Any, hidden: jax.Array, rows: jax.Array, targets: jax.Array,
                       shared_rows: int) -> tuple[jax.Array, jax.Array]:
    """(log-prob, self-certainty) [B, K, L] of every completion token, the LM head applied once
    per prompt to the first `shared_rows` token positions.

    Token j < shared_rows of every completion is predicted from the same context (the prompt,
    then the completions' common token prefix: `<item_id>` for the item-id tokenizer), so its
    logits row is the same for all K completions: taken from completion 0 and scored against
    each completion's own token. Only the later rows, which differ per completion, go through
    the head K times (the tiny policy: 2 + 2K rows per prompt instead of 4K).
    """
    b, k, l = targets.shape
    s = shared_rows
    first = jnp.take_along_axis(hidden, rows[:, 0, :s][..., None], axis=1)        # [B, s, D]
    z = model.logits_from_hidden(first).astype(jnp.float32)                        # [B, s, V]
    picked = z[jnp.arange(b)[:, None, None], jnp.arange(s)[None, None, :], targets[:, :, :s]]
    shared_logp = picked - jax.nn.logsumexp(z, axis=-1)[:, None, :]                # [B, K, s]
    shared_cert = jnp.broadcast_to(token_self_certainty(z)[:, None, :], (b, k, s))
    rest = jnp.take_along_axis(hidden, rows[:, :, s:].reshape(b, k * (l - s))[..., None], axis=1)
    logits = model.logits_from_hidden(rest)
    logp, certainty = token_scores(logits.reshape(b, k, l - s, -1), targets[:, :, s:])
    return (jnp.concatenate([shared_logp, logp], axis=-1),
            jnp.concatenate([shared_cert, certainty], axis=-1))


def score_packed(model: nnx.Module, packed: PackedGroup, shared_rows: int = 0) -> GroupScores:
    """Teacher-forced scores of every packed completion in one decoder pass (jit-compiled).

    `shared_rows` > 0: the caller guarantees every completion of a prompt starts with the same
    `shared_rows - 1` tokens (e.g. `Encoder.shared_rows`), so the first `shared_rows` logits
    rows are computed once per prompt (`_shared_row_scores`); 0 keeps the program that scores
    every (completion, token) row separately."""
    graphdef, state = nnx.split(model)
    return _score_packed(graphdef, state, jax.tree.map(jnp.asarray, packed), shared_rows)


@functools.partial(jax.jit, static_argnums=0)
def _sequence_logprobs(graphdef, state, tokens, mask):
    model = nnx.merge(graphdef, state)
    mask = mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    t = tokens.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    attn = (causal & mask[:, None, :] & mask[:, :, None]) | jnp.eye(t, dtype=bool)[None]
    logits, _ = model(tokens, positions, attn)
    logp, certainty = token_scores(logits[:, :-1], tokens[:, 1:])
    scored = mask[:, 1:] & mask[:, :-1]
    pad = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    logp = jnp.concatenate([pad, jnp.where(scored, logp, 0.0)], axis=1)
    certainty = jnp.concatenate([pad, jnp.where(scored, certainty, 0.0)], axis=1)
    return logp, certainty


def sequence_logprobs(model: nnx.Module, tokens: jax.Array,
                      mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Plain causal scoring of a batch: (log pi(x_t | x_<t), self-certainty), both [B, T].

    `mask` [B, T] marks real tokens (left or right padding). Entry t scores token t from the
    logits at t-1; entries without a real predecessor (t = 0, the first real token) and padding
    are 0. Positions count real tokens, so padding does not shift RoPE.
    """
    graphdef, state = nnx.split(model)
    return _sequence_logprobs(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))


def candidate_distribution(sequence_logprobs: jax.Array, valid: jax.Array | None = None,
                           temperature: float = 1.0) -> jax.Array:
    """Item-mode policy log pi~(c | x) = log softmax_c(log pi(o_c | x) / temperature) [B, C].

    `valid` [B, C] masks padding candidates (log-prob -inf). This is the propensity definition
    the bandit logs use.
    """
    z = sequence_logprobs / temperature
    if valid is not None:
        z = jnp.where(valid, z, -jnp.inf)
    return jax.nn.log_softmax(z, axis=-1)


@dataclasses.dataclass
class CandidateBatch:
    """B prompts with their C candidate completions, packed (host numpy or device arrays).

    packed: the shared-prefix layout; item_mask [B, C, L] float: tokens of the item id inside
    each completion (self-certainty span); valid [B, C] bool: real candidates.
    """
    packed: PackedGroup
    item_mask: Any
    valid: Any


jax.tree_util.register_dataclass(
    CandidateBatch, data_fields=["packed", "item_mask", "valid"], meta_fields=[])


def item_span_mask(completions: Sequence[Sequence[Sequence[int]]], num_candidates: int,
                   completion_len: int) -> np.ndarray:
    """[B, C, L] mask of the tokens that name the item: everything except the token prefix and
    suffix that all of a prompt's candidates share (the tag and eos tokens, whatever the
    tokenizer splits them into). A single candidate keeps its whole completion."""
    out = np.zeros((len(completions), num_candidates, completion_len), np.float32)
    for b, comps in enumerate(completions):
        if len(comps) < 2:
            for c, o in enumerate(comps):
                out[b, c, :len(o)] = 1.0
            continue
        shortest = min(len(o) for o in comps)
        pre = 0
        while pre < shortest and len({o[pre] for o in comps}) == 1:
            pre += 1
        suf = 0
        while suf < shortest - pre and len({o[len(o) - 1 - suf] for o in comps}) == 1:
            suf += 1
        for c, o in enumerate(comps):
            out[b, c, pre:len(o) - suf] = 1.0
    return out


def pack_candidates(prompts: Sequence[Sequence[int]],
                    completions: Sequence[Sequence[Sequence[int]]], *,
                    prompt_len: int | None = None, completion_len: int | None = None,
                    num_candidates: int | None = None, pad_id: int = 0,
                    prompt_multiple: int = 16, completion_multiple: int = 4) -> CandidateBatch:
    """Pack token ids (prompts [B][P], completions [B][C][L]) into a :class:`CandidateBatch`.

    Lengths default to bucketed batch maxima, so similar batches reuse one compiled program.
    """
    P = prompt_len or bucket(max(map(len, prompts)), prompt_multiple)
    L = completion_len or bucket(max(len(o) for cs in completions for o in cs),
                                 completion_multiple)
    C = num_candidates or max(len(cs) for cs in completions)
    packed = pack_group(prompts, completions, prompt_len=P, completion_len=L,
                        num_completions=C, pad_id=pad_id)
    valid = np.zeros((len(prompts), C), bool)
    for b, cs in enumerate(completions):
        valid[b, :len(cs)] = True
    return CandidateBatch(packed, item_span_mask(completions, C, L), valid)


def candidate_scores(model: Any, batch: CandidateBatch, temperature: float = 1.0,
                     shared_rows: int = 0) -> tuple[jax.Array, GroupScores]:
    """(log pi~ [B, C] at `temperature`, the per-completion :class:`GroupScores`);
    `shared_rows` as in :func:`score_packed`."""
    scores = score_packed(model, batch.packed, shared_rows)
    return candidate_distribution(scores.sequence_logprobs, batch.valid, temperature), scores


def score_candidates(model: Any, batch: CandidateBatch, certainty_on: str = "item",
                     shared_rows: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log pi~ [B, C], summed completion log-probs [B, C], self-certainty [B, C]).

    The item-mode policy pi~_theta(c | x) = softmax_c(sum_t log pi_theta(o_c,t | x, o_c,<t)).
    Self-certainty is the mean of SC_t = logsumexp(z_t) - mean(z_t) (full vocabulary) over the
    item-id span (`certainty_on="item"`) or over all completion tokens ("completion").
    Differentiable in the model's parameters. `shared_rows`: as in :func:`score_packed`.
    """
    cand_logp, scores = candidate_scores(model, batch, shared_rows=shared_rows)
    m = batch.item_mask if certainty_on == "item" else scores.mask.astype(jnp.float32)
    return cand_logp, scores.sequence_logprobs, sequence_self_certainty(scores.self_certainty, m)


def candidate_log_policy(model: nnx.Module, tokenizer: Any, prompts: Sequence[str],
                         candidates: Sequence[Sequence[str]], temperature: float = 1.0,
                         append_eos: bool = True, prompt_multiple: int = 64,
                         completion_multiple: int = 8, batch_multiple: int = 1,
                         return_scores: bool = False) -> jax.Array | tuple[jax.Array, GroupScores]:
    """log pi~(candidate | prompt) [B, C] for chat-templated prompt strings and per-prompt
    candidate completion strings (e.g. `<item_id>ID</item_id>`).

    Each completion is tokenized whole and followed by eos (the full response, as in the trie);
    padded lengths are rounded up to `prompt_multiple` / `completion_multiple` so batches of
    similar prompts share one compiled program. Prompts with fewer candidates than the widest get
    padding candidates with log-prob -inf. The batch is padded (with copies of the first prompt,
    dropped from the outputs) to a multiple of `batch_multiple`. With `return_scores` also
    returns the :class:`GroupScores` (per-token log-probs and self-certainty).
    """
    if len(prompts) != len(candidates) or not prompts:
        raise ValueError(f"candidate_log_policy: {len(prompts)} prompts but {len(candidates)} "
                         "candidate lists (need the same number, at least one)")
    n = len(prompts)
    extra = bucket(n, batch_multiple) - n
    prompts, candidates = list(prompts) + [prompts[0]] * extra, list(candidates) + \
        [candidates[0]] * extra
    batch = pack_candidates([tokenizer.encode(p) for p in prompts],
                            [candidate_token_sequences(tokenizer, cs, append_eos)
                             for cs in candidates],
                            pad_id=getattr(tokenizer, "pad_id", 0) or 0,
                            prompt_multiple=prompt_multiple,
                            completion_multiple=completion_multiple)
    logp, scores = jax.tree.map(lambda x: x[:n], candidate_scores(model, batch, temperature))
    return (logp, scores) if return_scores else logp
