"""Packing a batch of item-mode requests with NumPy over the batch (no per-request loop).

A candidate's completion (`<item_id>ID</item_id>` + eos, tokenized whole) depends on the item
alone, so every item's completion is tokenized once (`ItemCompletions`) and a batch's
completions are one gather. `pack_requests` then builds the same `CandidateBatch` as
`sampling.group_scoring.pack_candidates` (same tokens, positions, segments, masks, item span)
with array operations; tests/train/test_packing.py checks the two agree exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from abpo_jax.data.prompts import render_completion
from abpo_jax.sampling.group_scoring import CandidateBatch, PackedGroup
from abpo_jax.sampling.trie import candidate_token_sequences


@dataclasses.dataclass(frozen=True, eq=False)
class ItemCompletions:
    """Every item's completion token ids: tokens int32 [I, L] (padded), lengths int32 [I]."""

    tokens: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, tokenizer: Any, short_ids: Sequence[str], pad_id: int = 0
              ) -> "ItemCompletions":
        seqs = candidate_token_sequences(tokenizer, [render_completion(s) for s in short_ids],
                                         True)
        lengths = np.array([len(s) for s in seqs], np.int32)
        tokens = np.full((len(seqs), int(lengths.max())), pad_id, np.int32)
        for i, s in enumerate(seqs):
            tokens[i, :len(s)] = s
        return cls(tokens, lengths)

    def common_prefix(self) -> int:
        """How many leading tokens every item's completion shares (`<item_id>`: 1)."""
        n = int(self.lengths.min())
        same = (self.tokens[:, :n] == self.tokens[:1, :n]).all(0)
        return int(np.cumprod(same).sum())


def item_span(comp: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """float32 [B, C, L]: the tokens naming the item, i.e. without the token prefix and suffix
    all of a row's candidates share (as `group_scoring.item_span_mask`); comp [B, C, L] padded,
    lens [B, C]."""
    b, c, l = comp.shape
    t = np.arange(l)
    if c < 2:
        return (t[None, None, :] < lens[..., None]).astype(np.float32)
    shortest = lens.min(1)
    pre = np.minimum(np.cumprod((comp == comp[:, :1]).all(1), 1).sum(1), shortest)
    back = lens[..., None] - 1 - t[None, None, :]        # t-th token from the end
    rev = np.where(back >= 0, np.take_along_axis(comp, np.maximum(back, 0), 2),
                   -1 - np.arange(c)[None, :, None])     # distinct per candidate past the start
    suf = np.minimum(np.cumprod((rev == rev[:, :1]).all(1), 1).sum(1), shortest - pre)
    span = (t[None, None, :] >= pre[:, None, None]) & (t[None, None, :] < (lens - suf[:, None])[..., None])
    return span.astype(np.float32)


def pack_requests(prompts: Sequence[Sequence[int]], candidates: np.ndarray,
                  completions: ItemCompletions, *, prompt_len: int, completion_len: int,
                  pad_id: int = 0) -> CandidateBatch:
    """The packed batch of prompts (token lists, B) with candidate items [B, C]."""
    cands = np.asarray(candidates, np.int64)
    b, c = cands.shape
    p, l = prompt_len, completion_len
    n = np.array([len(x) for x in prompts], np.int32)
    if (n < 1).any() or (n > p).any():
        raise ValueError(f"pack_requests: prompts of {n.min()}..{n.max()} tokens; need 1..{p}")
    lens = completions.lengths[cands]
    if lens.max() > l:
        raise ValueError(f"pack_requests: a completion has {lens.max()} tokens; limit {l}")
    prompt = np.full((b, p), pad_id, np.int32)
    in_prompt = np.arange(p)[None, :] < n[:, None]
    prompt[in_prompt] = np.concatenate([np.asarray(x, np.int32) for x in prompts])
    width = completions.tokens.shape[1]
    comp = np.full((b, c, l), pad_id, np.int32)
    comp[:, :, :min(width, l)] = completions.tokens[cands][:, :, :l]
    mask = np.arange(l)[None, None, :] < lens[..., None]
    comp = np.where(mask, comp, pad_id)
    ar_p = np.arange(p)[None, :]
    tokens = np.concatenate([prompt, comp.reshape(b, c * l)], 1)
    positions = np.concatenate([np.where(in_prompt, ar_p, 0),
                                np.where(mask, n[:, None, None] + np.arange(l), 0)
                                .reshape(b, c * l)], 1).astype(np.int32)
    segments = np.concatenate([np.where(in_prompt, 0, -1),
                               np.where(mask, np.arange(1, c + 1)[None, :, None], -1)
                               .reshape(b, c * l)], 1).astype(np.int32)
    packed = PackedGroup(tokens=tokens, positions=positions, segments=segments,
                         prompt_lengths=n, completion_tokens=comp, completion_mask=mask)
    return CandidateBatch(packed, item_span(comp, lens), np.ones((b, c), bool))


__all__ = ["ItemCompletions", "item_span", "pack_requests"]
