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


def FEATURIZE(r: LogRecord) -> dict[str, np.ndarray]:
    """A small fixed-shape featurizer (C = 5 candidates, H = 4 context items, zero-padded)."""
    cands, context = np.zeros(5, np.int32), np.zeros(4, np.int32)
    cands[:len(r.candidate_item_ids)] = r.candidate_item_ids
    context[:len(r.context_item_ids[-4:])] = r.context_item_ids[-4:]
    return {"user": np.int32(r.user_id), "candidates": cands, "context": context,
            "exposed_index": np.int32(r.exposed_index), "propensity": np.float32(r.propensity),
            "outcome": np.int32(r.outcome)}


def users(it) -> list[int]:
    return [int(u) for batch in it for u in batch["user"]]


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
