"""Architecture description of a decoder LLM (Llama / Qwen2 / Gemma-3 families).

One frozen dataclass covers the three families; family-specific switches are derived from
`family` (see the properties) so a config read from Hugging Face `config.json` and one built by
hand for a test describe the same computation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("llama", "qwen2", "gemma3")
ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("full", "sliding")
ATTENTION_IMPLS = ("dense", "dot_product_attention")
MATMUL_PRECISIONS = ("float32", "bfloat16")
ATTENTION_BACKENDS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")

# HF `model_type` -> our family.
_HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
}
# HF activation names -> ours.
_HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "gelu": "gelu_tanh",  # Gemma configs name the tanh approximation "gelu" in older releases
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer.

    `rope_theta`/`rope_scaling` apply to full-attention layers; Gemma-3 sliding layers use
    `rope_local_base_freq` (unscaled). `dtype` is the compute dtype, `param_dtype` the storage
    dtype (both numpy dtype names, e.g. "float32", "bfloat16"); logits are always float32.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    activation: str = "silu"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    # --- Gemma-3 extras -------------------------------------------------------------------
    rope_local_base_freq: float | None = None   # RoPE base of sliding layers (None = rope_theta)
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (None = head_dim)
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # --- special tokens (informational; used by tokenizers / samplers) --------------------
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    max_position_embeddings: int = 8192
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    # --- execution (same computation, different program) ----------------------------------
    # One `jax.lax.scan` over the layers' stacked parameters (leading logical axis `layers`):
    # an L-layer model compiles like a 1-layer one. False: a Python loop over `nnx.List` blocks.
    scan_layers: bool = True
    # With `remat`: what the backward may keep from the forward (a `jax.checkpoint_policies`
    # name); the rest is recomputed. nothing_saveable = full rematerialisation per layer.
    remat_policy: str = "nothing_saveable"
    # dense: the reference einsum/softmax over [B, K, G, T, S] scores. dot_product_attention:
    # `jax.nn.dot_product_attention` (XLA on CPU/TPU; `cudnn` fused kernel on GPU when
    # attention_backend allows it).
    attention: str = "dense"
    attention_backend: str = "auto"   # auto (jax chooses) | xla | cudnn
    # The weight matmuls (projections, MLP, LM head) and the dense attention's two products,
    # forward and both backward products: float32 operands (reference), or operands rounded
    # to bfloat16 with float32 accumulation and output (TPUs' default for float32 dots; AMX /
    # tensor cores run it several times faster). Activations, norms, softmax, attention
    # scores and parameters stay `dtype`.
    matmul_precision: str = "float32"

    def __post_init__(self) -> None:
        for field, allowed in (("family", FAMILIES), ("activation", ACTIVATIONS),
                               ("attention", ATTENTION_IMPLS),
                               ("attention_backend", ATTENTION_BACKENDS),
                               ("matmul_precision", MATMUL_PRECISIONS),
                               ("remat_policy", REMAT_POLICIES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; choose one of "
                                 f"{allowed}")
        if self.attention != "dense" and self.attn_logit_softcapping:
            raise ValueError("ModelConfig.attention=dot_product_attention has no attention-logit "
                             "soft-capping; use attention='dense' for this model")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full",) * self.num_layers)
        layer_types = tuple(self.layer_types)
        object.__setattr__(self, "layer_types", layer_types)
        if len(layer_types) != self.num_layers or any(t not in LAYER_TYPES for t in layer_types):
            raise ValueError(f"ModelConfig.layer_types={layer_types!r} must hold {self.num_layers}"
                             f" entries from {LAYER_TYPES}")
        if "sliding" in layer_types and not self.sliding_window:
            raise ValueError("ModelConfig.layer_types has sliding layers but sliding_window is "
                             f"{self.sliding_window!r}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    def __hash__(self) -> int:  # rope_scaling is a dict; hash its items so jit can key on us
        scaling = tuple(sorted(self.rope_scaling.items())) if self.rope_scaling else None
        fields = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rope_scaling"]
        return hash((tuple(fields), scaling))

    # --- family switches ------------------------------------------------------------------
    @property
    def norm_offset(self) -> float:
        """RMSNorm multiplies by (offset + w): Gemma stores w around 0, the others around 1."""
        return 1.0 if self.family == "gemma3" else 0.0

    @property
    def scale_embeddings(self) -> bool:
        """Gemma multiplies token embeddings by sqrt(hidden_size)."""
        return self.family == "gemma3"

    @property
    def sandwich_norms(self) -> bool:
        """Gemma-3: extra norms after attention and after the FFN, and q/k norms."""
        return self.family == "gemma3"

    @property
    def attention_scale(self) -> float:
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def forward_flops(self, tokens: int, head_tokens: int) -> float:
        """Matmul FLOPs of a forward pass over `tokens` tokens of which `head_tokens` go through
        the LM head: 2 N per token (N = the layers' weight-matrix parameters) + 2 d V per head
        token. Attention scores, norms and activations are not counted (the usual MFU
        convention at these sequence lengths)."""
        d, hd = self.hidden_size, self.head_dim
        per_layer = (d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2
                     + 3 * d * self.intermediate_size)
        return float(2 * self.num_layers * per_layer * tokens
                     + 2 * d * self.vocab_size * head_tokens)

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config_json: dict[str, Any], **overrides: Any) -> "ModelConfig":
        """Build from a Hugging Face `config.json` dict (transformers 4.x and 5.x layouts)."""
        c = dict(config_json)
        if "text_config" in c and c.get("model_type") == "gemma3":  # multimodal wrapper
            c = {**c["text_config"], "model_type": "gemma3_text"}
        model_type = c.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ValueError(f"config.json model_type={model_type!r} is not supported; "
                             f"supported: {sorted(_HF_MODEL_TYPES)}")
        family = _HF_MODEL_TYPES[model_type]
        act_name = c.get("hidden_activation") or c.get("hidden_act") or "silu"
        if act_name not in _HF_ACTIVATIONS:
            raise ValueError(f"config.json hidden_act={act_name!r} is not supported")
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        n_layers = c["num_hidden_layers"]

        # RoPE: transformers 5 nests it in `rope_parameters` (per layer type for Gemma-3);
        # transformers 4 has rope_theta / rope_scaling / rope_local_base_freq at top level.
        rope_params = c.get("rope_parameters") or {}
        if "full_attention" in rope_params or "sliding_attention" in rope_params:
            full = dict(rope_params.get("full_attention") or {})
            local = dict(rope_params.get("sliding_attention") or {})
        else:
            full = dict(rope_params)
            local = {}
        rope_theta = float(full.pop("rope_theta", c.get("rope_theta", 10000.0)))
        scaling = full or c.get("rope_scaling") or None
        if scaling is not None:
            scaling = dict(scaling)
            if "type" in scaling and "rope_type" not in scaling:
                scaling["rope_type"] = scaling.pop("type")
            if scaling.get("rope_type", "default") == "default":
                scaling = None
        local_theta = local.get("rope_theta", c.get("rope_local_base_freq"))

        sliding_window = c.get("sliding_window")
        layer_types_hf = c.get("layer_types")
        if layer_types_hf:
            layer_types = tuple("sliding" if t == "sliding_attention" else "full"
                                for t in layer_types_hf)
        elif family == "gemma3":  # 4.x configs: every `pattern`-th layer is global
            pattern = c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6
            layer_types = tuple("full" if (i + 1) % pattern == 0 else "sliding"
                                for i in range(n_layers))
        else:
            layer_types = ("full",) * n_layers
        if family == "qwen2" and not c.get("use_sliding_window", False):
            layer_types, sliding_window = ("full",) * n_layers, None
        if "sliding" not in layer_types and family != "gemma3":
            sliding_window = None

        kwargs: dict[str, Any] = dict(
            family=family,
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=c["intermediate_size"],
            rope_theta=rope_theta,
            rope_scaling=scaling,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(c.get("tie_word_embeddings", family == "gemma3")),
            qkv_bias=bool(c.get("attention_bias", family == "qwen2")),
            activation=_HF_ACTIVATIONS[act_name],
            sliding_window=sliding_window,
            layer_types=layer_types,
            rope_local_base_freq=float(local_theta) if local_theta is not None else None,
            query_pre_attn_scalar=c.get("query_pre_attn_scalar"),
            attn_logit_softcapping=c.get("attn_logit_softcapping"),
            final_logit_softcapping=c.get("final_logit_softcapping"),
            bos_token_id=c.get("bos_token_id"),
            eos_token_id=c.get("eos_token_id"),
            pad_token_id=c.get("pad_token_id"),
            max_position_embeddings=int(c.get("max_position_embeddings", 8192)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def tiny(cls, vocab_size: int, **overrides: Any) -> "ModelConfig":
        """A small Llama-style config for unit tests and the from-scratch item-id model."""
        kwargs: dict[str, Any] = dict(
            family="llama", vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, intermediate_size=128, rope_theta=10000.0,
            rms_norm_eps=1e-6, tie_embeddings=True)
        kwargs.update(overrides)
        if "head_dim" not in overrides and "hidden_size" in overrides:
            kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_heads"]
        return cls(**kwargs)
