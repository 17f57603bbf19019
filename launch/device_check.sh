#!/usr/bin/env bash
# Accelerator check (issue 27): the item-mode step, the text-mode step and catalogue beam search
# of SmolLM2-135M and Gemma-3-270M at realistic batch sizes (configs/device_check.py: 32 prompts
# per step / search) in bf16, each row's model FLOP/s as MFU against the chip's bf16 peak.
#
#   bash launch/device_check.sh                  # both models (~10 min on one H100/H200 or TPU chip)
#   MODELS=gemma3_270m bash launch/device_check.sh
#
# Needs abpo_jax with an accelerator jax and the data packages installed (bash launch/install.sh,
# plus "jax[cuda12]" on a GPU or --tpu on a TPU VM). Writes runs/device_check/<model>/bench-*.json
# and prints one table. bf16: the item step's "bf16-matmul" rows (model.matmul_precision=bfloat16,
# remat of non-matmuls; its float32 rows are printed too), the text step with bf16 weight matmuls,
# beam search with bf16 activations and weights (model.dtype=bfloat16).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
models=${MODELS:-"smollm2 gemma3_270m"}
out=${OUT_DIR:-runs/device_check}
"$py" -c 'import jax; print("devices:", jax.devices())'
for model in $models; do
  run_dir="$out/$model"
  common=(--config=configs/device_check.py "--config.model.source=$model" "--config.run_dir=$run_dir")
  "$py" -m abpo_jax bench "${common[@]}" --config.bench.only=train_step
  "$py" -m abpo_jax bench "${common[@]}" --config.bench.only=text_step \
    --config.model.matmul_precision=bfloat16
  "$py" -m abpo_jax bench "${common[@]}" --config.bench.only=beam --config.model.dtype=bfloat16
done
"$py" - "$out" <<'PY'
"""MFU per row from the bench JSONs: the row's model FLOP/s over the chip's bf16 dense peak."""
import glob, json, sys

import jax

PEAK_BF16 = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12,
             "tpu v6": 918e12, "tpu v5p": 459e12, "tpu v5": 197e12, "tpu v4": 275e12}
kind = jax.devices()[0].device_kind.lower()
peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
chips = jax.device_count()
print(f"\n{kind} x {chips}; bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s per chip")
print(f"{'benchmark':58s} {'metric':9s} {'ours':>10s} {'TFLOP/s':>8s} {'MFU':>6s}")
for path in sorted(glob.glob(f"{sys.argv[1]}/*/bench-*.json")):
    for row in json.load(open(path))["rows"]:
        rate = row.get("model_flops_per_s")
        if rate is None and row.get("useful_flops") and row.get("step_s"):
            rate = row["useful_flops"] / row["step_s"]
        if rate is None:
            continue
        mfu = f"{rate / (peak * chips):.1%}" if peak else "-"
        print(f"{row['benchmark']:58s} {row['metric']:9s} {row['ours']:10.4g} "
              f"{rate / 1e12:8.2f} {mfu:>6s}")
PY
