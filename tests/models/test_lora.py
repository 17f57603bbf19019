"""LoRA: zero-init B is a no-op, the update is x W + (alpha/r) x A B, merged == unmerged, only
adapter weights are differentiated, adapters shard on a mesh."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from abpo_jax.models import lora
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder, causal_mask

# The unscanned layout indexes layers[i]; the scanned (stacked) one: tests/models/test_scan_layers.py
CONFIG = ModelConfig.tiny(64, qkv_bias=True, tie_embeddings=False, scan_layers=False)
RANK, ALPHA = 4, 8.0


def _inputs():
    tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    return tokens, positions, causal_mask(positions, positions)


@nnx.jit
def _forward(model, tokens, positions, mask):
    return model(tokens, positions, mask)[0]


def _logits(model):
    return np.asarray(_forward(model, *_inputs()))


def _randomise_b(model, seed=1):
    state = nnx.state(model, lora.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    nnx.update(model, jax.tree.map(lambda v: 0.1 * jax.random.normal(next(keys), v.shape), state))


def test_zero_b_is_identity():
    base = Decoder(CONFIG, rngs=nnx.Rngs(0))
    want = _logits(base)
    model = lora.apply_lora(nnx.clone(base), RANK, ALPHA, ("q_proj", "v_proj", "down_proj"),
                            rngs=nnx.Rngs(1))
    assert isinstance(model.layers[0].self_attn.q_proj, lora.LoRALinear)
    assert not isinstance(model.layers[0].self_attn.k_proj, lora.LoRALinear)
    assert lora.has_lora(model) and lora.trainable_filter(model) is lora.LoRAParam
    np.testing.assert_array_equal(_logits(model), want)


def test_update_formula_and_merge():
    model = lora.apply_lora(Decoder(CONFIG, rngs=nnx.Rngs(0)), RANK, ALPHA, ("q_proj", "v_proj"),
                            rngs=nnx.Rngs(1))
    _randomise_b(model)
    layer = model.layers[1].self_attn.v_proj
    x = np.random.default_rng(0).normal(size=(3, CONFIG.hidden_size)).astype(np.float32)
    w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    a_, b_ = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))),
                               x @ w + b + (ALPHA / RANK) * (x @ a_) @ b_, atol=1e-5)

    unmerged = _logits(model)
    merged = lora.merge_lora(model)
    assert not lora.has_lora(merged)
    assert isinstance(merged.layers[0].self_attn.q_proj, nnx.Linear)
    assert nnx.state(merged, lora.LoRAParam) == nnx.State({})
    base_paths = {p for p, _ in nnx.to_flat_state(nnx.state(Decoder(CONFIG, rngs=nnx.Rngs(0))))}
    assert {p for p, _ in nnx.to_flat_state(nnx.state(merged))} == base_paths
    np.testing.assert_allclose(_logits(merged), unmerged, atol=1e-5)
    assert np.abs(unmerged - _logits(Decoder(CONFIG, rngs=nnx.Rngs(0)))).max() > 1e-3
    np.testing.assert_allclose(_logits(model), unmerged)  # merging did not touch the original


def test_only_lora_params_are_differentiated():
    model = lora.apply_lora(Decoder(CONFIG, rngs=nnx.Rngs(0)), RANK, ALPHA, ("q_proj", "v_proj"),
                            rngs=nnx.Rngs(1))

    def loss(m):
        logits, _ = m(*_inputs())
        return jnp.mean(jax.nn.log_softmax(logits)[..., 1])

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, lora.LoRAParam))(model)
    leaves = nnx.to_flat_state(grads)
    names = {path[-1] for path, _ in leaves}
    assert names == {"lora_a", "lora_b"} and len(leaves) == 2 * 2 * CONFIG.num_layers
    # with B = 0, dL/dA = 0 and dL/dB != 0 (the standard LoRA start)
    for path, g in leaves:
        if path[-1] == "lora_a":
            assert np.all(np.asarray(g[...]) == 0)
        else:
            assert np.abs(np.asarray(g[...])).max() > 0


def test_bad_targets_and_rank():
    model = Decoder(CONFIG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="targets"):
        lora.apply_lora(model, RANK, ALPHA, ("q_prj",))
    with pytest.raises(ValueError, match="rank"):
        lora.apply_lora(model, 0, ALPHA, ("q_proj",))


def test_adapters_sharded_on_mesh():
    from abpo_jax.models.decoder import create_sharded_model

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    model = create_sharded_model(CONFIG, mesh)
    lora.apply_lora(model, RANK, ALPHA, ("q_proj", "v_proj"), mesh=mesh)
    a = model.layers[0].self_attn.q_proj.lora_a[...]
    b = model.layers[0].self_attn.q_proj.lora_b[...]
    assert a.sharding.spec == P("fsdp", None) and b.sharding.spec == P(None, "tensor")
    assert model.layers[0].self_attn.q_proj.kernel[...].sharding.spec == P("fsdp", "tensor")
