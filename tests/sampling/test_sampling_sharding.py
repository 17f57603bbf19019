"""Scoring and sampling on a (2, 2, 2) mesh of fake CPU devices == single-device results."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.models.sharding import make_mesh, state_shardings
from abpo_jax.sampling import generate as gen
from abpo_jax.sampling import group_scoring as gs
from abpo_jax.sampling import trie as trie_lib

V = 48
EOS = 2
PROMPTS = [[5, 9, 11, 4, 30], [7, 8], [20, 21, 22], [40, 41, 42, 43]]
CANDS = [[[10, 11, EOS], [10, 12, EOS], [14, EOS]], [[15, EOS], [16, 17, EOS]],
         [[18, 19, 20, EOS], [18, EOS]], [[30, EOS], [31, EOS], [30, 31, EOS]]]


@pytest.fixture(scope="module")
def models():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    single = Decoder(ModelConfig.tiny(V), rngs=nnx.Rngs(2))
    mesh = make_mesh(2, 2, 2)
    graphdef, state = nnx.split(single)
    sharded_state = jax.device_put(state, state_shardings(state, mesh))
    sharded = nnx.merge(graphdef, sharded_state)
    specs = {x.sharding.spec for x in jax.tree.leaves(sharded_state)}
    assert any(any(a is not None for a in s) for s in specs), "nothing was sharded"
    return single, sharded, mesh


def _shard_batch(tree, mesh):
    """Put every array's leading (batch) axis on ("data", "fsdp")."""
    def put(x):
        x = np.asarray(x)
        spec = P(("data", "fsdp"), *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(mesh, spec))
    return jax.tree.map(put, tree)


def test_packed_scoring_sharded_equals_single(models):
    single, sharded, mesh = models
    packed = gs.pack_group(PROMPTS, CANDS, prompt_len=8, completion_len=4)
    ref = gs.score_packed(single, packed)
    with jax.set_mesh(mesh):
        out = gs.score_packed(sharded, _shard_batch(packed, mesh))
    assert len(out.sequence_logprobs.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_constrained_sampling_sharded_equals_single(models):
    single, sharded, mesh = models
    tokens, mask = gen.left_pad(PROMPTS)
    trie = trie_lib.build_batch_trie(CANDS)
    params = gen.SamplingParams(max_new_tokens=5, num_samples=4, temperature=1.0, top_k=3)
    ref = gen.generate(single, tokens, mask, jax.random.key(9), params, EOS, trie)
    with jax.set_mesh(mesh):
        tokens_s, mask_s, trie_s = _shard_batch((tokens, mask, trie), mesh)
        out = gen.generate(sharded, tokens_s, mask_s, jax.random.key(9), params, EOS, trie_s)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.candidate), np.asarray(ref.candidate))
    assert np.all(np.asarray(ref.candidate) >= 0)
    for name in ("logprobs", "model_logprobs", "self_certainty"):
        np.testing.assert_allclose(np.asarray(getattr(out, name)), np.asarray(getattr(ref, name)),
                                   atol=1e-5, rtol=1e-5)
