"""Logit parity of our Decoder with Hugging Face transformers (PyTorch, CPU, float32).

Tiny random Llama (llama3 RoPE scaling), Qwen2 (qkv bias, sharded safetensors index) and
Gemma-3 (sliding + full layers, window shorter than the sequence) are built offline, saved with
`save_pretrained(safe_serialization=True)` and loaded by our loader.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from abpo_jax.models import loaders  # noqa: E402
from abpo_jax.models.decoder import causal_mask, init_cache  # noqa: E402

VOCAB, SEQ, BATCH = 96, 12, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _llama():
    cfg = transformers.LlamaConfig(
        **COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})
    return transformers.LlamaForCausalLM(cfg)


def _qwen2():
    cfg = transformers.Qwen2Config(**COMMON, rms_norm_eps=1e-6, tie_word_embeddings=True)
    model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # HF initialises biases to zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def _gemma3():
    cfg = transformers.Gemma3TextConfig(
        **COMMON, head_dim=8, query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1000000.0}})
    model = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # Gemma norms init at 0 (scale 1+w): perturb so (1+w) is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


BUILDERS = {"llama": _llama, "qwen2": _qwen2, "gemma3": _gemma3}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = BUILDERS[request.param]().eval()
    path = tmp_path_factory.mktemp(request.param)
    # qwen2: force several shards so the index file path is exercised
    shard = "20KB" if request.param == "qwen2" else "2GB"
    hf.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    ours, config = loaders.load_hf_checkpoint(path)
    return request.param, hf, ours, config, path


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
    positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (BATCH, SEQ))
    return tokens, positions


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def test_config_read(pair):
    family, hf, _, config, path = pair
    assert config.family == family
    if family == "qwen2":
        assert config.qkv_bias and config.tie_embeddings
        assert (path / "model.safetensors.index.json").exists()
    if family == "gemma3":
        assert config.layer_types == ("sliding", "full", "sliding")
        assert config.sliding_window == 4 and config.rope_local_base_freq == 10000.0
        assert config.rope_scaling["rope_type"] == "linear"
    if family == "llama":
        assert config.rope_scaling["rope_type"] == "llama3" and not config.tie_embeddings


def test_logits_match_transformers(pair):
    family, hf, ours, config, _ = pair
    tokens, positions = _inputs()
    want = _hf_logits(hf, tokens)
    got, _ = ours(jnp.asarray(tokens), jnp.asarray(positions),
                  causal_mask(jnp.asarray(positions), jnp.asarray(positions)))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 1e-2  # the comparison is not between two near-zero tensors


def test_cached_decode_matches_transformers(pair):
    """Prefill half the sequence into a cache, then decode one token at a time."""
    family, hf, ours, config, _ = pair
    tokens, positions = _inputs()
    want = _hf_logits(hf, tokens)
    s_max = SEQ + 4
    cache = init_cache(config, BATCH, s_max)
    slots = jnp.arange(s_max)[None, :]
    step = nnx.jit(lambda m, t, p, mask, c: m(t, p, mask, c))
    half = SEQ // 2
    mask = (slots[:, None, :] <= jnp.arange(half)[None, :, None]) & (slots[:, None, :] < half)
    got, cache = step(ours, tokens[:, :half], positions[:, :half],
                      jnp.broadcast_to(mask, (BATCH, half, s_max)), cache)
    outs = [np.asarray(got)]
    for i in range(half, SEQ):
        mask = jnp.broadcast_to(slots[:, None, :] <= i, (BATCH, 1, s_max))
        got, cache = step(ours, tokens[:, i:i + 1], positions[:, i:i + 1], mask, cache)
        outs.append(np.asarray(got))
    assert int(cache.index) == SEQ
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=1e-4, rtol=0)


def test_left_padded_batch_matches_unpadded(pair):
    """Padding handled by mask + positions: a left-padded row equals the same row alone."""
    family, hf, ours, config, _ = pair
    tokens, _ = _inputs()
    pad = 3
    short = tokens[1, pad:]
    want = _hf_logits(hf, short[None])[0]
    positions = np.stack([np.arange(SEQ), np.maximum(np.arange(SEQ) - pad, 0)]).astype(np.int32)
    valid = np.stack([np.ones(SEQ, bool), np.arange(SEQ) >= pad])
    mask = causal_mask(jnp.asarray(positions), jnp.asarray(positions)) & valid[:, None, :]
    mask = mask & (jnp.arange(SEQ)[None, None, :] <= jnp.arange(SEQ)[None, :, None])
    got, _ = ours(jnp.asarray(tokens), jnp.asarray(positions), mask)
    np.testing.assert_allclose(np.asarray(got)[1, pad:], want, atol=1e-4, rtol=0)


def test_pickle_checkpoints_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(loaders.CheckpointError, match="convert to safetensors"):
        loaders.safetensors_files(tmp_path)


def test_export_roundtrip_loads_in_transformers(pair, tmp_path):
    """save_hf_checkpoint -> transformers.from_pretrained and our loader reproduce the logits."""
    family, hf, ours, config, _ = pair
    loaders.save_hf_checkpoint(ours, tmp_path)
    tokens, positions = _inputs()
    want = _hf_logits(hf, tokens)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    np.testing.assert_allclose(_hf_logits(again, tokens), want, atol=1e-4, rtol=0)
    reloaded, config2 = loaders.load_hf_checkpoint(tmp_path)
    assert config2 == config
    got, _ = reloaded(jnp.asarray(tokens), jnp.asarray(positions),
                      causal_mask(jnp.asarray(positions), jnp.asarray(positions)))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


# Released configs in the transformers 4.x layout (top-level rope_theta / rope_scaling).
RELEASED_CONFIGS = {
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "vocab_size": 128256, "hidden_act": "silu",
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "max_position_embeddings": 131072},
    "gemma-3-1b": {
        "model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
        "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
        "head_dim": 256, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "eos_token_id": [1, 106], "bos_token_id": 2,
        "pad_token_id": 0, "max_position_embeddings": 32768},
    "qwen2.5-0.5b": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": False, "max_window_layers": 21, "tie_word_embeddings": True,
        "vocab_size": 151936, "hidden_act": "silu", "rope_scaling": None,
        "bos_token_id": 151643, "eos_token_id": 151645, "max_position_embeddings": 32768},
}


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_released_configs_read_like_transformers(name):
    """4.x-layout config.json == the same config after transformers 5 normalises it."""
    from abpo_jax.models.config import ModelConfig

    raw = RELEASED_CONFIGS[name]
    ours = ModelConfig.from_hf_config(raw)
    hf_dict = transformers.AutoConfig.for_model(**raw).to_dict()
    assert ModelConfig.from_hf_config(hf_dict) == ours
    if name.startswith("gemma"):
        assert ours.layer_types[:6] == ("sliding",) * 5 + ("full",)
        assert ours.rope_local_base_freq == 10000.0 and ours.rope_scaling is None
        assert ours.tie_embeddings and ours.activation == "gelu_tanh"
    if name.startswith("llama"):
        assert ours.rope_scaling["factor"] == 32.0 and ours.eos_ids == (128001, 128008, 128009)
    if name.startswith("qwen"):
        assert ours.qkv_bias and ours.sliding_window is None and ours.head_dim == 64
