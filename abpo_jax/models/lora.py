"""LoRA adapters on selected projections of a Decoder.

`apply_lora` swaps each targeted `nnx.Linear` (e.g. `q_proj`, `v_proj`) for a `LoRALinear` that
keeps the base `kernel`/`bias` under the same names and adds `lora_a` [in, r] and `lora_b`
[r, out] as `LoRAParam`s:  y = x W + b + (alpha / r) * x A B,  with B = 0 at init so the adapted
model starts exactly at the base model. Train only the adapters with
`nnx.DiffState(0, LoRAParam)` (or `nnx.Optimizer(model, tx, wrt=LoRAParam)`); `merge_lora`
folds them back into plain Linears for export.

Scanned decoders (`ModelConfig.scan_layers`) hold one Block whose kernels are stacked [L, in, out];
their adapters are stacked the same way (`lora_a` [L, in, r], logical axes `("layers", ...)`),
drawn per layer in the same order as for the unscanned layout, so a seed gives the same adapters
in both layouts.
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
    return tuple(axes) if axes else (None,) * var[...].ndim


def init_adapter(rngs: nnx.Rngs, din: int, dout: int, rank: int,
                 dtype: Any) -> tuple[jax.Array, jax.Array]:
    """One layer's (A [in, r] kaiming-uniform, B [r, out] zeros)."""
    a = nnx.initializers.kaiming_uniform()(rngs.params(), (din, rank), dtype)
    b = nnx.initializers.zeros(rngs.params(), (rank, dout), dtype)
    return a, b


class LoRALinear(nnx.Module):
    """A Linear (same `kernel`/`bias` variables) plus a low-rank update (alpha/r)·A·B.

    `adapters`: precomputed (A, B) — stacked [L, in, r] / [L, r, out] for a stacked base kernel
    [L, in, out]; drawn from `rngs` (one layer) when omitted.
    """

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs,
                 adapters: tuple[jax.Array, jax.Array] | None = None):
        self.kernel = base.kernel
        self.bias = base.bias
        self.dtype = base.dtype
        din, dout = base.in_features, base.out_features
        *lead, in_axis, out_axis = _axes(base.kernel)
        a, b = adapters if adapters is not None else init_adapter(rngs, din, dout, rank,
                                                                  base.param_dtype)
        self.lora_a = LoRAParam(a, out_sharding=(*lead, in_axis, "lora_rank"),
                                eager_sharding=False)
        self.lora_b = LoRAParam(b, out_sharding=(*lead, "lora_rank", out_axis),
                                eager_sharding=False)
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


def _blocks(model: nnx.Module) -> list[nnx.Module]:
    """The unscanned layout's blocks, or the scanned layout's one stacked block."""
    return list(model.layers) if isinstance(model.layers, nnx.List) else [model.layers]


def _target_modules(model: nnx.Module) -> list[nnx.Module]:
    return [m for block in _blocks(model) for m in (block.self_attn, block.mlp)]


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
    stacked = not isinstance(model.layers, nnx.List)
    num_layers = model.layers.input_layernorm.weight[...].shape[0] if stacked else 1
    # Draw layer by layer, module by module (the unscanned order) in either layout.
    adapters: dict[tuple[int, str], list] = {}
    for _ in range(num_layers):
        for j, parent in enumerate(_target_modules(model) if stacked else []):
            for name in targets:
                base = getattr(parent, name, None)
                if base is not None and not isinstance(base, LoRALinear):
                    adapters.setdefault((j, name), []).append(init_adapter(
                        rngs, base.in_features, base.out_features, rank, base.param_dtype))
    for j, parent in enumerate(_target_modules(model)):
        for name in targets:
            base = getattr(parent, name, None)
            if base is None:
                continue
            if isinstance(base, LoRALinear):
                raise ValueError(f"{name} already has a LoRA adapter")
            stack = adapters.get((j, name))
            given = (jnp.stack([a for a, _ in stack]), jnp.stack([b for _, b in stack])) \
                if stack else None
            setattr(parent, name, LoRALinear(base, rank, alpha, rngs=rngs, adapters=given))
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
