"""GEE judge (score read-out, cache), generation parsing and personas."""

import json
import math

import numpy as np
import pytest

from abpo_jax.gee import prompts
from abpo_jax.gee.judge import SCORE_LABELS, CachedJudge, LMJudge, score_from_logprobs
from abpo_jax.gee.personas import DEFAULT_PERSONAS, Persona, load_personas


def test_score_from_logprobs_expected_and_argmax():
    p = np.zeros(10)
    p[[2, 6]] = [0.25, 0.75]                        # scores 3 and 7
    lp = np.log(np.where(p > 0, p, 1e-300))
    assert score_from_logprobs(lp, "expected") == pytest.approx(0.25 * 3 + 0.75 * 7)
    assert score_from_logprobs(lp, "argmax") == 7
    # unnormalised log-probs are renormalised over the ten labels
    assert score_from_logprobs(lp - 5.0, "expected") == pytest.approx(6.0)
    with pytest.raises(ValueError, match="judge_score"):
        score_from_logprobs(lp, "mean")


class _FakeScorer:
    """log P(label) peaked on the persona's favourite score (read from the prompt)."""

    def __init__(self):
        self.prompts = []

    def label_logprobs(self, prompts_, labels):
        self.prompts += prompts_
        assert tuple(labels) == SCORE_LABELS
        out = []
        for p in prompts_:
            fav = int(p.split("likes score ")[1].split(".")[0])
            out.append([0.0 if int(l) == fav else -30.0 for l in labels])
        return np.array(out)


def test_lm_judge_and_cache(tmp_path):
    personas = [Persona("a", "likes score 3."), Persona("b", "likes score 9.")]
    scorer = _FakeScorer()
    path = str(tmp_path / "cache.json")
    judge = CachedJudge(LMJudge(scorer, "headphones", "expected", batch_size=3), "ns", path)
    s = judge.score(["q1?", "q2?"], personas)
    np.testing.assert_allclose(s, [[3, 9], [3, 9]], atol=1e-6)
    assert len(scorer.prompts) == 4 and 'suggests this question: "q1?"' in scorer.prompts[0]
    s = judge.score(["q2?", "q3?"], personas)       # only q3 is new
    assert len(scorer.prompts) == 6 and judge.hits == 2 and judge.misses == 6
    np.testing.assert_allclose(s[:, 1], [9, 9], atol=1e-6)
    # persisted under the namespace; a new judge reads it back without calling the model
    assert len(json.load(open(path))["ns"]) == 6
    again = CachedJudge(LMJudge(_FakeScorer(), "headphones"), "ns", path)
    np.testing.assert_allclose(again.score(["q1?"], personas), [[3, 9]], atol=1e-6)
    assert again.misses == 0
    other = CachedJudge(LMJudge(_FakeScorer(), "headphones"), "other-model", path)
    other.score(["q1?"], personas)
    assert other.misses == 2


@pytest.mark.parametrize("text,item,topic,reason", [
    ("New Question: Is it waterproof?\nTopic: water resistance", "Is it waterproof?",
     "water resistance", ""),
    ('Sure!\nnew question: "How long does the battery last?"', "How long does the battery last?",
     None, ""),
    ("Topic: price\nNew Question: Is there a student discount?", "Is there a student discount?",
     "price", ""),
    ("New Question: New question: Is it loud?", "Is it loud?", None, ""),
    ("New Question:\nDoes it pair with two phones?\nTopic: pairing",
     "Does it pair with two phones?", "pairing", ""),
    ("New Question: new question: does it fold", None, None, "duplicate of an existing item"),
    ("I think shoppers would ask about comfort.", None, None, "no 'New Question:' line"),
    ("New Question:   \nTopic: x", None, None, "empty item"),
    ("New Question: Does it fold?", None, None, "duplicate of an existing item"),
    ("New Question: " + "a" * 400, None, None, "longer than"),
])
def test_parse_generation(text, item, topic, reason):
    parsed = prompts.parse_generation(text, {prompts.normalise("does it FOLD")})
    assert parsed.item == item and parsed.topic == topic
    assert reason in parsed.reason and (reason == "") == (parsed.reason == "")


def test_personas(tmp_path):
    assert len(DEFAULT_PERSONAS) >= 20
    assert len({p.name for p in DEFAULT_PERSONAS}) == len(DEFAULT_PERSONAS)
    assert [p.name for p in load_personas(count=3)] == [p.name for p in DEFAULT_PERSONAS[:3]]
    f = tmp_path / "p.txt"
    f.write_text("# cohort file\nrunner: Runs every day.\n\nchef: Cooks a lot.\n")
    assert load_personas(str(f)) == [Persona("runner", "Runs every day."),
                                     Persona("chef", "Cooks a lot.")]
    f.write_text("runner: Runs.\nno colon here\n")
    with pytest.raises(ValueError, match=r"p.txt:2: expected 'name: description'"):
        load_personas(str(f))
    with pytest.raises(ValueError, match="num_personas=99"):
        load_personas(count=99)
    assert math.isclose(len(prompts.judge_prompt("q?", DEFAULT_PERSONAS[0], "x")) > 0, True)


def test_exclusive_label_logprobs_splits_prefix_labels():
    from abpo_jax.gee.judge import exclusive_label_logprobs

    # labels "1", "2", "10" as digit tokens: P("1")=0.5 includes P("1","0")=0.2
    tokens = [[1], [2], [1, 0]]
    lp = np.log([[0.5, 0.3, 0.2]])
    np.testing.assert_allclose(np.exp(exclusive_label_logprobs(lp, tokens)), [[0.3, 0.3, 0.2]])
    # nested chain: "1" < "10" < "100": only the direct extension is subtracted
    tokens = [[1], [1, 0], [1, 0, 0]]
    lp = np.log([[0.6, 0.25, 0.05]])
    np.testing.assert_allclose(np.exp(exclusive_label_logprobs(lp, tokens)), [[0.35, 0.2, 0.05]])
