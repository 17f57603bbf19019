"""The item-mode policy role: request -> tokens -> log pi~ (DESIGN.md "Action space and policy").

pi~_theta(c | x) = softmax_c( sum_t log pi_theta(o_c,t | x, o_c,<t) ) over the closed candidate
list, scored with the shared-prefix packing of `sampling.group_scoring` (`pack_candidates` ->
`score_candidates`, the one token path). This module adds the request side: `Encoder` renders and
tokenizes `Example`s with run-wide fixed padded sizes (one compiled program) and `Policy` scores
batches of requests with given trainable params on the run's mesh (a logged request is rebuilt by
`data.records.example_from_record`). Deploy, the update featurizer, evaluation, `recommend` and
GEE all go through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from abpo_jax.data.prompts import render_completion, render_messages
from abpo_jax.data.splits import Example
from abpo_jax.sampling.group_scoring import (CandidateBatch, bucket, pack_candidates,
                                             score_candidates)
from abpo_jax.sampling.trie import candidate_token_sequences
from abpo_jax.train.faults import kill_point
from abpo_jax.train.packing import ItemCompletions, pack_requests
from abpo_jax.train.outputs import progress
from abpo_jax.train.state import ModelSplit


def load_pretrained(config: Any) -> tuple[Any, Any]:
    """(Decoder, Tokenizer) for a pretrained `config.model` (smollm2 | hf | gguf)."""
    from abpo_jax.models.loaders import load_model
    from abpo_jax.models.tokenizer import load_tokenizer

    source = config.model.source
    if source == "tiny":
        raise ValueError("config.model.source=tiny is an untrained item-id model; recommend "
                         "needs smollm2, hf or gguf")
    model, _ = load_model(source, config.model.path, dtype=config.model.dtype,
                          weight_cache=config.model.weight_cache_dir,
                          random_init=bool(config.model.get("random_init", False)))
    return model, load_tokenizer(source, config.model.path,
                                 weight_cache=config.model.weight_cache_dir)


def prompt_style(config: Any) -> str:
    """`ids_only` prompts for the tiny item-id decoder, full chat prompts otherwise."""
    return "ids_only" if config.model.source == "tiny" else "full"


@dataclasses.dataclass
class Encoder:
    """Renders and tokenizes requests (history + candidates) with fixed padded sizes, so every
    batch of the run has one shape (one compiled step)."""

    tokenizer: Any
    titles: Sequence[str]
    short_ids: Sequence[str]
    style: str
    show_ratings: bool
    candidates_in_prompt: bool = True   # False: catalogue mode (the prompt shows the history only)
    item_text: str = "id"               # catalogue mode: items named by id | title in the prompt
    prompt_len: int = 0
    completion_len: int = 0
    num_candidates: int = 0
    item_completions: ItemCompletions | None = None   # every item's completion tokens (lazy)
    # logits rows scored once per prompt (`group_scoring.score_packed`): 1 + the token prefix
    # every item's completion shares; 0 = every (candidate, token) row apart (former program)
    shared_rows: int = 0

    def prompt_ids(self, example: Example) -> list[int]:
        messages = render_messages(example, self.titles, self.short_ids,
                                   show_ratings=self.show_ratings, style=self.style,
                                   candidates=self.candidates_in_prompt,
                                   item_text=self.item_text)
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(self.tokenizer.encode(out) if isinstance(out, str) else out)

    def completion_ids(self, example: Example) -> list[list[int]]:
        texts = [render_completion(self.short_ids[int(c)]) for c in example.candidates]
        return [list(x) for x in candidate_token_sequences(self.tokenizer, texts, True)]

    def fit(self, examples: Sequence[Example], exact: bool = False) -> "Encoder":
        """Fix the padded sizes from every request the run will see (bucketed). `exact`: the
        completion length from every item's completion (the table `encode` packs from) rather
        than the first 64 requests' + 2 tokens of room (event rounds: smaller steps; the user
        protocol keeps its shapes, so its results stay as they were); the prompt padded to a
        multiple of 4 instead of 16 then (the tiny policy's 18-token prompts: 20, not 32), and the
        logits rows the candidates share scored once per prompt (`shared_rows`)."""
        self.prompt_len = bucket(max(len(self.prompt_ids(e)) for e in examples),
                                 4 if exact else 16)
        self.num_candidates = max(len(e.candidates) for e in examples)
        if exact and self.candidates_in_prompt:
            pad = int(getattr(self.tokenizer, "pad_id", 0) or 0)
            self.item_completions = ItemCompletions.build(self.tokenizer, self.short_ids, pad)
            self.completion_len = bucket(int(self.item_completions.lengths.max()), 4)
            self.shared_rows = min(self.item_completions.common_prefix() + 1,
                                   self.completion_len - 1)
            return self
        self.completion_len = max(len(o) for e in examples[:64] for o in self.completion_ids(e))
        self.completion_len = bucket(self.completion_len + 2, 4)  # room for longer ids
        return self

    def encode(self, examples: Sequence[Example]) -> CandidateBatch:
        pad = int(getattr(self.tokenizer, "pad_id", 0) or 0)
        prompts = [self.prompt_ids(e) for e in examples]
        if self.candidates_in_prompt and all(len(e.candidates) == self.num_candidates
                                             for e in examples):
            # a candidate's completion depends on the item alone: tokenized once per item,
            # packed with NumPy over the batch (the same arrays as pack_candidates)
            if self.item_completions is None:
                self.item_completions = ItemCompletions.build(self.tokenizer, self.short_ids, pad)
            return pack_requests(prompts, np.stack([e.candidates for e in examples]),
                                 self.item_completions, prompt_len=self.prompt_len,
                                 completion_len=self.completion_len, pad_id=pad)
        return pack_candidates(
            prompts, [self.completion_ids(e) for e in examples],
            prompt_len=self.prompt_len, completion_len=self.completion_len,
            num_candidates=self.num_candidates, pad_id=pad)


@dataclasses.dataclass
class Policy:
    """log pi~ of the run's model for any trainable params: batched, padded, sharded."""

    split: ModelSplit
    frozen: Any
    encoder: Encoder
    mesh: Mesh
    batch_sharding: NamedSharding
    batch_size: int
    certainty_on: str = "item"
    show_progress: bool = False

    def __post_init__(self):
        split, certainty_on, encoder = self.split, self.certainty_on, self.encoder

        def score(params, frozen, cands):
            logp, _, certainty = score_candidates(split.merge(params, frozen), cands,
                                                  certainty_on, encoder.shared_rows)
            return logp, certainty

        replicated = NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.score = jax.jit(score, out_shardings=replicated)

    def log_probs(self, params: Any, examples: Sequence[Example], desc: str,
                  kill: str | None = None) -> np.ndarray:
        """log pi~ [N, C] of the policy with trainable `params` over the examples' candidates."""
        return self.scores(params, examples, desc, kill)[0]

    def scores(self, params: Any, examples: Sequence[Example], desc: str,
               kill: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(log pi~ [N, C], raw self-certainty [N, C] of each candidate's completion)."""
        bs = self.batch_size
        out, certainty = [], []
        chunks = range(0, len(examples), bs)
        for i in progress(chunks, desc, total=len(chunks), enabled=self.show_progress):
            chunk = list(examples[i:i + bs])
            n = len(chunk)
            chunk += [chunk[-1]] * (bs - n)
            # Host arrays holding the *global* batch (identical on every process) -> sharded.
            cands = jax.tree.map(lambda x: jax.device_put(np.asarray(x), self.batch_sharding),
                                 self.encoder.encode(chunk))
            with jax.set_mesh(self.mesh):
                lp, sc = self.score(params, self.frozen, cands)
            out.append(np.asarray(lp)[:n])
            certainty.append(np.asarray(sc)[:n])
            if kill:
                kill_point(kill)
        return np.concatenate(out), np.concatenate(certainty)
