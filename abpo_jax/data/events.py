"""Event rounds (`rounds.split=events`, DESIGN.md "Continual protocol at deployment volume").

Every interaction event (u, i, t) is a recommendation request: context = u's last H items before
it (ratings as known then), candidates = i plus C-1 items u had not interacted with by t, target
= i. The timeline (all events in time order) is cut by event quantiles into

    warm period (SFT warm start) | window 1 | ... | window R | test window

`rounds.warm_fraction` of the events are warm; the rest is cut into R + 1 windows of equal event
counts, the last being the test window. A cut never splits a timestamp: every event of a later
window is strictly later than every event of an earlier one, so an update trained on windows
<= k never sees a target of window k + 1 or of the test window before its time.

Conventions (all deterministic, all vectorised with NumPy over the events; no per-event Python):
- Event id = the event's row in :class:`~abpo_jax.data.splits.UserSequences` (user-major,
  chronological within a user, ties in source order); a user's position p is its index in the
  user's sequence. Events with p = 0 (no history) are not requests.
- The global time order sorts by (timestamp, user, position).
- "Interacted by t" = the user's first interaction with the item has timestamp <= t (items
  consumed at the same timestamp as the target are never negatives).
- Candidates depend only on (seed, event id): a counter-based hash (splitmix64) draws
  the negatives, so an event's request is the same whether it is deployed on, validated on or
  sampled with other events; the target's slot is drawn the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from abpo_jax.data.datasets import DataError
from abpo_jax.data.splits import Example, UserSequences

EVENT_STREAM = 11           # hash stream of every event request's candidates
SAMPLE_STREAMS = {"deploy": 1, "eval": 2, "sft": 3}   # default_rng streams for the samples

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def event_hash(seed: int, events: np.ndarray, stream: int = EVENT_STREAM) -> np.ndarray:
    """uint64 [N]: a per-event key that depends only on (seed, stream, event id)."""
    base = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ splitmix64(np.uint64(stream)))
    return splitmix64(base ^ np.asarray(events, np.uint64))


def uniform_ints(keys: np.ndarray, counters: np.ndarray, high: int) -> np.ndarray:
    """int64 [N, M]: draw `counters` [M] of each key [N], uniform in [0, high) (the top 53 bits
    of a 64-bit hash modulo high: the bias is below high / 2**53)."""
    with np.errstate(over="ignore"):
        z = splitmix64(keys[:, None] + np.asarray(counters, np.uint64)[None, :] * _GOLDEN)
    return ((z >> np.uint64(11)) % np.uint64(high)).astype(np.int64)


# --- the timeline -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EventIndex:
    """Per-event arrays over `sequences` rows and the 'interacted by t' lookup."""

    sequences: UserSequences
    user: np.ndarray            # int32 [E] user of each event row
    position: np.ndarray        # int64 [E] index in the user's sequence
    first_keys: np.ndarray      # int64 [P] sorted user * num_items + item (distinct pairs)
    first_time: np.ndarray      # int64 [P] timestamp of the pair's first interaction
    num_items: int

    @classmethod
    def build(cls, sequences: UserSequences, num_items: int) -> "EventIndex":
        lengths = sequences.lengths
        user = np.repeat(np.arange(sequences.num_users, dtype=np.int32), lengths)
        position = np.arange(len(sequences.items), dtype=np.int64) - sequences.offsets[user]
        keys = user.astype(np.int64) * num_items + sequences.items
        # first occurrence of each (user, item) in chronological order = its first time
        uniq, first = np.unique(keys, return_index=True)
        return cls(sequences, user, position, uniq, sequences.timestamps[first], num_items)

    def interacted_by(self, users: np.ndarray, items: np.ndarray, times: np.ndarray
                      ) -> np.ndarray:
        """bool, broadcast of users/times [N, 1] against items [N, M]: has the user interacted
        with the item at or before the time?"""
        keys = np.asarray(users, np.int64) * self.num_items + np.asarray(items, np.int64)
        idx = np.searchsorted(self.first_keys, keys)
        idx = np.minimum(idx, len(self.first_keys) - 1)
        return (self.first_keys[idx] == keys) & (self.first_time[idx] <= times)

    def time_order(self) -> np.ndarray:
        """Every event id sorted by (timestamp, user, position)."""
        return np.lexsort((self.position, self.user, self.sequences.timestamps))


@dataclasses.dataclass(frozen=True, eq=False)
class Timeline:
    """The cut timeline: `order` (event ids in time order) and `bounds` into it:
    warm = order[bounds[0]:bounds[1]], window k (1..R) = order[bounds[k]:bounds[k+1]],
    test = order[bounds[R+1]:bounds[R+2]]. Only events with history (position >= 1) are in
    `order`'s windows' requests; the warm period keeps them all for the record."""

    index: EventIndex
    order: np.ndarray
    bounds: np.ndarray          # int64 [R + 3]

    @property
    def num_rounds(self) -> int:
        return len(self.bounds) - 3

    def _span(self, w: int) -> np.ndarray:
        events = self.order[self.bounds[w]:self.bounds[w + 1]]
        return events[self.index.position[events] >= 1]   # a request needs a history

    def warm(self) -> np.ndarray:
        """Warm-period events with a history, in time order."""
        return self._span(0)

    def window(self, k: int) -> np.ndarray:
        """Deployment window k (1..R): its events with a history, in time order."""
        if not 1 <= k <= self.num_rounds:
            raise ValueError(f"window {k} not in 1..{self.num_rounds}")
        return self._span(k)

    def test(self) -> np.ndarray:
        """The test window's events with a history, in time order."""
        return self._span(self.num_rounds + 1)

    def next_window(self, k: int) -> np.ndarray:
        """The events the policy after round k is validated on: window k + 1, or the test
        window after the last round."""
        return self.window(k + 1) if k < self.num_rounds else self.test()

    def start_time(self, w: int) -> int:
        """Timestamp of the first event of span w (0 = warm, k = window k, R+1 = test)."""
        return int(self.index.sequences.timestamps[self.order[self.bounds[w]]])


def cut_timeline(index: EventIndex, num_rounds: int, warm_fraction: float) -> Timeline:
    """Warm period = the first `warm_fraction` of the events; the rest in R + 1 windows of equal
    event counts (the last = test). Each cut moves back to the first event of its timestamp, so
    no timestamp spans two windows; a window left empty raises DataError naming the fields."""
    order = index.time_order()
    times = index.sequences.timestamps[order]
    n = len(order)
    rest = n - int(round(warm_fraction * n))
    cuts = [n - rest + (rest * w) // (num_rounds + 1) for w in range(num_rounds + 1)]
    # a tie at a cut goes wholly to the later window: cut at the tie's first event
    cuts = np.searchsorted(times, times[np.minimum(cuts, n - 1)], side="left")
    bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    timeline = Timeline(index, order, bounds)
    spans = [timeline.warm()] + [timeline.window(k) for k in range(1, num_rounds + 1)] + [
        timeline.test()]
    empty = [w for w, s in enumerate(spans) if len(s) == 0]
    if empty:
        names = ["the warm period" if w == 0 else "the test window" if w == num_rounds + 1
                 else f"window {w}" for w in empty]
        raise DataError(f"rounds.split=events: {', '.join(names)} holds no request "
                        f"({n:,} events, config.rounds.warm_fraction={warm_fraction:g}, "
                        f"config.rounds.num_rounds={num_rounds}; timestamps tie across a cut "
                        "move wholly to the later window); lower config.rounds.num_rounds or "
                        "change config.rounds.warm_fraction")
    return timeline


# --- requests ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Requests:
    """Event requests as arrays, one row per event (time order kept)."""

    sequences: UserSequences
    event: np.ndarray           # int64 [N] event ids (rows of `sequences`)
    user: np.ndarray            # int32 [N]
    timestamp: np.ndarray       # int64 [N]
    history_start: np.ndarray   # int64 [N] first history row; history = rows [start, event)
    target: np.ndarray          # int32 [N] the consumed item
    candidates: np.ndarray      # int32 [N, C]
    target_index: np.ndarray    # int32 [N]

    def __len__(self) -> int:
        return len(self.event)

    def history(self, history_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int32 [N, H], ratings float32 [N, H]), oldest first, right-padded with -1 /
        0 (the last H items before each event)."""
        rows = self.history_start[:, None] + np.arange(history_len)[None, :]
        valid = rows < self.event[:, None]
        rows = np.where(valid, rows, 0)
        s = self.sequences
        return (np.where(valid, s.items[rows], -1).astype(np.int32),
                np.where(valid, s.ratings[rows], 0.0).astype(np.float32))

    def examples(self) -> list[Example]:
        """The requests as `Example`s (history slices are views into the sequences)."""
        s = self.sequences
        return [Example(user=u, history=s.items[a:e], history_ratings=s.ratings[a:e],
                        target=t, candidates=c, target_index=ti, event=e)
                for u, a, e, t, c, ti in zip(self.user.tolist(), self.history_start.tolist(),
                                             self.event.tolist(), self.target.tolist(),
                                             self.candidates, self.target_index.tolist())]


def sample_negatives(index: EventIndex, events: np.ndarray, count: int, *, seed: int
                     ) -> np.ndarray:
    """int32 [N, count]: per event, `count` distinct items the user had not interacted with by
    the event's time, drawn by the event's hash (independent of the other events)."""
    n = len(events)
    out = np.full((n, count), -1, np.int64)
    if n == 0 or count == 0:
        return out.astype(np.int32)
    users = index.user[events][:, None]
    times = index.sequences.timestamps[events][:, None]
    keys = event_hash(seed, events)
    todo = np.arange(n)
    draws, offset = 2 * count + 8, 0
    for _ in range(6):   # each pass redraws only the rows still short of `count`
        d = uniform_ints(keys[todo], np.arange(offset, offset + draws), index.num_items)
        offset += draws
        ok = ~index.interacted_by(users[todo], d, times[todo])
        # keep the first occurrence of each item in its row
        srt = np.argsort(d, axis=1, kind="stable")
        ds = np.take_along_axis(d, srt, 1)
        dup_sorted = np.concatenate([np.zeros((len(todo), 1), bool), ds[:, 1:] == ds[:, :-1]], 1)
        dup = np.empty_like(dup_sorted)
        np.put_along_axis(dup, srt, dup_sorted, 1)
        ok &= ~dup
        rank = np.cumsum(ok, axis=1)
        full = rank[:, -1] >= count
        rows = todo[full]
        sel = ok[full] & (rank[full] <= count)
        out[rows] = d[full][sel].reshape(len(rows), count)
        todo = todo[~full]
        if not len(todo):
            return out.astype(np.int32)
        draws *= 4
    # dense users (few non-interacted items left): draw from the explicit pool
    for r in todo.tolist():
        e = int(events[r])
        u, t = int(index.user[e]), int(index.sequences.timestamps[e])
        seen = index.interacted_by(np.full(index.num_items, u), np.arange(index.num_items),
                                   np.full(index.num_items, t))
        pool = np.flatnonzero(~seen)
        if len(pool) < count:
            raise DataError(f"user {u} has only {len(pool)} items not interacted with by "
                            f"event {e}, fewer than config.data.num_candidates-1={count}")
        score = uniform_ints(keys[r:r + 1], np.arange(1 << 20, (1 << 20) + len(pool)),
                             1 << 40)[0]
        out[r] = pool[np.argsort(score, kind="stable")[:count]]
    return out.astype(np.int32)


def build_requests(index: EventIndex, events: np.ndarray, *, history_len: int,
                   num_candidates: int, seed: int) -> Requests:
    """The requests of `events` (event ids): vectorised over all of them."""
    events = np.asarray(events, np.int64)
    s = index.sequences
    if len(events) and (index.position[events] < 1).any():
        raise ValueError("an event without history (the user's first interaction) is not a "
                         "request")
    user = index.user[events]
    start = np.maximum(s.offsets[user], events - history_len)
    target = s.items[events].astype(np.int32)
    negatives = sample_negatives(index, events, num_candidates - 1, seed=seed)
    slot = uniform_ints(event_hash(seed, events), np.array([1 << 62]), num_candidates)[:, 0]
    # insert the target at `slot`: columns before it shift by 0, after it by one
    cols = np.arange(num_candidates)[None, :]
    src = np.where(cols < slot[:, None], cols, cols - 1)
    cands = np.where(cols == slot[:, None], target[:, None],
                     np.take_along_axis(negatives, np.maximum(src, 0), 1)).astype(np.int32)
    return Requests(sequences=s, event=events, user=user, timestamp=s.timestamps[events],
                    history_start=start, target=target, candidates=cands,
                    target_index=slot.astype(np.int32))


def sample_events(events: np.ndarray, size: int, *, seed: int, stream: str, k: int
                  ) -> np.ndarray:
    """`size` of `events` without replacement (0 or >= len: all), kept in time order; drawn
    from default_rng([seed, stream, k])."""
    if size <= 0 or size >= len(events):
        return events
    rng = np.random.default_rng([seed, SAMPLE_STREAMS[stream], k])
    return events[np.sort(rng.choice(len(events), size=size, replace=False))]


# --- everything the config asks for ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EventRounds:
    """Requests of an event-round run: deployed per round, validation (the next window) per
    round 0..R, the test window, and the SFT warm-start examples."""

    timeline: Timeline
    deploy: tuple[Requests, ...]      # round k's requests at index k - 1
    valid: tuple[Requests, ...]       # after round k (0..R): a sample of the next window
    test: Requests
    sft: Requests

    def summary(self) -> str:
        t = self.timeline
        return (f"event rounds: {len(t.warm()):,} warm events, "
                + ", ".join(f"window {k}: {len(t.window(k)):,} events "
                            f"({len(self.deploy[k - 1]):,} requests)"
                            for k in range(1, t.num_rounds + 1))
                + f", test window: {len(t.test()):,} events ({len(self.test):,} evaluated)")


def event_rounds(config: Any, sequences: UserSequences, num_items: int) -> EventRounds:
    """The event-round requests `config` asks for (`config.rounds.*`, `config.data.*`,
    `config.train.sft_steps * batch_size` warm-start examples)."""
    r, d, seed = config.rounds, config.data, int(config.seed)
    index = EventIndex.build(sequences, num_items)
    timeline = cut_timeline(index, int(r.num_rounds), float(r.warm_fraction))
    common = dict(history_len=int(d.history_len), num_candidates=int(d.num_candidates),
                  seed=seed)
    R = timeline.num_rounds
    deploy = tuple(build_requests(index, sample_events(
        timeline.window(k), int(r.requests_per_round), seed=seed, stream="deploy", k=k),
        **common) for k in range(1, R + 1))
    evals = int(r.eval_requests)
    valid = tuple(build_requests(index, sample_events(
        timeline.next_window(k), evals, seed=seed, stream="eval", k=k + 1), **common)
        for k in range(R + 1))
    test = build_requests(index, sample_events(timeline.test(), evals, seed=seed,
                                               stream="eval", k=R + 1), **common)
    sft_size = max(int(config.train.sft_steps) * int(config.train.batch_size), 1)
    warm = timeline.warm()
    # the most recent warm events (the prior serving policy learnt from the latest behaviour),
    # in a seeded order
    recent = warm[-min(len(warm), 4 * sft_size):]
    sft_events = sample_events(recent, sft_size, seed=seed, stream="sft", k=0)
    order = np.random.default_rng([seed, SAMPLE_STREAMS["sft"], 1]).permutation(len(sft_events))
    sft = build_requests(index, sft_events[order], **common)
    return EventRounds(timeline=timeline, deploy=deploy, valid=valid, test=test, sft=sft)


__all__ = ["EventIndex", "EventRounds", "Requests", "Timeline", "build_requests",
           "cut_timeline", "event_rounds", "sample_events", "sample_negatives", "splitmix64"]
