"""Text-mode sampling procedure: optional free text, then an item tag decoded under a trie.

A completion is N = :attr:`Procedure.completion_length` token slots, left-aligned:

    [ free tokens (KIND_FREE) | forced close (KIND_FORCED) | item tokens ... eos (KIND_ITEM) | pad ]

Procedure (z = model logits of a step, float32; T the temperature; filter = top-k then top-p,
:func:`abpo_jax.sampling.generate.filter_logits`):

1. Free text (only when `max_think_tokens` > 0). Each step samples from
   q_free = softmax(filter(mask_eos(z) / T)); eos is disallowed, so free text cannot end the
   completion. The text is cut right after the first token-level occurrence of `think_close`
   (those tokens are sampled, KIND_FREE); nothing after the cut is ever generated, which is the
   same as discarding it, so the kept prefix's probability is exactly the product of its
   per-step probabilities (the discarded continuation marginalises to 1). If `think_close` has
   not occurred after `max_think_tokens` free tokens, its tokens are appended as KIND_FORCED
   with probability 1 (log q = 0).
2. Item: each step samples from q_item = softmax(filter(constrain(z) / T)), where constrain sets
   every token the prompt's candidate trie disallows at the current node to -inf; the item
   tokens end with eos at a trie leaf, so every finished sample is one of the candidates.

The procedure emits no opening ``<think>``: end the prompt with it (a thinking chat template)
or leave it to the model. A sample that runs out of `max_item_tokens` before eos has no
candidate (-1), hence the bound on the longest candidate sequence.

The probability of the whole completion under this procedure is

    q(o | x) = prod_{t free} q_free(o_t | x, o_<t) * prod_{t item} q_item(o_t | x, o_<t),

(forced tokens contribute 1), logged per token in :attr:`TextSamples.logq`. Greedy decoding
(T = 0) is deterministic: argmax of the same constrained logits, log q = 0 everywhere.
:func:`procedure_log_probs` recomputes log q teacher-forced from any policy's logits (the
SNIPS numerator under pi_old). Randomness: the key of step s, row r in phase k (KIND_FREE or
KIND_ITEM) is fold_in(fold_in(fold_in(rng, k), s), r).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.data.prompts import THINK_CLOSE
from abpo_jax.losses.abpo import token_self_certainty
from abpo_jax.models.decoder import decoding_layout
from abpo_jax.sampling import trie as trie_lib
from abpo_jax.sampling.generate import draw, filter_logits, prefill

KIND_PAD, KIND_FREE, KIND_FORCED, KIND_ITEM = 0, 1, 2, 3


class _Encodes(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class Procedure:
    """Static settings of the text-mode procedure (one compiled program per distinct value)."""

    temperature: float = 1.0              # T; 0 = greedy
    top_k: int = 0                        # 0 = off
    top_p: float = 1.0                    # 1 = off
    max_think_tokens: int = 0             # free-text budget; 0 = the item tag from the first token
    think_close: tuple[int, ...] = ()     # token ids of "</think>" (see think_close_ids)
    max_item_tokens: int = 16             # >= the longest candidate token sequence, eos included

    def __post_init__(self):
        object.__setattr__(self, "think_close", tuple(int(t) for t in self.think_close))
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Procedure: need temperature >= 0, top_k >= 0, 0 < top_p <= 1: "
                             f"{self}")
        if self.max_think_tokens < 0 or self.max_item_tokens < 1:
            raise ValueError(f"Procedure: need max_think_tokens >= 0 and max_item_tokens >= 1: "
                             f"{self}")
        if self.max_think_tokens > 0 and (not self.think_close
                                          or min(self.think_close) < 0):
            raise ValueError(f"Procedure: max_think_tokens > 0 needs the non-negative token ids "
                             f"of the think close tag in think_close: {self}")

    @property
    def completion_length(self) -> int:
        """N: free-text budget + forced close + item tokens (just the item without free text)."""
        if self.max_think_tokens == 0:
            return self.max_item_tokens
        return self.max_think_tokens + len(self.think_close) + self.max_item_tokens


def think_close_ids(tokenizer: _Encodes) -> tuple[int, ...]:
    """Token ids of "</think>" as the tokenizer encodes it on its own (the sequence the free
    text is matched against; BPE may tokenize it differently inside running text, which then
    does not count as a close)."""
    return tuple(tokenizer.encode(THINK_CLOSE))


@flax.struct.dataclass
class TextSamples:
    """Sampled completions [B, G, N] (module docstring layout); pad entries are 0."""

    tokens: jax.Array           # int32
    kinds: jax.Array            # int32: KIND_PAD / KIND_FREE / KIND_FORCED / KIND_ITEM
    logq: jax.Array             # float32: log q(token) under the procedure; 0 on forced and pad
    model_logprobs: jax.Array   # float32: log softmax(z)[token], unconstrained, temperature 1
    self_certainty: jax.Array   # float32: losses.abpo.token_self_certainty(z)
    candidate: jax.Array        # int32 [B, G]: trie leaf reached (>= 0 for a finished sample)

    @property
    def mask(self) -> jax.Array:
        """bool [B, G, N]: real completion tokens (free, forced and item, eos included)."""
        return self.kinds != KIND_PAD

    @property
    def log_propensity(self) -> jax.Array:
        """float32 [B, G]: log q(completion | prompt), the logged propensity."""
        return self.logq.sum(-1)


def item_span_mask(kinds: jax.Array) -> jax.Array:
    """bool mask of the item-tag tokens (KIND_ITEM: tag, id and eos), e.g. for self-certainty."""
    return kinds == KIND_ITEM


def _per_prompt(fn, trie: trie_lib.Trie, b: int, g: int, *row_arrays: jax.Array) -> jax.Array:
    """Apply a trie function to rows laid out b*G + g: vmapped over the G axis so a batched
    trie [B, ...] lines up with each slice's B rows (a shared trie works either way)."""
    split = [x.reshape(b, g, *x.shape[1:]) for x in row_arrays]
    out = jax.vmap(lambda *xs: fn(trie, *xs), in_axes=1, out_axes=1)(*split)
    return out.reshape(b * g, *out.shape[2:])


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _sample(graphdef, procedure: Procedure, num_samples: int, eos_id: int, state, prompt_tokens,
            prompt_mask, rng, trie: trie_lib.Trie) -> TextSamples:
    model = decoding_layout(nnx.merge(graphdef, state))
    b, p = prompt_tokens.shape
    g, n = num_samples, procedure.completion_length
    rows = b * g
    slots = jnp.arange(p + n)
    prefix, cache, z0, pos0, key_ok0 = prefill(model, prompt_tokens, prompt_mask, n, g)
    close = jnp.asarray(procedure.think_close or (0,), jnp.int32)
    row_ids = jnp.arange(rows)

    def body(carry):
        step, cache, z, kind, node, n_free, n_forced, window, key_ok, pos, out = carry
        is_free, is_item = kind == KIND_FREE, kind == KIND_ITEM
        zc = jnp.where(is_free[:, None], z.at[:, eos_id].set(-jnp.inf), z)
        zc = jnp.where(is_item[:, None], _per_prompt(trie_lib.constrain_logits, trie, b, g,
                                                     node, z), zc)
        keys = jax.vmap(lambda k, r: jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(rng, k), step), r))(kind, row_ids)
        sampled, logq = draw(zc, keys, procedure.temperature, procedure.top_k, procedure.top_p)
        token = jnp.where(kind == KIND_FORCED, close[jnp.minimum(n_forced, close.size - 1)],
                          sampled)
        live = kind != KIND_PAD
        token = jnp.where(live, token, 0)
        model_lp = jnp.take_along_axis(z, token[:, None], -1)[:, 0] - jax.nn.logsumexp(z, -1)
        record = (token, kind, jnp.where(is_free | is_item, logq, 0.0),
                  jnp.where(live, model_lp, 0.0),
                  jnp.where(live, token_self_certainty(z), 0.0))
        out = tuple(o.at[:, step].set(r) for o, r in zip(out, record))

        # Phase transitions (a row moves at most one phase per step).
        window = jnp.where(is_free[:, None],
                           jnp.concatenate([window[:, 1:], token[:, None]], axis=1), window)
        n_free = n_free + is_free
        closed = is_free & jnp.all(window == close[None], axis=1)
        n_forced = n_forced + (kind == KIND_FORCED)
        node = jnp.where(is_item, _per_prompt(trie_lib.advance, trie, b, g, node, token), node)
        kind = jnp.select(
            [closed | ((kind == KIND_FORCED) & (n_forced == close.size)),
             is_free & (n_free >= procedure.max_think_tokens),
             is_item & (token == eos_id)],
            [KIND_ITEM, KIND_FORCED, KIND_PAD], kind).astype(jnp.int32)

        key_ok = key_ok | (slots[None, :] == p + step)
        logits, cache = model(token[:, None], pos[:, None], key_ok[:, None, :], cache, prefix)
        return (step + 1, cache, logits[:, -1].astype(jnp.float32), kind, node, n_free,
                n_forced, window, key_ok, pos + 1, out)

    def cond(carry):
        return (carry[0] < n) & jnp.any(carry[3] != KIND_PAD)

    first = KIND_FREE if procedure.max_think_tokens > 0 else KIND_ITEM
    zeros_i, zeros_f = jnp.zeros((rows, n), jnp.int32), jnp.zeros((rows, n), jnp.float32)
    init = (jnp.int32(0), cache, z0, jnp.full((rows,), first, jnp.int32),
            jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), jnp.int32),
            jnp.zeros((rows,), jnp.int32), jnp.full((rows, close.size), -1, jnp.int32),
            key_ok0, pos0, (zeros_i, zeros_i, zeros_f, zeros_f, zeros_f))
    final = jax.lax.while_loop(cond, body, init)
    node, out = final[4], final[-1]
    tokens, kinds, logq, model_lp, certainty = (o.reshape(b, g, n) for o in out)
    candidate = _per_prompt(trie_lib.candidate_at, trie, b, g, node)
    return TextSamples(tokens=tokens, kinds=kinds, logq=logq, model_logprobs=model_lp,
                       self_certainty=certainty, candidate=candidate.reshape(b, g))


def sample_completions(model: nnx.Module, prompt_tokens: Any, prompt_mask: Any, rng: jax.Array,
                       procedure: Procedure, num_samples: int, eos_id: int,
                       trie: trie_lib.Trie) -> TextSamples:
    """Sample `num_samples` completions per left-padded prompt [B, P]
    (:func:`abpo_jax.sampling.generate.left_pad`) with the procedure of the module docstring.

    `trie` is one trie shared by every prompt or a batched [B, ...] one (each prompt its own
    candidates), from :mod:`abpo_jax.sampling.trie`; its sequences end with `eos_id`. One
    prefill, then one KV-cache decode loop over both phases; rows stop at their item's eos.
    """
    if num_samples < 1:
        raise ValueError(f"sample_completions: num_samples must be >= 1, got {num_samples}")
    graphdef, state = nnx.split(model)
    return _sample(graphdef, procedure, int(num_samples), int(eos_id), state,
                   jnp.asarray(prompt_tokens), jnp.asarray(prompt_mask), rng,
                   jax.tree.map(jnp.asarray, trie))


def procedure_log_probs(logits: jax.Array, tokens: jax.Array, kinds: jax.Array,
                        trie: trie_lib.Trie, procedure: Procedure, eos_id: int) -> jax.Array:
    """Teacher-forced log q(o_t) [R, N] of logged completions under the procedure (pure, jit-able
    with `procedure` and `eos_id` static).

    logits [R, N, V]: the logits that predict completion token t of row r (any policy's);
    tokens, kinds [R, N] as in :class:`TextSamples` (flattened to rows); `trie` shared or
    batched per row [R, ...]. Trie nodes advance over KIND_ITEM tokens only, from the root.
    KIND_FREE: log softmax(filter(mask_eos(z) / T)); KIND_ITEM: log softmax(filter(constrain(z)
    / T)); KIND_FORCED and KIND_PAD: 0; everything 0 at T = 0 (greedy). Equals the sampler's
    `logq` when `logits` are the sampling model's.
    """
    r, n, _ = logits.shape
    if procedure.temperature == 0:
        return jnp.zeros((r, n), jnp.float32)
    z = jnp.asarray(logits, jnp.float32)
    tokens = jnp.asarray(tokens, jnp.int32)
    trie = jax.tree.map(jnp.asarray, trie)
    is_free, is_item = kinds == KIND_FREE, kinds == KIND_ITEM

    def step(node, x):
        token, item = x
        return jnp.where(item, trie_lib.advance(trie, node, token), node), node

    _, nodes = jax.lax.scan(step, jnp.zeros((r,), jnp.int32), (tokens.T, is_item.T))  # [N, R]
    z_item = jax.vmap(lambda nd, zt: trie_lib.constrain_logits(trie, nd, zt),
                      in_axes=(0, 1), out_axes=1)(nodes, z)
    # Forced and pad slots take the eos-masked logits too: finite, so no NaN reaches a gradient.
    zc = jnp.where(is_item[..., None], z_item, z.at[..., eos_id].set(-jnp.inf))
    zc = filter_logits((zc / procedure.temperature).reshape(r * n, -1), procedure.top_k,
                       procedure.top_p).reshape(z.shape)
    logq = jnp.take_along_axis(jax.nn.log_softmax(zc, -1), tokens[..., None], -1)[..., 0]
    return jnp.where(is_free | is_item, logq, 0.0)


__all__ = ["KIND_FORCED", "KIND_FREE", "KIND_ITEM", "KIND_PAD", "Procedure", "TextSamples",
           "item_span_mask", "procedure_log_probs", "sample_completions", "think_close_ids"]
