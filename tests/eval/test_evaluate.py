"""Per-round evaluation numbers on hand-computed cases."""

import numpy as np

from abpo_jax.eval.evaluate import log_metrics, policy_metrics, snips_ctr


def test_policy_metrics_hand_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    cands = np.array([[5, 6, 7], [7, 8, 9]])
    out = policy_metrics(np.log(probs), cands, np.array([0, 1]), num_items=10,
                         item_popularity=np.arange(10.0), exposed_items=np.array([5, 5]),
                         ks=(1, 2), click_probs=np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    # user 0 ranks its target first; user 1's target ties with candidate 0 and loses the tie.
    assert out["hr@1"] == 0.5 and out["hr@2"] == 0.5
    assert out["exposed_share"] == 0.5           # top-1 items 5 (exposed) and 9
    assert np.isclose(out["coverage"], 0.2)      # 2 distinct of 10
    assert np.isclose(out["arp"], (5 + 9) / 2)
    assert np.isclose(out["sim_ctr"], (0.7 * 1.0 + 0.8 * 0.5) / 2)
    # KL(policy item mass || exposures): mass on 5,6,7,8,9 vs all exposure on item 5.
    assert out["kl_exposure"] > 1.0


def test_snips_estimate_and_bias():
    assert np.isclose(snips_ctr(np.log([0.5, 0.25]), np.array([0.5, 0.5]), np.array([1, 0])),
                      1 / 1.5)
    lp = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    out = log_metrics(lp, np.array([0, 1]), np.array([0.5, 0.5]), np.array([1, 0]),
                      np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert np.isclose(out["snips_ctr"], 1.0 / (1.0 + 1.5))  # w = (1, 1.5), y = (1, 0)
    assert np.isclose(out["log_sim_ctr"], 0.25)
    assert np.isclose(out["snips_bias"], out["snips_ctr"] - 0.25)
