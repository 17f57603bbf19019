"""The real GEE backend: our JAX decoder (SmolLM2 by default) as generator and relevance judge.

Generation: chat-templated prompt + the answer prefix "New Question:" (so even a 135M model
answers in the expected format), sampled with the jit-compiled KV-cache sampler
(`sampling.generate`). Judging: one teacher-forced pass per batch scoring the ten labels after
"Score:" as candidates in a shared-prefix packed row (`group_scoring.pack_candidates`, the
policy's token path), no sampling.
Batch and prompt lengths are padded to buckets so repeated calls reuse compiled programs.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from abpo_jax.gee.judge import exclusive_label_logprobs
from abpo_jax.gee.prompts import ANSWER_PREFIX
from abpo_jax.sampling.generate import SamplingParams, generate, left_pad
from abpo_jax.sampling.group_scoring import bucket, candidate_scores, pack_candidates
from abpo_jax.sampling.trie import candidate_token_sequences

JUDGE_PREFIX = "Score:"
PROMPT_MULTIPLE = 64


def _batch_bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()      # 1, 2, 4, 8, ...: few compiled batch shapes


class SmolLMBackend:
    """`TextBackend` and `LabelScorer` over a Decoder and its tokenizer.

    The tokenizer needs `encode(str) -> list[int]`, `decode(list[int]) -> str`, `eos_id`,
    `pad_id` and `apply_chat_template(messages, add_generation_prompt=True) -> str`.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "smollm2", top_p: float = 1.0,
                 judge_batch_size: int = 16):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.top_p, self.judge_batch_size = top_p, judge_batch_size

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "SmolLMBackend":
        """Load `config.model` (smollm2 | hf | gguf) and its tokenizer."""
        from abpo_jax.train.policy import load_pretrained

        model, tok = load_pretrained(config)
        name = f"{config.model.source}:{config.model.path}" if config.model.path else \
            config.model.source
        return cls(model, tok, name=name, top_p=config.gee.gen_top_p,
                   judge_batch_size=config.gee.judge_batch_size)

    def _chat(self, user: str, answer_prefix: str) -> str:
        messages = [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True) + \
            answer_prefix

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        """Completions that start with "New Question:" (the prefix the model continues)."""
        ids = [self.tokenizer.encode(self._chat(p, ANSWER_PREFIX)) for p in prompts]
        rows = _batch_bucket(len(ids))
        ids = ids + [ids[-1]] * (rows - len(ids))           # padding rows, discarded below
        tokens, mask = left_pad(ids, bucket(max(map(len, ids)), PROMPT_MULTIPLE),
                                self.tokenizer.pad_id)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=self.top_p)
        samples = jax.device_get(generate(self.model, tokens, mask, jax.random.key(seed), params,
                                          self.tokenizer.eos_id))
        out = []
        for b in range(len(prompts)):
            toks = [int(t) for t, m in zip(samples.tokens[b, 0], samples.mask[b, 0])
                    if m and t != self.tokenizer.eos_id]
            out.append(ANSWER_PREFIX + self.tokenizer.decode(toks))
        return out

    def label_logprobs(self, prompts: list[str], labels: Sequence[str]) -> np.ndarray:
        """log P(answer = label) after "Score:" for each prompt, [n_prompts, n_labels].

        Labels are scored as " <label>" (space-led, as the model writes after a colon); labels
        whose tokens prefix another label's get the longer label's mass removed.
        """
        label_ids = candidate_token_sequences(self.tokenizer, [f" {l}" for l in labels],
                                              append_eos=False)
        out = []
        for s in range(0, len(prompts), self.judge_batch_size):
            chunk = prompts[s:s + self.judge_batch_size]
            ids = [self.tokenizer.encode(self._chat(p, JUDGE_PREFIX)) for p in chunk]
            ids = ids + [ids[-1]] * (self.judge_batch_size - len(ids))
            batch = pack_candidates(ids, [label_ids] * len(ids), pad_id=self.tokenizer.pad_id,
                                    prompt_multiple=PROMPT_MULTIPLE, completion_multiple=4)
            _, scores = candidate_scores(self.model, batch)
            out.append(np.asarray(scores.sequence_logprobs)[:len(chunk)])
        return exclusive_label_logprobs(np.concatenate(out), label_ids)
