"""LoRA adapters on selected projections of a Decoder.

`apply_lora` swaps each targeted `nnx.Linear` (e.g. `q_proj`, `v_proj`) for a `LoRALinear` that
keeps the base `kernel`/`bias` under the same names and adds `lora_a` [in, r] and `lora_b`
[r, out] as `LoRAParam`s:  y = x W + b + (alpha / r) * x A B,  with B = 0 at init so the adapted
model starts exactly at the base model. Train only the adapters with
`nnx.DiffState(0, LoRAParam)` (or `nnx.Optimizer(model, tx, wrt=LoRAParam)`); `merge_lora`
folds them back into plain Linears for export.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from abpo_jax.models.sharding import Rules, state_shardings

LoRAParam = nnx.LoRAParam  # an nnx.Param subclass: a filter for the trainable adapter weights

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


def _axes(var: nnx.Variable) -> tuple:
    axes = var.get_metadata().get("out_sharding")
    return tuple(axes) if axes else (None, None)


class LoRALinear(nnx.Module):
    """A Linear (same `kernel`/`bias` variables) plus a low-rank update (alpha/r)·A·B."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        self.kernel = base.kernel
        self.bias = base.bias
        self.dtype = base.dtype
        din, dout = base.in_features, base.out_features
        in_axis, out_axis = _axes(base.kernel)
        param_dtype = base.param_dtype
        init_a = nnx.with_partitioning(nnx.initializers.kaiming_uniform(),
                                       (in_axis, "lora_rank"), eager_sharding=False)
        init_b = nnx.with_partitioning(nnx.initializers.zeros, ("lora_rank", out_axis),
                                       eager_sharding=False)
        self.lora_a = LoRAParam(init_a(rngs.params(), (din, rank), param_dtype))
        self.lora_b = LoRAParam(init_b(rngs.params(), (rank, dout), param_dtype))
        self.scale = float(alpha) / rank
        self.in_features, self.out_features = din, dout

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = x @ self.kernel[...].astype(dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        low_rank = (x @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + low_rank * jnp.asarray(self.scale, dtype)

    def merged_kernel(self) -> jax.Array:
        """W + (alpha/r)·A·B in the kernel's dtype."""
        w = self.kernel[...]
        delta = (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
        return (w.astype(jnp.float32) + self.scale * delta).astype(w.dtype)


def _target_modules(model: nnx.Module) -> list[nnx.Module]:
    return [m for block in model.layers for m in (block.self_attn, block.mlp)]


def apply_lora(model: nnx.Module, rank: int, alpha: float, targets: Sequence[str],
               rngs: nnx.Rngs | None = None, mesh: Mesh | None = None,
               rules: Rules | None = None) -> nnx.Module:
    """Wrap the `targets` projections of every layer with LoRA (in place; returns `model`).

    With `mesh`, the new adapter weights are placed in their logical shardings (the base
    weights keep theirs).
    """
    if rank <= 0:
        raise ValueError(f"config.model.lora.rank={rank}: LoRA needs rank >= 1 (0 = off)")
    known = ATTENTION_TARGETS + MLP_TARGETS
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise ValueError(f"config.model.lora.targets={tuple(targets)!r}: each must be one of "
                         f"{', '.join(known)}")
    rngs = rngs or nnx.Rngs(0)
    for parent in _target_modules(model):
        for name in targets:
            base = getattr(parent, name, None)
            if base is None:
                continue
            if isinstance(base, LoRALinear):
                raise ValueError(f"{name} already has a LoRA adapter")
            setattr(parent, name, LoRALinear(base, rank, alpha, rngs=rngs))
    if mesh is not None:
        lora_state = nnx.state(model, LoRAParam)
        nnx.update(model, jax.device_put(lora_state, state_shardings(lora_state, mesh, rules)))
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(getattr(parent, name, None), LoRALinear)
               for parent in _target_modules(model) for name in ATTENTION_TARGETS + MLP_TARGETS)


def trainable_filter(model: nnx.Module) -> Any:
    """`LoRAParam` when the model has adapters (train only them), else every `nnx.Param`."""
    return LoRAParam if has_lora(model) else nnx.Param


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every LoRALinear folded into a plain `nnx.Linear` (W + (α/r)AB).

    The result has exactly the base model's parameter names (for export/loading elsewhere).
    """
    merged = nnx.clone(model)
    for parent in _target_modules(merged):
        for name in ATTENTION_TARGETS + MLP_TARGETS:
            lora = getattr(parent, name, None)
            if not isinstance(lora, LoRALinear):
                continue
            kernel = lora.kernel
            linear = nnx.eval_shape(lambda: nnx.Linear(
                lora.in_features, lora.out_features, use_bias=lora.bias is not None,
                dtype=lora.dtype, param_dtype=kernel[...].dtype, rngs=nnx.Rngs(0)))
            linear.kernel = kernel.replace(lora.merged_kernel())
            if lora.bias is not None:
                linear.bias = lora.bias
            setattr(parent, name, linear)
    return merged
