"""Token tries over candidate completions, compiled to static-shape arrays for jit.

A candidate completion (`<item_id>ID</item_id>` followed by eos) is tokenized as one string, so
the trie holds exactly the token sequence the model would have to produce (BPE merges across the
tag/ID boundary stay intact). Every sequence ends with the eos token, so a candidate whose tokens
are a prefix of another's still has its own leaf: the two paths part at eos.

Layout (one prompt; a batch stacks these with a leading axis and common padding; the functions
accept either a batched trie [B, N, K] or one trie [N, K] shared by every row):

    child_tokens   int32 [N, K]   token of each outgoing edge, -1 where the slot is empty
    child_nodes    int32 [N, K]   node the edge leads to
    leaf_candidate int32 [N]      candidate index at the node reached by its eos, else -1

Node 0 is the root; node N-1 is a sink with no children, reached by any token the trie does not
allow. Memory is O(N*K) per prompt (N <= 1 + total candidate tokens, K <= C), instead of the
O(N*V) of a dense allowed-token table: at V=49k, C=20, 12 tokens each, ~40 KB vs ~940 MB.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


class _Encodes(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


@flax.struct.dataclass
class Trie:
    """Static-shape token trie (leading batch axes allowed); see the module docstring."""

    child_tokens: jax.Array
    child_nodes: jax.Array
    leaf_candidate: jax.Array

    @property
    def num_nodes(self) -> int:
        return self.child_tokens.shape[-2]

    @property
    def sink(self) -> int:
        """Index of the dead-end node that disallowed tokens lead to."""
        return self.num_nodes - 1


def candidate_token_sequences(tokenizer: _Encodes, completions: Sequence[str],
                              append_eos: bool = True) -> list[list[int]]:
    """Tokenize each completion string whole (not piecewise) and append eos."""
    eos = [tokenizer.eos_id] if append_eos else []
    return [list(tokenizer.encode(text)) + eos for text in completions]


def trie_size(sequences: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(nodes including root and sink, max children of a node) of the trie over `sequences`."""
    children: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for t in range(len(seq)):
            children.setdefault(tuple(seq[:t]), set()).add(int(seq[t]))
    prefixes = {tuple(s[:t]) for s in sequences for t in range(1, len(s) + 1)}
    return len(prefixes) + 2, max((len(v) for v in children.values()), default=1)


def build_trie(sequences: Sequence[Sequence[int]], num_nodes: int | None = None,
               max_children: int | None = None, vocab_size: int | None = None) -> Trie:
    """Compile one prompt's candidate token sequences into a :class:`Trie` (numpy arrays).

    `num_nodes` / `max_children` pad to fixed sizes so tries of different prompts stack (and jit
    does not recompile); they must be at least :func:`trie_size`. Raises ValueError on an empty
    sequence, a duplicate sequence, a sequence that is a strict prefix of another (no distinct
    terminal token), or a token outside [0, vocab_size).
    """
    if not sequences:
        raise ValueError("build_trie: no candidate sequences")
    need_nodes, need_children = trie_size(sequences)
    n = need_nodes if num_nodes is None else num_nodes
    k = need_children if max_children is None else max_children
    if n < need_nodes or k < need_children:
        raise ValueError(f"build_trie: needs num_nodes>={need_nodes} and max_children>="
                         f"{need_children}, got {n} and {k}")
    child_tokens = np.full((n, k), -1, np.int32)
    child_nodes = np.full((n, k), n - 1, np.int32)
    leaf = np.full((n,), -1, np.int32)
    edges: dict[tuple[int, int], int] = {}
    fanout = np.zeros((n,), np.int32)
    next_free = 1
    for c, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"build_trie: candidate {c} has no tokens")
        node = 0
        for tok in seq:
            tok = int(tok)
            if tok < 0 or (vocab_size is not None and tok >= vocab_size):
                raise ValueError(f"build_trie: candidate {c} has token {tok} outside the "
                                 f"vocabulary [0, {vocab_size})")
            if leaf[node] >= 0:
                raise ValueError(f"build_trie: candidate {leaf[node]} is a strict prefix of "
                                 f"candidate {c}; end every sequence with a terminal (eos) token")
            child = edges.get((node, tok))
            if child is None:
                child = next_free
                next_free += 1
                edges[(node, tok)] = child
                child_tokens[node, fanout[node]] = tok
                child_nodes[node, fanout[node]] = child
                fanout[node] += 1
            node = child
        if leaf[node] >= 0:
            raise ValueError(f"build_trie: candidates {leaf[node]} and {c} have the same tokens")
        if fanout[node] > 0:
            raise ValueError(f"build_trie: candidate {c} is a strict prefix of another; end "
                             "every sequence with a terminal (eos) token")
        leaf[node] = c
    return Trie(child_tokens=child_tokens, child_nodes=child_nodes, leaf_candidate=leaf)


def build_batch_trie(batch: Sequence[Sequence[Sequence[int]]], num_nodes: int | None = None,
                     max_children: int | None = None, vocab_size: int | None = None) -> Trie:
    """Stack per-prompt tries (each prompt its own candidate list) into one [B, N, K] trie."""
    sizes = [trie_size(seqs) for seqs in batch]
    n = max(s[0] for s in sizes) if num_nodes is None else num_nodes
    k = max(s[1] for s in sizes) if max_children is None else max_children
    tries = [build_trie(seqs, n, k, vocab_size) for seqs in batch]
    return jax.tree.map(lambda *xs: np.stack(xs), *tries)


def _node_children(trie: Trie, node: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Edges [B, K] (tokens, child nodes) of each row's current node."""
    if trie.child_tokens.ndim == 2:  # one trie shared by every row
        return trie.child_tokens[node], trie.child_nodes[node]
    idx = node[:, None, None]
    tokens = jnp.take_along_axis(trie.child_tokens, idx, axis=1)[:, 0]
    nodes = jnp.take_along_axis(trie.child_nodes, idx, axis=1)[:, 0]
    return tokens, nodes


def allowed_tokens(trie: Trie, node: jax.Array, vocab_size: int) -> jax.Array:
    """bool [B, V]: tokens the trie allows after each row's node (all False at a leaf/sink)."""
    tokens, _ = _node_children(trie, node)
    rows = jnp.arange(node.shape[0])[:, None]
    # Empty slots (-1) are sent out of range and dropped.
    cols = jnp.where(tokens >= 0, tokens, vocab_size)
    return jnp.zeros((node.shape[0], vocab_size), bool).at[rows, cols].set(True, mode="drop")


def constrain_logits(trie: Trie, node: jax.Array, logits: jax.Array) -> jax.Array:
    """logits [B, V] with every token the trie disallows at `node` [B] set to -inf."""
    allowed = allowed_tokens(trie, node, logits.shape[-1])
    return jnp.where(allowed, logits, -jnp.inf)


def advance(trie: Trie, node: jax.Array, token: jax.Array) -> jax.Array:
    """Next node [B] after emitting `token` [B]; the sink if the token is not allowed."""
    tokens, nodes = _node_children(trie, node)
    hit = tokens == token[:, None]
    return jnp.where(hit.any(-1), jnp.max(jnp.where(hit, nodes, -1), axis=-1), trie.sink)


def candidate_at(trie: Trie, node: jax.Array) -> jax.Array:
    """Candidate index [B] whose full sequence ends at `node`, -1 if the node is not a leaf."""
    if trie.leaf_candidate.ndim == 1:  # one trie shared by every row
        return trie.leaf_candidate[node]
    return jnp.take_along_axis(trie.leaf_candidate, node[:, None], axis=1)[:, 0]
