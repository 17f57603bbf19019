"""Item-mode policy over packed candidate completions (DESIGN.md "Action space and policy").

pi~_theta(c | x) = softmax_c( sum_t log pi_theta(o_c,t | x, o_c,<t) ) over the closed candidate
list. Scoring uses the sampling engineer's shared-prefix packing (`sampling.group_scoring`):
the prompt once, the C completions after it. This module adds what training needs on top:
the item-id span of each completion (for self-certainty) and a differentiable scorer of
(params, frozen) that the jitted steps call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.sampling.group_scoring import (PackedGroup, bucket, candidate_distribution,
                                             pack_group, score_packed)


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

    Lengths default to bucketed batch maxima, so similar batches reuse one compiled step.
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


def score_candidates(model: Any, batch: CandidateBatch, certainty_on: str = "item"
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log pi~ [B, C], summed completion log-probs [B, C], self-certainty [B, C]).

    Self-certainty is the mean of SC_t = logsumexp(z_t) - mean(z_t) (full vocabulary) over the
    item-id span (`certainty_on="item"`) or over all completion tokens ("completion").
    Differentiable in the model's parameters.
    """
    scores = score_packed(model, batch.packed)
    cand_logp = candidate_distribution(scores.sequence_logprobs, batch.valid)
    m = batch.item_mask if certainty_on == "item" else scores.mask.astype(jnp.float32)
    certainty = (jnp.sum(scores.self_certainty * m, axis=-1)
                 / jnp.maximum(jnp.sum(m, axis=-1), 1.0))
    return cand_logp, scores.sequence_logprobs, certainty
