"""Run bookkeeping: RunState <-> checkpoint metadata, the RNG stream table, config rejections."""

import jax
import numpy as np
import pytest

from abpo_jax.config import ConfigError, base_config, validate
from abpo_jax.train.checkpoint import RunState
from abpo_jax.train.seeds import RngStreams


def test_run_state_round_trips_through_meta():
    rs = RunState("update", 2, "grpo", 5)
    meta = rs.to_meta(train_hist=[{"loss": 1.0}])
    assert meta == {"phase": "update", "round": 2, "method": "grpo", "step": 5,
                    "train_hist": [{"loss": 1.0}]}
    assert RunState.from_meta(meta) == rs
    assert RunState.from_meta({}) == RunState("start", 0, "", 0)


def test_rng_streams_keep_the_historical_seeds():
    s = RngStreams(3)
    assert (s.model_init, s.lora_init, s.sft_order, s.logging) == (3, 4, [3, 7], 4)
    assert s.log_shuffle(2) == 3002
    want = jax.random.fold_in(jax.random.key(3), 2)
    np.testing.assert_array_equal(jax.random.key_data(s.train_round(2)),
                                  jax.random.key_data(want))


@pytest.mark.parametrize("fields,message", [
    ({"policy.candidates": "catalogue"}, r"policy\.candidates='catalogue' needs config\.policy\.mode='text'"),
    ({"policy.mode": "text", "policy.logging_popularity": 1.0}, r"logging_popularity=1\.0 is item mode only"),
    ({"policy.mode": "text", "train.ppo_epochs": 2}, r"ppo_epochs and config\.train\.grad_accum must be 1"),
    ({"policy.mode": "text", "policy.candidates": "catalogue",
      "loss.rewards": ("format", "simulator")}, r"contains 'simulator', which catalogue mode"),
    ({"policy.mode": "text", "policy.candidates": "catalogue", "policy.item_text": "title",
      "model.source": "tiny"}, r"item_text='title' needs a pretrained model"),
    ({"policy.mode": "text", "policy.top_p": 0.0}, r"config\.policy\.top_p=0\.0 is out of range"),
])
def test_text_mode_combinations_that_are_not_defined_fail_naming_the_field(fields, message):
    c = base_config()
    for path, value in fields.items():
        section, name = path.split(".")
        c[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(c)
    c = base_config()
    c.policy.mode, c.policy.candidates = "text", "catalogue"
    validate(c)   # the defined combination passes
