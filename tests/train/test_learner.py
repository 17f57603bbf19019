"""The jitted train steps: method switches, exact accumulation, non-finite skip, sharding.

A tiny random decoder over a 40-token vocabulary; batches of 8 prompts with 4 candidates each.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from abpo_jax.config import base_config, method_losses
from abpo_jax.losses.abpo import LossSettings
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.models.sharding import create_sharded
from abpo_jax.sampling.group_scoring import item_span_mask, pack_candidates, score_candidates
from abpo_jax.train import state as st
from abpo_jax.train.learner import RLBatch, init_step_state, make_policy_step, make_sft_step

B, C, G = 8, 4, 4


def _config(mesh=(1, 1, 1), optimizer="sgd"):
    c = base_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.train.optimizer = optimizer  # plain SGD: updates are linear in the gradients
    c.train.learning_rate = 1e-1
    c.loss.num_generations = G
    return c


_MODELS: dict = {}
_STEPS: dict = {}


def _model_state(config, devices):
    """(mesh, split, params, frozen) — built once per mesh shape; fresh param copies."""
    key = (tuple(config.mesh.values()), len(devices))
    if key not in _MODELS:
        mesh = st.build_mesh(config, devices)
        mc = ModelConfig.tiny(40, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                              intermediate_size=64)
        model = create_sharded(lambda: Decoder(mc, rngs=nnx.Rngs(0)), mesh)
        _MODELS[key] = (mesh, *st.place_model(model, config, mesh))
    mesh, split, params, frozen = _MODELS[key]
    return mesh, split, jax.tree.map(jnp.copy, params), frozen


def _host_batch(seed=0, accum=1):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(5, 40, size=rng.integers(3, 7))) for _ in range(B)]
    comps = [[[1, int(c), 2, 3] for c in rng.choice(np.arange(5, 40), C, replace=False)]
             for _ in range(B)]
    cands = pack_candidates(prompts, comps, prompt_len=8, completion_len=4, num_candidates=C)
    batch = RLBatch(cands=cands, exposed=rng.integers(0, C, B).astype(np.int32),
                    propensity=rng.uniform(0.1, 0.6, B).astype(np.float32),
                    outcome=np.array([1, 0] * (B // 2), np.int32),
                    target=rng.integers(0, C, B).astype(np.int32),
                    sim_reward=np.zeros((B, C), np.float32),
                    round_certainty=rng.uniform(0, 1, B).astype(np.float32),
                    valid=np.ones(B, np.float32))
    return jax.tree.map(lambda x: np.asarray(x).reshape((accum, -1) + np.shape(x)[1:]), batch)


def _run_policy(config, method, batch, devices, steps=1, ref=None, ref_from_log=False):
    """Run `steps` policy steps (pi_ref = `ref`, default the initial params; `ref_from_log`:
    log pi~_ref from `batch.policy_logp`); returns (state as numpy, metrics of the last step)."""
    mesh, split, params, frozen = _model_state(config, devices)
    tx = st.make_optimizer(config, config.train.learning_rate, 10)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    ref = jax.tree.map(jnp.copy, params if ref is None else ref)
    settings = _settings(config, method)
    key = (settings, tuple(config.mesh.values()), config.train.optimizer,
           config.train.ppo_epochs, ref_from_log)
    if key not in _STEPS:  # one compiled step per (loss settings, mesh, optimizer, mu, ref)
        _STEPS[key] = jax.jit(make_policy_step(split, tx, settings, config.train.ppo_epochs,
                                               ref_from_log=ref_from_log), donate_argnums=0)
    micro = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
    batch = jax.tree.map(lambda x: jax.device_put(x, micro), batch)
    rng = jax.random.fold_in(jax.random.key(0), 1)
    with jax.set_mesh(mesh):
        for _ in range(steps):
            state, metrics = _STEPS[key](state, frozen, ref, batch, rng)
    return jax.tree.map(np.asarray, state), jax.device_get(metrics)


def _settings(config, method):
    """The loss settings of `method`: config.loss with the method table's overrides."""
    return LossSettings.from_config(config.loss).replace(**method_losses(config)[method][1])


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _assert_close(a, b, **tol):
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_allclose(x, y, **tol)


ONE = jax.devices()[:1]


def test_item_span_mask_skips_shared_tag_tokens():
    comps = [[[1, 7, 8, 2, 3], [1, 9, 2, 3]]]
    m = item_span_mask(comps, 2, 6)
    np.testing.assert_array_equal(m[0, 0], [0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(m[0, 1], [0, 1, 0, 0, 0, 0])


def test_grpo_ignores_propensities_but_for_the_snips_value():
    """GRPO has no anchor term: the logged propensities reach it only through V, the SNIPS
    value given to rollouts that name another item; with unobserved_reward=zero, not at all."""
    cfg = _config()
    cfg.loss.unobserved_reward = "zero"
    b1 = _host_batch()
    b2 = _host_batch()
    b2.propensity[...] = np.float32(0.9) - b1.propensity  # very different logged propensities
    s1, m1 = _run_policy(cfg, "grpo", b1, ONE)
    s2, m2 = _run_policy(cfg, "grpo", b2, ONE)
    assert m1["finite"] == 1.0 and m1["grad_norm"] > 0
    _assert_close(s1, s2, rtol=0, atol=0)
    # ABPO does use them: the same change moves its update.
    a1, _ = _run_policy(cfg, "abpo", b1, ONE)
    a2, _ = _run_policy(cfg, "abpo", b2, ONE)
    assert max(np.abs(x - y).max() for x, y in zip(_leaves(a1), _leaves(a2))) > 1e-6


def test_abpo_no_snips_equals_abpo_with_unit_weights():
    cfg = _config()
    batch = _host_batch()
    # Propensities equal to pi_old(a|x) make every SNIPS weight exactly w~ = 1.
    mesh, split, params, frozen = _model_state(cfg, ONE)
    cands = jax.tree.map(lambda x: x[0], batch.cands)
    logp, _, _ = jax.jit(lambda p, f, c: score_candidates(split.merge(p, f), c))(
        params, frozen, cands)
    batch.propensity[0] = np.exp(np.take_along_axis(np.asarray(logp), batch.exposed[0][:, None],
                                                    -1)[:, 0])
    abpo, m_abpo = _run_policy(cfg, "abpo", batch, ONE)
    plain, m_plain = _run_policy(cfg, "abpo_no_snips", batch, ONE)
    np.testing.assert_allclose(m_abpo["snips_weight"], 1.0, atol=1e-5)
    np.testing.assert_allclose(m_abpo["loss"], m_plain["loss"], rtol=1e-5)
    _assert_close(abpo, plain, rtol=1e-4, atol=1e-6)


def test_single_pass_step_equals_two_pass_accumulated_step():
    """ppo_epochs=1, one micro-batch: pi_old from the gradient's own forward (jax.vjp); two
    micro-batches: the no-grad pi_old pre-pass, then a scan of gradients. Same update."""
    cfg = _config()
    whole, m1 = _run_policy(cfg, "abpo", _host_batch(accum=1), ONE)
    split2, m2 = _run_policy(cfg, "abpo", _host_batch(accum=2), ONE)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
    _assert_close(whole, split2, rtol=1e-4, atol=2e-6)  # float32 summation order only


def test_non_finite_update_is_skipped_and_counted():
    cfg = _config()
    cfg.loss.rewards = ("format", "outcome", "simulator")
    batch = _host_batch()
    batch.sim_reward[0, 0, :] = np.nan  # a corrupt reward poisons the group's advantages
    mesh, split, params, frozen = _model_state(cfg, ONE)
    before = [np.asarray(x) for x in jax.tree.leaves(params)]
    state, metrics = _run_policy(cfg, "abpo", batch, ONE)
    assert metrics["finite"] == 0.0 and int(state["skipped"]) == 1 and int(state["step"]) == 1
    for x, y in zip(before, _leaves(state)):
        np.testing.assert_array_equal(x, y)


def test_ppo_epochs_reuse_the_batch_off_policy():
    """mu = 2: a second update on the same rollouts, now with rho != 1 (the clip can fire)."""
    cfg = _config()
    batch = _host_batch()
    one, m1 = _run_policy(cfg, "abpo", batch, ONE)
    cfg.train.ppo_epochs = 2
    two, m2 = _run_policy(cfg, "abpo", batch, ONE)
    assert m2["finite"] == 1.0
    assert max(np.abs(x - y).max() for x, y in zip(_leaves(one), _leaves(two))) > 1e-6
    assert m1["loss"] != m2["loss"]          # the reported loss is the second epoch's


def test_sft_step_reduces_target_nll():
    cfg = _config()
    mesh, split, params, frozen = _model_state(cfg, ONE)
    tx = st.make_optimizer(cfg, 1.0, 10)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    batch = _host_batch()
    fn = jax.jit(make_sft_step(split, tx), donate_argnums=0)
    losses = []
    for _ in range(5):
        state, m = fn(state, frozen, batch.cands, batch.target, np.ones((1, B), np.float32))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.1, losses


def test_sharded_step_equals_single_device_and_fsdp_divides_state():
    batch = _host_batch(accum=1)
    single, m1 = _run_policy(_config(), "abpo", batch, ONE, steps=2)
    sharded, m8 = _run_policy(_config((2, 2, 2)), "abpo", batch, jax.devices()[:8], steps=2)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-4, atol=1e-6)
    _assert_close(single, sharded, rtol=1e-4, atol=1e-5)

    # Params + optimizer state per device under pure FSDP (1, 8, 1) ~ total / 8.
    fsdp_cfg = _config((1, 8, 1), optimizer="adamw")
    mesh, split, params, frozen = _model_state(fsdp_cfg, jax.devices()[:8])
    tx = st.make_optimizer(fsdp_cfg, 1e-2, 10)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    per_device = st.bytes_per_device(state)
    assert per_device <= total / 8 * 1.25, (per_device, total)
    settings = _settings(fsdp_cfg, "abpo")
    micro = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
    sh_state = jax.tree.map(lambda x: x.sharding, state)
    placed = jax.tree.map(lambda x: jax.device_put(x, micro), batch)
    fn = jax.jit(make_policy_step(split, tx, settings), donate_argnums=0,
                 in_shardings=(sh_state, jax.tree.map(lambda x: x.sharding, frozen), sh_state[
                     "params"], micro, st.replicated(mesh)),
                 out_shardings=(sh_state, st.replicated(mesh)))
    with jax.set_mesh(mesh):
        compiled = fn.lower(state, frozen, params, placed,
                            jax.random.key(0)).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("backend gives no memory analysis")
    state_bytes = total + sum(x.nbytes for x in jax.tree.leaves(params))  # state + ref params
    batch_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(batch))
    # Arguments per device: ~1/8 of (state + ref) plus this device's slice of the batch.
    assert stats.argument_size_in_bytes <= state_bytes / 8 * 1.3 + batch_bytes / 8 * 1.3 + 4096, (
        stats.argument_size_in_bytes, state_bytes, batch_bytes)


def test_ips_sft_step_weighs_clicked_rows_by_snips_weights():
    """ips_sft = SFT on the clicked exposures with row weights y w~ (w~ from the step's own
    pi_old over the whole batch, in log space): the step equals the plain SFT step given those
    weights by hand; with snips off it is sft_positive's step exactly."""
    cfg = _config()
    cfg.rounds.methods = tuple(cfg.methods)   # every entry of the method table
    mesh, split, params, frozen = _model_state(cfg, ONE)
    tx = st.make_optimizer(cfg, 1.0, 10)
    batch = _host_batch(accum=2)          # w~'s mean spans both micro-batches
    log_p = np.log(batch.propensity)
    y = batch.outcome.astype(np.float32)

    def run(step, *args):
        state = init_step_state(jax.tree.map(jnp.copy, params),
                                st.init_opt_state(tx, params, mesh))
        return _leaves(jax.jit(step)(state, frozen, batch.cands, batch.exposed, *args)[0])

    ips = _settings(cfg, "ips_sft")
    got = run(make_sft_step(split, tx, ips), y, log_p)
    old = np.stack([np.asarray(score_candidates(split.merge(params, frozen),
                                                jax.tree.map(lambda x: x[i], batch.cands))[0])
                    for i in range(2)])
    log_w = np.take_along_axis(old, batch.exposed[..., None], -1)[..., 0] - log_p
    w = np.exp(log_w) / np.exp(log_w).mean()
    by_hand = run(make_sft_step(split, tx), (y * np.minimum(w, ips.snips_clip)).astype(np.float32))
    for a, b in zip(got, by_hand):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(got, _leaves({"params": params}))) > 1e-4
    plain = run(make_sft_step(split, tx), y)
    off = run(make_sft_step(split, tx, ips.replace(snips="off")), y, log_p)
    for a, b in zip(off, plain):
        np.testing.assert_array_equal(a, b)
    assert _settings(cfg, "sft_positive").snips == "off"


def test_banditnet_runs_without_rollouts():
    cfg = _config()
    cfg.rounds.methods = tuple(cfg.methods)   # every entry of the method table
    state, m = _run_policy(cfg, "banditnet", _host_batch(), ONE)
    assert m["finite"] == 1.0 and m["kl"] == 0.0
    assert max(np.abs(a - b).max() for a, b in
               zip(_leaves(state), _leaves({"params": _model_state(cfg, ONE)[2]}))) > 1e-6


def test_bf16_matmul_step_matches_the_float32_step():
    """The benchmark's bf16 step (`model.matmul_precision=bfloat16` with remat of the
    non-matmuls, bench_train_step.FAST) against float32: one SGD step on the same batch.
    Each product on the path (q, k, v, o, gate, up, down, the two attention products and the
    LM head: 10 in this 1-layer model) rounds its two operands to bfloat16, relative error
    <= u = 2**-8 each; independent roundings add like a random walk, sqrt(10) 2 u ~ 2.5e-2 of
    the scale of the log-probs, the loss and the gradients; we allow 2x that."""
    bound = 2 * np.sqrt(10) * 2 * 2.0 ** -8
    cfg = _config()
    results = []
    for fast in ({}, {"matmul_precision": "bfloat16", "remat": True,
                      "remat_policy": "dots_with_no_batch_dims_saveable"}):
        mesh = st.build_mesh(cfg, ONE)
        mc = ModelConfig.tiny(40, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                              intermediate_size=64, **fast)
        model = create_sharded(lambda: Decoder(mc, rngs=nnx.Rngs(0)), mesh)   # noqa: B023
        split, params, frozen = st.place_model(model, cfg, mesh)
        tx = st.make_optimizer(cfg, cfg.train.learning_rate, 10)
        before = [np.asarray(x) for x in jax.tree.leaves(params)]
        state = init_step_state(params, st.init_opt_state(tx, params, mesh))
        ref = jax.tree.map(jnp.copy, params)
        step = jax.jit(make_policy_step(split, tx, _settings(cfg, "abpo")))
        with jax.set_mesh(mesh):
            state, m = step(state, frozen, ref, _host_batch(), jax.random.key(1))
        update = np.concatenate([np.ravel(np.asarray(a) - b) for a, b in
                                 zip(jax.tree.leaves(state["params"]), before)])
        results.append((float(m["loss"]), float(m["grad_norm"]), update))
    (loss32, norm32, up32), (loss16, norm16, up16) = results
    assert abs(loss16 - loss32) <= bound * abs(loss32)
    assert abs(norm16 - norm32) <= bound * norm32
    cosine = up16 @ up32 / (np.linalg.norm(up16) * np.linalg.norm(up32))
    assert cosine > 1 - bound
    # the bf16 step really rounds (not silently float32): beyond float32 summation noise
    assert np.abs(up16 - up32).max() > 1e-4 * np.abs(up32).max()


def _reference_case():
    """(pi_ref's params away from the policy's, a batch carrying pi_ref's log pi~ as deploy logs
    it: scored in another batch shape, one request per call, run(batch, from_log) ->
    (state, metrics) of one abpo step)."""
    cfg = _config()
    mesh, split, params, frozen = _model_state(cfg, ONE)
    # away from the policy: the KL term and its gradient are not ~0 (k3's is 0 at pi_ref)
    noise = jax.random.split(jax.random.key(7), len(jax.tree.leaves(params)))
    ref = jax.tree.unflatten(jax.tree.structure(params), [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(jax.tree.leaves(params), noise)])
    assert _settings(cfg, "abpo").beta > 0
    batch = _host_batch()
    one = jax.jit(lambda c: score_candidates(split.merge(ref, frozen), c)[0])
    rows = jax.tree.map(lambda x: np.asarray(x).reshape((B, 1) + np.shape(x)[2:]), batch.cands)
    batch.policy_logp = np.concatenate([np.asarray(one(jax.tree.map(lambda x: x[i], rows)))
                                        for i in range(B)]).reshape(1, B, C)
    return ref, batch, lambda b, from_log: _run_policy(cfg, "abpo", b, ONE, ref=ref,
                                                        ref_from_log=from_log)


def test_ref_logp_from_the_log_equals_the_reference_forward():
    """train.ref_logp=log: log pi~_ref read from the deploy-time scores the records carry gives
    the step the forward of pi_ref gives. Those scores come from another batch shape (rows
    scored one by one), so they may differ from the step's forward by float32 rounding of the
    summed token log-probs (a few ulp of values ~ 1-10), which pass linearly through one SGD
    step: seen ~5e-7 relative on loss and KL, ~5e-9 absolute on params; allowed rtol 1e-5 and
    atol 1e-7 (20x that: another CPU's kernels round differently), far below what a wrong
    reference moves (checked last)."""
    _, batch, run = _reference_case()
    s_fwd, m_fwd = run(batch, False)
    s_log, m_log = run(batch, True)
    assert m_fwd["kl"] > 1e-4, m_fwd["kl"]          # the reference really weighs in
    for key in ("loss", "grad_norm", "kl"):
        np.testing.assert_allclose(m_log[key], m_fwd[key], rtol=1e-5, err_msg=key)
    _assert_close(s_log, s_fwd, rtol=1e-5, atol=1e-7)
    # and the logged values are what the step used: another reference moves the KL
    shifted = dataclasses.replace(batch, policy_logp=batch.policy_logp + np.float32(
        np.random.default_rng(0).normal(0, 0.3, batch.policy_logp.shape)))
    _, m_shifted = run(shifted, True)
    assert abs(m_shifted["kl"] - m_fwd["kl"]) > 1e-3 * abs(m_fwd["kl"])


def test_ref_logp_falls_back_to_the_forward_for_records_without_it():
    """A batch holding a record without the logged log pi~ (NaN: an imported log, or one written
    before the key existed) takes pi_ref from the forward, inside the same program (no
    recompile): the forward step's update, within the tolerance of the test above (the
    forward inside `lax.cond` may fuse differently: float32 rounding only). A padding row
    (valid = 0) without it does not: its NaNs never reach the loss."""
    _, batch, run = _reference_case()
    s_fwd, m_fwd = run(batch, False)
    zeros = dataclasses.replace(batch, policy_logp=np.zeros_like(batch.policy_logp))
    _, m_zeros = run(zeros, True)   # every row "logged": the zeros are used
    assert abs(m_zeros["kl"] - m_fwd["kl"]) > 1e-3 * abs(m_fwd["kl"])
    zeros.policy_logp[0, 3] = np.nan        # one valid record without it
    s_fb, m_fb = run(zeros, True)
    for key in ("loss", "grad_norm", "kl"):
        np.testing.assert_allclose(m_fb[key], m_fwd[key], rtol=1e-5, err_msg=key)
    _assert_close(s_fb, s_fwd, rtol=1e-5, atol=1e-7)

    pad = dataclasses.replace(batch, valid=batch.valid.copy(),
                              policy_logp=batch.policy_logp.copy())
    pad.valid[0, 3] = 0.0
    pad.policy_logp[0, 3] = np.nan
    s_pad, m_pad = run(pad, True)
    s_pad_fwd, m_pad_fwd = run(pad, False)
    assert m_pad["finite"] == 1.0
    np.testing.assert_allclose(m_pad["loss"], m_pad_fwd["loss"], rtol=1e-5)
    _assert_close(s_pad, s_pad_fwd, rtol=1e-5, atol=1e-7)


def test_ref_logp_from_the_log_only_where_it_is_pi_ref():
    """The log's log pi~ is pi_ref's only in item mode, with pi_ref = pi_{k-1} and pi_{k-1}
    deploying (scoring) the round; a config recorded before the switch keeps the forward."""
    from abpo_jax.train.experiment import ref_logp_from_log

    cfg = _config()
    assert cfg.train.ref_logp == "log" and ref_logp_from_log(cfg)
    for field, value in (("train.ref_logp", "forward"), ("rounds.reference", "initial"),
                         ("policy.logging_policy", "stale"), ("policy.mode", "text")):
        c = _config()
        section, name = field.split(".")
        c[section][name] = value
        assert not ref_logp_from_log(c), field
    c = _config()
    c.policy.logging_policy = "uniform"   # pi_{k-1} still scores the round; its scores logged
    assert ref_logp_from_log(c)
    del c.train["ref_logp"]
    assert not ref_logp_from_log(c)
