"""The accelerator check's benchmark sizes (launch/device_check.sh): the item-mode step, the
text-mode step and catalogue beam search at batch sizes an accelerator is used at, peers off
(torch may not be installed there, and the question is the chip's utilisation, not a race).

    bash launch/device_check.sh              # SmolLM2 and Gemma-3-270M, bf16, MFU per row
"""

import pathlib

import ml_collections

from abpo_jax.config import from_file


def get_config():
    c = from_file(pathlib.Path(__file__).with_name("bench.py"))
    c.run_dir = "runs/device_check"
    c.bench.train_peer = False
    c.bench.text_peer = False
    c.bench.beam_peer = False
    c.bench.train_two_pass = False
    c.bench.train_bf16_matmul = True
    c.bench.train_steps = 5
    c.bench.text_steps = 3
    # realistic batches: 32 prompts per step (item: 8 candidates; text: G=8 samples of 16 tokens)
    c.bench.train_sizes = ml_collections.ConfigDict({"B": 32, "P": 256, "C": 8, "L": 12, "G": 4})
    c.bench.text_sizes = ml_collections.ConfigDict({"B": 32, "P": 256, "G": 8, "L": 16, "C": 8})
    c.bench.beam_num_prompts = 32
    c.data.num_test_users = 32   # beam prompts come from the first test users
    return c
