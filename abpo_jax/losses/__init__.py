"""ABPO / GRPO objectives as pure, registered jax.numpy functions (imports nothing of the package)."""

from abpo_jax.losses.advantages import (anchored_advantages, group_advantages, insert_anchor,
                                        leave_one_out_advantages)
from abpo_jax.losses.certainty import (CertaintyStats, normalize_certainty_batch,
                                       normalize_certainty_running, sequence_self_certainty,
                                       token_self_certainty)
from abpo_jax.losses.objective import AnchorTerms, abpo_objective, anchor_terms
from abpo_jax.losses.policy import (abpo_policy_loss, grpo_policy_loss, kl_per_token,
                                    policy_loss)
from abpo_jax.losses.registry import (get_advantage_estimator, get_policy_loss, get_tempering,
                                      register_advantage_estimator, register_policy_loss,
                                      register_tempering)
from abpo_jax.losses.rewards import anchor_reward
from abpo_jax.losses.settings import LossSettings
from abpo_jax.losses.snips import snips_weights

__all__ = [
    "AnchorTerms", "CertaintyStats", "LossSettings", "abpo_objective", "abpo_policy_loss",
    "anchor_terms", "anchor_reward", "anchored_advantages",
    "get_advantage_estimator", "get_policy_loss", "get_tempering", "group_advantages",
    "grpo_policy_loss", "insert_anchor", "kl_per_token", "leave_one_out_advantages",
    "normalize_certainty_batch", "normalize_certainty_running", "policy_loss",
    "register_advantage_estimator", "register_policy_loss", "register_tempering",
    "sequence_self_certainty", "snips_weights", "token_self_certainty",
]
