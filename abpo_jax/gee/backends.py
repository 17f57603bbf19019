"""Text generation and label scoring backends for GEE.

`TextBackend.generate` writes items; `judge.LabelScorer.label_logprobs` feeds the relevance
judge. `SmolLMBackend` (in `smollm.py`) implements both with our JAX decoder and sampler. The
scripted backends here are deterministic stand-ins: tests use them to drive the loop with known
item quality, and `--config.gee.backend=scripted` runs the whole pipeline in seconds.
"""

from __future__ import annotations

import re
import zlib
from typing import Callable, Protocol, Sequence

import numpy as np

from abpo_jax.gee.personas import Persona


class TextBackend(Protocol):
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        """One completion per prompt (row i sampled from a stream derived from (seed, i))."""


def stable_hash(*parts: object) -> int:
    """Process-independent hash (Python's `hash` of str is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


class ScriptedGenerator:
    """Generator answering from `script(prompt, seed, row) -> str`; records every call."""

    def __init__(self, script: Callable[[str, int, int], str]):
        self.script = script
        self.calls: list[tuple[str, int]] = []

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        self.calls.extend((p, seed) for p in prompts)
        return [self.script(p, seed, row) for row, p in enumerate(prompts)]


_ASPECTS = ("battery life", "price", "warranty", "comfort", "durability", "water resistance",
            "noise cancelling", "weight", "colours", "repairs", "privacy", "setup", "returns",
            "accessibility", "sound quality", "compatibility", "eco materials", "deals")


def demo_script(prompt: str, seed: int, row: int) -> str:
    """Deterministic pseudo-LLM: a question on an aspect picked by hashing (prompt, seed, row)."""
    h = stable_hash(prompt, seed, row)
    aspect = _ASPECTS[h % len(_ASPECTS)]
    return f"New Question: What should I know about the {aspect} (variant {h % 97})?\nTopic: {aspect}"


class HashJudge:
    """Deterministic pseudo-judge: the score of (item, persona) is a hash in 1..10."""

    def score(self, items: list[str], personas: Sequence[Persona]) -> np.ndarray:
        return np.array([[1 + stable_hash(i, p.name) % 10 for p in personas] for i in items],
                        np.float64).reshape(len(items), len(personas))


class KeywordJudge:
    """Score from a `[score=S]` tag in the item text (default `default`), same for every persona.

    Lets a test script write items of known quality and check what the loop does with them.
    """

    def __init__(self, default: float = 5.0):
        self.default = default

    def score(self, items: list[str], personas: Sequence[Persona]) -> np.ndarray:
        def one(item: str) -> float:
            m = re.search(r"\[score=([0-9.]+)\]", item)
            return float(m.group(1)) if m else self.default
        return np.repeat(np.array([one(i) for i in items], np.float64)[:, None], len(personas), 1)
