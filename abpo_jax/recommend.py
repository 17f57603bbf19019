"""`abpo-jax recommend`: the policy's recommendations for a few real held-out users.

    abpo-jax recommend                                    # SmolLM2 on MovieLens-1M test users
    abpo-jax recommend --config.recommend.num_users=5 --config.policy.logging_temperature=0.5

For each user it prints the chat prompt, one text-mode recommendation sampled through the
candidate trie (always a valid candidate; its propensity is the product of the renormalised
per-step probabilities) and the item-mode distribution pi~(item | x) over the candidate list
(softmax of the candidates' sequence log-probs at the logging temperature), top 5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from abpo_jax.data.prompts import parse_completion, render_completion, render_messages
from abpo_jax.data.splits import Example, build_examples, prepare_data
from abpo_jax.sampling.generate import SamplingParams, generate, left_pad
from abpo_jax.sampling.group_scoring import bucket, candidate_log_policy
from abpo_jax.sampling.trie import build_batch_trie, candidate_token_sequences
from abpo_jax.train.policy import load_pretrained

DEFAULT_NUM_USERS = 3


@dataclasses.dataclass
class Requests:
    """Rendered held-out requests: chat prompts and each prompt's candidate completions."""

    examples: list[Example]
    prompts: list[str]            # chat-templated prompt strings
    candidate_ids: list[list[str]]  # short ids, candidate order
    completions: list[list[str]]  # `<item_id>ID</item_id>` per candidate
    titles: Sequence[str]
    short_ids: Sequence[str]
    raw_user_ids: Sequence[str]


def held_out_requests(config: Any, tokenizer: Any, num_users: int) -> Requests:
    """The first `num_users` test users of `config.data` rendered as prompts (also used by the
    sampling / scoring benchmarks, so they run on real prompt lengths)."""
    prep = prepare_data(config)
    examples = build_examples(prep.split, prep.slices.test[:num_users], "test",
                              history_len=config.data.history_len,
                              num_candidates=config.data.num_candidates,
                              num_items=prep.interactions.num_items, seed=config.seed)
    titles, short_ids = prep.interactions.item_titles, prep.short_ids
    prompts = [tokenizer.apply_chat_template(
        render_messages(e, titles, short_ids, show_ratings=config.data.show_ratings))
        for e in examples]
    cand_ids = [[short_ids[int(c)] for c in e.candidates] for e in examples]
    return Requests(examples=examples, prompts=prompts, candidate_ids=cand_ids,
                    completions=[[render_completion(s) for s in ids] for ids in cand_ids],
                    titles=titles, short_ids=short_ids,
                    raw_user_ids=prep.interactions.raw_user_ids)


def main(config: Any) -> list[dict]:
    """Print prompt, trie-constrained sample and item-mode top-5 for the first test users."""
    num_users = DEFAULT_NUM_USERS
    if "recommend" in config and "num_users" in config.recommend:
        num_users = int(config.recommend.num_users)
    model, tok = load_pretrained(config)
    req = held_out_requests(config, tok, num_users)
    examples, prompts, completions = req.examples, req.prompts, req.completions
    cand_ids, titles, short_ids = req.candidate_ids, req.titles, req.short_ids
    temperature = float(config.policy.logging_temperature)

    # Text mode: one sample per user through the candidate trie.
    seqs = [candidate_token_sequences(tok, cs) for cs in completions]
    prompt_ids = [tok.encode(p) for p in prompts]
    tokens, mask = left_pad(prompt_ids, bucket(max(map(len, prompt_ids)), 64), tok.pad_id or 0)
    params = SamplingParams(max_new_tokens=max(len(s) for ss in seqs for s in ss),
                            temperature=temperature)
    samples = generate(model, tokens, mask, jax.random.key(config.seed), params, tok.eos_id,
                       build_batch_trie(seqs, vocab_size=model.config.vocab_size))
    # Item mode: exact distribution over the closed candidate list.
    log_pi = np.asarray(candidate_log_policy(model, tok, prompts, completions, temperature))

    rows = []
    for b, e in enumerate(examples):
        m = np.asarray(samples.mask[b, 0])
        text = tok.decode(np.asarray(samples.tokens[b, 0])[m].tolist(), skip_special_tokens=True)
        parsed = parse_completion(text, cand_ids[b])
        propensity = float(np.exp(np.asarray(samples.logprobs[b, 0]).sum()))
        order = np.argsort(-log_pi[b], kind="stable")[:5]
        top5 = [(cand_ids[b][i], titles[int(e.candidates[i])], float(np.exp(log_pi[b, i])))
                for i in order]
        target = short_ids[e.target]
        print(f"\n=== user {req.raw_user_ids[e.user]} "
              f"(held-out next item {target}: {titles[e.target]})")
        print("--- prompt ---")
        print(prompts[b])
        print(f"--- text mode (trie-constrained, T={temperature:g}) ---")
        chosen = titles[int(e.candidates[parsed.candidate_index])] if parsed.ok else "?"
        print(f"{text!r} -> {parsed.short_id} {chosen}  (propensity {propensity:.4f}, "
              f"{'hit' if parsed.ok and parsed.short_id == target else 'miss'})")
        print("--- item mode: top 5 of pi(item | x) ---")
        for rank, (sid, title, p) in enumerate(top5, 1):
            mark = "  <- held-out" if sid == target else ""
            print(f"{rank}. {sid:>6}  {p:.4f}  {title}{mark}")
        rows.append({"user": int(e.user), "target": target, "sampled": parsed.short_id,
                     "propensity": propensity, "top5": top5})
    return rows
