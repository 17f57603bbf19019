"""Catalogue mode's item completions (id / title, repeated titles) and history-only prompts."""

import numpy as np
import pytest

from abpo_jax.data import catalogue as cat
from abpo_jax.data import prompts as pr
from abpo_jax.data.splits import Example

TITLES = ["Alien (1979)", "Brazil (1985)", "Alien (1979)", "Alien (1979) (#2)", "Dune (1984)",
          "Alien (1979)"]
SHORT = ["10", "11", "12", "13", "14", "15"]
EXAMPLE = Example(user=0, history=np.array([4, 0], np.int32),
                  history_ratings=np.array([5.0, 3.5], np.float32), target=2,
                  candidates=np.array([3, 2, 1], np.int32), target_index=1)


def test_repeated_titles_get_a_suffix_that_names_one_item():
    got = cat.catalogue_titles(TITLES)
    # the 1st keeps its title; "(#2)" is someone else's real title, so the 2nd repeat is #3
    assert got == ["Alien (1979)", "Brazil (1985)", "Alien (1979) (#3)", "Alien (1979) (#2)",
                   "Dune (1984)", "Alien (1979) (#4)"]
    assert len(set(got)) == len(got)
    assert cat.catalogue_titles(["A", "B"]) == ["A", "B"]


def test_completions_id_and_title():
    assert cat.catalogue_completions(TITLES, SHORT, "id")[2] == "<item_id>12</item_id>"
    titles = cat.catalogue_completions(TITLES, SHORT, "title")
    assert titles[0] == '"Alien (1979)"' and titles[2] == '"Alien (1979) (#3)"'
    assert len(set(titles)) == len(TITLES)
    with pytest.raises(ValueError, match="item_text"):
        cat.catalogue_completions(TITLES, SHORT, "name")
    with pytest.raises(ValueError, match="6 titles for 2 items"):
        cat.catalogue_completions(TITLES, SHORT[:2])


class _CharTokenizer:
    eos_id = 1

    def encode(self, text):
        return [2 + ord(ch) % 97 for ch in text]


def test_completion_ids_build_a_catalogue_trie_whose_leaf_is_the_item():
    import jax.numpy as jnp

    from abpo_jax.models.tokenizer import item_tokenizer
    from abpo_jax.sampling import trie as trie_lib

    tokenizers = {"id": item_tokenizer(SHORT), "title": _CharTokenizer()}
    for item_text, tok in tokenizers.items():
        seqs = cat.catalogue_completion_ids(tok, TITLES, SHORT, item_text)
        assert all(s[-1] == tok.eos_id for s in seqs)
        trie = trie_lib.build_catalogue_trie(seqs)  # raw titles would repeat: ValueError
        for item, seq in enumerate(seqs):
            node = jnp.zeros((1,), jnp.int32)
            for t in seq:
                node = trie_lib.advance(trie, node, jnp.array([t]))
            assert int(trie_lib.candidate_at(trie, node)[0]) == item
    assert len(cat.catalogue_completion_ids(tokenizers["id"], TITLES, SHORT)[0]) == 4


def test_catalogue_prompts_show_the_history_only():
    ids = pr.render_messages(EXAMPLE, TITLES, SHORT, candidates=False)
    assert ids[0] == {"role": "system", "content": pr.CATALOGUE_SYSTEM_PROMPTS["id"]}
    assert ids[1]["content"] == (
        "Items the user interacted with, oldest first:\n"
        "1. Dune (1984) (ID 14)\n"
        "2. Alien (1979) (ID 10)\n"
        "\n"
        "Which item will the user interact with next? Answer as <item_id>ID</item_id>.")
    titles = pr.render_messages(EXAMPLE, cat.catalogue_titles(TITLES), SHORT, candidates=False,
                                item_text="title", show_ratings=True)
    assert titles[0]["content"] == pr.CATALOGUE_SYSTEM_PROMPTS["title"]
    assert titles[1]["content"] == (
        "Items the user interacted with, oldest first (with the user's rating, 1-5):\n"
        '1. "Dune (1984)" - rated 5\n'
        '2. "Alien (1979)" - rated 3.5\n'
        "\n"
        'Which item will the user interact with next? Answer as "TITLE".')
    assert "Candidates" not in ids[1]["content"] + titles[1]["content"]
    only = pr.render_messages(EXAMPLE, TITLES, SHORT, candidates=False, style="ids_only")
    assert only == [{"role": "user", "content": "<history> 14 10 </history>"}]
    # the closed-list prompt is unchanged
    assert "<candidates> 13 12 11 </candidates>" in pr.render_messages(
        EXAMPLE, TITLES, SHORT, style="ids_only")[0]["content"]


def test_catalogue_prompt_errors():
    with pytest.raises(ValueError, match="needs candidates=False"):
        pr.render_messages(EXAMPLE, TITLES, SHORT, item_text="title")
    with pytest.raises(ValueError, match="ids_only has no words"):
        pr.render_messages(EXAMPLE, TITLES, SHORT, candidates=False, item_text="title",
                           style="ids_only")
    with pytest.raises(ValueError, match="item_text"):
        pr.render_messages(EXAMPLE, TITLES, SHORT, candidates=False, item_text="name")
