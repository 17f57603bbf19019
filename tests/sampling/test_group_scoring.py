"""Shared-prefix packed scoring == scoring every (prompt + completion) on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import group_scoring as gs

V = 48
EOS = 2


@pytest.fixture(scope="module")
def model():
    return Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(0))


def _reference_scores(model, prompt, completion, pad_to=40):
    """Score prompt+completion on its own with the plain causal scorer (right padding is
    inert, tested below; a fixed length keeps to one compilation)."""
    n = len(prompt) + len(completion)
    seq = np.zeros((1, pad_to), np.int32)
    seq[0, :n] = list(prompt) + list(completion)
    logp, cert = gs.sequence_logprobs(model, seq, np.arange(pad_to)[None] < n)
    return np.asarray(logp[0, len(prompt):n]), np.asarray(cert[0, len(prompt):n])


def test_sequence_logprobs_matches_direct_forward_and_ignores_padding(model):
    rng = np.random.default_rng(0)
    seq = rng.integers(3, V, size=9).astype(np.int32)
    # direct forward, no padding, positions 0..T-1, causal mask
    t = len(seq)
    logits, _ = model(jnp.asarray(seq)[None], jnp.arange(t)[None],
                      jnp.tril(jnp.ones((t, t), bool))[None])
    ref = jax.nn.log_softmax(logits[0, :-1], -1)[jnp.arange(t - 1), seq[1:]]
    ref_cert = jax.nn.logsumexp(logits[0, :-1], -1) - logits[0, :-1].mean(-1)
    right = np.zeros((2, 12), np.int32)
    right[0, :t] = seq
    left = np.zeros((2, 12), np.int32)
    left[0, 12 - t:] = seq
    right[1, :4] = left[1, 8:] = seq[:4]  # second, shorter row
    for tokens in (right, left):
        mask = tokens != 0
        logp, cert = gs.sequence_logprobs(model, tokens, mask)
        got = np.asarray(logp[0])[mask[0]][1:]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(cert[0])[mask[0]][1:], ref_cert, atol=1e-4,
                                   rtol=1e-5)
        assert np.all(np.asarray(logp)[~mask] == 0)
        np.testing.assert_allclose(np.asarray(logp[1])[mask[1]][1:], ref[:3], atol=1e-5,
                                   rtol=1e-5)


def test_packed_equals_separate_ragged_multi_prompt(model):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, V, size=n).tolist() for n in (7, 3, 5)]
    completions = [
        [rng.integers(3, V, size=n).tolist() + [EOS] for n in (1, 4, 2, 3)],
        [rng.integers(3, V, size=n).tolist() + [EOS] for n in (5, 1)],
        [rng.integers(3, V, size=n).tolist() + [EOS] for n in (2, 2, 6)],
    ]
    # extra padding in every dimension, as the bucketed policy helper does
    packed = gs.pack_group(prompts, completions, prompt_len=10, completion_len=8,
                           num_completions=5)
    scores = gs.score_packed(model, packed)
    assert scores.token_logprobs.shape == (3, 5, 8)
    for b, (x, cs) in enumerate(zip(prompts, completions)):
        for k, o in enumerate(cs):
            ref_lp, ref_cert = _reference_scores(model, x, o)
            n = len(o)
            np.testing.assert_allclose(np.asarray(scores.token_logprobs[b, k, :n]), ref_lp,
                                       atol=2e-5, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(scores.self_certainty[b, k, :n]), ref_cert,
                                       atol=1e-4, rtol=1e-5)
            np.testing.assert_allclose(float(scores.sequence_logprobs[b, k]), ref_lp.sum(),
                                       atol=1e-4, rtol=1e-5)
            assert np.asarray(scores.mask[b, k]).tolist() == [True] * n + [False] * (8 - n)
        # padding completions score exactly 0
        assert not np.asarray(scores.mask[b, len(cs):]).any()
        assert np.all(np.asarray(scores.sequence_logprobs[b, len(cs):]) == 0)


def test_packed_attention_mask_blocks():
    packed = gs.pack_group([[5, 6]], [[[7], [8, 9]]], prompt_len=3, completion_len=2)
    m = np.asarray(gs.packed_attention_mask(jnp.asarray(packed.segments),
                                            jnp.asarray(packed.positions)))[0]
    # layout: p p pad | c0 pad | c1 c1
    expect = np.array([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],   # padding sees only itself
        [1, 1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 1, 1],
    ], bool)
    np.testing.assert_array_equal(m, expect)
    np.testing.assert_array_equal(packed.positions[0], [0, 1, 0, 2, 0, 2, 3])


def test_candidate_distribution_hand_values():
    s = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    valid = jnp.array([[True, True, True], [True, True, False]])
    out = np.asarray(gs.candidate_distribution(s, valid, temperature=2.0))
    z = np.array([-0.5, -1.0, -1.5])
    np.testing.assert_allclose(out[0], z - np.log(np.exp(z).sum()), rtol=1e-6)
    np.testing.assert_allclose(out[1, :2], np.log([0.5, 0.5]), rtol=1e-6)
    assert out[1, 2] == -np.inf


class _DigitTokenizer:
    """One token per character: digits and tag letters map into the tiny vocabulary."""
    eos_id, pad_id = EOS, 0

    def encode(self, text):
        return [3 + (ord(ch) % (V - 3)) for ch in text]


def test_candidate_log_policy_strings(model):
    tok = _DigitTokenizer()
    prompts = ["user likes 12 and 7. pick:", "hi"]
    cands = [["<i>12</i>", "<i>7</i>", "<i>123</i>"], ["<i>5</i>", "<i>55</i>"]]
    logp, scores = gs.candidate_log_policy(model, tok, prompts, cands, temperature=0.5,
                                           batch_multiple=4, return_scores=True)
    assert logp.shape == (2, 3)
    for b, (x, cs) in enumerate(zip(prompts, cands)):
        seq_lp = [_reference_scores(model, tok.encode(x), tok.encode(c) + [EOS])[0].sum()
                  for c in cs]
        ref = jax.nn.log_softmax(jnp.array(seq_lp) / 0.5)
        np.testing.assert_allclose(np.asarray(logp[b, :len(cs)]), ref, atol=1e-4)
    assert float(logp[1, 2]) == -np.inf
    # bucketed shapes: prompt length rounds to 64, completion length to 8
    assert scores.token_logprobs.shape == (2, 3, 16)
