"""The text-mode policy role: request -> prompt tokens -> sampled completions (DESIGN.md "Action
space and policy", text and catalogue mode).

A completion is optional free text (`<think>...</think>`, up to `policy.max_think_tokens`), then
the item tag decoded under a token trie: of the prompt's candidates (`policy.candidates=list`)
or of the whole catalogue (`catalogue`, the prompt then shows the history only). The sampling
procedure and its exact probability live in `sampling/procedure.py`; this module builds its
inputs with fixed padded sizes (one compiled program per run) and reads its outputs back as
items:

    list mode       member item = candidate index in the prompt's list
    catalogue mode  member item = dense item id (the trie's leaf is the item)

`TextPolicy.sample` is the one sampling path of deployment (one completion per request, the
logging procedure), the update's rollouts (G per request, pi_old's procedure) and text-mode
evaluation (n per test request, the sibling protocol).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from abpo_jax.data.logs import LogRecord
from abpo_jax.data.splits import Example
from abpo_jax.losses.format_rewards import format_reward
from abpo_jax.sampling import procedure as proc
from abpo_jax.sampling import trie as trie_lib
from abpo_jax.sampling.beam import BeamParams, beam_search
from abpo_jax.sampling.generate import left_pad
from abpo_jax.data import records
from abpo_jax.train.outputs import progress
from abpo_jax.train.policy import Encoder
from abpo_jax.train.state import ModelSplit


def procedure_from_config(config: Any, tokenizer: Any, max_item_tokens: int,
                          temperature: float) -> proc.Procedure:
    """The sampling procedure of `config.policy` at `temperature` (rollouts and evaluation use
    `policy.temperature`, deployment `policy.logging_temperature`)."""
    p = config.policy
    think = int(p.max_think_tokens)
    close = proc.think_close_ids(tokenizer) if think else ()
    return proc.Procedure(temperature=float(temperature), top_k=int(p.top_k),
                          top_p=float(p.top_p), max_think_tokens=think, think_close=close,
                          max_item_tokens=int(max_item_tokens))


@dataclasses.dataclass
class TextEncoder:
    """Prompts, item tries and logged completions of text mode, with the run's fixed sizes.

    `encoder` is the run's item-mode encoder (its prompts follow `candidates_in_prompt`; its
    candidate completions are the item tags); `catalogue` holds, in catalogue mode, every item's
    completion token sequence (eos included) indexed by dense item id.
    """

    encoder: Encoder
    procedure: proc.Procedure
    format_sources: tuple[str, ...]
    catalogue: Sequence[Sequence[int]] | None = None

    def __post_init__(self):
        tok = self.encoder.tokenizer
        self.eos_id = int(tok.eos_id)
        self.pad_id = int(getattr(tok, "pad_id", 0) or 0)
        self.length = self.procedure.completion_length
        if self.catalogue is not None:
            self.shared_trie = trie_lib.build_catalogue_trie(
                self.catalogue, vocab_size=int(tok.vocab_size))
        else:
            self.shared_trie = None
            c, l = self.encoder.num_candidates, self.encoder.completion_len
            self.trie_nodes, self.trie_children = c * l + 2, c

    @property
    def catalogue_mode(self) -> bool:
        return self.catalogue is not None

    def prompts(self, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompt tokens / mask [B, P] (the sampler's layout)."""
        return left_pad([self.encoder.prompt_ids(e) for e in examples],
                        self.encoder.prompt_len, self.pad_id)

    def tries(self, examples: Sequence[Example]) -> trie_lib.Trie | None:
        """List mode: the batched trie [B, N, K] of each prompt's candidates (fixed padding);
        catalogue mode: None (the shared catalogue trie is used)."""
        if self.catalogue_mode:
            return None
        return trie_lib.build_batch_trie([self.encoder.completion_ids(e) for e in examples],
                                         self.trie_nodes, self.trie_children)

    def trie_for(self, examples: Sequence[Example]) -> Any:
        """The trie the sampler and the scorer take for `examples`."""
        return self.shared_trie if self.catalogue_mode else self.tries(examples)

    def logged_item(self, record: LogRecord) -> int:
        """The anchor's member item: its candidate index (list) or its item id (catalogue)."""
        return int(record.exposed_item_id if self.catalogue_mode else record.exposed_index)

    def bare_completion(self, example: Example, item: int) -> tuple[list[int], list[int]]:
        """(tokens, kinds) of the bare item tag of member item `item` (a log without the
        completion's tokens: the anchor is its item tag)."""
        seq = (self.catalogue[item] if self.catalogue_mode
               else self.encoder.completion_ids(example)[item])
        return list(seq), [proc.KIND_ITEM] * len(seq)

    def anchor(self, record: LogRecord, example: Example) -> tuple[np.ndarray, np.ndarray]:
        """The logged completion as (tokens [N], kinds [N]), padded: the tokens the log stores,
        else the bare item tag."""
        logged = records.completion(record)
        tokens, kinds = (self.bare_completion(example, self.logged_item(record)) if logged is None
                         else logged)
        if len(tokens) > self.length:
            raise ValueError(f"request {record.request_id}: logged completion has {len(tokens)} "
                             f"tokens, more than this run's completion length {self.length} "
                             "(policy.max_think_tokens + the item tag)")
        out_t = np.full(self.length, self.pad_id, np.int32)
        out_k = np.full(self.length, proc.KIND_PAD, np.int32)
        out_t[:len(tokens)], out_k[:len(kinds)] = tokens, kinds
        return out_t, out_k

    def format_rewards(self, tokens: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Format reward of each completion [..., N] (1 when no free text is allowed: every
        completion is a well-formed item tag by construction)."""
        shape = tokens.shape[:-1]
        if not self.procedure.max_think_tokens:
            return np.ones(shape, np.float32)
        flat_t, flat_k = tokens.reshape(-1, tokens.shape[-1]), kinds.reshape(-1, kinds.shape[-1])
        tok = self.encoder.tokenizer
        out = [format_reward(tok.decode([int(x) for x, k in zip(t, ks) if k != proc.KIND_PAD
                                         and int(x) != self.eos_id]), self.format_sources)
               for t, ks in zip(flat_t, flat_k)]
        return np.asarray(out, np.float32).reshape(shape)


def completion_lists(tokens: np.ndarray, kinds: np.ndarray) -> tuple[list[int], list[int]]:
    """One sampled completion [N] as the (tokens, kinds) lists a log record stores."""
    real = np.asarray(kinds) != proc.KIND_PAD
    return [int(t) for t in tokens[real]], [int(k) for k in kinds[real]]


@dataclasses.dataclass
class TextPolicy:
    """Samples completions of the run's model for any trainable params: batched, padded."""

    split: ModelSplit
    frozen: Any
    text: TextEncoder
    mesh: Mesh
    batch_sharding: NamedSharding
    batch_size: int
    show_progress: bool = False

    def sample_batch(self, params: Any, examples: Sequence[Example], rng: jax.Array,
                     procedure: proc.Procedure, num_samples: int) -> proc.TextSamples:
        """`num_samples` completions for each of exactly `len(examples)` requests (host numpy)."""
        tokens, mask = self.text.prompts(examples)
        return self.sample_prompts(params, tokens, mask, self.text.trie_for(examples), rng,
                                   procedure, num_samples)

    def sample_prompts(self, params: Any, tokens: np.ndarray, mask: np.ndarray, trie: Any,
                       rng: jax.Array, procedure: proc.Procedure, num_samples: int
                       ) -> proc.TextSamples:
        """Completions of left-padded prompt tokens [B, P] under `trie` (batched [B, ...] in
        list mode, the shared catalogue trie otherwise), as host numpy."""
        put = lambda x: jax.device_put(np.asarray(x), self.batch_sharding)  # noqa: E731
        if not self.text.catalogue_mode:
            trie = jax.tree.map(put, trie)
        with jax.set_mesh(self.mesh):
            out = proc.sample_completions(self.split.merge(params, self.frozen), put(tokens),
                                          put(mask), rng, procedure, num_samples,
                                          self.text.eos_id, trie)
        return jax.tree.map(np.asarray, out)

    def sample(self, params: Any, examples: Sequence[Example], rng: jax.Array,
               procedure: proc.Procedure, num_samples: int, desc: str) -> proc.TextSamples:
        """Completions [N, G, L] for every request, in chunks of `batch_size` (chunk i draws
        with fold_in(rng, i), so results do not depend on anything but the chunking)."""
        bs, parts = self.batch_size, []
        chunks = range(0, len(examples), bs)
        for n, i in enumerate(progress(chunks, desc, total=len(chunks),
                                       enabled=self.show_progress)):
            chunk = list(examples[i:i + bs])
            real = len(chunk)
            chunk += [chunk[-1]] * (bs - real)
            out = self.sample_batch(params, chunk, jax.random.fold_in(rng, n), procedure,
                                    num_samples)
            parts.append(jax.tree.map(lambda x: x[:real], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


    def beam_items(self, params: Any, examples: Sequence[Example], beam: int, desc: str
                   ) -> np.ndarray:
        """Catalogue mode: the K = `beam` items of constrained beam search per request [N, K],
        best first (MiniOneRec's evaluation: length_penalty 0, the sequence log-prob)."""
        bs, parts = self.batch_size, []
        params_b = BeamParams(num_beams=beam, max_new_tokens=self.text.procedure.max_item_tokens)
        chunks = range(0, len(examples), bs)
        model = self.split.merge(params, self.frozen)
        for i in progress(chunks, desc, total=len(chunks), enabled=self.show_progress):
            chunk = list(examples[i:i + bs])
            real = len(chunk)
            chunk += [chunk[-1]] * (bs - real)
            tokens, mask = self.text.prompts(chunk)
            put = lambda x: jax.device_put(np.asarray(x), self.batch_sharding)  # noqa: E731
            with jax.set_mesh(self.mesh):
                out = beam_search(model, put(tokens), put(mask), self.text.shared_trie,
                                  params_b, self.text.eos_id)
            parts.append(np.asarray(out.items)[:real])
        return np.concatenate(parts)


def certainty_mask(kinds: Any, on: str) -> Any:
    """The tokens whose self-certainty is averaged (`loss.certainty_tokens`): the item span
    (`item`) or every generated token (`completion`); numpy or jax [..., N]."""
    return proc.item_span_mask(kinds) if on == "item" else kinds != proc.KIND_PAD
