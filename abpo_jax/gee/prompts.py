"""GEE meta-prompts (generator and judge) and parsing of generations.

The generator answers in the format

    New Question: <the item>
    Topic: <two or three words>        (asked for by the prompts that track topics)

`parse_generation` reads it back; anything else is a malformed generation with a reason.
"""

from __future__ import annotations

import dataclasses
import re

from abpo_jax.gee.personas import Persona

ANSWER_PREFIX = "New Question:"
_QUESTION_RE = re.compile(r"new question[ \t]*:[ \t]*(.*)", re.IGNORECASE)
_TOPIC_RE = re.compile(r"^[ \t]*topic[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_FORMAT = f"Answer in exactly this format:\n{ANSWER_PREFIX} <the question>"
_FORMAT_TOPIC = _FORMAT + "\nTopic: <two or three words naming what the question is about>"
MAX_ITEM_CHARS = 300


def _task(topic: str) -> str:
    return f"You write short questions that shoppers might ask about {topic}."


def initial_prompt(topic: str) -> str:
    """Prompt for one item of the initial pool."""
    return f"{_task(topic)}\nWrite one such question.\n{_FORMAT_TOPIC}"


def ctr_prompt(topic: str, items: list[tuple[str, float]]) -> str:
    """full-ctr / random-ctr / no-drop: every item generated so far with its CTR, sorted ascending."""
    lines = [f"Question: {text}\nCTR: {100 * ctr:.1f}%"
             for text, ctr in sorted(items, key=lambda x: x[1])]
    return (f"{_task(topic)} Each question was shown to shoppers; its click-through rate (CTR) "
            "says how often they clicked it. Questions sorted from lowest to highest CTR:\n\n"
            + "\n\n".join(lines)
            + "\n\nWrite one new question that is different from all of the above and will get "
              f"a higher CTR than any of them.\n{_FORMAT}")


def pool_prompt(topic: str, items: list[str]) -> str:
    """partial-ctr: the current pool without CTRs."""
    lines = [f"Question: {text}" for text in items]
    return (f"{_task(topic)} These questions are currently shown to shoppers:\n\n"
            + "\n".join(lines)
            + f"\n\nWrite one new question that shoppers will find more relevant, different from "
              f"all of the above.\n{_FORMAT}")


def explore_prompt(topic: str, items: list[tuple[str, str]]) -> str:
    """explore-exploit, explore step: current pool with topics, no CTRs; ask for a new topic."""
    lines = [f"Question: {text}\nTopic: {t}" for text, t in items]
    return (f"{_task(topic)} These questions and their topics are currently shown to shoppers:\n\n"
            + "\n\n".join(lines)
            + "\n\nWrite one new question about a topic that none of the questions above covers."
              f"\n{_FORMAT_TOPIC}")


def exploit_prompt(topic: str, best_item: str, best_topic: str) -> str:
    """explore-exploit, exploit step: a new item on the topic of the best item."""
    return (f"{_task(topic)} Shoppers clicked this question the most:\n\nQuestion: {best_item}\n"
            f"Topic: {best_topic}\n\nWrite one new, different question on the same topic "
            f"({best_topic}).\n{_FORMAT}")


def judge_prompt(item: str, persona: Persona, topic: str) -> str:
    """Relevance judge: how likely is this persona to click this item (answer 1..10)."""
    return (f"You are a shopper looking at {topic}. About you: {persona.description}\n\n"
            f"A shopping website suggests this question: \"{item}\"\n\n"
            "On a scale from 1 (not at all) to 10 (extremely), how relevant and interesting is "
            "this question to you? Answer with a single number.")


JUDGE_ANSWER_PREFIX = "Score: "


@dataclasses.dataclass(frozen=True)
class Parsed:
    item: str | None          # None when malformed
    topic: str | None
    reason: str = ""          # why it is malformed ("" when fine)


def normalise(text: str) -> str:
    """Key for duplicate detection: lower case, alphanumerics and single spaces only."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _first_line(text: str) -> str:
    """First non-empty line (models sometimes put the item on the line after the prefix),
    stripped of quotes; stops at a `Topic:` line."""
    for line in text.split("\n"):
        line = line.strip().strip("\"'` ").strip()
        if line:
            return "" if _TOPIC_RE.match(line) else line
    return ""


def parse_generation(text: str, existing: set[str] = frozenset()) -> Parsed:
    """Read `New Question: ...` (and optional `Topic: ...`) from a generation.

    `existing` holds `normalise`d items already generated; repeating one is malformed.
    """
    m = _QUESTION_RE.search(text)
    if not m:
        return Parsed(None, None, f"no '{ANSWER_PREFIX}' line")
    item = _first_line(m.group(1) + "\n" + text[m.end():])
    while (again := _QUESTION_RE.match(item)):     # "New Question: New question: ..." (echoed)
        item = _first_line(again.group(1))
    if not normalise(item):
        return Parsed(None, None, "empty item")
    if len(item) > MAX_ITEM_CHARS:
        return Parsed(None, None, f"item longer than {MAX_ITEM_CHARS} characters")
    if normalise(item) in existing:
        return Parsed(None, None, "duplicate of an existing item")
    t = _TOPIC_RE.search(text[m.end():]) or _TOPIC_RE.search(text[:m.start()])
    topic = t.group(1).strip().strip("\"'` .").strip() if t else ""
    return Parsed(item, topic or None)
