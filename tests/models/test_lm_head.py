"""The scanned LM head (models/lm_head.py) against the plain logits: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.models.lm_head import token_scores, token_scores_from_hidden

CHUNK = 16


def _model(**changes):
    config = ModelConfig.tiny(64, **changes)   # tied, 4 chunks of 16
    return Decoder(config, rngs=nnx.Rngs(0))


def _loss(score_fn, model, hidden, targets):
    logp, certainty = score_fn(model, hidden, targets)
    # arbitrary weights on both outputs, so each output's cotangent path is exercised
    return jnp.sum(logp * jnp.arange(logp.size).reshape(logp.shape) / logp.size) \
        + 0.3 * jnp.sum(certainty ** 2)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_head_matches_plain_logits(softcap):
    model = _model(final_logit_softcapping=softcap)
    hidden = jax.random.normal(jax.random.key(1), (3, 5, 64))
    targets = jax.random.randint(jax.random.key(2), (3, 5), 0, 64)

    def plain(m, h, t):
        return token_scores(m.logits_from_hidden(h), t)

    def chunked(m, h, t):
        return token_scores_from_hidden(m, h, t, chunk=CHUNK)

    for got, want in zip(chunked(model, hidden, targets), plain(model, hidden, targets)):
        # float32 sums in another order (online logsumexp over 4 chunks): ~1e-7 relative
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    graphdef, state = nnx.split(model)

    def grads(fn):
        return jax.grad(lambda s, h: _loss(fn, nnx.merge(graphdef, s), h, targets),
                        argnums=(0, 1))(state, hidden)

    (gs_c, gh_c), (gs_p, gh_p) = grads(chunked), grads(plain)
    np.testing.assert_allclose(gh_c, gh_p, rtol=1e-4, atol=1e-5)
    emb_c, emb_p = gs_c["embed_tokens"]["embedding"][...], gs_p["embed_tokens"]["embedding"][...]
    assert np.abs(emb_p).max() > 1e-3
    np.testing.assert_allclose(emb_c, emb_p, rtol=1e-4, atol=1e-5)


def test_small_or_indivisible_vocabularies_take_the_plain_path():
    model = _model()
    hidden = jax.random.normal(jax.random.key(1), (2, 64))
    targets = jnp.array([3, 60])
    want = token_scores(model.logits_from_hidden(hidden), targets)
    for chunk in (64, 128, 48):   # = V, > V, not a divisor
        got = token_scores_from_hidden(model, hidden, targets, chunk=chunk)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
