"""validation_metrics: the held-out columns on the next window (event rounds)."""
import numpy as np

from abpo_jax.eval.evaluate import validation_metrics


def test_validation_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    target = np.array([0, 1])                  # ranks 1 and 2
    click = np.array([[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]])   # replay: (1 - e) on the target
    out = validation_metrics(np.log(probs), target, click, ks=(1, 2))
    assert out["valid_hr@1"] == 0.5 and out["valid_hr@2"] == 1.0
    assert np.isclose(out["valid_ndcg@2"], (1.0 + 1.0 / np.log2(3)) / 2)
    assert np.isclose(out["valid_ctr"], 0.8 * (0.7 + 0.3) / 2)   # (1 - e) pi(target), mean
    assert set(validation_metrics(np.log(probs), target, click, (1,), prefix="x_")) == {
        "x_hr@1", "x_ndcg@1", "x_ctr"}
