"""The embedded SmolLM2-135M-Instruct GGUF: logits vs transformers' own GGUF loader (which
dequantizes and un-permutes Q/K independently of ours) and greedy decoding with the KV cache."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.models import loaders
from abpo_jax.models.decoder import causal_mask, init_cache
from abpo_jax.models.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    gguf = pytest.importorskip("gguf")
    path = loaders.smollm2_gguf_path()
    reader = gguf.GGUFReader(path)
    model, config = loaders.load_gguf(path, reader=reader, weight_cache="off")
    return path, model, config, Tokenizer.from_gguf(path, reader=reader)


def _params(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_weight_cache_hit_gives_the_dequantized_weights(smollm2, tmp_path, monkeypatch):
    """A second load reads the cache (dequantizing is made to fail) and gets bitwise the
    weights that dequantizing gives (the fixture loaded with the cache off)."""
    path, model, _, _ = smollm2
    cache = str(tmp_path / "weights")
    loaders.load_gguf(path, weight_cache=cache)                       # miss: dequantize, store

    def no_dequantize(*args, **kwargs):
        raise AssertionError("dequantized again on a cache hit")
    monkeypatch.setattr(loaders, "_gguf_tensors", no_dequantize)
    warm, _ = loaders.load_gguf(path, weight_cache=cache)
    want, got = _params(model), _params(warm)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


def test_config(smollm2):
    _, _, config, _ = smollm2
    assert (config.family, config.num_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert config.tie_embeddings and config.rope_theta == 100000.0 and config.vocab_size == 49152


def test_logits_match_transformers_gguf(smollm2):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, model, _, tok = smollm2
    directory, name = path.rsplit("/", 1)
    hf = transformers.LlamaForCausalLM.from_pretrained(directory, gguf_file=name,
                                                       dtype=torch.float32).eval()
    ids = tok.encode(tok.apply_chat_template(QUESTION))
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
    pos = jnp.arange(len(ids))[None]
    got, _ = model(jnp.asarray([ids]), pos, causal_mask(pos, pos))
    # Same dequantized float32 weights; 30 layers of f32 reassociation differences: measured max
    # |diff| 1.2e-4 on logits of magnitude ~38 (relative 3e-6), so the bound is 5e-4 here.
    np.testing.assert_allclose(np.asarray(got), want, atol=5e-4, rtol=0)
    assert np.abs(want).max() > 5


def greedy(model, tok, prompt_ids, max_new: int = 12):
    """Minimal greedy loop: one prefill, then one token per step through the KV cache."""
    n = len(prompt_ids)
    s_max = n + max_new
    cache = init_cache(model.config, 1, s_max)
    slots = jnp.arange(s_max)[None]
    graphdef, state = nnx.split(model)
    # plain jax.jit over the state: nnx.jit re-walks the 30-layer graph on every call
    step = jax.jit(lambda s, t, p, mask, c: nnx.merge(graphdef, s)(t, p, mask, c))
    pos = jnp.arange(n)[None]
    mask = causal_mask(pos, slots) & (slots[:, None, :] < n)
    logits, cache = step(state, jnp.asarray([prompt_ids]), pos, mask, cache)
    out = []
    for i in range(n, s_max):
        nxt = int(jnp.argmax(logits[0, -1]))
        if nxt == tok.eos_id:
            break
        out.append(nxt)
        pos = jnp.full((1, 1), i)
        logits, cache = step(state, jnp.asarray([[nxt]]), pos, slots[:, None, :] <= i, cache)
    return tok.decode(out)


def test_greedy_answer_contains_paris(smollm2):
    _, model, _, tok = smollm2
    answer = greedy(model, tok, tok.encode(tok.apply_chat_template(QUESTION)))
    assert "Paris" in answer, answer
