"""Train state: mesh, optimizer, and parameters + optimizer state born sharded.

The model is an NNX module split into (graphdef, trainable params, frozen rest). The trainable
part is `nnx.LoRAParam` when `model.lora.rank > 0`, else every `nnx.Param`. Shardings come from
the variables' logical-axis annotations (`models.sharding`); models are built born sharded
there (`create_sharded`, sharded loaders) and the optimizer state here with a jitted init whose
out_shardings follow the params (big_vision pattern).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from abpo_jax.models.sharding import make_mesh, set_rules, state_shardings


def build_mesh(config, devices: list | None = None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: all) sized by `config.mesh`
    (one axis may be -1 = fill); installs `config.mesh.rules` as the logical-axis table."""
    set_rules(config.mesh.get("rules"))
    return make_mesh(int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.tensor),
                     devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp — FSDP shards the batch as well."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def make_schedule(config, learning_rate: float, total_steps: int) -> optax.Schedule:
    """Constant, or linear warmup (`train.warmup_steps`) then cosine decay to 0."""
    warmup = int(config.train.warmup_steps)
    if config.train.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=0.0)
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup),
             optax.constant_schedule(learning_rate)], [warmup])
    return optax.constant_schedule(learning_rate)


def make_optimizer(config, learning_rate: float, total_steps: int
                   ) -> optax.GradientTransformation:
    """Global-norm clipping -> adamw | sgd with the configured schedule.

    Non-finite updates are not applied here: the train step skips them explicitly (and counts
    them), which keeps the optimizer state a plain pytree with the params' shardings.
    """
    schedule = make_schedule(config, learning_rate, total_steps)
    if config.train.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=float(config.train.weight_decay))
    else:
        opt = optax.sgd(schedule)
    parts = [opt]
    if config.train.grad_clip and config.train.grad_clip > 0:
        parts.insert(0, optax.clip_by_global_norm(float(config.train.grad_clip)))
    return optax.chain(*parts)


def trainable_filter(config) -> Any:
    """What the optimizer updates: LoRA factors when `model.lora.rank > 0`, else all params."""
    return nnx.LoRAParam if int(config.model.lora.rank) > 0 else nnx.Param


@dataclasses.dataclass(frozen=True)
class ModelSplit:
    """A model as graphdef + the trainable filter; params live outside (functional steps)."""
    graphdef: Any
    trainable: Any

    def merge(self, params: Any, frozen: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, params, frozen)


def split_model(model: nnx.Module, config) -> tuple[ModelSplit, Any, Any]:
    """(ModelSplit, trainable params State, frozen State) of a built model."""
    trainable = trainable_filter(config)
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    return ModelSplit(graphdef, trainable), params, frozen


def shard_like(tree: Any, shardings: Any) -> Any:
    """device_put every leaf with its sharding (a no-op copy when already placed so)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def opt_state_shardings(tx: optax.GradientTransformation, params: Any,
                        param_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer-state shardings: moment trees follow their params, scalars are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_map_params(
        tx, lambda _, s: s, abstract, param_shardings,
        transform_non_params=lambda _: replicated(mesh))


def init_opt_state(tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """Optimizer state born sharded: jitted `tx.init` with out_shardings from the params'."""
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    out_sh = opt_state_shardings(tx, params, param_sh, mesh)
    return jax.jit(tx.init, out_shardings=out_sh)(params)


def place_model(model: nnx.Module, config, mesh: Mesh) -> tuple[ModelSplit, Any, Any]:
    """Split a built model into (ModelSplit, trainable params, frozen rest), each leaf placed
    with the sharding of its logical axes (models.sharding rules)."""
    split, params, frozen = split_model(model, config)
    params = shard_like(params, state_shardings(params, mesh))
    frozen = shard_like(frozen, state_shardings(frozen, mesh))
    return split, params, frozen


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a placed tree — Orbax restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def bytes_per_device(tree: Any) -> int:
    """Largest per-device footprint (bytes) of a placed tree — checks that FSDP divides it."""
    per_device: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values()) if per_device else 0
