"""KV-cache sampler vs no-cache teacher-forced references, trie constraint, HF logits warpers."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import generate as gen
from abpo_jax.sampling import group_scoring as gs
from abpo_jax.sampling import trie as trie_lib
from helpers import causal_logits

V = 48
EOS = 2


@pytest.fixture(scope="module")
def model():
    return Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(1))


def _full_logits(model, seq, pad_to=16):
    """No-cache causal logits [T, V] of one sequence (right padding cannot affect them)."""
    tokens = np.zeros((1, pad_to), np.int32)
    tokens[0, :len(seq)] = seq
    return np.asarray(causal_logits(model, tokens)[0, :len(seq)], np.float64)


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


PROMPTS = [[5, 9, 11, 4, 30], [7, 8], [20, 21, 22]]


def test_greedy_matches_no_cache_argmax_loop(model):
    tokens, mask = gen.left_pad(PROMPTS, pad_id=0)
    params = gen.SamplingParams(max_new_tokens=6, temperature=0.0)
    out = gen.generate(model, tokens, mask, jax.random.key(0), params, eos_id=EOS)
    for b, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for i in range(6):
            z = _full_logits(model, seq)[-1]
            nxt = int(np.argmax(z))
            assert int(out.tokens[b, 0, i]) == nxt, (b, i)
            lp = _log_softmax(z)
            np.testing.assert_allclose(float(out.model_logprobs[b, 0, i]), lp[nxt], atol=1e-4)
            np.testing.assert_allclose(float(out.self_certainty[b, 0, i]),
                                       np.log(np.exp(z - z.max()).sum()) + z.max() - z.mean(),
                                       atol=1e-4)
            seq.append(nxt)
            if nxt == EOS:
                break
    assert np.all(np.asarray(out.logprobs) == 0)  # greedy: propensity 1


def _teacher_forced_step_logits(model, prompt, completion):
    full = _full_logits(model, list(prompt) + list(completion))
    return full[len(prompt) - 1:len(prompt) - 1 + len(completion)]


CANDS = [[[10, 11, EOS], [10, 12, EOS], [10, 11, 13, EOS], [14, EOS]],
         [[15, EOS], [16, 17, EOS]],
         [[18, 19, 20, EOS], [18, EOS]]]


def test_constrained_samples_valid_with_exact_propensities(model):
    tokens, mask = gen.left_pad(PROMPTS, pad_id=0)
    trie = trie_lib.build_batch_trie(CANDS, vocab_size=V)
    params = gen.SamplingParams(max_new_tokens=5, num_samples=6, temperature=1.3)
    out = gen.generate(model, tokens, mask, jax.random.key(3), params, eos_id=EOS, trie=trie)
    assert out.tokens.shape == (3, 6, 5)
    for b in range(3):
        for g in range(6):
            c = int(out.candidate[b, g])
            assert c >= 0
            seq = CANDS[b][c]
            n = len(seq)
            np.testing.assert_array_equal(np.asarray(out.tokens[b, g, :n]), seq)
            assert np.asarray(out.mask[b, g]).tolist() == [True] * n + [False] * (5 - n)
            steps = _teacher_forced_step_logits(model, PROMPTS[b], seq)
            for i in range(n):
                allowed = sorted({s[i] for s in CANDS[b] if s[:i] == seq[:i]})
                q = _log_softmax(steps[i][allowed] / 1.3)
                np.testing.assert_allclose(float(out.logprobs[b, g, i]),
                                           q[allowed.index(seq[i])], atol=1e-4)
                np.testing.assert_allclose(float(out.model_logprobs[b, g, i]),
                                           _log_softmax(steps[i])[seq[i]], atol=1e-4)


def test_constrained_sampling_frequencies_match_propensities(model):
    """Many draws of one prompt: empirical candidate frequencies ~ exp(sum logprobs)."""
    g = 512
    tokens, mask = gen.left_pad([PROMPTS[0]])
    trie = trie_lib.build_trie(CANDS[0])  # one shared trie
    params = gen.SamplingParams(max_new_tokens=4, num_samples=g, temperature=3.0)
    out = gen.generate(model, tokens, mask, jax.random.key(7), params, eos_id=EOS, trie=trie)
    cand = np.asarray(out.candidate[0])
    prop = np.exp(np.asarray(out.logprobs[0]).sum(-1))
    expected = np.array([prop[cand == c][0] if np.any(cand == c) else np.nan for c in range(4)])
    assert np.all(np.isfinite(expected)) and abs(expected.sum() - 1) < 1e-4
    freq = np.bincount(cand, minlength=4) / g
    # binomial std <= 0.022 at g=512; 4 sigma
    np.testing.assert_allclose(freq, expected, atol=0.09)


def test_sample_consistency_with_group_scoring(model):
    """Unconstrained samples: model_logprobs / self-certainty == teacher-forced packed scoring."""
    tokens, mask = gen.left_pad(PROMPTS, pad_id=0)
    params = gen.SamplingParams(max_new_tokens=5, num_samples=3, temperature=1.0, top_k=20,
                                top_p=0.9)
    out = gen.generate(model, tokens, mask, jax.random.key(11), params, eos_id=EOS)
    comps = [[np.asarray(out.tokens[b, g])[np.asarray(out.mask[b, g])].tolist()
              for g in range(3)] for b in range(3)]
    scores = gs.score_packed(model, gs.pack_group(PROMPTS, comps, completion_len=5))
    np.testing.assert_array_equal(np.asarray(scores.mask), np.asarray(out.mask))
    np.testing.assert_allclose(np.asarray(scores.token_logprobs),
                               np.asarray(out.model_logprobs), atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores.self_certainty),
                               np.asarray(out.self_certainty), atol=1e-4)
    # sampled-distribution log-prob is >= the model's (top-k/top-p only remove mass)
    m = np.asarray(out.mask)
    assert np.all(np.asarray(out.logprobs)[m] >= np.asarray(out.model_logprobs)[m] - 1e-5)
    # a row stops at its first eos
    for b in range(3):
        for g in range(3):
            toks = np.asarray(out.tokens[b, g])[m[b, g]].tolist()
            assert EOS not in toks[:-1]
            assert len(toks) == 5 or toks[-1] == EOS


def test_same_rng_same_samples_and_batch_position_invariance(model):
    params = gen.SamplingParams(max_new_tokens=4, num_samples=2)
    t1, m1 = gen.left_pad(PROMPTS)
    a = gen.generate(model, t1, m1, jax.random.key(5), params, eos_id=EOS)
    b = gen.generate(model, t1, m1, jax.random.key(5), params, eos_id=EOS)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    # prompt 0 alone with more left padding decodes to the same greedy tokens
    greedy = gen.SamplingParams(max_new_tokens=6, temperature=0.0)  # compiled in the 1st test
    full = gen.generate(model, t1, m1, jax.random.key(0), greedy, eos_id=EOS)
    t2, m2 = gen.left_pad([PROMPTS[1]], length=9)
    alone = gen.generate(model, t2, m2, jax.random.key(0), greedy, eos_id=EOS)
    np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(full.tokens[1]))


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.7), (8, 0.5), (0, 0.999)])
def test_filter_logits_matches_transformers_warpers(top_k, top_p):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    z = np.random.default_rng(top_k).normal(size=(4, 40)).astype(np.float32) * 3
    ref = torch.from_numpy(z.copy())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ours = np.asarray(gen.filter_logits(jnp.asarray(z), top_k, top_p))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref.numpy()))


def test_params_validation():
    with pytest.raises(ValueError, match="top_p"):
        gen.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.SamplingParams(max_new_tokens=0)


def test_remat_model_samples_like_plain_model(model):
    """remat=True threads the stacked cache (and a traced layer index) through nnx.remat."""
    remat = Decoder(ModelConfig.tiny(V, remat=True), rngs=nnx.Rngs(1))
    tokens, mask = gen.left_pad(PROMPTS, pad_id=0)
    params = gen.SamplingParams(max_new_tokens=5, num_samples=2, temperature=1.0)
    a = gen.generate(model, tokens, mask, jax.random.key(3), params, eos_id=EOS)
    b = gen.generate(remat, tokens, mask, jax.random.key(3), params, eos_id=EOS)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.model_logprobs), np.asarray(b.model_logprobs),
                               atol=1e-5)
