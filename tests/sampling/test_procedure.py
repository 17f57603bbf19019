"""Text-mode procedure: valid samples, teacher-forced log q == sampler log q, propensities ==
sampling frequencies under truncation, forced close, greedy vs a no-cache reference loop."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import generate as gen
from abpo_jax.sampling import procedure as pr
from abpo_jax.sampling import trie as trie_lib
from helpers import causal_logits

V = 48
EOS = 2
PROMPTS = [[5, 9, 11, 4, 30], [7, 8], [20, 21, 22]]
CANDS = [[[10, 11, EOS], [10, 12, EOS], [10, 11, 13, EOS], [14, EOS]],
         [[15, EOS], [16, 17, EOS]],
         [[18, 19, 20, EOS], [18, EOS]]]


@pytest.fixture(scope="module")
def model():
    return Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(1))


def _teacher_logits(model, prompts, completions, n):
    """No-cache causal logits [R, n, V] predicting each completion token (right padding after a
    sequence cannot change its causal logits; slots past a completion are never used)."""
    width = 24  # one padded width for every call: one compiled forward per batch size
    assert max(len(p) for p in prompts) + n < width
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tokens[i, :len(p) + len(c)] = list(p) + list(c)
    full = np.asarray(causal_logits(model, jnp.asarray(tokens)), np.float64)
    idx = np.array([[len(p) - 1 + t for t in range(n)] for p in prompts])
    return np.take_along_axis(full, idx[:, :, None], axis=1)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


_log_probs = jax.jit(pr.procedure_log_probs, static_argnums=(4, 5))


def _check_structure(tokens, kinds, logq, candidate, proc, cands):
    """One sample follows the layout free* forced* item+ pad*, with the module's rules."""
    kinds, tokens, logq = (np.asarray(x).tolist() for x in (kinds, tokens, logq))
    pattern = "1+2*3+0*" if proc.max_think_tokens else "3+0*"
    assert re.fullmatch(pattern, "".join(map(str, kinds))), kinds
    free = [t for t, k in zip(tokens, kinds) if k == pr.KIND_FREE]
    forced = [t for t, k in zip(tokens, kinds) if k == pr.KIND_FORCED]
    item = [t for t, k in zip(tokens, kinds) if k == pr.KIND_ITEM]
    close, c = list(proc.think_close), len(proc.think_close)
    occurrences = [i for i in range(len(free) - c + 1) if free[i:i + c] == close]
    assert EOS not in free
    if forced:  # budget used up without a close: the close is appended, probability 1
        assert forced == close and len(free) == proc.max_think_tokens and not occurrences
    elif proc.max_think_tokens:  # cut right after the first occurrence
        assert occurrences == [len(free) - c] and len(free) <= proc.max_think_tokens
    assert candidate >= 0 and item == cands[candidate]
    assert all(q == 0 for q, k in zip(logq, kinds) if k in (pr.KIND_FORCED, pr.KIND_PAD))
    assert all(t == 0 for t, k in zip(tokens, kinds) if k == pr.KIND_PAD)
    return bool(forced)


THINK = pr.Procedure(temperature=1.3, top_k=8, top_p=0.9, max_think_tokens=4,
                     think_close=(40, 41), max_item_tokens=4)
PROCEDURES = {
    "item_only_truncated": pr.Procedure(temperature=0.7, top_k=2, top_p=0.8, max_item_tokens=4),
    "think_truncated": THINK,
}


def _likeliest_free_token(model, prompt):
    z = _teacher_logits(model, [prompt], [[]], 1)[0, 0]
    z[EOS] = -np.inf
    return int(np.argmax(z))


@pytest.mark.parametrize("name", PROCEDURES)
def test_every_sample_is_a_valid_candidate(model, name):
    proc = PROCEDURES[name]
    tokens, mask = gen.left_pad(PROMPTS)
    trie = trie_lib.build_batch_trie(CANDS, vocab_size=V)
    out = pr.sample_completions(model, tokens, mask, jax.random.key(3), proc, 8, EOS, trie)
    assert out.tokens.shape == (3, 8, proc.completion_length)
    forced = [_check_structure(out.tokens[b, g], out.kinds[b, g], out.logq[b, g],
                               int(out.candidate[b, g]), proc, CANDS[b])
              for b in range(3) for g in range(8)]
    np.testing.assert_array_equal(np.asarray(pr.item_span_mask(out.kinds)),
                                  np.asarray(out.kinds) == pr.KIND_ITEM)
    if name == "think_truncated":  # a two-token close is rare: most rows get it forced
        assert sum(forced) > 12


def test_teacher_forced_log_probs_equal_sampler(model):
    """procedure_log_probs on no-cache logits == the sampler's logq (think + truncation, one
    trie per prompt); model_logprobs / self-certainty == an unconstrained log-softmax reference.
    Tolerance 1e-4: KV-cache decode and a full causal pass sum attention in different orders
    (float32, differences ~1e-6), and no sampled token sits at a top-k/top-p boundary."""
    proc, g = THINK, 8  # the shapes of the validity test: its compiled sampler is reused
    tokens, mask = gen.left_pad(PROMPTS)
    trie = trie_lib.build_batch_trie(CANDS, vocab_size=V)
    out = pr.sample_completions(model, tokens, mask, jax.random.key(11), proc, g, EOS, trie)
    n = proc.completion_length
    toks = np.asarray(out.tokens).reshape(-1, n)
    kinds = np.asarray(out.kinds).reshape(-1, n)
    prompts = [p for p in PROMPTS for _ in range(g)]
    comps = [t[k != pr.KIND_PAD].tolist() for t, k in zip(toks, kinds)]
    z = _teacher_logits(model, prompts, comps, n)
    row_trie = trie_lib.build_batch_trie([c for c in CANDS for _ in range(g)], vocab_size=V)
    logq = np.asarray(_log_probs(jnp.asarray(z, jnp.float32), toks, kinds, row_trie, proc, EOS))
    np.testing.assert_allclose(logq, np.asarray(out.logq).reshape(-1, n), atol=1e-4)
    assert np.all(logq[kinds == pr.KIND_FORCED] == 0) and np.all(logq[kinds == pr.KIND_PAD] == 0)
    assert np.all(logq[kinds == pr.KIND_FREE] < 0)  # free tokens are never certain here
    live = kinds != pr.KIND_PAD
    ref_lp = np.take_along_axis(_log_softmax(z), toks[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.model_logprobs).reshape(-1, n),
                               np.where(live, ref_lp, 0), atol=1e-4)
    ref_sc = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1) - z.mean(-1)
    np.testing.assert_allclose(np.asarray(out.self_certainty).reshape(-1, n),
                               np.where(live, ref_sc, 0), atol=1e-4)
    # the truncated procedure puts more mass on the sampled tokens than the raw model
    assert np.all(logq[kinds == pr.KIND_FREE] > ref_lp[kinds == pr.KIND_FREE])


# Shared-trie candidates with a wide root, so top-k and top-p cut item branches too.
WIDE = [[10, EOS], [11, EOS], [12, EOS], [13, 14, EOS], [13, 15, EOS], [16, EOS]]


def _enumerated_log_probs(model, proc, close):
    """Every completion of a 1-token think budget: (free token x, candidate) -> log q."""
    outcomes, comps, kinds = [], [], []
    n = proc.completion_length
    for x in range(V):
        if x == EOS:
            continue
        for c, seq in enumerate(WIDE):
            head = [x] if x == close else [x, close]
            k = [pr.KIND_FREE] + [pr.KIND_FORCED] * (len(head) - 1) + [pr.KIND_ITEM] * len(seq)
            outcomes.append((x, c))
            comps.append(head + seq)
            kinds.append(k + [pr.KIND_PAD] * (n - len(k)))
    z = _teacher_logits(model, [PROMPTS[0]] * len(comps), comps, n)
    toks = np.array([c + [0] * (n - len(c)) for c in comps], np.int32)
    trie = trie_lib.build_trie(WIDE, vocab_size=V)
    logq = _log_probs(jnp.asarray(z, jnp.float32), toks, np.array(kinds), trie, proc, EOS)
    return outcomes, np.asarray(logq, np.float64).sum(-1)


def test_propensities_match_sampling_frequencies_under_truncation(model):
    """T != 1, top-k and top-p on, free text then the item: exp(sum logq) of every possible
    completion sums to 1, each sample's logged propensity is its outcome's, and the sampled
    outcome counts fit those propensities by a chi-square test.

    Threshold: the 1 - 1e-3 quantile of chi2(bins - 1); a correct sampler exceeds it with
    probability 1e-3 (the seed is fixed, so the test is deterministic). Power: the same counts
    against the propensities of the untruncated procedure must exceed it."""
    tokens, mask = gen.left_pad([PROMPTS[0]])
    close = _likeliest_free_token(model, PROMPTS[0])  # both endings get mass
    proc = pr.Procedure(temperature=0.7, top_k=3, top_p=0.8, max_think_tokens=1,
                        think_close=(close,), max_item_tokens=3)
    outcomes, logp = _enumerated_log_probs(model, proc, close)
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, atol=1e-4)

    g = 4096
    trie = trie_lib.build_trie(WIDE, vocab_size=V)
    out = pr.sample_completions(model, tokens, mask, jax.random.key(7), proc, g, EOS, trie)
    index = {o: i for i, o in enumerate(outcomes)}
    sample_outcome = np.array([index[(int(x), int(c))] for x, c in
                               zip(np.asarray(out.tokens[0, :, 0]), np.asarray(out.candidate[0]))])
    np.testing.assert_allclose(np.asarray(out.log_propensity[0]), logp[sample_outcome], atol=1e-4)
    forced = [_check_structure(out.tokens[0, i], out.kinds[0, i], out.logq[0, i],
                               int(out.candidate[0, i]), proc, WIDE) for i in range(64)]
    assert 0 < sum(forced) < 64  # both endings: the free token closes, or the close is forced
    counts = np.bincount(sample_outcome, minlength=len(outcomes))
    expected = np.exp(logp) * g
    assert counts[expected == 0].sum() == 0  # nothing outside the truncated support

    def chi_square(expected):
        big = expected >= 5  # bins with fewer expected counts are pooled into one
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        keep = exp > 0
        return (((obs - exp) ** 2)[keep] / exp[keep]).sum(), keep.sum() - 1

    stat, df = chi_square(expected)
    assert df >= 4  # truncation leaves several outcomes, so the test has something to check
    threshold = stats.chi2.ppf(1 - 1e-3, df)
    assert stat < threshold, (stat, threshold)
    untruncated = dataclasses.replace(proc, top_k=0, top_p=1.0)
    _, wrong = _enumerated_log_probs(model, untruncated, close)
    wrong_stat, wrong_df = chi_square(np.exp(wrong) * g)
    assert wrong_stat > stats.chi2.ppf(1 - 1e-3, wrong_df)


def _greedy_reference(model, prompt, n_free):
    """No-cache argmax loop over free text (eos disallowed)."""
    seq = list(prompt)
    for _ in range(n_free):
        z = _teacher_logits(model, [seq], [[]], 1)[0, 0]
        z[EOS] = -np.inf
        seq.append(int(np.argmax(z)))
    return seq[len(prompt):]


def test_greedy_forced_close_and_natural_close(model):
    tokens, mask = gen.left_pad([PROMPTS[0]])
    trie = trie_lib.build_trie(CANDS[0], vocab_size=V)
    free = _greedy_reference(model, PROMPTS[0], 4)
    dummy = (46, 47)
    assert all(free[i:i + 2] != list(dummy) for i in range(3))
    proc = pr.Procedure(temperature=0.0, max_think_tokens=4, think_close=dummy,
                        max_item_tokens=4)
    out = pr.sample_completions(model, tokens, mask, jax.random.key(0), proc, 1, EOS, trie)
    toks, kinds = np.asarray(out.tokens[0, 0]), np.asarray(out.kinds[0, 0])
    np.testing.assert_array_equal(toks[:6], free + list(dummy))  # forced after the budget
    np.testing.assert_array_equal(kinds[:6], [pr.KIND_FREE] * 4 + [pr.KIND_FORCED] * 2)
    assert np.all(np.asarray(out.logq) == 0)  # greedy: propensity 1
    _check_structure(toks, kinds, out.logq[0, 0], int(out.candidate[0, 0]), proc, CANDS[0])
    # the greedy item after the forced close is the no-cache argmax under the trie
    seq, node = list(PROMPTS[0]) + free + list(dummy), jnp.zeros((1,), jnp.int32)
    for t in toks[kinds == pr.KIND_ITEM]:
        z = jnp.asarray(_teacher_logits(model, [seq], [[]], 1)[0], jnp.float32)
        assert int(jnp.argmax(trie_lib.constrain_logits(trie, node, z))) == t
        node = trie_lib.advance(trie, node, jnp.array([t]))
        seq.append(int(t))

    close = tuple(free[1:3])  # greedy text contains this close; cut after its first occurrence
    cut = 2 + min(i for i in range(3) if tuple(free[i:i + 2]) == close)
    proc = pr.Procedure(temperature=0.0, max_think_tokens=4, think_close=close,
                        max_item_tokens=4)
    out = pr.sample_completions(model, tokens, mask, jax.random.key(0), proc, 1, EOS, trie)
    kinds = np.asarray(out.kinds[0, 0])
    np.testing.assert_array_equal(np.asarray(out.tokens[0, 0, :cut]), free[:cut])
    assert kinds[:cut + 1].tolist() == [pr.KIND_FREE] * cut + [pr.KIND_ITEM]
    assert not np.any(kinds == pr.KIND_FORCED)


def test_procedure_validation_and_length():
    assert pr.Procedure(max_item_tokens=5).completion_length == 5
    assert pr.Procedure(max_think_tokens=7, think_close=(3, 4),
                        max_item_tokens=5).completion_length == 14
    assert pr.Procedure(think_close=[3, 4]).think_close == (3, 4)  # hashable for jit
    with pytest.raises(ValueError, match="top_p"):
        pr.Procedure(top_p=0.0)
    with pytest.raises(ValueError, match="think_close"):
        pr.Procedure(max_think_tokens=4)
    with pytest.raises(ValueError, match="max_item_tokens"):
        pr.Procedure(max_item_tokens=0)


def test_think_close_ids_encode_the_tag_alone():
    class Words:
        def encode(self, text):
            return [ord(ch) for ch in text]
    assert pr.think_close_ids(Words()) == tuple(map(ord, "</think>"))
