"""Catalogue mode, tiny: generate the next item over the whole ML-1M catalogue (ReRe/MiniOneRec).

    abpo-jax train --config=configs/catalogue_tiny.py
    abpo-jax study --config=configs/catalogue_tiny.py --config.study.seeds=2

`configs/text_tiny.py` with `policy.candidates=catalogue`: the prompt shows the history only;
deployment and rollouts generate `<item_id>ID</item_id>` under a token trie of all 3,706 items
(exact constrained-sampling propensities), the round-0 SFT teaches next-item completions, and
evaluation runs constrained beam search (K = `eval.beam`) giving catalogue_hr@K /
catalogue_ndcg@K as MiniOneRec's calc.py computes them (matched by item), beside the item-mode
ranking of the test requests' candidate lists. With 3,706 items a rollout rarely names the
logged item, so GRPO's group rewards are nearly constant there; ABPO's anchor carries the
logged outcome into every group.
"""

import pathlib

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("text_tiny.py"))
    c.run_dir = "runs/catalogue_tiny"
    c.policy.candidates = "catalogue"
    c.eval.beam = 10
    return c
