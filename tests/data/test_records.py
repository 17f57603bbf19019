"""The record extras schema (data/records.py): accessors never invent a value, the ingest check
quarantines a record without a key the run needs, imported logs without click_probs evaluate."""

import json

import numpy as np
import pytest

from abpo_jax.data import log_store, logs, records
from abpo_jax.data.logs import LogRecord
from abpo_jax.eval.evaluate import log_metrics

from .logs_helpers import NUM_ITEMS, good_record


def _record(i: int, **extras) -> LogRecord:
    return logs.validate_record(good_record(i, **extras))


def test_accessors_return_none_for_absent_keys():
    bare = _record(1)
    assert records.click_probs(bare) is None and records.anchor_certainty(bare) is None
    assert records.completion(bare) is None and records.target(bare) == -1
    full = _record(2, click_probs=[0.1, 0.2, 0.3, 0.4, 0.5], anchor_certainty=0.25,
                   target_item_id=4)
    np.testing.assert_array_equal(records.click_probs(full),
                                  np.float32([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert records.anchor_certainty(full) == 0.25
    ex = records.example_from_record(full)
    assert ex.target == 4 and ex.target_index == full.candidate_item_ids.index(4)


def test_required_keys_follow_the_loss_settings():
    assert records.required(("outcome",), "batch") == ()
    assert records.required(("outcome", "simulator"), "round") == (records.CLICK_PROBS,
                                                                   records.ANCHOR_CERTAINTY)
    assert set(records.required(("outcome",), "round")) <= set(records.EXTRAS)


def test_ingest_quarantines_records_missing_a_required_key(tmp_path):
    good = [good_record(i, anchor_certainty=0.5) for i in range(8)]
    bad = good_record(99)
    manifest = log_store.write_round(good + [bad], tmp_path, 1, catalogue=NUM_ITEMS,
                                     max_bad_fraction=0.5, report=None,
                                     require_extras=(records.ANCHOR_CERTAINTY,))
    assert manifest["num_records"] == 8
    assert manifest["quarantine"] == {logs.MISSING_FIELD: 1}
    quarantined = [json.loads(line) for line in
                   open(log_store.round_path(tmp_path, 1) / log_store.QUARANTINE)]
    assert records.ANCHOR_CERTAINTY in quarantined[0]["detail"]
    # without the requirement the same record is kept
    manifest = log_store.write_round([bad], tmp_path / "free", 1, catalogue=NUM_ITEMS,
                                     report=None)
    assert manifest["num_records"] == 1


def test_item_featurize_refuses_a_missing_required_key():
    from abpo_jax.train.modes.item import featurize

    with pytest.raises(ValueError, match="anchor_certainty"):
        featurize(_record(3), _StubEncoder(), required=(records.ANCHOR_CERTAINTY,))
    out = featurize(_record(3), _StubEncoder())
    assert np.isnan(out["round_certainty"]) and np.isnan(out["sim_reward"]).all()


def test_item_featurize_reads_the_logged_policy_logp_exactly():
    """The deployed policy's log pi~ comes back as the float32 values it was logged from (JSON
    keeps a float32's double exactly; -inf too); absent: NaN, and the step then computes
    pi_ref's log-probs with a forward."""
    from abpo_jax.train.modes.item import featurize

    own = np.float32([-0.1, -2.5, -1e-7, -30.25, -np.inf]) * np.float32(np.pi)   # no short decimal form
    rec = _record(4, policy_logp=own.tolist())
    back = logs.validate_record(LogRecord.from_bytes(rec.to_bytes()))
    np.testing.assert_array_equal(featurize(back, _StubEncoder())["policy_logp"], own)
    assert np.isnan(featurize(_record(4), _StubEncoder())["policy_logp"]).all()


class _StubEncoder:
    """The fields `featurize` reads of `Encoder.encode` (one candidate list of 5)."""

    def encode(self, examples):
        from types import SimpleNamespace
        z = np.zeros((1, 4), np.int32)
        packed = SimpleNamespace(tokens=z, positions=z, segments=z, prompt_lengths=z[:, 0],
                                 completion_tokens=z, completion_mask=z)
        return SimpleNamespace(packed=packed, item_mask=z, valid=np.ones((1, 5), bool))


def test_log_metrics_without_click_probs_is_snips_only():
    lp = np.log(np.full((4, 5), 0.2))
    out = log_metrics(lp, np.array([0, 1, 2, 3]), np.full(4, 0.2), np.array([1, 0, 1, 0]),
                      None)
    assert out == {"snips_ctr": 0.5}
    full = log_metrics(lp, np.array([0, 1, 2, 3]), np.full(4, 0.2), np.array([1, 0, 1, 0]),
                       np.full((4, 5), 0.3))
    assert full["log_sim_ctr"] == pytest.approx(0.3) and full["snips_bias"] == pytest.approx(0.2)
