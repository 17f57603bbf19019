"""grain input pipeline over committed bandit-log rounds.

    source(ArrayRecord shards) -> shuffle(seed) -> shard by process -> decode + featurize
    -> batch(drop_remainder) -> iterator with get_state()/set_state()

Every process shuffles with the same seed and takes every `process_count`-th element of the
shuffled order, so processes see disjoint slices whose union is the whole log. The iterator
state is checkpointable with Orbax (`grain.checkpoint.CheckpointSave/Restore`).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import grain
import numpy as np

from abpo_jax.data.logs import LogRecord

Featurize = Callable[[LogRecord], dict[str, np.ndarray]]
FeaturizeBatch = Callable[[list[LogRecord]], dict[str, np.ndarray]]


def _process_index_and_count(process_index: int | None,
                             process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax   # only when the caller did not say: tests simulate processes explicitly
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return process_index, process_count


def log_dataset(shards: Sequence[str | os.PathLike], *, batch_size: int, seed: int,
                featurize: Featurize, process_index: int | None = None,
                process_count: int | None = None, num_epochs: int = 1,
                drop_remainder: bool = True,
                featurize_batch: FeaturizeBatch | None = None) -> grain.IterDataset:
    """Shuffled, process-sharded, featurized, batched dataset over ArrayRecord shards.

    Args:
      shards: shard paths (e.g. `RoundLog.shard_paths`, possibly of several rounds).
      batch_size: per-process batch size.
      seed: shuffle seed (same on every process; epochs are reshuffled).
      featurize: record -> dict of numpy arrays (e.g. a mode's `featurize`, `train/modes/`).
      featurize_batch: records -> the stacked dict of their `featurize` outputs, computed over
        the whole batch at once (vectorised); used instead of `featurize` when given.
      process_index / process_count: this process's slot; default `jax.process_index/count()`.
      num_epochs: passes over the data.
      drop_remainder: drop the last short batch (static shapes for jit); the per-process slices
        are also cut to equal length so every process yields the same number of batches.
    """
    index, count = _process_index_and_count(process_index, process_count)
    source = grain.sources.ArrayRecordDataSource([os.fspath(s) for s in shards])
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    if num_epochs > 1:
        ds = ds.repeat(num_epochs)   # before slicing: the shuffle then reshuffles each epoch
    if drop_remainder:
        ds = ds[:len(ds) - len(ds) % count]
    ds = ds[index::count]
    if featurize_batch is not None:   # decode per record, featurize per batch
        ds = ds.map(LogRecord.from_bytes)
        return ds.batch(batch_size, drop_remainder=drop_remainder,
                        batch_fn=lambda recs: featurize_batch(list(recs))).to_iter_dataset()
    ds = ds.map(lambda data: featurize(LogRecord.from_bytes(data)))
    return ds.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset()


def log_iterator(shards: Sequence[str | os.PathLike], **kwargs) -> grain.DatasetIterator:
    """`iter(log_dataset(...))`: yields batches; has `get_state()` / `set_state()`."""
    return iter(log_dataset(shards, **kwargs))
