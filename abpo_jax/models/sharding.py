"""Logical-axis sharding: rules, meshes, parameter shardings and sharded model construction.

Parameters and activations carry logical axis names (`vocab`, `embed`, `mlp`, `heads`,
`kv_heads`, `head_dim`, `batch`, `length`); the rules table `config.mesh.rules` (default
`LOGICAL_AXIS_RULES` of `config.py`) maps them to the mesh axes `("data", "fsdp", "tensor")`.
A run installs its table once (`set_rules`, called by `train.state.build_mesh`): every
function here that takes `rules=None` then uses it, as do the activation constraints traced
later inside the jitted steps. A mesh axis that does not divide a dimension is dropped for that
dimension (replicated), so tiny test models shard on any mesh.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from abpo_jax.config import LOGICAL_AXIS_RULES

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated): config data.
Rules = Sequence[tuple[str, Any]]
RULES: Rules = LOGICAL_AXIS_RULES
_active: dict[str, Any] = {"rules": RULES}


def set_rules(rules: Rules | None) -> None:
    """Install the process's rules table (`config.mesh.rules`; None: the default)."""
    if rules is None:
        table: Rules = RULES
    else:   # a CLI / JSON override may hold lists for tuples
        table = tuple((str(name), t if t is None or isinstance(t, str) else tuple(t))
                      for name, t in rules)
    _active["rules"] = table


def active_rules() -> Rules:
    """The rules table `rules=None` means (`set_rules`)."""
    return _active["rules"]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh over `devices` (default all); one -1 axis fills.

    Axes are `Auto` (GSPMD propagation), which is what the logical-rule constraints expect.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {sizes}: at most one axis may be -1 (fill)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh sizes {sizes}: {len(devices)} devices are not divisible by "
                             f"{known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {int(np.prod(sizes))} "
                         f"devices, {len(devices)} available")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def as_auto_mesh(mesh: Mesh) -> Mesh:
    """The same mesh with `Auto` axis types (jax.make_mesh defaults to `Explicit`)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None,
                    mesh_shape: dict[str, int], rules: Rules | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec on a mesh of `mesh_shape` (name -> size).

    Mesh axes missing from the mesh, already used by an earlier dimension, or not dividing the
    dimension are dropped (that dimension is then replicated over them).
    """
    table = dict(active_rules() if rules is None else rules)
    used: set[str] = set()
    out: list[Any] = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        dim = None if shape is None else shape[i]
        kept = []
        size = 1
        for t in targets:
            if t not in mesh_shape or t in used or mesh_shape[t] == 1:
                continue
            if dim is not None and dim % (size * mesh_shape[t]):
                continue
            kept.append(t)
            size *= mesh_shape[t]
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axes when a mesh is set (`jax.set_mesh`); else x."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(t == AxisType.Auto for t in mesh.axis_types):
        return x
    spec = logical_to_spec(axes, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def _variable_axes(var: nnx.Variable) -> tuple | None:
    meta = var.get_metadata()
    axes = meta.get("out_sharding")
    return tuple(axes) if axes else None


def state_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedSharding for every leaf of an nnx State from its logical `out_sharding` metadata.

    Leaves without annotations are replicated; `rules` default to the installed table.
    """
    mesh = as_auto_mesh(mesh)
    mesh_shape = dict(mesh.shape)

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            axes = _variable_axes(x)
            spec = (logical_to_spec(axes, value.shape, mesh_shape, rules) if axes
                    else PartitionSpec())
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(ctor: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build `ctor()` with every variable born sharded (abstract eval, then jitted init)."""
    mesh = as_auto_mesh(mesh)
    abstract = nnx.eval_shape(ctor)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh)

    def init() -> Any:
        return nnx.state(ctor())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
