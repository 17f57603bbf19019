"""ABPO / GRPO policy loss: hand-computed values on small arrays; settings and registry."""
import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

from abpo_jax.config import base_config
from abpo_jax.losses import LossSettings, get_policy_loss, policy_loss, register_policy_loss

L = math.log
# B=1, G=2, T=2; rollout 2's second token is padding (garbage value on purpose)
LOGP = jnp.array([[[L(0.5), L(0.5)], [L(0.25), jnp.nan]]])
OLD = jnp.array([[[L(0.4), L(0.5)], [L(0.5), -jnp.inf]]])
MASK = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])
ADV = jnp.array([[1.0, -1.0]])
D = jnp.array([[[0.5, -0.5], [0.0, 0.0]]])  # ref - logp
ANCHOR = dict(anchor_logp=jnp.array([[L(0.5), L(0.5), 0.0]]), anchor_mask=jnp.array([[1, 1, 0]]),
              anchor_advantage=jnp.array([2.0]), anchor_weight=jnp.array([0.5]))
# per-token PPO terms by hand: ratios 1.25 (A=+1, clipped to 1.2), 1.0, 0.5 (A=-1, clipped 0.8)
PG = [-1.2, -1.0, 0.8]
ANCHOR_TOKEN = -0.5 * 2.0 * L(0.5)          # -w~ A_0 log pi, two tokens
K3 = [math.exp(0.5) - 1.5, math.exp(-0.5) - 0.5, 0.0]


def _settings(**kw):
    return LossSettings(**{"beta": 0.0, "epsilon_low": 0.2, "epsilon_high": 0.2, **kw})


@pytest.mark.parametrize("aggregation,expect_sum,expect_denom", [
    ("token_mean", sum(PG), 3.0),
    ("sequence_mean", (PG[0] + PG[1]) / 2 + PG[2], 2.0),
    ("constant", sum(PG), 2 * 4.0),
])
def test_rollout_terms_by_hand(aggregation, expect_sum, expect_denom):
    s, d, metrics = policy_loss(_settings(anchor="off", aggregation=aggregation,
                                          max_completion_length=4),
                                logp=LOGP, old_logp=OLD, mask=MASK, advantages=ADV)
    np.testing.assert_allclose([s, d], [expect_sum, expect_denom], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["mean_advantage"], 0.0, atol=1e-7)


@pytest.mark.parametrize("aggregation,expect_sum,expect_denom", [
    ("token_mean", sum(PG) + 2 * ANCHOR_TOKEN, 5.0),
    ("sequence_mean", (PG[0] + PG[1]) / 2 + PG[2] + ANCHOR_TOKEN, 3.0),
    ("constant", sum(PG) + 2 * ANCHOR_TOKEN, 3 * 4.0),
])
def test_anchor_term_by_hand(aggregation, expect_sum, expect_denom):
    s, d, metrics = policy_loss(_settings(anchor="full", aggregation=aggregation,
                                          max_completion_length=4),
                                logp=LOGP, old_logp=OLD, mask=MASK, advantages=ADV, **ANCHOR)
    np.testing.assert_allclose([s, d], [expect_sum, expect_denom], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["mean_weight"], 0.5)
    np.testing.assert_allclose(metrics["anchor_advantage"], 2.0)


@pytest.mark.parametrize("estimator,kl", [("k3", K3), ("k1", [-0.5, 0.5, 0.0])])
def test_kl_on_rollouts_only_by_hand(estimator, kl):
    s, d, metrics = policy_loss(_settings(anchor="full", beta=0.1, kl_estimator=estimator),
                                logp=LOGP, old_logp=OLD, ref_logp=LOGP + D, mask=MASK,
                                advantages=ADV, **ANCHOR)
    np.testing.assert_allclose(s, sum(PG) + 2 * ANCHOR_TOKEN + 0.1 * sum(kl), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d, 5.0)
    np.testing.assert_allclose(metrics["kl"], sum(kl) / 3, rtol=1e-6)


def test_settings_mirror_config_and_registry():
    loss_cfg = base_config().loss
    s = LossSettings.from_mapping(loss_cfg)
    for key in loss_cfg.keys():
        assert getattr(s, key) == (tuple(loss_cfg[key]) if key == "rewards" else loss_cfg[key]), key
    assert s == LossSettings()
    assert LossSettings.from_mapping({"anchor": "off", "unknown": 1}).anchor == "off"
    hash(s)  # usable as a static jit argument
    with pytest.raises(ValueError, match="loss.aggregation"):
        LossSettings(aggregation="mean")
    with pytest.raises(KeyError, match="registered: abpo, grpo"):
        get_policy_loss("ppo")

    @register_policy_loss("half_abpo_for_test")
    def half(settings, **inputs):
        s_, d_, m_ = policy_loss(settings, **inputs)
        return s_ / 2, d_, m_
    assert get_policy_loss("half_abpo_for_test") is half
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("abpo")(half)
    assert {f.name for f in dataclasses.fields(LossSettings)} >= set(loss_cfg.keys())


def test_losses_layer_imports_nothing_of_the_package():
    """losses/ is the bottom layer: only jax/numpy/stdlib and abpo_jax.losses itself."""
    import ast
    import pathlib

    import abpo_jax.losses as pkg
    for path in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("abpo_jax") or name.startswith("abpo_jax.losses"), (
                    f"{path.name}:{node.lineno} imports {name}")
                assert name.split(".")[0] not in ("torch", "transformers", "trl", "flax"), name
