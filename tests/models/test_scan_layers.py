"""Scanned layers (`ModelConfig.scan_layers`) == the unscanned Python loop; bf16 and
`dot_product_attention` against the f32 dense reference.

Tolerances. Scanned vs unscanned run the same float32 operations in the same order per layer;
only XLA's fusion and loop structure differ, which can reassociate a few float32 sums. The
expected gap is a few float32 ulps of the values (eps_f32 = 2**-23 ~ 1.2e-7; measured max 3e-7 on
logits of size ~1), so logits and gradients are compared at rtol = atol = 1e-5 (~80 ulps), far
below any real difference (a wrong layer order or window changes logits by > 1e-2).
"""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from abpo_jax.models import loaders, lora
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.sharding import as_auto_mesh
from abpo_jax.models.decoder import (Decoder, causal_mask, create_sharded_model,
                                     stack_layers_state, unstack_layers_state)
from abpo_jax.sampling import group_scoring as gs
from abpo_jax.sampling.generate import SamplingParams, generate, left_pad

V, B, T = 64, 2, 10
TOL = dict(rtol=1e-5, atol=1e-5)
LLAMA = ModelConfig.tiny(V, num_layers=3, qkv_bias=True, tie_embeddings=False)
GEMMA = ModelConfig.tiny(V, family="gemma3", num_layers=3, tie_embeddings=True,
                         layer_types=("sliding", "sliding", "full"), sliding_window=3,
                         rope_local_base_freq=10.0, query_pre_attn_scalar=24.0,
                         final_logit_softcapping=30.0)
CONFIGS = {"llama": LLAMA, "gemma3": GEMMA}


def _pair(config, **overrides):
    scanned = Decoder(dataclasses.replace(config, scan_layers=True, **overrides),
                      rngs=nnx.Rngs(0))
    loop = Decoder(dataclasses.replace(config, scan_layers=False, **overrides), rngs=nnx.Rngs(0))
    return scanned, loop


def _inputs():
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    return tokens, positions, causal_mask(positions, positions)


@nnx.jit
def _logits(model, tokens, positions, mask):
    return model(tokens, positions, mask)[0]


def _loss(model, tokens, positions, mask):
    logits = model(tokens, positions, mask)[0]
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))


def _flat(state):
    return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_same_weights_stacked(name):
    scanned, loop = _pair(CONFIGS[name])
    assert scanned.layers.self_attn.q_proj.kernel[...].shape[0] == 3
    stacked = stack_layers_state(_flat(nnx.state(loop)), 3)
    got = _flat(nnx.state(scanned))
    assert stacked.keys() == got.keys()
    for path in got:
        np.testing.assert_array_equal(got[path], stacked[path], err_msg=str(path))
    # and back
    back = unstack_layers_state(got, 3)
    assert back.keys() == _flat(nnx.state(loop)).keys()


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scanned_logits_and_grads_match_loop(name, remat):
    scanned, loop = _pair(CONFIGS[name], remat=remat)
    x = _inputs()
    np.testing.assert_allclose(np.asarray(_logits(scanned, *x)), np.asarray(_logits(loop, *x)),
                               **TOL)
    grad = nnx.jit(nnx.grad(_loss))
    g_scan = _flat(grad(scanned, *x))
    g_loop = stack_layers_state(_flat(grad(loop, *x)), 3)
    assert g_scan.keys() == g_loop.keys()
    for path in g_scan:
        np.testing.assert_allclose(g_scan[path], g_loop[path], err_msg=str(path), **TOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kv_cache_sampling_matches_loop(name):
    scanned, loop = _pair(CONFIGS[name])
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    tokens, mask = left_pad(prompts)
    params = SamplingParams(max_new_tokens=6, num_samples=2, temperature=1.0)
    a = generate(scanned, tokens, mask, jax.random.key(0), params, eos_id=1)
    b = generate(loop, tokens, mask, jax.random.key(0), params, eos_id=1)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.model_logprobs), np.asarray(b.model_logprobs), **TOL)


def test_packed_group_scoring_matches_loop():
    scanned, loop = _pair(LLAMA)
    packed = gs.pack_group([[5, 6, 7, 8], [9, 10]], [[[3, 4, 1], [12, 1]], [[20, 21, 22, 1]]])
    a, b = gs.score_packed(scanned, packed), gs.score_packed(loop, packed)
    np.testing.assert_allclose(np.asarray(a.token_logprobs), np.asarray(b.token_logprobs), **TOL)
    np.testing.assert_allclose(np.asarray(a.self_certainty), np.asarray(b.self_certainty), **TOL)


def test_lora_on_scanned_layers_matches_loop():
    scanned, loop = _pair(LLAMA)
    for m in (scanned, loop):
        lora.apply_lora(m, 4, 8.0, ("q_proj", "v_proj", "down_proj"), rngs=nnx.Rngs(1))
    assert scanned.layers.self_attn.q_proj.lora_a[...].shape == (3, 64, 4)
    # same adapters, drawn in the same order
    stacked = stack_layers_state(_flat(nnx.state(loop, lora.LoRAParam)), 3)
    for path, value in _flat(nnx.state(scanned, lora.LoRAParam)).items():
        np.testing.assert_array_equal(value, stacked[path], err_msg=str(path))
    for m in (scanned, loop):  # make B matter
        state = nnx.state(m, lora.LoRAParam)
        nnx.update(m, jax.tree.map(lambda v: v + 0.05, state))
    x = _inputs()
    np.testing.assert_allclose(np.asarray(_logits(scanned, *x)), np.asarray(_logits(loop, *x)),
                               **TOL)
    grad = nnx.jit(nnx.grad(_loss, argnums=nnx.DiffState(0, lora.LoRAParam)))
    g_scan, g_loop = _flat(grad(scanned, *x)), stack_layers_state(_flat(grad(loop, *x)), 3)
    assert {p[-1] for p in g_scan} == {"lora_a", "lora_b"}
    for path in g_scan:
        np.testing.assert_allclose(g_scan[path], g_loop[path], err_msg=str(path), **TOL)
    merged = lora.merge_lora(scanned)
    assert not lora.has_lora(merged)
    np.testing.assert_allclose(np.asarray(_logits(merged, *x)), np.asarray(_logits(scanned, *x)),
                               rtol=1e-4, atol=1e-4)


def test_scanned_params_shard_with_layers_axis():
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    model = create_sharded_model(LLAMA, mesh)
    kernel = model.layers.mlp.gate_proj.kernel[...]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")  # `layers` is replicated
    assert model.layers.self_attn.o_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    lora.apply_lora(model, 4, 8.0, ("q_proj",), mesh=mesh)
    assert model.layers.self_attn.q_proj.lora_a[...].sharding.spec == P(None, "fsdp", None)
    single = Decoder(LLAMA, rngs=nnx.Rngs(0))
    lora.apply_lora(single, 4, 8.0, ("q_proj",))
    x = _inputs()
    with jax.set_mesh(as_auto_mesh(mesh)):
        got = np.asarray(_logits(model, *x))
    np.testing.assert_allclose(got, np.asarray(_logits(single, *x)), rtol=1e-4, atol=1e-4)


def test_scanned_remat_sharded_gradients_match_single_device():
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    config = dataclasses.replace(LLAMA, remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    sharded = create_sharded_model(config, mesh)
    single = Decoder(LLAMA, rngs=nnx.Rngs(0))
    x = _inputs()
    grad = nnx.jit(nnx.grad(_loss))
    want = _flat(grad(single, *x))
    with jax.set_mesh(as_auto_mesh(mesh)):
        got = _flat(grad(sharded, *x))
    for path in want:
        np.testing.assert_allclose(got[path], want[path], err_msg=str(path), rtol=1e-4,
                                   atol=1e-6)


def test_hf_export_and_load_between_layouts(tmp_path):
    scanned, loop = _pair(LLAMA)
    loaders.save_hf_checkpoint(scanned, tmp_path / "ckpt")
    reloaded_loop, _ = loaders.load_hf_checkpoint(tmp_path / "ckpt", scan_layers=False)
    reloaded_scan, config = loaders.load_hf_checkpoint(tmp_path / "ckpt")
    assert config.scan_layers
    x = _inputs()
    want = np.asarray(_logits(loop, *x))
    for m in (reloaded_loop, reloaded_scan):
        np.testing.assert_allclose(np.asarray(_logits(m, *x)), want, **TOL)


def test_scanned_program_size_does_not_grow_with_depth():
    """The point of scanning: the compiled program holds one layer body, whatever L is."""
    def dots(num_layers, scan):
        c = dataclasses.replace(LLAMA, num_layers=num_layers, layer_types=(), scan_layers=scan)
        model = Decoder(c, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, *x: _loss(nnx.merge(graphdef, s), *x))
        return jax.jit(jax.grad(fn)).lower(state, *_inputs()).as_text().count("dot_general")

    assert dots(8, True) == dots(2, True)
    assert dots(8, False) > 3 * dots(2, False) / 2


# --- bf16 and the attention implementation ----------------------------------------------------

def test_dot_product_attention_matches_dense():
    """Same math (XLA on CPU): float32 rounding only -> TOL; packed block-causal masks, GQA,
    sliding windows and the KV cache included."""
    for config in (LLAMA, GEMMA):
        dense = Decoder(config, rngs=nnx.Rngs(0))
        fused = Decoder(dataclasses.replace(config, attention="dot_product_attention"),
                        rngs=nnx.Rngs(0))
        x = _inputs()
        np.testing.assert_allclose(np.asarray(_logits(fused, *x)), np.asarray(_logits(dense, *x)),
                                   **TOL)
        packed = gs.pack_group([[5, 6, 7, 8], [9, 10]], [[[3, 4, 1], [12, 1]], [[20, 21, 1]]])
        a, b = gs.score_packed(fused, packed), gs.score_packed(dense, packed)
        np.testing.assert_allclose(np.asarray(a.token_logprobs), np.asarray(b.token_logprobs),
                                   **TOL)
        tokens, mask = left_pad([[5, 6, 7, 8, 9], [11, 12, 13]])
        params = SamplingParams(max_new_tokens=5, num_samples=1, temperature=0.0)
        s_a = generate(fused, tokens, mask, jax.random.key(0), params, eos_id=1)
        s_b = generate(dense, tokens, mask, jax.random.key(0), params, eos_id=1)
        np.testing.assert_array_equal(np.asarray(s_a.tokens), np.asarray(s_b.tokens))


def test_dot_product_attention_refuses_softcapping():
    with pytest.raises(ValueError, match="soft-capping"):
        dataclasses.replace(GEMMA, attn_logit_softcapping=50.0, attention="dot_product_attention")


@pytest.mark.parametrize("attention", ["dense", "dot_product_attention"])
def test_bf16_compute_matches_f32(attention):
    """bf16 keeps an 8-bit significand: unit roundoff u = 2**-8 ~ 3.9e-3 per rounding. A
    3-layer block rounds the residual stream ~2 times per layer plus the embedding and final
    norm (~8 roundings); random-walk accumulation gives a relative error ~ sqrt(8) u ~ 1.1e-2
    of the activations' scale. We allow 4x that, measured against the logits' scale:
    |logits_bf16 - logits_f32| <= 4 sqrt(8) u max|logits_f32|, and the same bound on the
    log-softmax (what the policy uses). Parameters stay float32 (param_dtype), as in training.
    """
    u = 2.0 ** -8
    bound = 4 * np.sqrt(8) * u
    f32 = Decoder(dataclasses.replace(LLAMA, attention=attention), rngs=nnx.Rngs(0))
    bf16 = Decoder(dataclasses.replace(LLAMA, attention=attention, dtype="bfloat16"),
                   rngs=nnx.Rngs(0))
    x = _inputs()
    want, got = np.asarray(_logits(f32, *x)), np.asarray(_logits(bf16, *x))
    assert got.dtype == np.float32  # logits are always float32
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= bound * scale
    lp_want, lp_got = jax.nn.log_softmax(want), jax.nn.log_softmax(got)
    assert np.abs(np.asarray(lp_got - lp_want)).max() <= bound * scale
    # the bf16 path really is bf16 (not silently f32): it differs from f32 by more than f32 noise
    assert np.abs(got - want).max() > 1e-4 * scale
    # gradients (float32 params) agree in direction
    g32 = jax.tree.leaves(nnx.jit(nnx.grad(_loss))(f32, *x))
    g16 = jax.tree.leaves(nnx.jit(nnx.grad(_loss))(bf16, *x))
    a = np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in g32])
    b = np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in g16])
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 1 - bound
