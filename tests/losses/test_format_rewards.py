"""Format rewards (sibling definitions) on hand-checked strings."""

import pytest

from abpo_jax.losses.format_rewards import (format_reward, only_expected_tags, tag_count,
                                            tag_presence)

GOOD = "<think>\nuser likes sci-fi\n</think><item_id>A7</item_id>"
NO_THINK = "<item_id>A7</item_id>"
DOUBLE_CLOSE = "<think>a</think> b </think><item_id>A7</item_id>"
STRAY_TAG = "<think>a <b>bold</b></think><item_id>A7</item_id>"
UNCLOSED = "<think>a</think><item_id>A7"


@pytest.mark.parametrize("text,presence,count,only", [
    (GOOD, 1.0, 1.0, 1.0),
    (NO_THINK, 0.0, 0.5, 1.0),
    (DOUBLE_CLOSE, 1.0, 0.75, 1.0),
    (STRAY_TAG, 1.0, 1.0, 0.0),
    (UNCLOSED, 0.0, 0.75, 1.0),
    ("", 0.0, 0.0, 1.0),
])
def test_each_reward_by_hand(text, presence, count, only):
    assert tag_presence(text) == presence
    assert tag_count(text) == count
    assert only_expected_tags(text) == only


def test_format_reward_sums_configured_sources_and_tags_are_configurable():
    sources = ("tag_presence", "tag_count", "only_expected_tags")
    assert format_reward(GOOD, sources) == 3.0
    assert format_reward(DOUBLE_CLOSE, sources) == 2.75
    assert format_reward(STRAY_TAG, ("tag_count",)) == 1.0
    assert format_reward(GOOD, ()) == 0.0
    # without free text only the item tag is expected: a think block is then a stray tag
    assert format_reward(NO_THINK, sources, tags=("item_id",)) == 3.0
    assert format_reward(GOOD, ("only_expected_tags",), tags=("item_id",)) == 0.0
    with pytest.raises(ValueError, match="unknown"):
        format_reward(GOOD, ("tag_presense",))
