"""Sharded model on 8 fake CPU devices (mesh 2x2x2) == single-device model."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from abpo_jax.models import sharding as sh
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import (Decoder, cache_shardings, causal_mask, create_sharded_model,
                                     init_cache)

# The unscanned layout indexes layers[i]; the scanned (stacked) one: tests/models/test_scan_layers.py
CONFIG = ModelConfig.tiny(128, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                         scan_layers=False)
B, T = 4, 8


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def models(mesh):
    with jax.default_device(jax.devices()[0]):
        single = Decoder(CONFIG, rngs=nnx.Rngs(0))
    return single, create_sharded_model(CONFIG, mesh, rngs_seed=0)


def _inputs():
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    return tokens, positions


def test_make_mesh_fill_and_errors():
    m = sh.make_mesh(2, -1, 2)
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    assert dict(sh.make_mesh(1, -1, 1).shape)["fsdp"] == 8
    with pytest.raises(ValueError, match="at most one"):
        sh.make_mesh(-1, -1, 1)
    with pytest.raises(ValueError, match="needs 12 devices"):
        sh.make_mesh(3, 2, 2)


def test_logical_to_spec_rules():
    shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert sh.logical_to_spec(("embed", "mlp"), (64, 128), shape) == P("fsdp", "tensor")
    assert sh.logical_to_spec(("batch", "length"), (4, 8), shape) == P(("data", "fsdp"), None)
    # a mesh axis that does not divide the dimension is dropped (that dim is replicated)
    assert sh.logical_to_spec(("batch", "vocab"), (2, 9), shape) == P("data", None)
    # a mesh axis is used once per array
    assert sh.logical_to_spec(("heads", "mlp"), (4, 4), shape) == P("tensor", None)
    custom = (("embed", None), ("mlp", ("fsdp", "tensor")))
    assert sh.logical_to_spec(("embed", "mlp"), (64, 128), shape, custom) == \
        P(None, ("fsdp", "tensor"))


def test_config_mesh_rules_override_takes_effect():
    """`config.mesh.rules` is the table the model is born with (installed by build_mesh)."""
    from abpo_jax.config import base_config
    from abpo_jax.train.state import build_mesh
    config = base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    # embed replicated, mlp over both fsdp and tensor; list values as a CLI override gives them
    config.mesh.rules = tuple((name, None if name == "embed" else
                               ["fsdp", "tensor"] if name == "mlp" else target)
                              for name, target in config.mesh.rules)
    try:
        mesh = build_mesh(config, jax.devices()[:8])
        model = create_sharded_model(CONFIG, mesh, rngs_seed=0)
        assert model.layers[0].mlp.gate_proj.kernel[...].sharding.spec == P(None, ("fsdp",
                                                                                   "tensor"))
        assert sh.logical_to_spec(("embed",), (64,), dict(mesh.shape)) == P(None)
    finally:
        sh.set_rules(None)
    assert sh.logical_to_spec(("embed",), (64,), dict(mesh.shape)) == P("fsdp")


def test_params_born_sharded(models):
    single, sharded = models
    kernel = sharded.layers[0].mlp.gate_proj.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (32, 64)  # (64,128) over fsdp=2 x tensor=2
    assert sharded.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
    assert sharded.layers[1].self_attn.o_proj.kernel[...].sharding.spec == P("tensor", "fsdp")
    assert len(kernel.sharding.device_set) == 8
    # same initial values as the single-device model (same seed and init stream; jitted vs eager
    # sampling may differ in the last ulp)
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(single)),
                                 nnx.to_flat_state(nnx.state(sharded))):
        np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), rtol=1e-6, atol=1e-9,
                                   err_msg=str(path))


def test_sharded_forward_matches_single_device(models, mesh):
    single, sharded = models
    tokens, positions = _inputs()
    fwd = nnx.jit(lambda m, t, p: m(t, p, causal_mask(p, p))[0])
    want = fwd(single, tokens, positions)
    with jax.set_mesh(sh.as_auto_mesh(mesh)):
        got = fwd(sharded, tokens, positions)
    assert got.sharding.spec[0] == ("data", "fsdp")  # activations follow the logical rules
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_sharded_cached_decode_matches_single_device(models, mesh):
    single, sharded = models
    tokens, positions = _inputs()
    s_max = T
    slots = jnp.arange(s_max)[None]

    def run(model, cache):
        step = nnx.jit(lambda m, t, p, mask, c: m(t, p, mask, c))
        outs = []
        for i in range(T):  # prefill of 3 tokens, then one token at a time
            if i < 3 and i != 0:
                continue
            n = 3 if i == 0 else 1
            q = positions[:, i:i + n]
            mask = (slots[:, None, :] <= q[:, :, None])
            logits, cache = step(model, tokens[:, i:i + n], q, jnp.broadcast_to(mask, (B, n, s_max)),
                                 cache)
            outs.append(np.asarray(logits))
        return np.concatenate(outs, axis=1), cache

    want, _ = run(single, init_cache(CONFIG, B, s_max))
    shardings = cache_shardings(CONFIG, mesh, B, s_max)
    cache = jax.device_put(init_cache(CONFIG, B, s_max), shardings)
    assert cache.k.sharding.spec == P(None, ("data", "fsdp"), None, "tensor", None)
    with jax.set_mesh(sh.as_auto_mesh(mesh)):
        got, cache = run(sharded, cache)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    full = nnx.jit(lambda m, t, p: m(t, p, causal_mask(p, p))[0])(single, tokens, positions)
    np.testing.assert_allclose(got, np.asarray(full), atol=1e-5, rtol=0)


def test_remat_sharded_gradients_match(models, mesh):
    single, _ = models
    remat_config = ModelConfig.tiny(128, hidden_size=64, num_heads=4, num_kv_heads=2,
                                    intermediate_size=128, remat=True, scan_layers=False)
    remat_sharded = create_sharded_model(remat_config, mesh, rngs_seed=0)
    tokens, positions = _inputs()

    def loss(model):
        logits, _ = model(tokens, positions, causal_mask(positions, positions))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grad = nnx.jit(lambda m: nnx.grad(loss)(m))
    want = grad(single)
    with jax.set_mesh(sh.as_auto_mesh(mesh)):
        got = grad(remat_sharded)
    for (path, a), (_, b) in zip(nnx.to_flat_state(want), nnx.to_flat_state(got)):
        np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), atol=1e-6,
                                   err_msg=str(path))


def test_load_hf_checkpoint_sharded(mesh, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from abpo_jax.models.loaders import load_hf_checkpoint

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load_hf_checkpoint(tmp_path, mesh=mesh, scan_layers=False)
    kernel = model.layers[0].self_attn.q_proj.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor") and len(kernel.sharding.device_set) == 8
    tokens, positions = _inputs()
    with jax.set_mesh(sh.as_auto_mesh(mesh)):
        got, _ = model(tokens, positions, causal_mask(positions, positions))
    with torch.no_grad():
        want = hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
