"""Token trie: structure, constraint masks and walks against a brute-force prefix reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abpo_jax.sampling import trie as trie_lib

EOS = 2
V = 16
# Shared first token, a branch after it, one sequence a token-prefix of another (parted by eos).
SEQS = [[5, 6, EOS], [5, 7, EOS], [5, 6, 8, EOS], [9, EOS]]


def _reference_allowed(seqs, prefix):
    """Tokens that continue `prefix` into some candidate (brute force over the candidates)."""
    n = len(prefix)
    return {s[n] for s in seqs if len(s) > n and list(s[:n]) == list(prefix)}


def test_trie_size_counts_prefixes():
    # prefixes: 5, 56, 562, 57, 572, 568, 5682, 9, 92 -> 9, plus root and sink.
    assert trie_lib.trie_size(SEQS) == (11, 2)


def test_constrain_matches_prefix_reference_on_every_walk():
    t = trie_lib.build_trie(SEQS, vocab_size=V)
    for c, seq in enumerate(SEQS):
        node = jnp.zeros((1,), jnp.int32)
        for i, tok in enumerate(seq):
            logits = jnp.arange(V, dtype=jnp.float32)[None]
            out = trie_lib.constrain_logits(t, node, logits)
            got = set(np.flatnonzero(np.isfinite(np.asarray(out[0]))).tolist())
            assert got == _reference_allowed(SEQS, seq[:i])
            # allowed logits are unchanged
            np.testing.assert_array_equal(np.asarray(out[0])[sorted(got)], sorted(got))
            assert int(trie_lib.candidate_at(t, node)[0]) == -1
            node = trie_lib.advance(t, node, jnp.array([tok]))
        assert int(trie_lib.candidate_at(t, node)[0]) == c
        # a finished candidate allows nothing more
        assert not bool(trie_lib.allowed_tokens(t, node, V).any())


def test_disallowed_token_goes_to_sink_and_stays():
    t = trie_lib.build_trie(SEQS)
    node = trie_lib.advance(t, jnp.zeros((1,), jnp.int32), jnp.array([6]))
    assert int(node[0]) == t.sink
    assert int(trie_lib.advance(t, node, jnp.array([5]))[0]) == t.sink
    assert not bool(trie_lib.allowed_tokens(t, node, V).any())
    assert int(trie_lib.candidate_at(t, node)[0]) == -1


def test_batch_trie_per_prompt_candidates_under_jit():
    other = [[3, 4, EOS], [3, EOS]]
    bt = trie_lib.build_batch_trie([SEQS, other], vocab_size=V)
    assert bt.child_tokens.shape == (2, 11, 2)

    @jax.jit
    def walk(trie, seqs):
        node = jnp.zeros((seqs.shape[0],), jnp.int32)
        allowed = []
        for i in range(seqs.shape[1]):
            allowed.append(trie_lib.allowed_tokens(trie, node, V))
            node = trie_lib.advance(trie, node, seqs[:, i])
        return trie_lib.candidate_at(trie, node), jnp.stack(allowed, 1)

    cand, allowed = walk(jax.tree.map(jnp.asarray, bt), jnp.array([[5, 6, 8, EOS], [3, 4, EOS, 0]]))
    # row 1 ends at candidate 0's leaf after 3 tokens; the 4th token leads into the sink.
    np.testing.assert_array_equal(np.asarray(cand), [2, -1])
    assert set(np.flatnonzero(allowed[1, 0])) == {3}
    assert set(np.flatnonzero(allowed[1, 1])) == {4, EOS}
    assert set(np.flatnonzero(allowed[0, 1])) == {6, 7}


def test_fixed_padding_and_errors():
    t = trie_lib.build_trie(SEQS, num_nodes=20, max_children=4)
    assert t.child_tokens.shape == (20, 4) and t.sink == 19
    with pytest.raises(ValueError, match="num_nodes>=11"):
        trie_lib.build_trie(SEQS, num_nodes=5)
    with pytest.raises(ValueError, match="same tokens"):
        trie_lib.build_trie([[5, EOS], [5, EOS]])
    with pytest.raises(ValueError, match="strict prefix"):
        trie_lib.build_trie([[5, 6], [5]])
    with pytest.raises(ValueError, match="strict prefix"):
        trie_lib.build_trie([[5], [5, 6]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trie_lib.build_trie([[5, 99]], vocab_size=V)
    with pytest.raises(ValueError, match="no tokens"):
        trie_lib.build_trie([[5], []])


class _CharTokenizer:
    """Toy tokenizer that merges 'ab' like a BPE merge, to show whole-string tokenization."""
    eos_id = EOS

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text[i:i + 2] == "ab":
                out.append(10)
                i += 2
            else:
                out.append(3 + ord(text[i]) % 7)
                i += 1
        return out


def test_candidate_sequences_tokenize_whole_string():
    seqs = trie_lib.candidate_token_sequences(_CharTokenizer(), ["xab", "xa"])
    tok = _CharTokenizer()
    # 'x' + 'a' + 'b' piecewise would be three tokens; whole-string gives the merged 'ab'.
    assert seqs[0] == tok.encode("x") + [10, EOS]
    assert seqs[1] == tok.encode("xa") + [EOS]
