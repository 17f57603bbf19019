"""Filters, chronological sequences, leave-one-out splits, continual-round user slices,
candidate sets and prompt examples.

Conventions (all deterministic):
- A user's sequence is their interactions sorted by timestamp; ties keep source-row order.
- Leave-one-out: train = seq[:-2]; valid = (history seq[:-2], target seq[-2]); test = (history
  seq[:-1], target seq[-1]). Users with fewer than 3 interactions are not evaluable and keep
  their whole sequence in train.
- Continual rounds: evaluable users are ordered by the time of their test interaction; the last
  ``num_test_users`` are the test users, the ``num_rounds * users_per_round`` users before them
  are the round slices (round 1 first), and every earlier user is a warm-start user.
- Candidates: the target plus C-1 items drawn uniformly without replacement from the items the
  user never interacted with, from ``np.random.default_rng([seed, user, *stream])`` so a user's
  set never depends on other users; the target's position is shuffled by the same generator.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np

from abpo_jax.data.datasets import DataError, DataWarning, Interactions, load_dataset

SPLIT_STREAMS = {"valid": 1, "test": 2, "train": 3}  # candidate RNG stream per split


# --- filters ---------------------------------------------------------------------------------


def subset(inter: Interactions, keep: np.ndarray) -> Interactions:
    """Rows where ``keep`` is true, with users and items re-indexed compactly (order kept)."""
    keep = np.asarray(keep, dtype=bool)
    user, item = inter.user[keep], inter.item[keep]
    users = np.unique(user)
    items = np.unique(item)
    user_map = np.full(inter.num_users, -1, dtype=np.int32)
    user_map[users] = np.arange(len(users), dtype=np.int32)
    item_map = np.full(inter.num_items, -1, dtype=np.int32)
    item_map[items] = np.arange(len(items), dtype=np.int32)
    return dataclasses.replace(
        inter, user=user_map[user], item=item_map[item], timestamp=inter.timestamp[keep],
        rating=inter.rating[keep],
        raw_user_ids=tuple(inter.raw_user_ids[u] for u in users),
        raw_item_ids=tuple(inter.raw_item_ids[i] for i in items),
        item_titles=tuple(inter.item_titles[i] for i in items))


def filter_min_rating(inter: Interactions, min_rating: float) -> Interactions:
    """Keep interactions rated >= ``min_rating`` (0 keeps all)."""
    if min_rating <= 0:
        return inter
    keep = inter.rating >= min_rating
    if not keep.any():
        raise DataError(f"config.data.min_rating={min_rating:g} removed every interaction of "
                        f"{inter.name} (its ratings are {inter.rating.min():g}.."
                        f"{inter.rating.max():g}); lower config.data.min_rating (0 = all)")
    return subset(inter, keep)


def warn_if_most_removed(before: Interactions, after: Interactions, field: str,
                         value: Any) -> None:
    """One DataWarning with the counts when a filter keeps less than half of the users or of the
    interactions (the default k_core=5 does that to small samples, which is easy to miss)."""
    kept_users = after.num_users / max(before.num_users, 1)
    kept_rows = after.num_interactions / max(before.num_interactions, 1)
    if min(kept_users, kept_rows) < 0.5:
        warnings.warn(DataWarning(
            f"config.{field}={value} kept {after.num_users:,} of {before.num_users:,} users ({kept_users:.0%}) "
            f"and {after.num_interactions:,} of {before.num_interactions:,} interactions "
            f"({kept_rows:.0%}) of {before.name}; lower config.{field} to keep more"),
            stacklevel=3)


def k_core(inter: Interactions, k: int) -> Interactions:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until every
    remaining user and item has at least ``k`` (repeated interactions count; 0/1 = off)."""
    if k <= 1:
        return inter
    keep = np.ones(inter.num_interactions, dtype=bool)
    while True:
        user_counts = np.bincount(inter.user[keep], minlength=inter.num_users)
        item_counts = np.bincount(inter.item[keep], minlength=inter.num_items)
        new_keep = keep & (user_counts[inter.user] >= k) & (item_counts[inter.item] >= k)
        if (new_keep == keep).all():
            break
        keep = new_keep
    if not keep.any():
        raise DataError(f"config.data.k_core={k} removed every interaction of {inter.name} "
                        f"({inter.num_users:,} users, {inter.num_interactions:,} interactions); "
                        "lower config.data.k_core (0 = off)")
    return subset(inter, keep)


# --- sequences and leave-one-out -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class UserSequences:
    """Per-user chronological sequences in CSR form: user u's rows are offsets[u]:offsets[u+1]."""

    offsets: np.ndarray      # int64 [U+1]
    items: np.ndarray        # int32 [N]
    timestamps: np.ndarray   # int64 [N]
    ratings: np.ndarray      # float32 [N]

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def span(self, user: int) -> slice:
        return slice(int(self.offsets[user]), int(self.offsets[user + 1]))

    def items_of(self, user: int) -> np.ndarray:
        return self.items[self.span(user)]


def user_sequences(inter: Interactions) -> UserSequences:
    """Sort interactions by (user, timestamp); ties keep source-row order (lexsort is stable)."""
    order = np.lexsort((inter.timestamp, inter.user))
    counts = np.bincount(inter.user, minlength=inter.num_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return UserSequences(offsets=offsets, items=inter.item[order],
                         timestamps=inter.timestamp[order], ratings=inter.rating[order])


@dataclasses.dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """Leave-one-out split over ``sequences``; ``users`` are the evaluable ones (>= 3 items)."""

    sequences: UserSequences
    users: np.ndarray        # int32 [M], ascending

    def history(self, user: int, split: str) -> slice:
        """Row span (into ``sequences`` arrays) of the user's history for ``split``."""
        s = self.sequences.span(user)
        cut = {"train": 2, "valid": 2, "test": 1}[split]
        if split != "train" and s.stop - s.start < 3:
            raise ValueError(f"user {user} has fewer than 3 interactions: no {split} target")
        return slice(s.start, s.stop - cut if s.stop - s.start >= 3 else s.stop)

    def target(self, user: int, split: str) -> int:
        """Held-out item: seq[-2] for valid, seq[-1] for test."""
        return int(self.sequences.items[self.history(user, split).stop])

    def train_items(self, user: int) -> np.ndarray:
        """seq[:-2] (the whole sequence for a non-evaluable user)."""
        return self.sequences.items[self.history(user, "train")]

    def test_times(self) -> np.ndarray:
        """int64 [M]: timestamp of each evaluable user's test interaction."""
        return self.sequences.timestamps[self.sequences.offsets[self.users + 1] - 1]


def leave_one_out(sequences: UserSequences) -> LeaveOneOut:
    users = np.flatnonzero(sequences.lengths >= 3).astype(np.int32)
    return LeaveOneOut(sequences=sequences, users=users)


# --- continual-round user slices -------------------------------------------------------------


def users_in_time_order(split: LeaveOneOut) -> np.ndarray:
    """Evaluable users ordered by the timestamp of their test interaction (ties by user index)."""
    return split.users[np.lexsort((split.users, split.test_times()))]


@dataclasses.dataclass(frozen=True, eq=False)
class UserSlices:
    """Disjoint user slices in time order: warm (earliest) < rounds[0] < ... < test (latest)."""

    warm: np.ndarray
    rounds: tuple[np.ndarray, ...]
    test: np.ndarray


def user_slices(ordered_users: np.ndarray, num_test_users: int, users_per_round: int,
                num_rounds: int) -> UserSlices:
    """Split time-ordered users: last ``num_test_users`` = test, the ``num_rounds`` slices of
    ``users_per_round`` before them = round k's fresh users, the rest = warm start."""
    for field, value in (("data.num_test_users", num_test_users),
                         ("data.users_per_round", users_per_round),
                         ("rounds.num_rounds", num_rounds)):
        if value < 0:
            raise DataError(f"config.{field}={value} must be >= 0")
    n, deployed = len(ordered_users), num_rounds * users_per_round
    if num_test_users + deployed > n:
        raise DataError(
            f"only {n} evaluable users, but config.data.num_test_users={num_test_users} + "
            f"config.rounds.num_rounds={num_rounds} x config.data.users_per_round="
            f"{users_per_round} = {num_test_users + deployed} are needed; lower them (or raise "
            "config.data.max_users)")
    test_start = n - num_test_users
    first_round = test_start - deployed
    rounds = tuple(ordered_users[first_round + r * users_per_round:
                                 first_round + (r + 1) * users_per_round]
                   for r in range(num_rounds))
    return UserSlices(warm=ordered_users[:first_round], rounds=rounds,
                      test=ordered_users[test_start:])


# --- candidate sets and examples -------------------------------------------------------------


def sample_candidates(target: int, interacted: np.ndarray, num_items: int, num_candidates: int,
                      *, seed: int, user: int, stream: Sequence[int] = (0,)
                      ) -> tuple[np.ndarray, int]:
    """Closed candidate list: ``target`` + C-1 uniform non-interacted items, shuffled.

    Returns (candidates int32 [C], position of the target). Seeded by (seed, user, *stream).
    """
    rng = np.random.default_rng([seed, user, *stream])
    banned = set(np.asarray(interacted).tolist()) | {int(target)}
    need = num_candidates - 1
    if num_items - len(banned) < need:
        raise ValueError(f"user {user} has only {num_items - len(banned)} non-interacted items, "
                         f"fewer than config.data.num_candidates-1={need}")
    if len(banned) * 2 > num_items:  # dense user: draw from the explicit pool
        pool = np.setdiff1d(np.arange(num_items), np.fromiter(banned, np.int64))
        negatives = rng.choice(pool, size=need, replace=False).tolist()
    else:  # rejection sampling: expected < 2 draws per negative
        negatives = []
        while len(negatives) < need:
            for d in rng.integers(0, num_items, size=2 * need).tolist():
                if d not in banned and len(negatives) < need:
                    banned.add(d)
                    negatives.append(d)
    candidates = np.asarray([int(target)] + negatives, dtype=np.int32)[rng.permutation(need + 1)]
    return candidates, int(np.flatnonzero(candidates == target)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One recommendation request: last-H history (oldest first), held-out target, candidates."""

    user: int
    history: np.ndarray          # int32 [h <= H] dense item ids
    history_ratings: np.ndarray  # float32 [h]
    target: int
    candidates: np.ndarray       # int32 [C], target at candidates[target_index]
    target_index: int
    event: int = -1              # row of the target event in the UserSequences (-1: unknown)


def _example(split: LeaveOneOut, user: int, history: slice, target: int, *, history_len: int,
             num_candidates: int, num_items: int, seed: int, stream: Sequence[int]) -> Example:
    seqs = split.sequences
    start = max(history.start, history.stop - history_len)
    candidates, target_index = sample_candidates(
        target, seqs.items_of(user), num_items, num_candidates, seed=seed, user=user,
        stream=stream)
    return Example(user=int(user), history=seqs.items[start:history.stop],
                   history_ratings=seqs.ratings[start:history.stop], target=int(target),
                   candidates=candidates, target_index=target_index, event=history.stop)


def build_examples(split: LeaveOneOut, users: np.ndarray, which: str, *, history_len: int,
                   num_candidates: int, num_items: int, seed: int) -> list[Example]:
    """Held-out examples (``which`` = valid | test) for ``users``, one per user."""
    if which not in ("valid", "test"):
        raise ValueError(f"which={which!r}; choose valid or test")
    return [_example(split, int(u), split.history(int(u), which), split.target(int(u), which),
                     history_len=history_len, num_candidates=num_candidates,
                     num_items=num_items, seed=seed, stream=(SPLIT_STREAMS[which],))
            for u in users]


def build_train_examples(split: LeaveOneOut, users: np.ndarray, *, history_len: int,
                         num_candidates: int, num_items: int, seed: int,
                         last_per_user: int = 0) -> list[Example]:
    """Next-item examples inside each user's train sequence: target seq[t], history seq[:t]
    (t >= 1); ``last_per_user`` > 0 keeps only each user's last that many positions."""
    out = []
    for u in users:
        span = split.history(int(u), "train")
        first = span.start + 1
        if last_per_user > 0:
            first = max(first, span.stop - last_per_user)
        for pos in range(first, span.stop):
            out.append(_example(split, int(u), slice(span.start, pos),
                                int(split.sequences.items[pos]), history_len=history_len,
                                num_candidates=num_candidates, num_items=num_items, seed=seed,
                                stream=(SPLIT_STREAMS["train"], pos - span.start)))
    return out


# --- short item ids for prompts --------------------------------------------------------------


def item_short_ids(inter: Interactions) -> list[str]:
    """Prompt id of each dense item: the raw id when every raw id is a canonical integer
    (MovieLens-100k), else the item's index in sorted raw-id order (ML-1M titles, ASINs)."""
    raw = inter.raw_item_ids
    if all(r.isdigit() and str(int(r)) == r for r in raw):
        return list(raw)
    rank = np.empty(len(raw), dtype=np.int64)
    rank[sorted(range(len(raw)), key=raw.__getitem__)] = np.arange(len(raw))
    return [str(r) for r in rank.tolist()]


def short_id_index(short_ids: Sequence[str]) -> dict[str, int]:
    """Inverse of :func:`item_short_ids`: prompt id -> dense item index."""
    index = {s: i for i, s in enumerate(short_ids)}
    if len(index) != len(short_ids):
        raise ValueError("short ids are not unique")
    return index


# --- everything the config asks for ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
    """The filtered dataset, its leave-one-out split, round slices and prompt ids."""

    interactions: Interactions
    split: LeaveOneOut
    ordered_users: np.ndarray    # evaluable users in test-time order (after max_users)
    slices: UserSlices | None    # None with rounds.split=events
    short_ids: list[str]


def prepare_data(config: Any, interactions: Interactions | None = None) -> PreparedData:
    """Load (unless given), filter (min_rating, then k-core) and split as ``config.data`` says;
    rounds come from ``config.rounds.num_rounds``."""
    data = config.data
    inter = interactions if interactions is not None else load_dataset(data)
    rated = filter_min_rating(inter, data.min_rating)
    warn_if_most_removed(inter, rated, "data.min_rating", f"{data.min_rating:g}")
    cored = k_core(rated, data.k_core)
    warn_if_most_removed(rated, cored, "data.k_core", data.k_core)
    inter = cored
    split = leave_one_out(user_sequences(inter))
    ordered = users_in_time_order(split)
    if data.max_users > 0:
        ordered = ordered[:data.max_users]
    # event rounds (`data.events`) cut the timeline instead of slicing users
    slices = None if config.rounds.get("split", "users") == "events" else user_slices(
        ordered, data.num_test_users, data.users_per_round, config.rounds.num_rounds)
    return PreparedData(interactions=inter, split=split, ordered_users=ordered, slices=slices,
                        short_ids=item_short_ids(inter))


__all__ = ["Example", "LeaveOneOut", "PreparedData", "UserSequences", "UserSlices",
           "build_examples", "build_train_examples", "filter_min_rating", "item_short_ids",
           "k_core", "leave_one_out", "prepare_data", "sample_candidates", "short_id_index",
           "subset", "user_sequences", "user_slices", "users_in_time_order", "warn_if_most_removed"]
