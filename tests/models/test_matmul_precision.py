"""`ModelConfig.matmul_precision=bfloat16`: the weight matmuls take bfloat16 operands and
accumulate in float32, forward and backward; the rest of the model stays float32."""

import dataclasses
import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder, bf16_einsum, bf16_matmul, causal_mask
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
    """Whole model: each weight matmul and attention product rounds its two operands once
    (relative error ~ 2 u, u = 2**-8); a 2-layer model has ~13 such products on the path
    (per layer q/k/v/o, gate/up/down and 2 attention products, then the LM head; the
    residual stream carries about two layers' worth), so a random-walk bound is sqrt(13) 2 u
    ~ 2.8e-2 of the logits' scale; we allow 2x that. Gradients agree in direction (cosine) to
    the same bound."""
    base = ModelConfig.tiny(V, num_layers=2, tie_embeddings=tie)
    u = 2.0 ** -8
    bound = 2 * np.sqrt(13) * 2 * u
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


@pytest.mark.parametrize("x_shape,w_shape,w_transposed", [
    ((1, 5, 48), (48, 40), False),   # odd token count: the weight gradient pads one zero token
    ((2, 5, 48), (48, 6), False),    # narrow output: dw is formed as (g^T x)^T
    ((2, 5, 48), (6, 48), True)])
def test_bf16_matmul_weight_gradient_layouts(x_shape, w_shape, w_transposed):
    """Each way the backward forms dw (the tokens' transposed copy, padding, or the
    transposed product) gives the float64 product of the bf16-rounded operands; tolerance
    as in the test above (float32 accumulation over <= 48 terms)."""
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    n = w_shape[0] if w_transposed else w_shape[1]
    g = jax.random.normal(kg, (*x_shape[:-1], n))
    _, vjp = jax.vjp(lambda a, b: bf16_matmul(a, b, w_transposed), x, w)
    dx, dw = vjp(g)
    _, want_dx, want_dw = dense_products(_round(x), _round(w), _round(g), w_transposed)
    for got, want in ((dx, want_dx), (dw, want_dw)):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=1e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("spec", ["btkgd,bskd->bkgts", "bkgts,bskd->btkgd"])
def test_bf16_einsum_and_its_gradients_are_the_rounded_products(spec):
    """The attention products and both gradients equal float64 einsums of the bf16-rounded
    operands and cotangent (float32 accumulation over <= 7 terms: 1e-5 of the scale)."""
    sizes = dict(b=2, t=5, s=5, k=2, g=3, d=8)
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    ka, kb, kg = jax.random.split(jax.random.key(4), 3)
    a = jax.random.normal(ka, tuple(sizes[i] for i in sa))
    b = jax.random.normal(kb, tuple(sizes[i] for i in sb))
    g = jax.random.normal(kg, tuple(sizes[i] for i in out))
    y, vjp = jax.vjp(lambda p, q: bf16_einsum(spec, p, q), a, b)
    da, db = vjp(g)
    assert y.dtype == da.dtype == db.dtype == jnp.float32
    ra, rb, rg = _round(a), _round(b), _round(g)
    want = (np.einsum(spec, ra, rb), np.einsum(f"{out},{sb}->{sa}", rg, rb),
            np.einsum(f"{out},{sa}->{sb}", rg, ra))
    for got, w in zip((y, da, db), want):
        np.testing.assert_allclose(np.asarray(got, np.float64), w, atol=1e-5 * np.abs(w).max(),
                                   rtol=0)


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
    """(lhs, rhs) element types of every dot in compiled HLO text."""
    types, dots = {}, []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[", line)
        if m:
            types[m.group(1)] = m.group(2)
        d = re.search(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
        if d:
            dots.append(d.groups())
    return [(types[a], types[b]) for a, b in dots]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot placement")
def test_compiled_bf16_training_products_stay_bf16():
    """What the speed rests on: in the compiled forward + backward of the bf16 model every
    dot (weights, attention, LM head, and the weight gradients) takes bf16 operands. XLA:CPU
    upcasts a bf16 dot its bf16 kernels cannot run (e.g. one contracting the token dimension
    of both operands, as dw = x^T g) to a float32 product at half the speed."""
    mc = ModelConfig.tiny(V, num_layers=1, hidden_size=32, intermediate_size=64,
                          matmul_precision="bfloat16", remat=True,
                          remat_policy="dots_with_no_batch_dims_saveable")
    model = Decoder(mc, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, V)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    mask = causal_mask(pos, pos)
    graphdef, params = nnx.split(model)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p)(tokens, pos, mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    types = _dot_operand_types(hlo)
    assert len(types) >= 3 * 9   # forward, dx and dw of 7 weights, 2 attention products
    assert all(t == ("bf16", "bf16") for t in types), types


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match="matmul_precision"):
        ModelConfig.tiny(V, matmul_precision="fp8")
