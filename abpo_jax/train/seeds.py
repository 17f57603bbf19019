"""The named RNG streams of a continual run, all derived from `config.seed` in one table.

    stream        used by                                   value
    model_init    nnx.Rngs of the tiny decoder               seed
    lora_init     nnx.Rngs of the LoRA factors               seed + 1
    sft_order     numpy Generator ordering warm examples     [seed, 7]
    logging       logging policy (folds in round, then 0/1)  seed + 1
    log_shuffle   grain shuffle of round k's log             seed * 1000 + k
    train_round   train-step key of round k (folds in step)  fold_in(key(seed), k)
    text_eval     text-mode evaluation samples of round k    fold_in(key(seed + 2), k)

Logging uses one stream for every method (common random numbers across methods). The data
splits and the simulator take `seed` itself (`data.splits`, `sim.users`). Changing any entry
changes every result of a run.
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class RngStreams:
    """The table above for one `seed`."""
    seed: int

    @property
    def model_init(self) -> int:
        return self.seed

    @property
    def lora_init(self) -> int:
        return self.seed + 1

    @property
    def sft_order(self) -> list[int]:
        return [self.seed, 7]

    @property
    def logging(self) -> int:
        return self.seed + 1

    def log_shuffle(self, round_index: int) -> int:
        return int(self.seed * 1000 + round_index)

    def train_round(self, round_index: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.seed), round_index)

    def text_eval(self, round_index: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.seed + 2), round_index)
