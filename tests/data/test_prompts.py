"""Prompt rendering, completion round trip and malformed-completion reasons."""

import numpy as np
import pytest

from abpo_jax.data import prompts as pr
from abpo_jax.data.splits import Example

TITLES = ["Alien (1979)", "Brazil (1985)", "Casablanca (1942)", "Dune (1984)", "Eraserhead (1977)"]
SHORT = ["10", "11", "12", "13", "14"]
EXAMPLE = Example(user=0, history=np.array([4, 0], np.int32),
                  history_ratings=np.array([5.0, 3.5], np.float32), target=2,
                  candidates=np.array([3, 2, 1], np.int32), target_index=1)


def test_full_messages():
    messages = pr.render_messages(EXAMPLE, TITLES, SHORT)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "<item_id>ID</item_id>" in messages[0]["content"]
    user = messages[1]["content"]
    assert user == (
        "Items the user interacted with, oldest first:\n"
        "1. Eraserhead (1977) (ID 14)\n"
        "2. Alien (1979) (ID 10)\n"
        "\n"
        "Candidates (ID: title):\n"
        "13: Dune (1984)\n"
        "12: Casablanca (1942)\n"
        "11: Brazil (1985)\n"
        "\n"
        "Which candidate will the user interact with next? Answer as <item_id>ID</item_id>.")
    rated = pr.render_messages(EXAMPLE, TITLES, SHORT, show_ratings=True)[1]["content"]
    assert "1. Eraserhead (1977) (ID 14) - rated 5\n2. Alien (1979) (ID 10) - rated 3.5" in rated
    assert "rated" not in user


def test_ids_only_messages():
    messages = pr.render_messages(EXAMPLE, TITLES, SHORT, style="ids_only")
    content = "<history> 14 10 </history> <candidates> 13 12 11 </candidates>"
    assert messages == [{"role": "user", "content": content}]
    vocab = set(pr.IDS_ONLY_TAGS) | set(SHORT)
    assert set(messages[0]["content"].split()) <= vocab
    assert set(pr.render_completion("12").replace(">", "> ").replace("<", " <").split()) <= vocab
    with pytest.raises(ValueError, match="show_ratings"):
        pr.render_messages(EXAMPLE, TITLES, SHORT, style="ids_only", show_ratings=True)
    with pytest.raises(ValueError, match="style='prose'"):
        pr.render_messages(EXAMPLE, TITLES, SHORT, style="prose")


def test_round_trip_every_candidate():
    candidates = [SHORT[c] for c in EXAMPLE.candidates]
    for index, short_id in enumerate(candidates):
        parsed = pr.parse_completion(pr.render_completion(short_id), candidates)
        assert parsed.ok and parsed.reason == "ok"
        assert (parsed.short_id, parsed.candidate_index) == (short_id, index)
    assert pr.render_completion("12") == "<item_id>12</item_id>"
    # whitespace and a leading think block are allowed
    parsed = pr.parse_completion("<think>likes old films</think>\n <item_id> 12 </item_id>\n",
                                 candidates)
    assert parsed.ok and parsed.candidate_index == 1


@pytest.mark.parametrize("text, reason", [
    ("I think 12", "no_tag"),
    ("", "no_tag"),
    ("<item_id>12", "unclosed_tag"),
    ("<item_id>12</item_id><item_id>13</item_id>", "multiple_tags"),
    ("<item_id>12</item_id></item_id>", "multiple_tags"),
    ("<item_id> </item_id>", "empty_id"),
    ("Sure! <item_id>12</item_id>", "extra_text"),
    ("<item_id>12</item_id> because", "extra_text"),
    ("<think>unclosed <item_id>12</item_id>", "extra_text"),
    ("<item_id>99</item_id>", "unknown_id"),
    ("<item_id>14</item_id>", "not_candidate"),
])
def test_malformed_reasons(text, reason):
    parsed = pr.parse_completion(text, ["13", "12", "11"], known_ids=set(SHORT))
    assert parsed.reason == reason and not parsed.ok and parsed.candidate_index is None
    assert reason in pr.MALFORMED_REASONS


def test_unknown_needs_catalogue():
    # without known_ids an id outside the candidates is just "not_candidate"
    parsed = pr.parse_completion("<item_id>99</item_id>", ["13", "12"])
    assert (parsed.reason, parsed.short_id) == ("not_candidate", "99")
