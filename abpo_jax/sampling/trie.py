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

A whole catalogue (catalogue mode: every item's title or id, thousands of items) breaks the
[N, K] layout: K is the largest fanout, which for titles is in the hundreds at the root, so
N*K cells are mostly empty. :class:`EdgeTrie` (:func:`build_catalogue_trie`) stores the same
trie as a CSR edge list, linear in the number of nodes (E = N-2 edges):

    child_tokens   int32 [E]      token of each edge; a node's edges are contiguous
    child_nodes    int32 [E]      node each edge leads to
    first_child    int32 [N]      index of a node's first edge
    num_children   int32 [N]      its number of edges
    leaf_candidate int32 [N]      as above
    max_children   static int     the largest fanout (width of the per-step edge window)

Node numbering, edge order within a node and the sink are those of :func:`build_trie`, so both
layouts give identical node ids. An edge trie is shared by every row (one catalogue); the public
functions below (`allowed_tokens`, `constrain_logits`, `advance`, `candidate_at`) dispatch on
the type, so :func:`abpo_jax.sampling.generate.generate` and the beam search take either. Per
step a row reads the window of `max_children` edges starting at its node's first edge: O(B*K)
work and no O(N*K) table.
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


@flax.struct.dataclass
class EdgeTrie:
    """Catalogue-scale token trie in CSR edge-list layout, one for all rows (module docstring)."""

    child_tokens: jax.Array
    child_nodes: jax.Array
    first_child: jax.Array
    num_children: jax.Array
    leaf_candidate: jax.Array
    max_children: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def num_nodes(self) -> int:
        return self.leaf_candidate.shape[-1]

    @property
    def sink(self) -> int:
        """Index of the dead-end node that disallowed tokens lead to."""
        return self.num_nodes - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (linear in the number of nodes)."""
        return sum(int(np.asarray(x).nbytes) for x in (
            self.child_tokens, self.child_nodes, self.first_child, self.num_children,
            self.leaf_candidate))


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


def _walk(sequences: Sequence[Sequence[int]], vocab_size: int | None, who: str
          ) -> tuple[int, list[tuple[int, int, int]], dict[int, int]]:
    """Insert every sequence into a trie: (nodes used, root included), edges (parent, token,
    child) in creation order, {leaf node: candidate}. Raises the errors :func:`build_trie`
    documents."""
    if not sequences:
        raise ValueError(f"{who}: no candidate sequences")
    children: dict[tuple[int, int], int] = {}
    edges: list[tuple[int, int, int]] = []
    has_children: set[int] = set()
    leaf: dict[int, int] = {}
    next_free = 1
    for c, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"{who}: candidate {c} has no tokens")
        node = 0
        for tok in seq:
            tok = int(tok)
            if tok < 0 or (vocab_size is not None and tok >= vocab_size):
                raise ValueError(f"{who}: candidate {c} has token {tok} outside the "
                                 f"vocabulary [0, {vocab_size})")
            if node in leaf:
                raise ValueError(f"{who}: candidate {leaf[node]} is a strict prefix of "
                                 f"candidate {c}; end every sequence with a terminal (eos) token")
            child = children.get((node, tok))
            if child is None:
                child = next_free
                next_free += 1
                children[(node, tok)] = child
                edges.append((node, tok, child))
                has_children.add(node)
            node = child
        if node in leaf:
            raise ValueError(f"{who}: candidates {leaf[node]} and {c} have the same tokens")
        if node in has_children:
            raise ValueError(f"{who}: candidate {c} is a strict prefix of another; end "
                             "every sequence with a terminal (eos) token")
        leaf[node] = c
    return next_free, edges, leaf


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
    _, edges, leaves = _walk(sequences, vocab_size, "build_trie")
    child_tokens = np.full((n, k), -1, np.int32)
    child_nodes = np.full((n, k), n - 1, np.int32)
    leaf = np.full((n,), -1, np.int32)
    fanout = np.zeros((n,), np.int32)
    for parent, tok, child in edges:
        child_tokens[parent, fanout[parent]] = tok
        child_nodes[parent, fanout[parent]] = child
        fanout[parent] += 1
    for node, c in leaves.items():
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


def build_catalogue_trie(sequences: Sequence[Sequence[int]],
                         vocab_size: int | None = None) -> EdgeTrie:
    """Compile a whole catalogue's token sequences into an :class:`EdgeTrie` (numpy arrays).

    Same node ids, edge order, validation and errors as :func:`build_trie`; memory is
    5 int32 per node instead of 2 * max_children + 1.
    """
    used, edges, leaves = _walk(sequences, vocab_size, "build_catalogue_trie")
    n = used + 1  # the sink is the last node
    order = sorted(range(len(edges)), key=lambda e: edges[e][0])  # stable: creation order kept
    parent = np.asarray([edges[e][0] for e in order], np.int32)
    counts = np.bincount(parent, minlength=n).astype(np.int32)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    leaf = np.full((n,), -1, np.int32)
    for node, c in leaves.items():
        leaf[node] = c
    return EdgeTrie(child_tokens=np.asarray([edges[e][1] for e in order], np.int32),
                    child_nodes=np.asarray([edges[e][2] for e in order], np.int32),
                    first_child=first, num_children=counts, leaf_candidate=leaf,
                    max_children=int(counts.max()))


def _edge_window(trie: EdgeTrie, node: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Edges [B, max_children] (tokens, child nodes) of each row's node, -1 / sink padded."""
    slot = jnp.arange(trie.max_children)[None, :]
    idx = trie.first_child[node][:, None] + slot
    ok = slot < trie.num_children[node][:, None]
    # Slots past a node's own edges read its neighbours' (or past the end): masked out.
    tokens = jnp.take(trie.child_tokens, idx, mode="fill", fill_value=-1)
    nodes = jnp.take(trie.child_nodes, idx, mode="fill", fill_value=trie.sink)
    return jnp.where(ok, tokens, -1), jnp.where(ok, nodes, trie.sink)


def node_children(trie: Trie | EdgeTrie, node: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Edges [B, K] (tokens, child nodes) of each row's current node; empty slots hold token
    -1 and the sink (K = the trie's max_children)."""
    if isinstance(trie, EdgeTrie):
        return _edge_window(trie, node)
    if trie.child_tokens.ndim == 2:  # one trie shared by every row
        return trie.child_tokens[node], trie.child_nodes[node]
    idx = node[:, None, None]
    tokens = jnp.take_along_axis(trie.child_tokens, idx, axis=1)[:, 0]
    nodes = jnp.take_along_axis(trie.child_nodes, idx, axis=1)[:, 0]
    return tokens, nodes


def allowed_tokens(trie: Trie | EdgeTrie, node: jax.Array, vocab_size: int) -> jax.Array:
    """bool [B, V]: tokens the trie allows after each row's node (all False at a leaf/sink)."""
    tokens, _ = node_children(trie, node)
    rows = jnp.arange(node.shape[0])[:, None]
    # Empty slots (-1) are sent out of range and dropped.
    cols = jnp.where(tokens >= 0, tokens, vocab_size)
    return jnp.zeros((node.shape[0], vocab_size), bool).at[rows, cols].set(True, mode="drop")


def constrain_logits(trie: Trie | EdgeTrie, node: jax.Array, logits: jax.Array) -> jax.Array:
    """logits [B, V] with every token the trie disallows at `node` [B] set to -inf."""
    allowed = allowed_tokens(trie, node, logits.shape[-1])
    return jnp.where(allowed, logits, -jnp.inf)


def advance(trie: Trie | EdgeTrie, node: jax.Array, token: jax.Array) -> jax.Array:
    """Next node [B] after emitting `token` [B]; the sink if the token is not allowed."""
    tokens, nodes = node_children(trie, node)
    hit = tokens == token[:, None]
    return jnp.where(hit.any(-1), jnp.max(jnp.where(hit, nodes, -1), axis=-1), trie.sink)


def candidate_at(trie: Trie | EdgeTrie, node: jax.Array) -> jax.Array:
    """Candidate index [B] whose full sequence ends at `node`, -1 if the node is not a leaf."""
    if trie.leaf_candidate.ndim == 1:  # one trie shared by every row
        return trie.leaf_candidate[node]
    return jnp.take_along_axis(trie.leaf_candidate, node[:, None], axis=1)[:, 0]
