"""Multi-host reference: MovieLens-1M continual rounds with Gemma-3-1B on a TPU v5e-32 slice.

    # on your machine: create the slice, copy the code, install, train on all 4 hosts at once
    launch/tpu_train.sh --create --tpu abpo-v5e32 --zone us-west4-a --project MY_PROJECT \
        --local . --ckpt-dir gs://MY_BUCKET/abpo/ml1m_gemma3_1b \
        --config configs/ml1m_gemma3_1b_v5e32.py
    # the same on the workers directly (what the launcher runs on every host):
    abpo-jax train --config=configs/ml1m_gemma3_1b_v5e32.py \
        --config.checkpoint.dir=gs://MY_BUCKET/abpo/ml1m_gemma3_1b

Model: a Hugging Face checkpoint you download yourself (Gemma needs its licence accepted) into
`~/models/gemma-3-1b-it` on every worker, e.g.
`hf download google/gemma-3-1b-it --local-dir ~/models/gemma-3-1b-it` (see README.md, "Running on TPU");
another path: `--config.model.path=/path/to/dir` (config.json, *.safetensors, tokenizer.json).

Mesh: v5litepod-32 is a 4x8 slice served by 4 TPU VM hosts with 8 chips each. `fsdp` = 8 shards
parameters and optimizer state over the chips of one host (Gemma-3-1B: ~1.0e9 parameters; f32
weights + gradients + AdamW moments ~16 GB per trained policy, ~2 GB per chip of 16 GB HBM);
`data` = 4 runs one replica group per host. Global batches must divide by data x fsdp = 32.
Estimated time and cost per round: README.md, "Running on TPU".
"""

import importlib.machinery
import os
import pathlib

# Start from the single-host reference settings (configs/ml1m.py) and change only the scale.
_ml1m = importlib.machinery.SourceFileLoader(
    "abpo_configs_ml1m", str(pathlib.Path(__file__).with_name("ml1m.py"))).load_module()


def get_config():
    c = _ml1m.get_config()
    c.run_dir = "runs/ml1m_gemma3_1b_v5e32"

    c.model.source = "hf"
    c.model.path = os.path.expanduser("~/models/gemma-3-1b-it")
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"    # master weights in f32; matmuls in bf16
    c.model.remat = True

    c.mesh.data = 4                    # hosts
    c.mesh.fsdp = 8                    # chips per host
    c.mesh.tensor = 1

    # Event rounds (from ml1m.py): 5 rounds x 10,240 requests. Estimated throughput (README
    # "Estimated time and cost per round"): ~6.3e13 FLOPs per request for the five methods
    # (4 trained + no_update) at ~920 tokens per packed request -> at 20% MFU of 32 x 197 bf16
    # TFLOP/s, ~20 requests/s = ~72,000 requests per hour, ~8.5 min of compute per round.

    c.train.batch_size = 64            # prompts per step, global (2 per chip)
    c.train.learning_rate = 1e-6
    c.train.sft_steps = 300
    c.eval.batch_size = 64
    return c
