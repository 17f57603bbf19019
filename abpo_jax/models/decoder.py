"""Decoder-only transformer in Flax NNX for the Llama / Qwen2 / Gemma-3 families.

Module and parameter names mirror Hugging Face (`embed_tokens`, `layers[i].self_attn.q_proj`,
`mlp.gate_proj`, `input_layernorm`, ...), so loaders map checkpoints by name. Kernels are stored
`(in, out)`; every parameter carries logical axes for `sharding.py`.

Attention takes an explicit boolean mask so callers can pass causal, padded or block-causal
(shared-prefix packed) masks; sliding-window layers add a position-distance mask on top.

Layer layout (`ModelConfig.scan_layers`): by default the L blocks' parameters are stacked on a
leading `layers` axis (`layers.self_attn.q_proj.kernel` is [L, in, out]) and the forward is one
`jax.lax.scan` over them, so compile time does not grow with depth (MaxText's `scan_layers`); the
per-layer RoPE frequencies and sliding windows (Gemma-3 mixes layer types) are scanned as data.
`scan_layers=False` keeps an `nnx.List` of blocks (`layers[i]....`) run by a Python loop. Both
compute the same function; `stack_layers_state` / `unstack_layers_state` convert between them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from abpo_jax.models.config import ModelConfig
from abpo_jax.models.sharding import as_auto_mesh, constrain, create_sharded, logical_to_spec

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values of all cached slots, the RoPE position of each slot, next slot."""

    k: Array  # [L, B, S_max, n_kv, head_dim] (or L arrays [B, ...]: decoding_cache / _prefix)
    v: Array  # [L, B, S_max, n_kv, head_dim]
    positions: Array  # int32 [B, S_max]
    index: Array  # int32 scalar: next write slot

    @property
    def max_len(self) -> int:
        return self.positions.shape[1]   # k/v may be per-layer tuples


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> KVCache:
    """Empty cache for `batch` sequences of up to `max_len` tokens (slots unused until written)."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   # far-away position: an unwritten slot never falls inside a sliding window
                   positions=jnp.full((batch, max_len), -(2 ** 30), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


def cache_shardings(config: ModelConfig, mesh: Any, batch: int, max_len: int) -> KVCache:
    """NamedShardings for a KVCache on `mesh` (batch over data/fsdp, kv heads over tensor)."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = as_auto_mesh(mesh)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    kv = NamedSharding(mesh, logical_to_spec(CACHE_AXES, shape, dict(mesh.shape)))
    pos = NamedSharding(mesh, logical_to_spec(("batch", "cache_length"), (batch, max_len),
                                              dict(mesh.shape)))
    return KVCache(k=kv, v=kv, positions=pos, index=NamedSharding(mesh, PartitionSpec()))


def causal_mask(positions_q: Array, positions_k: Array) -> Array:
    """bool[B,T,S]: query t may attend key s iff pos_k[s] <= pos_q[t]."""
    return positions_k[:, None, :] <= positions_q[:, :, None]


# --- RoPE ---------------------------------------------------------------------------------

def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies (float32, [head_dim/2]) with optional `linear` / `llama3` scaling."""
    inv = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_scaling rope_type={kind!r} is not supported (default, linear, llama3)")


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotate x [B,T,H,D] by positions [B,T] in the HF `rotate_half` layout."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B,T,D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


# --- layers -------------------------------------------------------------------------------

def _partitioned(init: Any, axes: tuple[str | None, ...]) -> Any:
    # eager_sharding=False: variables are created unsharded; sharding.py places them.
    return nnx.with_partitioning(init, axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * (offset + w), computed in float32."""

    def __init__(self, dim: int, eps: float, offset: float, axis_name: str, param_dtype: Any):
        init = nnx.initializers.zeros if offset else nnx.initializers.ones
        self.weight = nnx.Param(_partitioned(init, (axis_name,))(jax.random.key(0), (dim,),
                                                                 param_dtype))
        self.eps, self.offset = eps, offset

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + self.weight[...].astype(jnp.float32))).astype(x.dtype)


# --- mixed-precision weight matmuls (ModelConfig.matmul_precision) ---------------------------

def _bf16_dot(x: Array, w: Array, w_transposed: bool) -> Array:
    contract = (((x.ndim - 1,), (1 if w_transposed else 0,)), ((), ()))
    return jax.lax.dot_general(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), contract,
                               preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def bf16_matmul(x: Array, w: Array, w_transposed: bool = False) -> Array:
    """x [..., K] @ w [K, N] (or w [N, K] transposed) with bfloat16 operands and float32
    accumulation and output, in the forward and in both backward products (autodiff of a plain
    bf16 dot would run the backward's products on the float32 cotangent)."""
    return _bf16_dot(x, w, w_transposed)


def _bf16_residuals(a: Array, b: Array) -> tuple[Array, Array, Array, Array]:
    """A bf16 product's residuals: its operands rounded to bfloat16 (half the saved
    activations' memory) and empty arrays carrying the primal dtypes (residuals must be
    arrays)."""
    return (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), jnp.zeros((0,), a.dtype),
            jnp.zeros((0,), b.dtype))


def _bf16_matmul_fwd(x: Array, w: Array, w_transposed: bool):
    res = _bf16_residuals(x, w)
    return _bf16_dot(res[0], res[1], w_transposed), res


def _bf16_matmul_bwd(w_transposed: bool, res, g: Array):
    x16, w16, x_like, w_like = res
    g16 = g.astype(jnp.bfloat16)
    f32 = jnp.float32
    # dx [..., K] = g [..., N] . w^T
    dx = jax.lax.dot_general(g16, w16, (((g.ndim - 1,), (0 if w_transposed else 1,)), ((), ())),
                             preferred_element_type=f32)
    # dw = x^T g over every leading (token) dimension: [K, N], or [N, K] when transposed
    x2 = x16.reshape(-1, x16.shape[-1])
    g2 = g16.reshape(-1, g16.shape[-1])
    dw = _token_product(*((g2, x2) if w_transposed else (x2, g2)))
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


def _copy_transpose(a: Array) -> Array:
    """a [R, C] -> its transpose [C, R] as an array XLA materialises (R even; else a plain
    transpose).

    XLA:CPU runs a bfloat16 dot on its bf16 kernels (YNNPACK) only when the left operand
    contracts its last dimension; a dot contracting the token dimension of both operands
    (dw = x^T g) is upcast to a float32 product, at half the bf16 speed, and a plain transpose
    of an operand or of the result is folded back into such a dot. The transpose through a
    [2, R/2, C] view is the same values, but XLA keeps it a copy (tests/models/
    test_matmul_precision.py checks the compiled products)."""
    r, c = a.shape
    if r % 2:
        return a.T
    return a.reshape(2, r // 2, c).transpose(2, 0, 1).reshape(c, r)


def _token_product(a: Array, b: Array) -> Array:
    """a^T b [Ca, Cb] over the rows (tokens) of bf16 a [T, Ca] and b [T, Cb], float32
    accumulation, as a dot XLA:CPU keeps bf16: of a transposed, or (when transposing b and
    then the [Cb, Ca] result moves fewer elements) of b transposed, the result transposed
    back. Wide transposed copies are the slow part (the fused producer of a [T, 1536] MLP
    activation read column-wise took ~8x its row-wise time)."""
    if a.shape[0] % 2:   # an odd token count: one zero token adds nothing to the product
        a, b = (jnp.pad(m, ((0, 1), (0, 0))) for m in (a, b))
    (t, ca), cb = a.shape, b.shape[1]
    rows = (((1,), (0,)), ((), ()))
    if t * ca <= t * cb + ca * cb or cb % 2:
        return jax.lax.dot_general(_copy_transpose(a), b, rows,
                                   preferred_element_type=jnp.float32)
    return _copy_transpose(jax.lax.dot_general(_copy_transpose(b), a, rows,
                                               preferred_element_type=jnp.float32))


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def bf16_einsum(spec: str, a: Array, b: Array) -> Array:
    """`jnp.einsum(spec, a, b)` ("ab,bc->ac" form, every index of an operand in the other
    operand or the output) with bfloat16 operands and float32 accumulation and output, in the
    forward and in both backward products, as :func:`bf16_matmul` (the attention products)."""
    return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                      preferred_element_type=jnp.float32)


def _bf16_einsum_fwd(spec: str, a: Array, b: Array):
    res = _bf16_residuals(a, b)
    return bf16_einsum(spec, res[0], res[1]), res


def _bf16_einsum_bwd(spec: str, res, g: Array):
    a16, b16, a_like, b_like = res
    (sa, sb), out = spec.split("->")[0].split(","), spec.split("->")[1]
    g16 = g.astype(jnp.bfloat16)
    da = jnp.einsum(f"{out},{sb}->{sa}", g16, b16, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{out},{sa}->{sb}", g16, a16, preferred_element_type=jnp.float32)
    return da.astype(a_like.dtype), db.astype(b_like.dtype)


bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


def attention_einsum(config: ModelConfig, spec: str, a: Array, b: Array,
                     preferred_element_type: Any = None) -> Array:
    """The attention products: `jnp.einsum`, or under `matmul_precision=bfloat16`
    :func:`bf16_einsum` (bf16 operands, float32 accumulation) cast to `preferred_element_type`
    (default a's dtype)."""
    if config.matmul_precision == "bfloat16":
        return bf16_einsum(spec, a, b).astype(preferred_element_type or a.dtype)
    return jnp.einsum(spec, a, b, preferred_element_type=preferred_element_type)


def flat_dot(x: Array, w: Array, w_transposed: bool = False,
             preferred_element_type: Any = None) -> Array:
    """x [..., K] @ w [K, N] (or w [N, K] transposed) as one 2-D product over the flattened
    tokens: autodiff then forms dw = x^T g as a 2-D product too, whose operand transposes
    XLA:CPU does far faster than those of the [B, T, K] contraction a plain dot gives."""
    lead = x.shape[:-1]
    contract = (((1,), (1 if w_transposed else 0,)), ((), ()))
    out = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w, contract,
                              preferred_element_type=preferred_element_type)
    return out.reshape(*lead, out.shape[-1])


def _linear_dot_general(matmul: Callable[[Array, Array, Any], Array]) -> Callable[..., Array]:
    """`nnx.Linear`'s dot_general (x [..., in] . kernel [in, out]) as
    `matmul(x, kernel, preferred_element_type)`."""
    def dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                    preferred_element_type: Any = None, out_sharding: Any = None) -> Array:
        (lhs_c, rhs_c), (lhs_b, rhs_b) = dimension_numbers
        if tuple(lhs_c) != (lhs.ndim - 1,) or tuple(rhs_c) != (0,) or lhs_b or rhs_b:
            raise NotImplementedError(f"linear of dimension numbers {dimension_numbers}")
        out = matmul(lhs, rhs, preferred_element_type)
        return out if out_sharding is None else jax.sharding.reshard(out, out_sharding)
    return dot_general


# bf16_matmul always accumulates and returns float32
_bf16_dot_general = _linear_dot_general(lambda x, w, _: bf16_matmul(x, w))
_flat_dot_general = _linear_dot_general(
    lambda x, w, out_type: flat_dot(x, w, preferred_element_type=out_type))


def linear(din: int, dout: int, axes: tuple[str, str], config: ModelConfig, rngs: nnx.Rngs,
           bias: bool = False) -> nnx.Linear:
    extra = {"dot_general": _bf16_dot_general if config.matmul_precision == "bfloat16"
             else _flat_dot_general}
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=_partitioned(nnx.initializers.normal(0.02), axes),
        bias_init=_partitioned(nnx.initializers.zeros, (axes[1],)), rngs=rngs, **extra)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer_type: str, rngs: nnx.Rngs):
        c = config
        d, hd = c.hidden_size, c.head_dim
        self.q_proj = linear(d, c.num_heads * hd, ("embed", "heads"), c, rngs, c.qkv_bias)
        self.k_proj = linear(d, c.num_kv_heads * hd, ("embed", "kv_heads"), c, rngs, c.qkv_bias)
        self.v_proj = linear(d, c.num_kv_heads * hd, ("embed", "kv_heads"), c, rngs, c.qkv_bias)
        self.o_proj = linear(c.num_heads * hd, d, ("heads", "embed"), c, rngs)
        if c.sandwich_norms:
            self.q_norm = RMSNorm(hd, c.rms_norm_eps, c.norm_offset, "head_dim", c.param_dtype)
            self.k_norm = RMSNorm(hd, c.rms_norm_eps, c.norm_offset, "head_dim", c.param_dtype)
        sliding = layer_type == "sliding"
        self.window = c.sliding_window if sliding else None
        if sliding and c.rope_local_base_freq is not None:
            self.inv_freq = tuple(rope_inv_freq(hd, c.rope_local_base_freq).tolist())
        else:
            self.inv_freq = tuple(rope_inv_freq(hd, c.rope_theta, c.rope_scaling).tolist())
        self.config = c

    def __call__(self, x: Array, positions: Array, mask: Array, k_cache: Array | None,
                 v_cache: Array | None, key_positions: Array, index: Array | None,
                 rope: tuple[Array, Array] | None = None,
                 prefix: tuple[Array, Array] | None = None) -> tuple[Array, Array, Array]:
        """Returns (output [B,T,D], this call's keys, values [B,T,n_kv,head_dim]).

        `rope` = (inv_freq [head_dim/2], window scalar) overrides this layer's static RoPE
        frequencies and sliding window (scanned layout: one module serves every layer type;
        a window >= NO_WINDOW means full attention).

        With a cache, `k_cache`/`v_cache` are this layer's cache [B,S_max,..]: the queries
        attend to it with this call's keys/values written at slot `index` (a local copy; the
        caller writes the returned new keys/values [B,T,..] into the stacked cache once, after
        all layers: updating a stacked cache carried through the layers made XLA copy the
        whole stack once per layer and decode step).

        `prefix` = (keys [B_p,n_kv,head_dim,P], values [B_p,n_kv,P,head_dim]): this layer's
        read-only prompt keys and values (:func:`decoding_prefix`), shared by the R/B_p
        consecutive rows of each prompt (decoding with a prefix
        cache, :meth:`Decoder.hidden_states`); the keys are then [prefix | cache] (mask and
        `key_positions` [R,P+S_max] cover both), attended to by the dense path whatever
        `config.attention`.
        """
        c = self.config
        b, t, _ = x.shape
        if rope is not None:
            inv_freq, window = rope
        else:
            inv_freq, window = np.asarray(self.inv_freq, np.float32), self.window
        q = self.q_proj(x).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.sandwich_norms:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        new_k, new_v = k, v
        if k_cache is not None and prefix is None:   # (the prefix path reads the cache as is)
            start = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))

        if window is not None:
            # Sliding window (HF semantics): key s visible iff pos_q - pos_k < window.
            near = (positions[:, :, None] - key_positions[:, None, :]) < window
            mask = mask & near
        if prefix is not None:
            out = self._prefix_attention(q, k_cache, v_cache, new_k, new_v, mask, index, *prefix)
            return self.o_proj(out), new_k, new_v
        if c.attention == "dot_product_attention":
            # GQA natively ([B,T,N,H] queries, [B,S,K,H] keys); fused kernel where available.
            out = jax.nn.dot_product_attention(
                q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None, :, :],
                scale=c.attention_scale,
                implementation=None if c.attention_backend == "auto" else c.attention_backend)
            out = out.reshape(b, t, c.num_heads * c.head_dim)
            return self.o_proj(out), new_k, new_v
        groups = c.num_heads // c.num_kv_heads
        qg = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
        scores = attention_einsum(c, "btkgd,bskd->bkgts", qg, k.astype(q.dtype),
                                  jnp.float32) * c.attention_scale
        probs = self._masked_softmax(scores, mask[:, None, None, :, :]).astype(q.dtype)
        out = attention_einsum(c, "bkgts,bskd->btkgd", probs, v.astype(q.dtype))
        out = out.reshape(b, t, c.num_heads * c.head_dim)
        return self.o_proj(out), new_k, new_v

    def _masked_softmax(self, scores: Array, mask: Array) -> Array:
        """softmax over the last (key) axis of soft-capped float32 scores where `mask`."""
        if self.config.attn_logit_softcapping:
            cap = self.config.attn_logit_softcapping
            scores = jnp.tanh(scores / cap) * cap
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(scores, axis=-1)

    def _prefix_attention(self, q: Array, k_cache: Array, v_cache: Array, k_new: Array,
                          v_new: Array, mask: Array, index: Array, prefix_k: Array,
                          prefix_v: Array) -> Array:
        """Dense attention of queries q [R,T,N,H] over [prefix | cache] keys, this call's
        k_new, v_new [R,T,K,H] standing for cache slots [index, index+T); mask [R,T,P+S]
        -> [R,T,N*H]. Same function as writing the new keys into the cache first, without
        copying the cache.

        The prefix (:func:`decoding_prefix` layout: keys [B_p,K,H,P], values [B_p,K,P,H]) once
        per prompt: its G = R/B_p rows' queries are batched against it, one product per prompt
        and kv head whose operands need no transpose. The cache k, v [R,S,K,H] (the few tokens
        generated so far) and the new keys per row as multiply-reduce, which reads the cache
        where it lies (a product would transpose it every step).
        """
        c = self.config
        r, t = q.shape[:2]
        bp, p, s = prefix_k.shape[0], prefix_k.shape[-1], k_cache.shape[1]
        g, kv, groups, hd = r // bp, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
        f32 = jnp.float32
        q32 = q.reshape(r, t, 1, kv, groups, hd).astype(f32)

        def row_scores(keys: Array) -> Array:   # [R,S',K,H] -> [B_p,K,G,T,g,S']
            scores = jnp.sum(q32 * keys.astype(f32)[:, None, :, :, None, :], axis=-1)
            return scores.reshape(bp, g, t, -1, kv, groups).transpose(0, 4, 1, 2, 5, 3)

        def row_values(probs: Array, values: Array) -> Array:   # -> [R,T,K,g,H]
            probs = probs.transpose(0, 2, 3, 5, 1, 4).reshape(r, t, -1, kv, groups)
            return jnp.sum(probs[..., None] * values.astype(q.dtype)[:, None, :, :, None, :],
                           axis=2)

        # scores [B_p,K,G,T,g,P+S+T]: the prefix product's natural order
        qg = q.reshape(bp, g, t, kv, groups, hd)
        scores = jnp.concatenate([
            jnp.einsum("bGtkgd,bkds->bkGtgs", qg, prefix_k.astype(q.dtype),
                       preferred_element_type=f32),
            row_scores(k_cache), row_scores(k_new)], axis=-1) * c.attention_scale
        slot = jnp.arange(s)
        fresh = (slot >= index) & (slot < index + t)   # this call's slots: attended as k_new
        mask = jnp.concatenate([mask[..., :p], mask[..., p:] & ~fresh,
                                jax.lax.dynamic_slice_in_dim(mask, p + index, t, axis=2)], -1)
        probs = self._masked_softmax(scores, mask.reshape(bp, 1, g, t, 1, -1)).astype(q.dtype)
        out = jnp.einsum("bkGtgs,bksd->bkGtgd", probs[..., :p], prefix_v.astype(q.dtype))
        out = out.transpose(0, 2, 3, 1, 4, 5)   # [B_p,K,G,T,g,H] -> [B_p,G,T,K,g,H]
        out = (out.reshape(r, t, kv, groups, hd) + row_values(probs[..., p:p + s], v_cache)
               + row_values(probs[..., p + s:], v_new))
        return out.reshape(r, t, c.num_heads * hd)


class MLP(nnx.Module):
    """down(act(gate(x)) * up(x)) — SwiGLU (silu) or GeGLU (tanh-approximated gelu)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        c = config
        self.gate_proj = linear(c.hidden_size, c.intermediate_size, ("embed", "mlp"), c, rngs)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, ("embed", "mlp"), c, rngs)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, ("mlp", "embed"), c, rngs)
        self.activation = c.activation

    def __call__(self, x: Array) -> Array:
        gate = self.gate_proj(x)
        act = jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        h = constrain(act * self.up_proj(x), ("batch", "length", "mlp"))
        return self.down_proj(h)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, layer_type: str, rngs: nnx.Rngs):
        c = config

        def norm() -> RMSNorm:
            return RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset, "embed", c.param_dtype)

        self.input_layernorm = norm()
        self.self_attn = Attention(c, layer_type, rngs)
        # Llama/Qwen2: post_attention_layernorm is the pre-FFN norm (HF naming).
        self.post_attention_layernorm = norm()
        if c.sandwich_norms:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.mlp = MLP(c, rngs)
        self.sandwich = c.sandwich_norms

    def __call__(self, x: Array, positions: Array, mask: Array, k_cache: Array | None,
                 v_cache: Array | None, key_positions: Array, index: Array | None,
                 rope: tuple[Array, Array] | None = None,
                 prefix: tuple[Array, Array] | None = None) -> tuple[Array, Array, Array]:
        h, k, v = self.self_attn(self.input_layernorm(x), positions, mask, k_cache, v_cache,
                                 key_positions, index, rope, prefix)
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        else:
            x = x + h
            x = x + self.mlp(self.post_attention_layernorm(x))
        return constrain(x, ("batch", "length", "embed")), k, v


def _block_call(block: Block, *args: Any) -> tuple[Array, Array, Array]:
    return block(*args)


_remat_block_call = nnx.remat(_block_call)

# A window this large never masks anything (positions stay far below 2**30).
NO_WINDOW = 2 ** 30


def layer_rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer RoPE inverse frequencies float32 [L, head_dim/2] and windows int32 [L]
    (NO_WINDOW for full-attention layers): what the scanned layout feeds each layer as data."""
    c = config
    inv = [rope_inv_freq(c.head_dim, c.rope_local_base_freq)
           if t == "sliding" and c.rope_local_base_freq is not None
           else rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling) for t in c.layer_types]
    windows = [c.sliding_window if t == "sliding" else NO_WINDOW for t in c.layer_types]
    return np.stack(inv).astype(np.float32), np.asarray(windows, np.int32)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _stack_variables(*variables: nnx.Variable) -> nnx.Variable:
    """One Variable holding the layers' values stacked on axis 0 (logical axis `layers`)."""
    first = variables[0]
    axes = first.get_metadata().get("out_sharding")
    meta = {"out_sharding": ("layers", *axes)} if axes else {}
    return first.replace(jnp.stack([v[...] for v in variables]), **meta)


def stack_blocks(blocks: list[nnx.Module]) -> nnx.Module:
    """A module shaped like `blocks[0]` whose every parameter is the blocks' stacked on axis 0."""
    graphdef, _ = nnx.split(blocks[0])
    states = [nnx.state(b) for b in blocks]
    stacked = jax.tree.map(_stack_variables, *states, is_leaf=_is_variable)
    return nnx.merge(graphdef, stacked)


def stack_layers_state(flat: dict[tuple, Any], num_layers: int) -> dict[tuple, Any]:
    """Flat `{path: array}` with per-layer paths `("layers", i, *rest)` -> stacked
    `("layers", *rest)` arrays [L, ...] (numpy or jax); other paths unchanged."""
    out: dict[tuple, Any] = {}
    per_layer: dict[tuple, dict[int, Any]] = {}
    for path, value in flat.items():
        if len(path) > 1 and path[0] == "layers" and isinstance(path[1], int):
            per_layer.setdefault(("layers", *path[2:]), {})[path[1]] = value
        else:
            out[path] = value
    for path, layers in per_layer.items():
        if sorted(layers) != list(range(num_layers)):
            raise ValueError(f"{'.'.join(map(str, path))}: have layers {sorted(layers)}, need "
                             f"0..{num_layers - 1}")
        xp = jnp if any(isinstance(v, jax.Array) for v in layers.values()) else np
        out[path] = xp.stack([layers[i] for i in range(num_layers)])
    return out


def unstack_layers_state(flat: dict[tuple, Any], num_layers: int) -> dict[tuple, Any]:
    """Inverse of :func:`stack_layers_state`: stacked `("layers", *rest)` -> per-layer paths."""
    out: dict[tuple, Any] = {}
    for path, value in flat.items():
        if len(path) > 1 and path[0] == "layers" and not isinstance(path[1], int):
            for i in range(num_layers):
                out[("layers", i, *path[1:])] = value[i]
        else:
            out[path] = value
    return out


class Decoder(nnx.Module):
    """Token ids -> float32 logits, optionally reading/writing a KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.embed_tokens = nnx.Embed(
            c.vocab_size, c.hidden_size, dtype=jnp.dtype(c.dtype),
            param_dtype=jnp.dtype(c.param_dtype),
            embedding_init=_partitioned(nnx.initializers.normal(0.02), ("vocab", "embed")),
            rngs=rngs)
        # Built block by block in both layouts, so a seed gives the same weights either way.
        blocks = [Block(c, t, rngs) for t in c.layer_types]
        self.layers = stack_blocks(blocks) if c.scan_layers else nnx.List(blocks)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset, "embed", c.param_dtype)
        if not c.tie_embeddings:
            self.lm_head = linear(c.hidden_size, c.vocab_size, ("embed", "vocab"), c, rngs)

    def embed(self, tokens: Array) -> Array:
        x = self.embed_tokens(tokens)
        if self.config.scale_embeddings:
            x = x * jnp.asarray(math.sqrt(self.config.hidden_size), x.dtype)
        return x

    def hidden_states(self, tokens: Array, positions: Array, attn_mask: Array,
                      cache: KVCache | None = None,
                      prefix: KVCache | None = None) -> tuple[Array, KVCache | None]:
        """Final-norm hidden states [B,T,D] (before the LM head) and the updated cache.

        `prefix` (decoding; needs `cache`): a read-only cache of B_p prompts, every slot
        written (e.g. a prefill into a P-slot cache), in :func:`decoding_prefix`'s layout, that
        each group of B/B_p consecutive rows attends to before its own `cache`: attn_mask is then
        [B,T,P+S_max], the prefix's slots first. Only `cache` is written and returned, so a
        decode loop carries (and a beam search reorders) just the generated tokens' keys.
        """
        c = self.config
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        t = tokens.shape[1]
        x = constrain(self.embed(tokens), ("batch", "length", "embed"))
        prefix_kv, per_layer = [None] * c.num_layers, False
        if cache is not None:
            p = 0 if prefix is None else prefix.max_len
            if attn_mask.shape[-1] != p + cache.max_len:
                raise ValueError(f"attn_mask has {attn_mask.shape[-1]} key slots; the prefix "
                                 f"and cache have {p} + {cache.max_len}")
            key_positions = jax.lax.dynamic_update_slice(cache.positions, positions,
                                                         (0, cache.index))
            ks, vs, index = cache.k, cache.v, cache.index
            per_layer = isinstance(ks, tuple)   # decoding_cache's per-layer arrays
            attend_positions = key_positions
            if prefix is not None:
                if not isinstance(prefix.k, tuple):
                    raise ValueError("hidden_states: pass the prefix through decoding_prefix")
                groups = tokens.shape[0] // prefix.positions.shape[0]
                attend_positions = jnp.concatenate(
                    [jnp.repeat(prefix.positions, groups, axis=0), key_positions], axis=1)
                prefix_kv = [(prefix.k[i], prefix.v[i]) for i in range(c.num_layers)]
        elif prefix is not None:
            raise ValueError("hidden_states: a prefix needs a cache for the new tokens")
        else:
            if attn_mask.shape[-1] != t:
                raise ValueError(f"attn_mask has {attn_mask.shape[-1]} keys for {t} tokens")
            key_positions, ks, vs, index = positions, None, None, None
            attend_positions = key_positions
        if c.scan_layers:
            x, new_k, new_v = self._scan_layers(
                x, positions, attn_mask, jnp.stack(ks) if per_layer else ks,
                jnp.stack(vs) if per_layer else vs, attend_positions, index,
                remat=c.remat and cache is None, prefix=prefix)
            if per_layer:
                new_ks, new_vs = list(new_k), list(new_v)
        else:
            # Cached passes (sampling) are never differentiated, and nnx.remat inside the decode
            # while_loop would try to lift the outer trace's Params: remat cache-free passes only.
            call = _remat_block_call if c.remat and cache is None else _block_call
            new_ks, new_vs = [], []
            for i, block in enumerate(self.layers):
                x, k, v = call(block, x, positions, attn_mask, None if ks is None else ks[i],
                               None if vs is None else vs[i], attend_positions, index, None,
                               prefix_kv[i])
                new_ks.append(k)
                new_vs.append(v)
        if per_layer:
            # each layer's slots written in place (no [L,..] stack rebuilt per decode step)
            def write(cached: Array, new: Array) -> Array:
                return constrain(jax.lax.dynamic_update_slice(
                    cached, new.astype(cached.dtype), (0, index, 0, 0)), CACHE_AXES[1:])
            ks, vs = tuple(map(write, ks, new_ks)), tuple(map(write, vs, new_vs))
        elif cache is not None:
            if not c.scan_layers:
                new_k, new_v = jnp.stack(new_ks), jnp.stack(new_vs)
            # The T new slots of every layer, written once (in place inside jit/while loops).
            start = (0, 0, index, 0, 0)
            ks = constrain(jax.lax.dynamic_update_slice(ks, new_k.astype(ks.dtype), start),
                           CACHE_AXES)
            vs = constrain(jax.lax.dynamic_update_slice(vs, new_v.astype(vs.dtype), start),
                           CACHE_AXES)
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=ks, v=vs, positions=key_positions, index=index + t)
        return x, new_cache

    def _scan_layers(self, x: Array, positions: Array, attn_mask: Array, ks: Array | None,
                     vs: Array | None, key_positions: Array, index: Array | None,
                     remat: bool, prefix: KVCache | None = None
                     ) -> tuple[Array, Array | None, Array | None]:
        """All layers as one `jax.lax.scan` over the stacked block parameters.

        Carry: the hidden states. xs: each layer's parameters, RoPE frequencies and window and
        (when decoding) its read-only cache and prefix slices. ys: each layer's new keys/values
        [L,B,T,..], which the caller writes into the stacked cache once.
        """
        c = self.config
        graphdef, state = nnx.split(self.layers)
        inv_freq, windows = layer_rope_tables(c)
        sliding = "sliding" in c.layer_types

        def body(h, xs):
            layer_state, inv_i, window_i, k_i, v_i, prefix_i = xs
            block = nnx.merge(graphdef, layer_state)
            h, k, v = block(h, positions, attn_mask, k_i, v_i, key_positions, index,
                            (inv_i, window_i if sliding else None), prefix_i)
            return h, ((k, v) if k_i is not None else None)   # training: no [L,..] stack

        if remat:
            policy = getattr(jax.checkpoint_policies, c.remat_policy)
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        prefix_kv = None if prefix is None else (jnp.asarray(prefix.k), jnp.asarray(prefix.v))
        xs = (state, jnp.asarray(inv_freq), jnp.asarray(windows), ks, vs, prefix_kv)
        x, new_kv = jax.lax.scan(body, x, xs)
        return (x, *new_kv) if ks is not None else (x, None, None)

    def logits_from_hidden(self, x: Array) -> Array:
        """LM head (tied or not) and optional final soft-capping; float32 logits."""
        c = self.config
        if c.tie_embeddings and c.matmul_precision == "bfloat16":
            logits = bf16_matmul(x, self.embed_tokens.embedding[...], True)
        elif c.tie_embeddings:
            logits = flat_dot(x, self.embed_tokens.embedding[...].astype(x.dtype), True,
                              preferred_element_type=jnp.float32)
        else:
            logits = self.lm_head(x)
        logits = logits.astype(jnp.float32)
        if c.final_logit_softcapping:
            cap = c.final_logit_softcapping
            logits = jnp.tanh(logits / cap) * cap
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(self, tokens: Array, positions: Array, attn_mask: Array,
                 cache: KVCache | None = None,
                 prefix: KVCache | None = None) -> tuple[Array, KVCache | None]:
        """logits float32 [B,T,V] and the updated cache (None without a cache).

        Without a cache the keys are the input tokens (attn_mask is [B,T,T]); with a cache this
        call's keys/values go to slots [index, index+T) and attn_mask is [B,T,S_max]
        ([B,T,P+S_max] with a read-only `prefix`, see :meth:`hidden_states`).
        """
        x, new_cache = self.hidden_states(tokens, positions, attn_mask, cache, prefix)
        return self.logits_from_hidden(x), new_cache


def decoding_layout(model: Decoder) -> Decoder:
    """`model` with its layers unstacked (an `nnx.List`, run by a Python loop), for use inside
    a jitted decode loop; the model itself when already unstacked.

    A scanned layer stack slices every layer's weights with a dynamic index, which XLA:CPU
    materialises as a copy of each weight per decode step (the whole model per token: ~0.5 GB
    for SmolLM2, most of a decode step). Here each layer's weights are sliced once, before the
    loop, and an optimization barrier keeps XLA from sinking the slices back into it.
    Same function, so the same numbers as the stacked model (tests/models/test_scan_layers.py).
    """
    c = model.config
    if not c.scan_layers:
        return model
    flat_c = dataclasses.replace(c, scan_layers=False)
    graphdefs = []

    def build() -> nnx.State:   # abstract; jax.eval_shape (not nnx's) applies no shardings
        graphdef, state = nnx.split(Decoder(flat_c, rngs=nnx.Rngs(0)))
        graphdefs.append(graphdef)
        return state

    target = jax.eval_shape(build)
    graphdef = graphdefs[0]
    values = {path: v[...] for path, v in nnx.to_flat_state(nnx.state(model))}
    values = jax.lax.optimization_barrier(unstack_layers_state(values, c.num_layers))
    state = nnx.from_flat_state([(path, v.replace(values[path]))
                                 for path, v in nnx.to_flat_state(target)])
    return nnx.merge(graphdef, state)


def decoding_cache(cache: KVCache) -> KVCache:
    """`cache` with k/v as tuples of L per-layer arrays [B,S,K,H]: the cache a decode loop
    carries (each layer's new slots then written in place, and a reorder of rows a gather
    of each layer's array in its own layout; a stacked [L,..] cache was copied whole every
    step)."""
    return cache.replace(k=tuple(cache.k), v=tuple(cache.v))


def decoding_prefix(prefix: KVCache) -> KVCache:
    """`prefix` (a filled cache [L,B,P,K,H], e.g. a prefill's) as the `prefix` of decode steps
    (:meth:`Decoder.hidden_states`): k/v as tuples of L per-layer arrays in the layout the
    attention products read, keys [B,K,H,P] and values [B,K,P,H].

    Sliced and transposed once, before a decode loop, behind an optimization barrier: else XLA
    slices (as :func:`decoding_layout` explains for weights) and transposes every layer's
    prompt keys/values once per step."""
    k = tuple(x.transpose(0, 2, 3, 1) for x in prefix.k)
    v = tuple(x.transpose(0, 2, 1, 3) for x in prefix.v)
    k, v = jax.lax.optimization_barrier((k, v))
    return prefix.replace(k=k, v=v)


def create_sharded_model(config: ModelConfig, mesh: Any, rngs_seed: int = 0) -> Decoder:
    """A `Decoder(config)` with parameters initialised directly in their shardings on `mesh`."""
    return create_sharded(lambda: Decoder(config, rngs=nnx.Rngs(rngs_seed)), mesh)
