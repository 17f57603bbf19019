"""Catalogue-scale edge-list trie: the same trie as the dense [N, K] layout, in linear memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import generate as gen
from abpo_jax.sampling import trie as trie_lib

EOS = 2
V = 48


def _random_catalogue(seed: int, num_items: int, vocab: int = 12, max_len: int = 6):
    """Distinct token sequences over a small vocabulary (so prefixes are shared) + eos."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < num_items:
        seq = tuple(int(t) for t in rng.integers(3, 3 + vocab, size=rng.integers(1, max_len)))
        if seq not in seen:
            seen.add(seq)
            out.append([*seq, EOS])
    return out


@jax.jit
def _everything(trie, nodes):
    """allowed [N, V], next node for every (node, token) [N, V], leaf candidate [N]."""
    tokens = jnp.arange(V, dtype=jnp.int32)
    nxt = jax.vmap(lambda t: trie_lib.advance(trie, nodes, jnp.full_like(nodes, t)),
                   out_axes=1)(tokens)
    return trie_lib.allowed_tokens(trie, nodes, V), nxt, trie_lib.candidate_at(trie, nodes)


@pytest.mark.parametrize("seed,num_items", [(0, 5), (1, 40), (2, 200)])
def test_edge_trie_equals_dense_trie_on_every_node_and_token(seed, num_items):
    seqs = _random_catalogue(seed, num_items)
    dense = trie_lib.build_trie(seqs, vocab_size=V)
    edge = trie_lib.build_catalogue_trie(seqs, vocab_size=V)
    assert edge.num_nodes == dense.num_nodes and edge.sink == dense.sink
    assert edge.max_children == dense.child_tokens.shape[1]
    nodes = jnp.arange(dense.num_nodes, dtype=jnp.int32)
    want = _everything(jax.tree.map(jnp.asarray, dense), nodes)
    got = _everything(jax.tree.map(jnp.asarray, edge), nodes)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    # and the walks reach each candidate's own leaf
    for c, seq in enumerate(seqs):
        node = jnp.zeros((1,), jnp.int32)
        for tok in seq:
            node = trie_lib.advance(edge, node, jnp.array([tok]))
        assert int(trie_lib.candidate_at(edge, node)[0]) == c


def test_edge_trie_memory_is_linear_in_nodes():
    """A root fanout of 400 costs the dense layout N*400 cells; the edge list 5 int32 a node."""
    seqs = [[3 + i, 3 + j, EOS] for i in range(400) for j in range(2)]
    edge = trie_lib.build_catalogue_trie(seqs)
    n = edge.num_nodes
    assert n == 1 + 400 + 800 + 800 + 1  # root, first tokens, second tokens, eos leaves, sink
    assert edge.max_children == 400 and edge.child_tokens.shape == (n - 2,)
    assert edge.nbytes == 4 * (2 * (n - 2) + 3 * n)
    dense_cells = n * trie_lib.trie_size(seqs)[1]
    assert edge.nbytes < 8 * dense_cells / 50


def test_edge_trie_rejects_what_the_dense_trie_rejects():
    with pytest.raises(ValueError, match="same tokens"):
        trie_lib.build_catalogue_trie([[5, EOS], [5, EOS]])
    with pytest.raises(ValueError, match="strict prefix"):
        trie_lib.build_catalogue_trie([[5, 6], [5]])
    with pytest.raises(ValueError, match="strict prefix"):
        trie_lib.build_catalogue_trie([[5], [5, 6]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trie_lib.build_catalogue_trie([[5, 99]], vocab_size=V)
    with pytest.raises(ValueError, match="no tokens"):
        trie_lib.build_catalogue_trie([[5], []])
    with pytest.raises(ValueError, match="no candidate"):
        trie_lib.build_catalogue_trie([])


@pytest.fixture(scope="module")
def model():
    return Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(1))


def test_generate_under_edge_trie_samples_valid_items_like_the_dense_trie(model):
    seqs = _random_catalogue(3, 60, vocab=20)
    prompts = [[5, 9, 11, 4, 30], [7, 8]]
    tokens, mask = gen.left_pad(prompts, pad_id=0)
    params = gen.SamplingParams(max_new_tokens=max(map(len, seqs)), num_samples=16,
                                temperature=1.5)
    edge = trie_lib.build_catalogue_trie(seqs, vocab_size=V)
    out = gen.generate(model, tokens, mask, jax.random.key(4), params, EOS, trie=edge)
    cand = np.asarray(out.candidate)
    assert np.all(cand >= 0)
    for b in range(2):
        for g in range(16):
            seq = seqs[cand[b, g]]
            np.testing.assert_array_equal(np.asarray(out.tokens[b, g, :len(seq)]), seq)
            assert int(np.asarray(out.mask[b, g]).sum()) == len(seq)
    assert len(set(cand.ravel().tolist())) > 5  # it does sample across the catalogue
    # Same allowed sets and keys: the very same draws and propensities as the dense layout.
    dense = gen.generate(model, tokens, mask, jax.random.key(4), params, EOS,
                         trie=trie_lib.build_trie(seqs, vocab_size=V))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(dense.tokens))
    np.testing.assert_array_equal(cand, np.asarray(dense.candidate))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(dense.logprobs), atol=1e-6)
