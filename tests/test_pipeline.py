"""grain pipeline over log rounds: featurizer, process sharding, epochs, checkpointed state."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from abpo_jax.data import log_store, pipeline
from abpo_jax.data.logs import LogRecord

N = 103


def record(i: int) -> LogRecord:
    cands = tuple(range(i % 10, i % 10 + 3 + i % 3))          # 3..5 candidates
    return LogRecord(request_id=f"q{i}", round=2, policy_revision="r", user_id=i,
                     context_item_ids=tuple(range(100 + i % 7)), candidate_item_ids=cands,
                     exposed_item_id=cands[-1], propensity=0.5, outcome=i % 2,
                     timestamp=float(i))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    logs_dir = tmp_path_factory.mktemp("logs")
    log_store.write_round([record(i) for i in range(N)], logs_dir, 2, records_per_shard=40,
                          report=None)
    log = log_store.open_round(log_store.round_path(logs_dir, 2))
    assert len(log.shard_paths) == 3
    return log.shard_paths


FEATURIZE = pipeline.numeric_featurizer(history_len=4, num_candidates=5)


def users(it) -> list[int]:
    return [int(u) for batch in it for u in batch["user"]]


def test_numeric_featurizer_hand_checked():
    r = LogRecord(request_id="x", round=1, policy_revision="r", user_id=7,
                  context_item_ids=(11, 12), candidate_item_ids=(5, 9, 3),
                  exposed_item_id=3, propensity=0.25, outcome=1, timestamp=0.0)
    f = pipeline.numeric_featurizer(history_len=3, num_candidates=4)(r)
    np.testing.assert_array_equal(f["candidates"], [5, 9, 3, 0])
    np.testing.assert_array_equal(f["candidate_mask"], [True, True, True, False])
    np.testing.assert_array_equal(f["context"], [11, 12, 0])
    np.testing.assert_array_equal(f["context_mask"], [True, True, False])
    assert f["exposed_index"] == 2 and f["propensity"] == np.float32(0.25) and f["outcome"] == 1
    long = pipeline.numeric_featurizer(history_len=2, num_candidates=4)(
        r.__class__(**{**r.__dict__, "context_item_ids": (1, 2, 3, 4)}))
    np.testing.assert_array_equal(long["context"], [3, 4])            # most recent H
    with pytest.raises(ValueError, match="num_candidates"):
        pipeline.numeric_featurizer(history_len=2, num_candidates=2)(r)


def test_batches_are_featurized_records(shards):
    it = pipeline.log_iterator(shards, batch_size=8, seed=0, featurize=FEATURIZE,
                               process_index=0, process_count=1)
    batch = next(it)
    assert batch["candidates"].shape == (8, 5) and batch["context"].shape == (8, 4)
    for row in range(8):
        expected = FEATURIZE(record(int(batch["user"][row])))
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key][row], value)


def test_two_processes_disjoint_and_complete(shards):
    seen = [users(pipeline.log_iterator(shards, batch_size=5, seed=3, featurize=FEATURIZE,
                                        process_index=p, process_count=2,
                                        drop_remainder=False)) for p in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N))
    assert seen[0] != sorted(seen[0])                                    # shuffled
    # With drop_remainder both processes run the same number of full batches.
    counts = [len(list(pipeline.log_iterator(shards, batch_size=5, seed=3, featurize=FEATURIZE,
                                             process_index=p, process_count=2)))
              for p in range(2)]
    assert counts == [N // 2 // 5] * 2


def test_seeded_and_epochs_reshuffled(shards):
    kw = dict(batch_size=1, featurize=FEATURIZE, process_index=0, process_count=1,
              drop_remainder=False)
    a = users(pipeline.log_iterator(shards, seed=5, **kw))
    assert a == users(pipeline.log_iterator(shards, seed=5, **kw))
    assert a != users(pipeline.log_iterator(shards, seed=6, **kw))
    two = users(pipeline.log_iterator(shards, seed=5, num_epochs=2, **kw))
    assert two[:N] == a and sorted(two[N:]) == list(range(N)) and two[N:] != a


def test_restored_state_continues_with_next_batch(shards, tmp_path):
    kw = dict(batch_size=4, seed=1, featurize=FEATURIZE, process_index=1, process_count=2)
    it = pipeline.log_iterator(shards, **kw)
    for _ in range(3):
        next(it)
    state = it.get_state()
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    manager.save(3, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = [next(it) for _ in range(2)]

    fresh = pipeline.log_iterator(shards, **kw)
    fresh.set_state(state)
    restored = pipeline.log_iterator(shards, **kw)
    manager.restore(3, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointRestore(restored)))
    for candidate in (fresh, restored):
        for want in expected:
            got = next(candidate)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
