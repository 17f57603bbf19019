"""Catalogue mode, SmolLM2: generate the next movie's title over the whole ML-1M catalogue.

    abpo-jax train --config=configs/catalogue_smollm2.py
    abpo-jax train --config=configs/catalogue_smollm2.py --config.policy.item_text=id

SmolLM2-135M-Instruct (embedded GGUF) with LoRA r8 on the demo's slices (8 users per round,
H=3), one round for ABPO and no update. The prompt lists the history only; the completion is
the quoted title (MiniOneRec's format; repeated titles are renamed so each names one item),
generated under a trie of all 3,706 titles; evaluation is constrained beam search with K=10
(catalogue_hr@K / catalogue_ndcg@K). Shows the real LLM in catalogue mode, not a result.
"""

import pathlib

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("text_smollm2.py"))
    c.run_dir = "runs/catalogue_smollm2"
    c.policy.candidates = "catalogue"
    c.policy.item_text = "title"
    c.policy.max_think_tokens = 0
    c.eval.beam = 10
    return c
