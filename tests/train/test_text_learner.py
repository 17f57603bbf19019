"""The text-mode policy step against a per-token reference of the revised objective.

The reference scores every member completion as its own prompt + completion sequence (a plain
causal forward: no packing, no left padding), takes every token's log-probability under the
sampling procedure (trie constraint from the candidates' prefixes, eos masked in free text,
temperature: the policy deployed is the policy optimised), and writes the loss of DESIGN.md
"ABPO objective" (revised 2026-12-04) out per token: rewards, advantages (std none), the
no-response penalty tempered on the advantage, SNIPS weight and value, PPO term at ratio 1,
anchor term, KL. Loss and gradients must agree with the jitted step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.config import base_config
from abpo_jax.losses.abpo import LossSettings
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling import procedure as proc
from abpo_jax.sampling.generate import left_pad
from abpo_jax.sampling.trie import build_batch_trie
from abpo_jax.train import state as st
from abpo_jax.train.learner import init_step_state
from abpo_jax.train.text_learner import TextBatch, make_text_policy_step

V, EOS, B, G, C = 40, 3, 4, 3, 3
ITEM_LEN = 4     # item slots: [1, item, 2, eos]
THINK = [7, 4]   # think variant: one free token (7) and a forced close (4) before the item
TEMP = 0.7


def _setup():
    config = base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    config.train.optimizer = "sgd"
    config.train.grad_clip = 1e6    # the update is -lr * grad exactly
    config.loss.num_generations = G
    config.loss.certainty_norm = "batch"
    mesh = st.build_mesh(config, jax.devices()[:1])
    mc = ModelConfig.tiny(V, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                          intermediate_size=64)
    model = Decoder(mc, rngs=nnx.Rngs(0))
    split, params, frozen = st.place_model(model, config, mesh)
    return config, mesh, model, split, params, frozen


def _batch(rng, think: bool):
    prompts = [list(rng.integers(5, V, size=rng.integers(2, 6))) for _ in range(B)]
    cand_items = [rng.choice(np.arange(5, V), C, replace=False) for _ in range(B)]
    cands = [[[1, int(c), 2, EOS] for c in items] for items in cand_items]
    members = rng.integers(0, C, (B, G + 1)).astype(np.int32)
    prefix = THINK if think else []
    tokens = np.array([[prefix + cands[b][m] for m in members[b]] for b in range(B)], np.int32)
    kinds = np.full(tokens.shape, proc.KIND_ITEM, np.int32)
    if think:
        kinds[..., 0], kinds[..., 1] = proc.KIND_FREE, proc.KIND_FORCED
    pt, pm = left_pad(prompts, 8)
    trie = build_batch_trie(cands, C * ITEM_LEN + 2, C)
    fmt = (rng.integers(0, 3, (B, G + 1)) / 2.0 if think else np.ones((B, G + 1)))
    batch = TextBatch(
        prompt_tokens=pt, prompt_mask=pm, tokens=tokens, kinds=kinds, members=members,
        format_reward=fmt.astype(np.float32),
        sim_reward=rng.uniform(0, 1, (B, G + 1)).astype(np.float32),
        propensity=rng.uniform(0.2, 0.7, B).astype(np.float32),
        outcome=np.array([1, 0, 0, 1], np.int32), target=rng.integers(0, C, B).astype(np.int32),
        round_certainty=rng.uniform(0, 1, B).astype(np.float32),
        valid=np.ones(B, np.float32), trie=trie)
    return batch, prompts, cands


def _token_logits(model, prompt, completion):
    """Plain causal logits [N, V] predicting each completion token of one sequence."""
    seq = jnp.asarray([prompt + list(completion)], jnp.int32)
    t = seq.shape[1]
    logits, _ = model(seq, jnp.arange(t)[None], jnp.tril(jnp.ones((t, t), bool))[None])
    return logits[0, len(prompt) - 1:-1].astype(jnp.float32)


def _procedure_token_logq(z, completion, kinds, cands):
    """Per-token log q [N] of one completion under the procedure, differentiable in z: free
    tokens from all tokens but eos, forced ones probability 1 (0 here), the item under the
    trie of the candidates' prefixes; /T."""
    start = int(np.sum(kinds != proc.KIND_ITEM))
    item = list(completion[start:])
    out = []
    for t, tok in enumerate(completion):
        if kinds[t] == proc.KIND_FORCED:
            out.append(jnp.float32(0.0))
            continue
        if kinds[t] == proc.KIND_FREE:
            allowed = set(range(V)) - {EOS}
        else:
            j = t - start
            allowed = {c[j] for c in cands if list(c[:j]) == item[:j]}
        keep = np.zeros(V, bool)
        keep[sorted(allowed)] = True
        out.append(jax.nn.log_softmax(jnp.where(keep, z[t] / TEMP, -jnp.inf))[int(tok)])
    return jnp.stack(out)


def _member_logp(model, batch, prompts, cands):
    """Per-token procedure log q [B, M, N] and self-certainty [B, M, N], one sequence at a
    time."""
    lp, cert = [], []
    for b in range(B):
        lp_b, cert_b = [], []
        for m in range(G + 1):
            z = _token_logits(model, prompts[b], batch.tokens[b, m])
            lp_b.append(_procedure_token_logq(z, batch.tokens[b, m], batch.kinds[b, m],
                                              cands[b]))
            cert_b.append(jax.nn.logsumexp(z, -1) - z.mean(-1))
        lp.append(jnp.stack(lp_b))
        cert.append(jnp.stack(cert_b))
    return jnp.stack(lp), jnp.stack(cert)


def _old_terms(old_model, batch, prompts, cands):
    """pi_old's detached quantities: per-token log pi, self-certainty, and the anchor's
    probability under the sampling procedure."""
    old, cert = (np.asarray(x) for x in _member_logp(old_model, batch, prompts, cands))
    pi_old_a = np.exp(old[:, 0].astype(np.float64).sum(-1))
    return old, cert, pi_old_a


def _reference_loss(settings, model, old_terms, batch, prompts, cands):
    """The objective of DESIGN.md written out per token, one sequence at a time."""
    lp, _ = _member_logp(model, batch, prompts, cands)
    old, cert, pi_old_a = old_terms
    w = pi_old_a / batch.propensity
    w_t = np.clip(w / w.mean(), 0, settings.snips_clip)
    # the loss counts sampled tokens only: free and item, not the forced close
    mask = (batch.kinds != proc.KIND_FORCED).astype(np.float32)
    # certainty: item-span mean, batch min-max; u = r+ or -lambda (untempered)
    item = batch.kinds[:, 0] == proc.KIND_ITEM
    sc = (cert[:, 0] * item).sum(-1) / item.sum(-1)
    c = (sc - sc.min()) / (sc.max() - sc.min() + 1e-4)
    u = np.where(batch.outcome == 1, settings.positive_reward, -settings.negative_scale)
    v = (w * u).sum() / w.sum()
    names = batch.members == batch.members[:, :1]
    r = batch.format_reward + np.where(names, u[:, None], v)      # format + outcome
    adv = r - r.mean(-1, keepdims=True)
    # a no-response member's negative advantage shrinks by g = 1 - c
    no_response = names & (batch.outcome == 0)[:, None] & (adv < 0)
    adv = np.where(no_response, (1 - c)[:, None] * adv, adv)
    n_tokens = mask.sum()
    ratio = jnp.exp(lp[:, 1:] - old[:, 1:])
    pg = -jnp.sum(ratio * adv[:, 1:, None] * mask[:, 1:])
    anchor = -jnp.sum((w_t * adv[:, 0])[:, None] * lp[:, 0] * mask[:, 0])
    return (pg + anchor) / n_tokens   # KL = 0: pi_ref = pi_theta


@pytest.mark.parametrize("beta,think", [(0.04, True)])   # the item-only case: the TRL test
def test_text_step_equals_per_token_reference(beta, think):
    config, mesh, model, split, params, frozen = _setup()
    config.loss.beta = beta
    settings = LossSettings.from_config(config.loss)
    batch, prompts, cands = _batch(np.random.default_rng(0), think)
    procedure = proc.Procedure(temperature=TEMP, max_item_tokens=ITEM_LEN,
                               max_think_tokens=1 if think else 0,
                               think_close=(THINK[1],) if think else ())
    tx = st.make_optimizer(config, 0.1, 10)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    ref = jax.tree.map(jnp.copy, params)
    step = jax.jit(make_text_policy_step(split, tx, settings, procedure, EOS))
    with jax.set_mesh(mesh):
        new_state, m = step(state, frozen, ref, jax.tree.map(jnp.asarray, batch))

    old_terms = _old_terms(split.merge(params, frozen), batch, prompts, cands)

    def ref_loss(p):
        return _reference_loss(settings, split.merge(p, frozen), old_terms, batch, prompts,
                               cands)

    want, grads = jax.jit(jax.value_and_grad(ref_loss))(params)
    # float32 forward of a different layout (packed vs one sequence): ~1e-6 relative
    np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-4, atol=1e-6)
    # SGD: new = old - lr * grad
    got = jax.tree.map(lambda a, b: (a - b) / 0.1, params, new_state["params"])
    for g_got, g_want in zip(jax.tree.leaves(got), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_want), rtol=2e-3,
                                   atol=2e-5)
    assert abs(float(want)) > 1e-4   # a non-trivial loss: the comparison can fail


def _one_step(mesh_shape, devices, batch, procedure):
    config = base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    config.train.optimizer = "sgd"
    config.loss.num_generations = G
    mesh = st.build_mesh(config, devices)
    mc = ModelConfig.tiny(V, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                          intermediate_size=64)
    from abpo_jax.models.sharding import create_sharded
    model = create_sharded(lambda: Decoder(mc, rngs=nnx.Rngs(0)), mesh)
    split, params, frozen = st.place_model(model, config, mesh)
    settings = LossSettings.from_config(config.loss)
    tx = st.make_optimizer(config, 0.1, 10)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    ref = jax.tree.map(jnp.copy, params)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    placed = jax.tree.map(lambda x: jax.device_put(np.asarray(x), rows), batch)
    step = jax.jit(make_text_policy_step(split, tx, settings, procedure, EOS))
    with jax.set_mesh(mesh):
        new_state, m = step(state, frozen, ref, placed)
    return jax.tree.map(np.asarray, new_state["params"]), float(m["loss"])


def test_text_step_on_8_devices_equals_1_device():
    """Batch rows over data x fsdp and the weights over fsdp x tensor (2 x 2 x 2 mesh) give
    the step of one device (float32 reductions in another order: ~1e-6 relative)."""
    batch, _, _ = _batch(np.random.default_rng(1), think=False)
    procedure = proc.Procedure(temperature=TEMP, max_item_tokens=ITEM_LEN)
    one, loss1 = _one_step((1, 1, 1), jax.devices()[:1], batch, procedure)
    eight, loss8 = _one_step((2, 2, 2), jax.devices()[:8], batch, procedure)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
