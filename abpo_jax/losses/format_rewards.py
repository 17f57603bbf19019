"""Format rewards of a text-mode completion (pure functions of the decoded text -> float).

Definitions follow the authors' sibling code, `src/open_r1/rewards.py` of cpark88/TWiCE-Rec and
cpark88/CURE (`tag_presence_reward`, `tag_count_reward`, `only_expected_tags_reward`), with
their tag set (think, item_nm, item_id) replaced by ours, :data:`EXPECTED_TAGS` (think and
item_id; there is no item-name tag here):

* tag_presence: 1 if every expected tag occurs as a block ``<tag>...</tag>`` (non-greedy, across
  newlines), else 0.
* tag_count: the fraction of the expected markers (``<tag>`` and ``</tag>`` of each expected
  tag) that occur exactly once. The sibling adds 0.25 per marker; with our four markers that is
  the same number (its six markers reach 1.5, ours 1.0).
* only_expected_tags: 1 if every ``<name>`` / ``</name>`` tag in the text (name of letters,
  digits, underscores) is an expected one, else 0. (The sibling also allows a ``sales`` tag
  that our completions never use.)

:func:`format_reward` sums the configured ones (`config.loss.format_rewards`).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from abpo_jax.data.prompts import ITEM_OPEN, THINK_OPEN

EXPECTED_TAGS: tuple[str, ...] = (THINK_OPEN.strip("<>"), ITEM_OPEN.strip("<>"))
_ANY_TAG = re.compile(r"</?([a-zA-Z0-9_]+)>")


def tag_presence(text: str, tags: Sequence[str] = EXPECTED_TAGS) -> float:
    """1.0 if every tag in `tags` has a ``<tag>...</tag>`` block in `text`, else 0.0."""
    ok = all(re.search(rf"<{re.escape(t)}>.*?</{re.escape(t)}>", text, re.DOTALL) for t in tags)
    return 1.0 if ok else 0.0


def tag_count(text: str, tags: Sequence[str] = EXPECTED_TAGS) -> float:
    """Fraction of the markers ``<tag>``, ``</tag>`` of `tags` that occur exactly once."""
    markers = [m for t in tags for m in (f"<{t}>", f"</{t}>")]
    if not markers:
        return 0.0
    return sum(text.count(m) == 1 for m in markers) / len(markers)


def only_expected_tags(text: str, tags: Sequence[str] = EXPECTED_TAGS) -> float:
    """1.0 if no tag other than those in `tags` (opening or closing) appears, else 0.0."""
    return 1.0 if set(_ANY_TAG.findall(text)) <= set(tags) else 0.0


FORMAT_REWARDS: dict[str, Callable[..., float]] = {
    "tag_presence": tag_presence,
    "tag_count": tag_count,
    "only_expected_tags": only_expected_tags,
}


def format_reward(text: str, sources: Sequence[str],
                  tags: Sequence[str] = EXPECTED_TAGS) -> float:
    """Sum of the format rewards named in `sources` (keys of :data:`FORMAT_REWARDS`)."""
    unknown = [s for s in sources if s not in FORMAT_REWARDS]
    if unknown:
        raise ValueError(f"format_reward: unknown sources {unknown}; choose from "
                         f"{sorted(FORMAT_REWARDS)}")
    return float(sum(FORMAT_REWARDS[s](text, tags) for s in sources))


__all__ = ["EXPECTED_TAGS", "FORMAT_REWARDS", "format_reward", "only_expected_tags",
           "tag_count", "tag_presence"]
