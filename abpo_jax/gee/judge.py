"""Relevance judge: an LLM scores (item, persona) on 1..10, read from the score-token distribution.

The judge is prompted with the persona and the item (`prompts.judge_prompt`), the answer is
prefilled with "Score: ", and the score is read from the model's probabilities of the labels
"1".."10" after it (no sampling): the expected value sum_s s * P(s) / sum_s P(s), or the argmax.
Scores are cached per (judge namespace, persona, item), in memory and optionally on disk (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Protocol, Sequence

import numpy as np

from abpo_jax.gee import prompts
from abpo_jax.gee.personas import Persona

SCORE_LABELS: tuple[str, ...] = tuple(str(s) for s in range(1, 11))
SCORE_MODES = ("expected", "argmax")


class Judge(Protocol):
    def score(self, items: list[str], personas: Sequence[Persona]) -> np.ndarray:
        """Relevance of each item for each persona, [n_items, n_personas] in [1, 10]."""


class LabelScorer(Protocol):
    def label_logprobs(self, prompts: list[str], labels: Sequence[str]) -> np.ndarray:
        """log P(label | prompt) for each prompt and label, [n_prompts, n_labels]."""


def score_from_logprobs(logprobs: np.ndarray, mode: str = "expected") -> np.ndarray:
    """Scores from label log-probs [..., 10] for labels 1..10, renormalised over the labels.

    expected: sum_s s * softmax(logprobs)_s;  argmax: 1 + argmax_s logprobs_s.
    """
    logprobs = np.asarray(logprobs, np.float64)
    values = np.arange(1, logprobs.shape[-1] + 1, dtype=np.float64)
    if mode == "argmax":
        return values[np.argmax(logprobs, -1)]
    if mode != "expected":
        raise ValueError(f"config.gee.judge_score={mode!r}; choose one of: {', '.join(SCORE_MODES)}")
    p = np.exp(logprobs - logprobs.max(-1, keepdims=True))
    return (p * values).sum(-1) / p.sum(-1)


def exclusive_label_logprobs(sequence_logprobs: np.ndarray,
                             label_tokens: Sequence[Sequence[int]]) -> np.ndarray:
    """log P(the answer is label l and not a longer label) from teacher-forced label log-probs.

    When label l's tokens are a prefix of other labels' tokens (e.g. "1" of "10" when digits are
    single tokens), P(tokens of l) also counts the longer answers, so
    P_excl(l) = P(tokens_l) - sum over direct extensions l' of P(tokens_l').  [B, L] in and out.
    """
    lp = np.asarray(sequence_logprobs, np.float64)
    seqs = [tuple(t) for t in label_tokens]
    extends = lambda a, b: len(a) > len(b) and a[:len(b)] == b        # a strictly extends b
    mass = np.exp(lp)
    out = mass.copy()
    for i, short in enumerate(seqs):
        longer = [j for j, s in enumerate(seqs) if extends(s, short)]
        direct = [j for j in longer if not any(extends(seqs[j], seqs[k]) for k in longer)]
        out[:, i] -= mass[:, direct].sum(-1)
    return np.log(np.maximum(out, 1e-30))


class LMJudge:
    """Judge backed by a language model's label probabilities (one batched scoring per call)."""

    def __init__(self, scorer: LabelScorer, topic: str, mode: str = "expected",
                 batch_size: int = 32):
        score_from_logprobs(np.zeros(len(SCORE_LABELS)), mode)   # fail fast on a bad mode
        self.scorer, self.topic, self.mode, self.batch_size = scorer, topic, mode, batch_size

    def score(self, items: list[str], personas: Sequence[Persona]) -> np.ndarray:
        pairs = [prompts.judge_prompt(i, p, self.topic) for i in items for p in personas]
        if not pairs:
            return np.zeros((len(items), len(personas)))
        logprobs = [self.scorer.label_logprobs(pairs[s:s + self.batch_size], SCORE_LABELS)
                    for s in range(0, len(pairs), self.batch_size)]
        out = score_from_logprobs(np.concatenate(logprobs), self.mode)
        return out.reshape(len(items), len(personas))


class CachedJudge:
    """Memoises another judge per (namespace, persona, item); persists to `path` when given.

    `namespace` names what produced the scores (model, score mode, topic), so a cache file is never
    read back for a different judge.
    """

    def __init__(self, judge: Judge, namespace: str, path: str = ""):
        self.judge, self.namespace, self.path = judge, namespace, path
        self.cache: dict[str, float] = {}
        self.hits = self.misses = 0
        if path and os.path.exists(path):
            try:
                stored = json.loads(pathlib.Path(path).read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: judge cache is not valid JSON ({e}); delete it") from e
            self.cache = stored.get(namespace, {})

    def _key(self, item: str, persona: Persona) -> str:
        text = f"{persona.name}\n{persona.description}\n{item}"
        return hashlib.sha1(text.encode()).hexdigest()

    def score(self, items: list[str], personas: Sequence[Persona]) -> np.ndarray:
        keys = [[self._key(i, p) for p in personas] for i in items]
        todo_items = [n for n, row in enumerate(keys) if any(k not in self.cache for k in row)]
        todo_personas = [m for m in range(len(personas))
                         if any(keys[n][m] not in self.cache for n in todo_items)]
        n_missing = sum(k not in self.cache for row in keys for k in row)
        self.hits += len(items) * len(personas) - n_missing
        self.misses += n_missing
        if todo_items:
            fresh = self.judge.score([items[n] for n in todo_items],
                                     [personas[m] for m in todo_personas])
            for a, n in enumerate(todo_items):
                for b, m in enumerate(todo_personas):
                    self.cache[keys[n][m]] = float(fresh[a, b])
            self.save()
        return np.array([[self.cache[k] for k in row] for row in keys], np.float64).reshape(
            len(items), len(personas))

    def save(self) -> None:
        if not self.path:
            return
        stored = {}
        if os.path.exists(self.path):
            stored = json.loads(pathlib.Path(self.path).read_text())
        stored[self.namespace] = self.cache
        tmp = f"{self.path}.tmp"
        pathlib.Path(tmp).write_text(json.dumps(stored))
        os.replace(tmp, self.path)   # atomic: a killed run never leaves a torn cache
