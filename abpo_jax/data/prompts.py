"""Prompt messages for a recommendation request, the item-tag completion and its parser.

The model answers ``<item_id>ID</item_id>`` (optionally after a ``<think>...</think>`` block),
where ID is a candidate's short id (:func:`abpo_jax.data.splits.item_short_ids`). Applying a chat
template is the tokenizer's job; this module only builds the role/content messages.

Catalogue mode (``candidates=False``; DESIGN.md "Action space and policy") shows the history
only and asks for an item of the whole catalogue, answered as its id tag or, with
``item_text="title"``, as its title in double quotes (``"Alien (1979)"``, the way ReRe /
MiniOneRec render items; :mod:`abpo_jax.data.catalogue` makes repeated titles unique).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Collection, Sequence

from abpo_jax.data.splits import Example

ITEM_OPEN, ITEM_CLOSE = "<item_id>", "</item_id>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Tags of the ids_only style: with the item ids they form a from-scratch decoder's vocabulary.
IDS_ONLY_TAGS = ("<history>", "</history>", "<candidates>", "</candidates>", ITEM_OPEN,
                 ITEM_CLOSE)
STYLES = ("full", "ids_only")
ITEM_TEXTS = ("id", "title")   # catalogue mode: the item is generated as its id tag | its title

SYSTEM_PROMPT = ("You are a recommender system. Given the items a user interacted with, pick "
                 "the one candidate the user is most likely to interact with next. Answer with "
                 f"its ID only, as {ITEM_OPEN}ID{ITEM_CLOSE}.")
_CATALOGUE_TASK = ("You are a recommender system. Given the items a user interacted with, name "
                   "the one item of the catalogue the user is most likely to interact with next. ")
CATALOGUE_SYSTEM_PROMPTS = {
    "id": _CATALOGUE_TASK + f"Answer with its ID only, as {ITEM_OPEN}ID{ITEM_CLOSE}.",
    "title": _CATALOGUE_TASK + 'Answer with its title only, in double quotes, as "TITLE".',
}

# Reasons a completion is not a valid recommendation.
OK = "ok"
NO_TAG = "no_tag"                  # no <item_id> tag
UNCLOSED_TAG = "unclosed_tag"      # <item_id> without </item_id>
MULTIPLE_TAGS = "multiple_tags"    # more than one item tag
EMPTY_ID = "empty_id"              # <item_id></item_id> (or only spaces)
EXTRA_TEXT = "extra_text"          # text besides the tag (and an optional leading think block)
UNKNOWN_ID = "unknown_id"          # id not in the catalogue (when known_ids is given)
NOT_CANDIDATE = "not_candidate"    # id not among this prompt's candidates
MALFORMED_REASONS = (NO_TAG, UNCLOSED_TAG, MULTIPLE_TAGS, EMPTY_ID, EXTRA_TEXT, UNKNOWN_ID,
                     NOT_CANDIDATE)

_THINK_PREFIX = re.compile(r"\s*<think>.*?</think>", re.DOTALL)


def _rating(value: float) -> str:
    return f"{value:g}"


def render_messages(example: Example, titles: Sequence[str], short_ids: Sequence[str], *,
                    show_ratings: bool = False, style: str = "full", candidates: bool = True,
                    item_text: str = "id") -> list[dict[str, str]]:
    """Chat messages (system + user) asking for the next item among the closed candidate list.

    ``titles`` and ``short_ids`` are indexed by dense item id. ``style="ids_only"`` renders just
    ids and :data:`IDS_ONLY_TAGS` in a single user message (a tiny decoder's vocabulary has no
    words), e.g. ``<history> 3 17 </history> <candidates> 5 3 9 </candidates>``.

    ``candidates=False`` (catalogue mode) leaves the candidate list out and asks for any item of
    the catalogue, answered as :func:`render_completion` (``item_text="id"``) or
    :func:`render_title` (``"title"``; pass :func:`abpo_jax.data.catalogue.catalogue_titles` so
    the history shows the same unique titles the answer uses).
    """
    if item_text not in ITEM_TEXTS:
        raise ValueError(f"item_text={item_text!r}; choose one of {ITEM_TEXTS}")
    if candidates and item_text != "id":
        raise ValueError("item_text='title' is catalogue mode: it needs candidates=False")
    if style == "ids_only":
        if show_ratings:
            raise ValueError("show_ratings=True needs style='full' (ids_only has no rating tokens)")
        if item_text != "id":
            raise ValueError("item_text='title' needs style='full' (ids_only has no words)")
        history = " ".join(short_ids[i] for i in example.history)
        content = f"<history> {history} </history>"
        if candidates:
            content += f" <candidates> {' '.join(short_ids[c] for c in example.candidates)} " \
                       "</candidates>"
        return [{"role": "user", "content": content}]
    if style != "full":
        raise ValueError(f"style={style!r}; choose one of {STYLES}")
    lines = ["Items the user interacted with, oldest first"
             + (" (with the user's rating, 1-5):" if show_ratings else ":")]
    for n, (item, rating) in enumerate(zip(example.history, example.history_ratings), start=1):
        rated = f" - rated {_rating(float(rating))}" if show_ratings else ""
        name = (render_title(titles[item]) if item_text == "title"
                else f"{titles[item]} (ID {short_ids[item]})")
        lines.append(f"{n}. {name}{rated}")
    if len(example.history) == 0:
        lines.append("(none yet)")
    if not candidates:
        answer = ('"TITLE"' if item_text == "title" else f"{ITEM_OPEN}ID{ITEM_CLOSE}")
        lines += ["", f"Which item will the user interact with next? Answer as {answer}."]
        return [{"role": "system", "content": CATALOGUE_SYSTEM_PROMPTS[item_text]},
                {"role": "user", "content": "\n".join(lines)}]
    lines += ["", "Candidates (ID: title):"]
    lines += [f"{short_ids[c]}: {titles[c]}" for c in example.candidates]
    lines += ["", "Which candidate will the user interact with next? Answer as "
                  f"{ITEM_OPEN}ID{ITEM_CLOSE}."]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


def render_completion(short_id: str) -> str:
    """The target completion for an item: ``<item_id>ID</item_id>``."""
    return f"{ITEM_OPEN}{short_id}{ITEM_CLOSE}"


def render_title(title: str) -> str:
    """Catalogue mode's title completion: the title in double quotes, as ReRe / MiniOneRec's
    ``evaluate.py`` builds its trie items (``"\"" + title + "\""``, their trailing newline left
    out: our completion ends at eos)."""
    return f'"{title}"'


@dataclasses.dataclass(frozen=True)
class ParsedCompletion:
    """Outcome of parsing a completion: the chosen candidate, or why there is none."""

    reason: str                    # OK or one of MALFORMED_REASONS
    short_id: str | None = None    # the id inside the tag, when there is exactly one tag
    candidate_index: int | None = None  # position among the candidates, only when ok

    @property
    def ok(self) -> bool:
        return self.reason == OK


def parse_completion(text: str, candidates_short_ids: Sequence[str], *,
                     known_ids: Collection[str] | None = None) -> ParsedCompletion:
    """Parse ``[<think>...</think>] <item_id>ID</item_id>`` (surrounding whitespace allowed).

    Checks, in order: one well-formed tag, a non-empty id, no other text, then the id is known
    (only when ``known_ids`` is given) and among ``candidates_short_ids``.
    """
    body = _THINK_PREFIX.sub("", text, count=1) if text.lstrip().startswith(THINK_OPEN) else text
    opens = body.count(ITEM_OPEN)
    if opens == 0:
        return ParsedCompletion(NO_TAG)
    if opens > 1:
        return ParsedCompletion(MULTIPLE_TAGS)
    start = body.index(ITEM_OPEN) + len(ITEM_OPEN)
    end = body.find(ITEM_CLOSE, start)
    if end < 0:
        return ParsedCompletion(UNCLOSED_TAG)
    if body.count(ITEM_CLOSE) > 1:
        return ParsedCompletion(MULTIPLE_TAGS)
    short_id = body[start:end].strip()
    if not short_id:
        return ParsedCompletion(EMPTY_ID)
    outside = body[:start - len(ITEM_OPEN)] + body[end + len(ITEM_CLOSE):]
    if outside.strip():
        return ParsedCompletion(EXTRA_TEXT, short_id)
    if known_ids is not None and short_id not in known_ids:
        return ParsedCompletion(UNKNOWN_ID, short_id)
    try:
        index = list(candidates_short_ids).index(short_id)
    except ValueError:
        return ParsedCompletion(NOT_CANDIDATE, short_id)
    return ParsedCompletion(OK, short_id, index)


__all__ = ["CATALOGUE_SYSTEM_PROMPTS", "IDS_ONLY_TAGS", "ITEM_TEXTS", "MALFORMED_REASONS",
           "ParsedCompletion", "SYSTEM_PROMPT", "parse_completion", "render_completion",
           "render_messages", "render_title"]
