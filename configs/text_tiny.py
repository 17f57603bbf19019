"""Text mode, tiny: the continual experiment with sampled completions on the candidate list.

    abpo-jax train --config=configs/text_tiny.py
    abpo-jax train --config=configs/text_tiny.py --config.policy.candidates=catalogue

`configs/tiny.py` with `policy.mode=text`: rollouts, deployment and evaluation sample the item
tag `<item_id>ID</item_id>` token by token under the prompt's candidate trie (every sample is a
valid item; the logged propensity is the probability of the whole completion under the
sampling procedure: temperature, top-k / top-p, trie renormalisation) and the objective is
per token. Evaluation adds the sibling protocol (`eval.text_samples` sampled completions per
test prompt, ranked in sampling order: text_hr@K / text_ndcg@K) beside the exact item-mode
ranking of the same model. The tiny item-token vocabulary has no words, so no free text here
(`configs/text_smollm2.py` thinks first).
"""

import pathlib

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("tiny.py"))
    c.run_dir = "runs/text_tiny"
    c.policy.mode = "text"
    c.policy.top_k = 0
    c.policy.top_p = 1.0
    c.rounds.methods = ("abpo", "grpo", "sft_positive", "no_update")
    c.eval.text_samples = 8
    return c
