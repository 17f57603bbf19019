"""Real-behaviour feedback (`sim.feedback=replay`): no fitted model, the outcome is what the user
actually did (DESIGN.md "Continual protocol at deployment volume").

A request is an interaction event (u, i, t) (`data.events`). The exposed item c is clicked iff the
user consumed it at that event or within their next `horizon` events:

    P(y = 1 | request, c) = (1 - e) * 1[c in consumed(request)]

with e = `sim.external_ignore` (the ambiguity condition: a no-response can be external). So the
true replay CTR of a policy on a request is exactly (1 - e) * sum of pi(c | x) over the consumed
candidates, and the per-candidate click probabilities are the same [N, C] array the MNL
simulator gives (`CLICK_PROBS`), so every table and loss input reads both sources alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from abpo_jax.data.splits import UserSequences


@dataclasses.dataclass(frozen=True, eq=False)
class ReplayFeedback:
    """Outcomes of event requests from the logged behaviour itself; vectorised over requests.

    Requests are named by event id (the event's row in `sequences`, `data.events.Requests.event`).
    """

    sequences: UserSequences
    num_items: int
    horizon: int = 0
    external_ignore: float = 0.0

    name = "replay"

    @property
    def num_users(self) -> int:
        return self.sequences.num_users

    def consumed(self, events: np.ndarray) -> np.ndarray:
        """int32 [N, horizon + 1]: the item of each event and the user's next `horizon` items
        (-1 past the end of the user's sequence)."""
        events = np.asarray(events, np.int64)
        s = self.sequences
        user_end = s.offsets[np.searchsorted(s.offsets, events, side="right")]
        rows = events[:, None] + np.arange(self.horizon + 1)[None, :]
        return np.where(rows < user_end[:, None], s.items[np.minimum(rows, len(s.items) - 1)],
                        -1).astype(np.int32)

    def click_probs(self, users: np.ndarray, events: np.ndarray, candidates: np.ndarray
                    ) -> np.ndarray:
        """float32 [N, C]: (1 - e) * 1[candidate consumed at the event or within the horizon]
        (`users` is the `Feedback` signature's; the event names its user)."""
        events = np.asarray(events, np.int64)
        if len(events) and events.min() < 0:
            raise ValueError("sim.feedback=replay needs the event of every request (the "
                             "request was not built from an interaction event)")
        cands = np.asarray(candidates)
        hit = (cands[:, :, None] == self.consumed(events)[:, None, :]).any(-1)
        return ((1.0 - self.external_ignore) * hit).astype(np.float32)

    def sample_outcomes(self, key: jax.Array, users: np.ndarray, events: np.ndarray,
                        exposed: np.ndarray) -> np.ndarray:
        """int32 [N]: 1 iff the exposed item was consumed (and the user did not ignore the
        recommendation for an external reason, drawn with `key`)."""
        p = self.click_probs(users, events, np.asarray(exposed)[:, None])[:, 0]
        respond = np.asarray(jax.random.uniform(key, (len(p),)))
        return (respond < p).astype(np.int32)

    def true_ctr(self, users: np.ndarray, events: np.ndarray, candidates: np.ndarray,
                 policy_probs: np.ndarray) -> float:
        """Mean true replay CTR of a policy with probabilities [N, C] over `candidates`."""
        return float(np.mean(np.sum(np.asarray(policy_probs, np.float64)
                                    * self.click_probs(users, events, candidates), -1)))


@dataclasses.dataclass(frozen=True, eq=False)
class MnlFeedback:
    """The fitted MNL simulator (`sim.users.UserSimulator`) behind the `Feedback` signature:
    outcomes depend on (user, item) only, the event is not needed."""

    simulator: Any

    name = "mnl"

    @property
    def num_users(self) -> int:
        return self.simulator.prefs.num_users

    @property
    def num_items(self) -> int:
        return self.simulator.prefs.num_items

    def click_probs(self, users: np.ndarray, events: np.ndarray, candidates: np.ndarray
                    ) -> np.ndarray:
        return np.asarray(self.simulator.click_probs(np.asarray(users), np.asarray(candidates)),
                          np.float32)

    def sample_outcomes(self, key: jax.Array, users: np.ndarray, events: np.ndarray,
                        exposed: np.ndarray) -> np.ndarray:
        return np.asarray(self.simulator.sample_outcomes(key, np.asarray(users),
                                                         np.asarray(exposed)))


Feedback = ReplayFeedback | MnlFeedback   # click_probs / sample_outcomes keyed by (user, event)


def feedback_from_config(config: Any, simulator: Any, sequences: UserSequences,
                         num_items: int) -> Feedback:
    """`sim.feedback`: mnl (the fitted simulator) | replay (the logged behaviour itself)."""
    if config.sim.get("feedback", "mnl") == "replay":
        return ReplayFeedback(sequences, num_items, int(config.sim.replay_horizon),
                              float(config.sim.external_ignore))
    return MnlFeedback(simulator)


def as_feedback(source: Any) -> Feedback:
    """`source` as a `Feedback` (a bare `sim.users.UserSimulator` is the mnl source)."""
    return source if isinstance(source, (ReplayFeedback, MnlFeedback)) else MnlFeedback(source)


def request_keys(examples: Any) -> tuple[np.ndarray, np.ndarray]:
    """(users [N], events [N]) of a sequence of `data.splits.Example`s."""
    return (np.fromiter((e.user for e in examples), np.int64, len(examples)),
            np.fromiter((getattr(e, "event", -1) for e in examples), np.int64, len(examples)))


__all__ = ["Feedback", "MnlFeedback", "ReplayFeedback", "as_feedback", "feedback_from_config",
           "request_keys"]
