"""Constrained beam search: brute-force enumeration, ordering, and HF `generate(num_beams=K)`."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import beam as beam_lib
from abpo_jax.sampling import trie as trie_lib
from abpo_jax.sampling.generate import left_pad
from helpers import causal_logits

V = 48
EOS = 2
PAD = 0
PROMPTS = [[5, 9, 11, 4, 30, 17], [7, 8], [20, 21, 22, 23]]


def _catalogue(seed: int, num_items: int):
    """Distinct item sequences (1-4 tokens + eos) with shared prefixes."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < num_items:
        seq = tuple(int(t) for t in rng.integers(3, 15, size=rng.integers(1, 5)))
        if seq not in seen:
            seen.add(seq)
            out.append([*seq, EOS])
    return out


SMALL = _catalogue(0, 9)
LARGE = _catalogue(1, 40)
N_NEW = 5


@pytest.fixture(scope="module")
def model():
    return Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(3))


def _sequence_logprob(model, prompt, completion) -> float:
    """Teacher-forced log pi(completion | prompt), no cache, float64 log-softmax."""
    seq = list(prompt) + list(completion)
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, :len(seq)] = seq
    z = np.asarray(causal_logits(model, tokens)[0], np.float64)
    total = 0.0
    for i, tok in enumerate(completion):
        row = z[len(prompt) - 1 + i]
        total += row[tok] - (np.log(np.exp(row - row.max()).sum()) + row.max())
    return total


def _search(model, seqs, k, length_penalty=0.0, edge=True, prompts=PROMPTS):
    tokens, mask = left_pad(prompts, pad_id=PAD)
    build = trie_lib.build_catalogue_trie if edge else trie_lib.build_trie
    trie = build(seqs, vocab_size=model.config.vocab_size)
    params = beam_lib.BeamParams(num_beams=k, max_new_tokens=N_NEW,
                                 length_penalty=length_penalty)
    return jax.tree.map(np.asarray, beam_lib.beam_search(model, tokens, mask, trie, params, EOS))


def test_beam_of_whole_catalogue_equals_brute_force_enumeration(model):
    """K = number of items: beam search enumerates every item, ordered by sequence log-prob."""
    out = _search(model, SMALL, k=len(SMALL), edge=False)  # the dense layout (edge: below)
    for b, prompt in enumerate(PROMPTS):
        want = np.array([_sequence_logprob(model, prompt, s) for s in SMALL])
        order = np.argsort(-want, kind="stable")
        np.testing.assert_array_equal(out.items[b], order)
        np.testing.assert_allclose(out.scores[b], want[order], atol=1e-4)
        np.testing.assert_allclose(out.logprobs[b], want[order], atol=1e-4)
        for j, item in enumerate(out.items[b]):
            seq = SMALL[item]
            assert out.lengths[b, j] == len(seq)
            np.testing.assert_array_equal(out.tokens[b, j, :len(seq)], seq)
            assert not out.tokens[b, j, len(seq):].any()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_returns_k_distinct_valid_items_in_score_order(model, length_penalty):
    k = 6
    out = _search(model, LARGE, k=k, length_penalty=length_penalty)
    for b, prompt in enumerate(PROMPTS):
        items = out.items[b].tolist()
        assert len(set(items)) == k and min(items) >= 0
        assert np.all(np.diff(out.scores[b]) <= 1e-6)
        logp = np.array([_sequence_logprob(model, prompt, LARGE[i]) for i in items])
        np.testing.assert_allclose(out.logprobs[b], logp, atol=1e-4)
        lengths = np.array([len(LARGE[i]) for i in items])
        np.testing.assert_array_equal(out.lengths[b], lengths)
        np.testing.assert_allclose(out.scores[b], logp / lengths ** length_penalty, atol=1e-4)


def test_params_validation():
    with pytest.raises(ValueError, match="num_beams"):
        beam_lib.BeamParams(num_beams=0)


def _hf_twin(model):
    """`LlamaForCausalLM` holding the same weights (float32)."""
    import torch
    import transformers

    from abpo_jax.models.loaders import hf_config_dict, hf_state_dict

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(model.config)))
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf_state_dict(model).items()},
                       strict=False)
    hf.tie_weights()
    return hf.float().eval()


def _prefix_allowed(seqs, prompt_len):
    table: dict[tuple, set] = {}
    for s in seqs:
        for t in range(len(s)):
            table.setdefault(tuple(s[:t]), set()).add(s[t])

    def allowed(batch_id, input_ids):
        # Off-trie prefixes (dead beams) may only end.
        return sorted(table.get(tuple(input_ids[prompt_len:].tolist()), {EOS}))

    return allowed


def _peaked_case():
    """V=8 with every token an item token and scaled-up embeddings: confident, uneven step
    log-probs, so with length_penalty=2 a longer hypothesis can outscore a shorter one and
    HF's early-stopping heuristic changes the result (a search without it returns other
    items for prompt 0)."""
    m = Decoder(ModelConfig.tiny(8), rngs=nnx.Rngs(3))
    m.embed_tokens.embedding[...] = m.embed_tokens.embedding[...] * 8.0
    rng = np.random.default_rng(2)
    seen, seqs = set(), []
    while len(seqs) < 40:
        seq = tuple(int(t) for t in rng.integers(3, 8, size=rng.integers(1, 5)))
        if seq not in seen:
            seen.add(seq)
            seqs.append([*seq, EOS])
    return m, seqs, [[5, 3, 4], [7, 6], [3, 3, 3, 5]], 2, 2.0


@pytest.mark.parametrize("case", ["k4_lp0", "peaked_k2_lp2"])
def test_beam_matches_hf_generate_with_prefix_allowed_tokens_fn(model, case):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if case == "k4_lp0":
        m, seqs, prompts, k, length_penalty = model, LARGE, PROMPTS, 4, 0.0
    else:
        m, seqs, prompts, k, length_penalty = _peaked_case()
    out = _search(m, seqs, k=k, length_penalty=length_penalty, prompts=prompts)
    hf = _hf_twin(m)
    tokens, mask = left_pad(prompts, pad_id=PAD)
    with torch.no_grad():
        gen = hf.generate(torch.tensor(tokens, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long),
                          num_beams=k, num_return_sequences=k, do_sample=False,
                          length_penalty=length_penalty, max_new_tokens=N_NEW,
                          prefix_allowed_tokens_fn=_prefix_allowed(seqs, tokens.shape[1]),
                          pad_token_id=PAD, eos_token_id=EOS, return_dict_in_generate=True,
                          output_scores=True, top_k=None, top_p=None, temperature=None)
    index = {tuple(s): i for i, s in enumerate(seqs)}
    hf_items = []
    for row in gen.sequences[:, tokens.shape[1]:].tolist():
        hf_items.append(index[tuple(row[:row.index(EOS) + 1])])
    np.testing.assert_array_equal(out.items, np.array(hf_items).reshape(len(prompts), k))
    np.testing.assert_allclose(out.scores, gen.sequences_scores.numpy().reshape(-1, k),
                               atol=1e-4)
