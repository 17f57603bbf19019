"""The transformers twin of a Decoder: the same architecture (`hf_config_dict`) holding the same
weights (`hf_state_dict`), for the tests' parity checks and the benchmarks' torch peers.

torch and transformers are test-only extras, imported here on use. The twin is built on the meta
device and handed the weights (no random init of hundreds of millions of parameters: seconds
for Gemma-3-270M), float32, in eval mode; its weights are copies (a torch optimizer may update
them in place; our arrays must not change under it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abpo_jax.models.loaders import hf_config_dict, hf_state_dict

# our family -> (transformers config class, causal-LM class)
_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
            "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM")}


def hf_config(config: Any, **changes: Any) -> Any:
    """The transformers config object of our ModelConfig (with `changes`, e.g. a window)."""
    import transformers

    fields = {k: v for k, v in hf_config_dict(config).items()
              if k not in ("model_type", "architectures")}
    return getattr(transformers, _CLASSES[config.family][0])(**{**fields, **changes})


def hf_causal_lm(config: Any, weights: dict[str, np.ndarray], **config_changes: Any) -> Any:
    """A float32 transformers causal LM of our ModelConfig `config` holding `weights` (an
    `hf_state_dict`, e.g. taken before a step donated the model's buffers)."""
    import torch
    import transformers

    hfc = hf_config(config, **config_changes)
    with torch.device("meta"):
        hf = getattr(transformers, _CLASSES[config.family][1])(hfc)
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise ValueError(f"weight mapping: missing {missing}, unexpected {unexpected}")
    if config.tie_embeddings:
        hf.tie_weights()
    # buffers computed at construction, which the meta device left empty
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hfc)
    if hasattr(hf.model.embed_tokens, "embed_scale"):   # Gemma: sqrt(d), a buffer
        hf.model.embed_tokens.embed_scale = torch.tensor(hfc.hidden_size ** 0.5)
    empty = [n for n, b in hf.named_buffers() if b.is_meta]
    empty += [n for n, p in hf.named_parameters() if p.is_meta]
    if empty:
        raise ValueError(f"hf_causal_lm: tensors left on the meta device: {empty[:5]}")
    return hf.float().eval()


def hf_twin(model: Any, **config_changes: Any) -> Any:
    """`hf_causal_lm` of our Decoder `model` (LoRA merged first) with its current weights."""
    return hf_causal_lm(model.config, hf_state_dict(model), **config_changes)
