"""GEE's model backend on a tiny random decoder: label log-probs equal plain causal scoring,
prefix labels are split, generation returns prefixed, seeded text."""

import numpy as np
import pytest
from flax import nnx

from abpo_jax.gee.judge import SCORE_LABELS
from abpo_jax.gee.prompts import ANSWER_PREFIX
from abpo_jax.gee.smollm import JUDGE_PREFIX, SmolLMBackend
from abpo_jax.models.config import ModelConfig
from abpo_jax.models.decoder import Decoder
from abpo_jax.sampling.group_scoring import sequence_logprobs


class CharTokenizer:
    """One token per character (digits are single tokens, like SmolLM2's digit splitting)."""

    eos_id, pad_id = 0, 0

    def __init__(self):
        self.chars = [chr(c) for c in range(32, 127)] + ["\n"]

    def encode(self, text):
        return [1 + self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i - 1] for i in ids if i > 0)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + \
            ("<assistant>" if add_generation_prompt else "")


@pytest.fixture(scope="module")
def backend():
    tok = CharTokenizer()
    model = Decoder(ModelConfig.tiny(len(tok.chars) + 1), rngs=nnx.Rngs(0))
    return SmolLMBackend(model, tok, judge_batch_size=4)


def test_label_logprobs_match_plain_causal_scoring(backend):
    tok = backend.tokenizer
    prompts = ["Rate the question: is it loud?", "Rate: battery?", "x", "Rate it.", "five"]
    got = backend.label_logprobs(prompts, SCORE_LABELS)          # 2 chunks, padded batch
    assert got.shape == (5, 10)
    # independent reference: each (prompt, label) text scored whole by plain causal scoring,
    # all in one right-padded batch
    prefixes = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]) +
                           JUDGE_PREFIX) for p in prompts]
    seqs = [pre + tok.encode(" " + label) for pre in prefixes for label in SCORE_LABELS]
    width = max(map(len, seqs))
    tokens = np.array([s + [0] * (width - len(s)) for s in seqs])
    mask = np.array([[i < len(s) for i in range(width)] for s in seqs])
    lp = np.asarray(sequence_logprobs(backend.model, tokens, mask)[0])
    for b, pre in enumerate(prefixes):
        raw = {l: lp[b * 10 + i, len(pre):].sum() for i, l in enumerate(SCORE_LABELS)}
        want = [np.exp(raw[l]) for l in SCORE_LABELS]
        want[0] -= np.exp(raw["10"])                              # "1" excludes "10"
        np.testing.assert_allclose(np.exp(got[b]), want, rtol=2e-3, atol=1e-9)


def test_generate_is_prefixed_seeded_and_row_independent(backend):
    prompts = ["Write a question.", "Write another question please."]
    a = backend.generate(prompts, max_new_tokens=6, temperature=1.0, seed=3)
    b = backend.generate(prompts, max_new_tokens=6, temperature=1.0, seed=3)
    c = backend.generate(prompts[:1], max_new_tokens=6, temperature=1.0, seed=3)
    assert a == b and len(a) == 2 and all(t.startswith(ANSWER_PREFIX) for t in a)
    assert c[0] == a[0]          # a row's sample does not depend on the batch around it
    greedy = backend.generate(prompts, max_new_tokens=6, temperature=0.0, seed=0)
    assert greedy == backend.generate(prompts, max_new_tokens=6, temperature=0.0, seed=99)
