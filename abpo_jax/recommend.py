"""`abpo-jax recommend`: a run's policy recommending for a few real held-out users.

    abpo-jax recommend --config=tiny --config.run_dir=runs/tiny          # its abpo policy
    abpo-jax recommend --config=tiny --config.run_dir=runs/tiny --config.recommend.method=grpo
    abpo-jax recommend                                 # the demo's SmolLM2 run, or the base model

It builds the run's experiment (same data, test users, model and encoder as `train`), restores
the newest verified checkpoint of `config.run_dir` and takes `config.recommend.method`'s params
(the first of `rounds.methods` by default), saying which weights those are; without a
checkpoint it uses the untrained initial model (tiny) or the pretrained base model, and says so.
For each of the first `recommend.num_users` test users it prints the history, the held-out next
item and the top 5 of pi~(item | x) over the candidate list (the policy `train` evaluates);
a pretrained model also shows the chat prompt and one completion sampled through the candidate
trie at `policy.logging_temperature` (always a valid candidate; its propensity is the product of
the renormalised per-step probabilities).

`held_out_requests` renders test users' prompts for the sampling / scoring benchmarks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from abpo_jax.data.prompts import parse_completion, render_completion, render_messages
from abpo_jax.data.splits import Example, build_examples, prepare_data
from abpo_jax.sampling.generate import SamplingParams, generate, left_pad
from abpo_jax.sampling.group_scoring import bucket
from abpo_jax.sampling.trie import build_batch_trie, candidate_token_sequences


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


def _method(config: Any) -> str:
    """`recommend.method`, or the first of `rounds.methods`; ConfigError naming the choices."""
    from abpo_jax.config import ConfigError
    methods = tuple(config.rounds.methods)
    method = str(config.recommend.get("method", "") or methods[0])
    if method not in methods:
        raise ConfigError(f"config.recommend.method={method!r} is not one of the run's "
                          f"config.rounds.methods: {', '.join(methods)}")
    return method


def restore_weights(exp: Any, method: str) -> tuple[Any, str]:
    """(trainable params of `method`, a line naming them) from the newest verified checkpoint
    of the experiment's run dir; the initial params (untrained / pretrained) when none."""
    from abpo_jax.train.checkpoint import weights_line
    restored = exp.ckpt.restore_latest(exp.layout.abstract)
    exp.ckpt.close()
    source = exp.config.model.source
    untrained = ("the untrained initial model (model.source='tiny')" if source == "tiny" else
                 f"the pretrained base model (model.source={source!r}, not fine-tuned)")
    line = weights_line(restored, exp.ckpt.directory, method, exp.methods, untrained)
    if restored is None:
        return exp.init_params, line
    if "methods" not in restored.state:
        return restored.state["sft"]["params"], line
    return restored.state["methods"][method]["params"], line


def _sample_text(exp: Any, params: Any, examples: Sequence[Example], temperature: float,
                 seed: int) -> list[tuple[str, float]]:
    """One trie-constrained completion per example at `temperature`: (text, propensity)."""
    policy, enc = exp.evaluator.policy, exp.encoder
    tok = enc.tokenizer
    model = policy.split.merge(params, policy.frozen)
    seqs = [candidate_token_sequences(tok, [render_completion(enc.short_ids[int(c)])
                                            for c in e.candidates]) for e in examples]
    prompt_ids = [enc.prompt_ids(e) for e in examples]
    tokens, mask = left_pad(prompt_ids, bucket(max(map(len, prompt_ids)), 64), tok.pad_id or 0)
    params_s = SamplingParams(max_new_tokens=max(len(s) for ss in seqs for s in ss),
                              temperature=temperature)
    with jax.set_mesh(policy.mesh):
        out = generate(model, tokens, mask, jax.random.key(seed), params_s, tok.eos_id,
                       build_batch_trie(seqs, vocab_size=model.config.vocab_size))
    rows = []
    for b in range(len(examples)):
        m = np.asarray(out.mask[b, 0])
        text = tok.decode(np.asarray(out.tokens[b, 0])[m].tolist(), skip_special_tokens=True)
        rows.append((text, float(np.exp(np.asarray(out.logprobs[b, 0]).sum()))))
    return rows


def main(config: Any) -> list[dict]:
    """Print which weights are used, then history, held-out item and top 5 per test user."""
    from abpo_jax.config import validate
    from abpo_jax.train.checkpoint import adopt_run_config
    from abpo_jax.train.experiment import build

    # the run's own config (model, data, methods), whatever --config says
    config = validate(adopt_run_config(config, ignore=("recommend.", "eval.")))
    method = _method(config)
    exp = build(config, record_config=False)
    params, line = restore_weights(exp, method)
    print(line, flush=True)
    n = min(int(config.recommend.num_users), len(exp.evaluator.test_examples))
    examples = list(exp.evaluator.test_examples[:n])
    log_pi = exp.evaluator.policy.log_probs(params, examples, "recommend")
    titles, short_ids = exp.encoder.titles, exp.encoder.short_ids
    pretrained = config.model.source != "tiny"
    temperature = float(config.policy.logging_temperature)
    samples = _sample_text(exp, params, examples, temperature, int(config.seed)) \
        if pretrained else [None] * n
    rows = []
    for b, e in enumerate(examples):
        name = lambda i: f"{short_ids[int(i)]} {titles[int(i)]}"
        print(f"\n=== test user {int(e.user)}: held-out next item {name(e.target)}")
        print("history (oldest first): " + "; ".join(name(i) for i in e.history))
        if pretrained:
            print("--- prompt ---")
            print(exp.encoder.tokenizer.decode(exp.encoder.prompt_ids(e)))
            text, propensity = samples[b]
            cand_ids = [short_ids[int(c)] for c in e.candidates]
            parsed = parse_completion(text, cand_ids)
            print(f"--- sampled (candidate trie, T={temperature:g}): {text!r} -> "
                  f"{parsed.short_id if parsed.ok else '?'} (propensity {propensity:.4f}, "
                  f"{'hit' if parsed.ok and parsed.short_id == short_ids[e.target] else 'miss'})")
        order = np.argsort(-log_pi[b], kind="stable")[:5]
        print(f"--- top 5 of pi({method} | x) over {len(e.candidates)} candidates ---")
        top5 = []
        for rank, i in enumerate(order, 1):
            item = int(e.candidates[i])
            p = float(np.exp(log_pi[b, i]))
            mark = "  <- held-out" if item == e.target else ""
            print(f"{rank}. {p:.4f}  {name(item)}{mark}")
            top5.append((short_ids[item], titles[item], p))
        rows.append({"user": int(e.user), "target": short_ids[e.target], "top5": top5,
                     "weights": line})
    return rows
