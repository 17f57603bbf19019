"""`LossSettings`: the `config.loss` section as a frozen (hashable, jit-static) dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# Allowed values per choice field; mirrors `config.CHOICES["loss.*"]` (this layer imports nothing
# of the package, so a directly built LossSettings is checked here too).
LOSS_CHOICES: dict[str, tuple[str, ...]] = {
    "anchor": ("off", "baseline_only", "full"),
    "snips": ("on", "off"),
    "tempering": ("one", "one_minus_c", "c", "threshold"),
    "certainty_tokens": ("item", "completion"),
    "certainty_norm": ("batch", "running"),
    "std": ("none", "population", "bessel"),
    "kl_estimator": ("k1", "k3"),
    "aggregation": ("token_mean", "sequence_mean", "constant"),
}


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Every choice of the ABPO / GRPO objective; field names and defaults equal `config.loss`.

    Frozen and hashable, so it can be a static argument of a jitted step.
    `kl_ratio_correction` is not (yet) in `config.loss`: it multiplies the per-token KL by the
    PPO ratio, as TRL's `use_bias_correction_kl` does (TRL's default True; ours False).
    """

    name: str = "abpo"
    num_generations: int = 8
    anchor: str = "full"
    snips: str = "on"
    snips_clip: float = 10.0
    tempering: str = "one_minus_c"
    tempering_threshold: float = 0.5
    positive_reward: float = 1.0
    negative_scale: float = 1.0
    certainty_tokens: str = "item"
    certainty_norm: str = "batch"
    std: str = "population"
    eps: float = 1e-4
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.04
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    max_completion_length: int = 16
    rewards: tuple[str, ...] = ("format", "anchor_match")
    kl_ratio_correction: bool = False

    def __post_init__(self) -> None:
        for field, allowed in LOSS_CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"loss.{field}={value!r} is not allowed; choose one of: "
                                 + ", ".join(allowed))
        for field in ("snips_clip", "num_generations", "max_completion_length"):
            if not getattr(self, field) > 0:
                raise ValueError(f"loss.{field}={getattr(self, field)!r} must be > 0")
        for field in ("eps", "epsilon_low", "epsilon_high", "beta", "negative_scale"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"loss.{field}={getattr(self, field)!r} must be >= 0")
        # ml_collections hands tuples back as lists after some overrides; keep it hashable.
        object.__setattr__(self, "rewards", tuple(self.rewards))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "LossSettings":
        """Build from `config.loss` (a ConfigDict or dict); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(mapping).items() if k in names})

    def replace(self, **changes: Any) -> "LossSettings":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
