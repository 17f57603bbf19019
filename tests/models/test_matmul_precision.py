"""`ModelConfig.matmul_precision=bfloat16`: the weight matmuls take bfloat16 operands and
accumulate in float32, forward and backward; the rest of the model stays float32."""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder, bf16_matmul, causal_mask
from helpers import dense_products, matmul_vjp_case

V = 96


def _round(x):
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("w_transposed", [False, True])
def test_bf16_matmul_and_its_gradients_are_the_rounded_products(w_transposed):
    """Forward and both backward products equal float64 products of the bf16-rounded operands
    (and bf16-rounded cotangent): only the float32 accumulation order differs, ~K 2**-24
    relative, so 1e-5 of the result's scale bounds it."""
    (x, w, g), (y, dx, dw) = matmul_vjp_case(bf16_matmul, w_transposed)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    want_y, want_dx, want_dw = dense_products(_round(x), _round(w), _round(g), w_transposed)
    for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=1e-5 * np.abs(want).max(), rtol=0)
    # and they are not the float32 products (the rounding is really there)
    exact = dense_products(x, w, g, w_transposed)[0]
    assert np.abs(np.asarray(y) - exact).max() > 1e-4 * np.abs(exact).max()


@pytest.mark.parametrize("tie", [False, True])
def test_bf16_matmuls_match_f32_model(tie):
    """Whole model: each weight matmul rounds its two operands once (relative error ~ 2 u,
    u = 2**-8); a 2-layer model has ~9 matmuls on the path, so a random-walk bound is
    sqrt(9) 2 u ~ 2.3e-2 of the logits' scale; we allow 2x that. Gradients agree in direction
    (cosine) to the same bound."""
    base = ModelConfig.tiny(V, num_layers=2, tie_embeddings=tie)
    u = 2.0 ** -8
    bound = 2 * np.sqrt(9) * 2 * u
    f32 = Decoder(base, rngs=nnx.Rngs(0))
    mixed = Decoder(dataclasses.replace(base, matmul_precision="bfloat16"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, V)
    pos = jnp.broadcast_to(jnp.arange(11), (2, 11))
    mask = causal_mask(pos, pos)

    def loss(model):
        logits, _ = model(tokens, pos, mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2), logits

    (_, want), g32 = nnx.value_and_grad(loss, has_aux=True)(f32)
    (_, got), g16 = nnx.value_and_grad(loss, has_aux=True)(mixed)
    assert got.dtype == jnp.float32
    scale = float(jnp.abs(want).max())
    err = float(jnp.abs(got - want).max())
    assert 1e-5 * scale < err <= bound * scale          # rounded, but within the bound
    a = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(g16)])
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 1 - bound
    # parameters stay float32
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(mixed, nnx.Param)))


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match="matmul_precision"):
        ModelConfig.tiny(V, matmul_precision="fp8")
