"""`flat_dot`, the float32 weight matmul of `nnx.Linear` and the tied LM head: x [..., K] @ w
as one 2-D product over the flattened tokens, so that autodiff's weight gradient is a 2-D
product too (XLA:CPU runs the 3-D contraction's operand transposes far slower)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from abpo_jax.models.decoder import flat_dot
from helpers import dense_products, matmul_vjp_case


@pytest.mark.parametrize("w_transposed", [False, True])
def test_flat_dot_and_its_gradients_are_the_products(w_transposed):
    """Forward and both gradients against float64 NumPy; float32 accumulation over K = 48
    terms of unit-normal products errs by ~K 2**-24 relative, so 1e-5 of the scale bounds it."""
    (x, w, g), (y, dx, dw) = matmul_vjp_case(flat_dot, w_transposed)
    assert y.shape == (2, 5, 40) and dx.shape == x.shape and dw.shape == w.shape
    for got, want in zip((y, dx, dw), dense_products(x, w, g, w_transposed)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=1e-5 * np.abs(want).max(), rtol=0)


def test_every_product_of_the_gradient_is_2d():
    """The property the speed rests on: forward, dx and dw are all rank-2 dot_generals with
    no batch dimensions (a plain [B, T, K] . [K, N] dot's dw contracts two dimensions)."""
    x, w = jnp.ones((2, 5, 48)), jnp.ones((48, 40))
    jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: flat_dot(a, b).sum(), (0, 1)))(x, w)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3
    for e in dots:
        assert all(v.aval.ndim == 2 for v in e.invars)
        (_, _), (lhs_b, rhs_b) = e.params["dimension_numbers"]
        assert not lhs_b and not rhs_b
