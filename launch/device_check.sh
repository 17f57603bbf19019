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
#
# On a machine the weights cannot reach (no package index, a size limit on what travels):
#   bash launch/device_check.sh --prepare .devpack      # here: weightless architecture dirs
#       (config.json + tokenizer, tens of MB instead of ~350 MB of GGUFs) and ML-100k's files
#   ARCH_DIR=.devpack bash launch/device_check.sh       # there: random weights at each model's
#       architecture (model.random_init; the cost of a step does not depend on the weights'
#       values), beam prompts from ML-100k
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
models=${MODELS:-"smollm2 gemma3_270m"}
out=${OUT_DIR:-runs/device_check}
if [ "${1:-}" = "--prepare" ]; then
  dir=${2:?usage: bash launch/device_check.sh --prepare DIR}
  for model in $models; do
    "$py" -c 'import sys; from abpo_jax.models.architecture_dir import save_packaged_architecture as s
print("wrote", s(sys.argv[1], sys.argv[2]))' "$model" "$dir/arch/$model"
  done
  # ML-100k as recbole ships it, under a package directory that find_spec locates (no import)
  src=$("$py" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("recbole")
print(pathlib.Path(s.origin).parent / "dataset_example" / "ml-100k")')
  mkdir -p "$dir/site/recbole/dataset_example"
  cp -r "$src" "$dir/site/recbole/dataset_example/"
  touch "$dir/site/recbole/__init__.py"
  du -sh "$dir"
  exit 0
fi
arch=()
if [ -n "${ARCH_DIR:-}" ]; then
  export PYTHONPATH="$ARCH_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
  arch=(--config.model.source=hf --config.model.random_init=True --config.data.dataset=ml-100k
        --config.data.users_per_round=128)   # ML-100k has 943 users
fi
"$py" -c 'import jax; print("devices:", jax.devices())'
# benchmark by benchmark (each for every model), so a run cut short still covers both models
for bench in train_step text_step beam; do
  for model in $models; do
    common=(--config=configs/device_check.py "--config.model.source=$model"
            "--config.run_dir=$out/$model" "--config.bench.only=$bench")
    [ -n "${ARCH_DIR:-}" ] && common+=("${arch[@]}" "--config.model.path=$ARCH_DIR/arch/$model")
    case $bench in
      text_step) common+=(--config.model.matmul_precision=bfloat16) ;;
      beam) common+=(--config.model.dtype=bfloat16) ;;
    esac
    # one benchmark failing (out of memory, say) still leaves the others' rows
    "$py" -m abpo_jax bench "${common[@]}" || echo "FAILED: $model $bench"
  done
done
"$py" - "$out" <<'PY'
"""MFU per row from the bench JSONs: the row's model FLOP/s over the chip's bf16 dense peak."""
import glob, json, sys

import jax

PEAK_BF16 = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12,
             "tpu v6": 918e12, "tpu v5p": 459e12, "tpu v5": 197e12, "tpu v4": 275e12}
import time

import jax.numpy as jnp

kind = jax.devices()[0].device_kind.lower()
peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
chips = jax.device_count()
# the same run's bf16 matmul peak on one chip (8192^3, best of 10 after a warm-up): the rows'
# MFU is given against the datasheet and against what this chip reached here
n = 8192
a = jnp.ones((n, n), jnp.bfloat16)
mm = jax.jit(lambda x: x @ x)
mm(a).block_until_ready()
best = float("inf")
for _ in range(10):
    t = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
measured = 2 * n ** 3 / best
print(f"\n{kind} x {chips}; bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s "
      f"per chip (datasheet), {measured / 1e12:.0f} TFLOP/s measured here (8192^3 matmul)")
print(f"{'benchmark':58s} {'metric':9s} {'ours':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'of meas.':>8s}")
for path in sorted(glob.glob(f"{sys.argv[1]}/*/bench-*.json")):
    for row in json.load(open(path))["rows"]:
        rate = row.get("model_flops_per_s")
        if rate is None and row.get("useful_flops") and row.get("step_s"):
            rate = row["useful_flops"] / row["step_s"]
        if rate is None:
            continue
        mfu = f"{rate / (peak * chips):.1%}" if peak else "-"
        print(f"{row['benchmark']:58s} {row['metric']:9s} {row['ours']:10.4g} "
              f"{rate / 1e12:8.2f} {mfu:>6s} {rate / (measured * chips):8.1%}")
PY
