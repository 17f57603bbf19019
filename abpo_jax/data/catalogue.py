"""Every catalogue item's completion, for generation under a trie of the whole catalogue.

Catalogue mode (ReRe / MiniOneRec protocol; DESIGN.md "Action space and policy") generates the
item itself, as its id tag ``<item_id>ID</item_id>`` (``item_text="id"``) or its title in
double quotes (``"title"``, :func:`abpo_jax.data.prompts.render_title`). Item i's completion is
entry i (dense item id order), so the trie leaf reached *is* the item.

Titles repeat in real catalogues (Amazon has many products with one name). MiniOneRec's
`calc.py` keeps a title -> [item ids] table and matches by title, so a repeated title counts
as a hit for each of its items; here every leaf must name exactly one item, so
:func:`catalogue_titles` makes titles unique: the first item (in dense id order) with a title
keeps it, the k-th repeat is renamed ``title (#k)`` (k = 2, 3, ...; a suffix that would itself
collide with another title is skipped). Use these titles in the prompt too, so the history
shows the names the model answers with. MovieLens-1M's titles (its raw ids) are already unique.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from abpo_jax.data.prompts import ITEM_TEXTS, render_completion, render_title


class _Encodes(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


def catalogue_titles(titles: Sequence[str]) -> list[str]:
    """Titles with repeats renamed ``title (#k)`` so each names one item (module docstring)."""
    taken = set(titles)
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        if title not in seen:
            seen[title] = 1
            out.append(title)
            continue
        k = seen[title]
        while True:
            k += 1
            name = f"{title} (#{k})"
            if name not in taken:
                break
        seen[title] = k
        taken.add(name)
        out.append(name)
    return out


def catalogue_completions(titles: Sequence[str], short_ids: Sequence[str],
                          item_text: str = "id") -> list[str]:
    """Completion string of every item, dense id order: its id tag or its quoted unique title."""
    if item_text not in ITEM_TEXTS:
        raise ValueError(f"item_text={item_text!r}; choose one of {ITEM_TEXTS}")
    if len(titles) != len(short_ids):
        raise ValueError(f"{len(titles)} titles for {len(short_ids)} items")
    if item_text == "id":
        return [render_completion(s) for s in short_ids]
    return [render_title(t) for t in catalogue_titles(titles)]


def catalogue_completion_ids(tokenizer: _Encodes, titles: Sequence[str],
                             short_ids: Sequence[str], item_text: str = "id") -> list[list[int]]:
    """Token sequences of :func:`catalogue_completions`, each tokenized whole and ended with eos
    (as :func:`abpo_jax.sampling.trie.candidate_token_sequences`): the input of
    :func:`abpo_jax.sampling.trie.build_catalogue_trie`, whose leaf c is item c."""
    return [list(tokenizer.encode(text)) + [tokenizer.eos_id]
            for text in catalogue_completions(titles, short_ids, item_text)]


__all__ = ["catalogue_completion_ids", "catalogue_completions", "catalogue_titles"]
