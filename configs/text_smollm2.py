"""Text mode, SmolLM2: think first, then the item tag under the candidate trie (CPU-sized).

    abpo-jax train --config=configs/text_smollm2.py
    abpo-jax train --config=configs/text_smollm2.py --config.policy.max_think_tokens=0

SmolLM2-135M-Instruct (the embedded GGUF) with LoRA r8, the demo's slices (8 fresh users per
round, H=3, C=6, G=4), one round of deploy -> log -> update -> evaluate for ABPO and no update.
Completions are `<think>` free text of at most `policy.max_think_tokens` tokens (cut after the
model's own `</think>`, else `</think>` is appended), then `<item_id>ID</item_id>` decoded under
the prompt's candidate trie; the format reward (`loss.format_rewards`: tag_presence, tag_count,
only_expected_tags, as the authors' sibling code) joins the outcome. The logged propensity is
the whole completion's probability under the procedure (top-k 50, temperature 1). Shows the
real LLM through text mode, not a result.
"""

import pathlib

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("demo.py"))
    del c["demo"]
    c.run_dir = "runs/text_smollm2"
    c.policy.mode = "text"
    c.policy.max_think_tokens = 16
    c.policy.top_k = 50
    c.eval.text_samples = 4
    return c
