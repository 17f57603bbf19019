#!/usr/bin/env bash
# Runs `abpo-jax train` on every worker of a Cloud TPU VM (single host or pod slice) at once.
#
#   launch/tpu_train.sh --tpu NAME --zone ZONE --project PROJECT (--repo URL | --local DIR) \
#       [--create] [--config configs/FILE.py] [--ckpt-dir gs://BUCKET/PATH] [--config.a.b=value ...]
#
# Steps (each one gcloud command; --dry-run prints them all and runs nothing):
#   0. here, before any gcloud call (also with --dry-run): the config and its overrides are loaded
#      and validated with `abpo-jax <command> ... --validate-only` from this checkout (or --local
#      DIR), so a missing config file or a typo'd field fails before a TPU VM is paid for
#   1. --create: gcloud compute tpus tpu-vm create NAME --accelerator-type ... --version ...
#   2. code on every worker: `git clone`/`git fetch` of --repo, or a copy of the local checkout
#      (tracked + untracked, non-ignored files) with `gcloud compute tpus tpu-vm scp --recurse
#      --worker=all`
#   3. install on every worker: a Python 3.11 venv + `bash launch/install.sh --tpu`
#   4. run on every worker simultaneously (`--worker=all`): the same `abpo-jax train --config=...`
#      command; JAX joins the hosts itself (jax.distributed.initialize on Cloud TPU VMs). Each
#      worker's output goes to LOG_DIR/<worker>.log here and to ~/abpo_jax/logs/ on the worker.
# Resuming: run the same command again (add --skip-install); training restarts from the newest
# checkpoint in the checkpoint directory. Multi-host runs need a checkpoint directory every
# host can reach: gs://... (or a shared file system), not a worker's local disk.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_train.sh --tpu NAME --zone ZONE --project PROJECT (--repo URL | --local DIR) [options]
                          [--config.a.b=value ...] [-- --config.a.b=value ...]

required (flag or environment variable):
  --tpu NAME              TPU VM name                                  (TPU_NAME)
  --zone ZONE             zone, e.g. us-west4-a                        (ZONE)
  --project PROJECT       Google Cloud project id                      (PROJECT_ID)
  --repo URL | --local DIR   where the workers get the code            (REPO_URL | LOCAL_DIR)
options:
  --branch BRANCH         branch or tag of --repo (default: main)
  --config PATH           config file in the repository (default: configs/ml1m_gemma3_1b_v5e32.py)
  --command NAME          abpo-jax command to run (default: train)
  --run-dir DIR           config.run_dir on every worker (metrics, plots, round logs)
  --ckpt-dir DIR          config.checkpoint.dir: gs://BUCKET/PATH or a shared/persistent path
  --config.a.b=VALUE      any config override, passed through verbatim (repeatable)
  --create                create the TPU VM first
  --accelerator-type T    for --create (default: v5litepod-32)        (ACCELERATOR_TYPE)
  --version V             TPU software version for --create (default: v2-alpha-tpuv5-lite)
                          (RUNTIME_VERSION; v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5)
  --spot                  create a Spot TPU VM (cheaper, can be preempted; resume by re-running)
  --python PY             Python >= 3.11 on the workers (default: python3.11; apt-installed if absent)
  --log-dir DIR           local directory for the per-worker logs (default: tpu_logs/NAME)
  --skip-sync             do not update the code on the workers
  --skip-install          do not (re)install on the workers
  --setup-only            create / sync / install, but do not start training
  --dry-run               print every command instead of running it (the config is still
                          validated here first)
  --skip-check            do not validate the config locally first (step 0)
  --check-python PY       Python that validates it (default: python3)       (ABPO_CHECK_PYTHON)
  -h, --help              this help
EOF
}

die() { echo "tpu_train.sh: $*" >&2; exit 2; }

tpu=${TPU_NAME:-}
zone=${ZONE:-}
project=${PROJECT_ID:-}
repo=${REPO_URL:-}
local_dir=${LOCAL_DIR:-}
branch=main
config=configs/ml1m_gemma3_1b_v5e32.py
command_name=train
run_dir=
ckpt_dir=
accelerator_type=${ACCELERATOR_TYPE:-v5litepod-32}
runtime_version=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}
python=python3.11
log_dir=
create=0
spot=0
skip_sync=0
skip_install=0
setup_only=0
dry_run=0
skip_check=0
check_python=${ABPO_CHECK_PYTHON:-python3}
overrides=()

# value of option $1 given as its next argument $2 (fails clearly when it is missing)
need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ] || [[ "$2" == --* ]]; then die "option $1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tpu|--zone|--project|--repo|--local|--branch|--config|--command|--run-dir|--ckpt-dir|\
    --accelerator-type|--version|--python|--log-dir|--check-python)
      need_value "$@"
      case "$1" in
        --tpu) tpu=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --repo) repo=$2 ;;
        --local) local_dir=$2 ;;
        --branch) branch=$2 ;;
        --config) config=$2 ;;
        --command) command_name=$2 ;;
        --run-dir) run_dir=$2 ;;
        --ckpt-dir) ckpt_dir=$2 ;;
        --accelerator-type) accelerator_type=$2 ;;
        --version) runtime_version=$2 ;;
        --python) python=$2 ;;
        --log-dir) log_dir=$2 ;;
        --check-python) check_python=$2 ;;
      esac
      shift 2 ;;
    --tpu=*|--zone=*|--project=*|--repo=*|--local=*|--branch=*|--config=*|--command=*|\
    --run-dir=*|--ckpt-dir=*|--accelerator-type=*|--version=*|--python=*|--log-dir=*|\
    --check-python=*)
      # --flag=value spelling: split once and re-dispatch to the branch above
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
      continue ;;
    --config.*) overrides+=("$1"); shift ;;
    --create) create=1; shift ;;
    --spot) spot=1; shift ;;
    --skip-sync) skip_sync=1; shift ;;
    --skip-install) skip_install=1; shift ;;
    --setup-only) setup_only=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --skip-check) skip_check=1; shift ;;
    --) shift
        for arg in "$@"; do
          [[ "$arg" == --config.* ]] || die "after --, only --config.a.b=value overrides are allowed (got '$arg')"
          overrides+=("$arg")
        done
        break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[ -n "$tpu" ] || die "missing --tpu NAME (or env TPU_NAME)"
[ -n "$zone" ] || die "missing --zone ZONE (or env ZONE)"
[ -n "$project" ] || die "missing --project PROJECT (or env PROJECT_ID)"
if [ "$skip_sync" = 0 ]; then
  [ -n "$repo" ] || [ -n "$local_dir" ] || die "missing --repo URL or --local DIR (or --skip-sync)"
  [ -z "$repo" ] || [ -z "$local_dir" ] || die "give either --repo or --local, not both"
  [ -z "$local_dir" ] || [ -d "$local_dir" ] || die "--local $local_dir is not a directory"
fi
if [ "$dry_run" = 0 ] && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
fi
if [ -n "$ckpt_dir" ] && [[ "$ckpt_dir" != gs://* ]]; then
  echo "tpu_train.sh: note: --ckpt-dir $ckpt_dir is not on GCS; on a multi-host TPU every host must see it (shared file system)" >&2
fi
[[ "$command_name" =~ ^[a-z]+$ ]] || die "--command '$command_name' is not an abpo-jax command name"
log_dir=${log_dir:-tpu_logs/$tpu}

# 0. validate the config here, before anything is created or paid for
if [ "$skip_check" = 0 ]; then
  check_root=${local_dir:-$(cd "$(dirname "$0")/.." && pwd)}
  "$check_python" -c 'import ml_collections, absl' >/dev/null 2>&1 \
    || die "cannot validate the config locally: '$check_python' lacks abpo_jax's dependencies (bash launch/install.sh installs them; --check-python PY picks another Python; --skip-check skips this)"
  check_args=(--config="$config")
  [ -z "$run_dir" ] || check_args+=(--config.run_dir="$run_dir")
  [ -z "$ckpt_dir" ] || check_args+=(--config.checkpoint.dir="$ckpt_dir")
  check_args+=("${overrides[@]}")
  if ! check_out=$(cd "$check_root" && "$check_python" -m abpo_jax "$command_name" "${check_args[@]}" --validate-only 2>&1); then
    die "the config does not validate (checked in $check_root; nothing was created): ${check_out##*$'\n'}"
  fi
  echo "tpu_train.sh: ${check_out##*$'\n'}" >&2
fi

# One word for a shell, single-quoted unless it is plain (easier to read than printf %q).
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print (dry run) or execute one command; the printout can be pasted back into a shell.
run() {
  if [ "$dry_run" = 1 ]; then
    local sep=
    for word in "$@"; do printf '%s' "$sep"; shell_word "$word"; sep=' '; done
    printf '\n'
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" --project="$project")
# shellcheck disable=SC2088  # the tilde is meant for the worker's shell, not this one
remote_dir='~/abpo_jax'

# Run a remote command (a bash snippet) on all workers at once.
on_all_workers() {
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$1" "${@:2}"
}

# 1. create
if [ "$create" = 1 ]; then
  # cloud-platform scope: the workers read/write GCS (checkpoints, model) as the VM's service
  # account; what it may touch is still decided by that account's IAM roles.
  create_flags=(--accelerator-type="$accelerator_type" --version="$runtime_version"
                --scopes=https://www.googleapis.com/auth/cloud-platform)
  [ "$spot" = 0 ] || create_flags+=(--spot)
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" "${create_flags[@]}"
fi

# 2. code
if [ "$skip_sync" = 0 ]; then
  if [ -n "$repo" ]; then
    q_repo=$(printf %q "$repo"); q_branch=$(printf %q "$branch")
    on_all_workers "set -euo pipefail; if [ -d $remote_dir/.git ]; then git -C $remote_dir fetch --quiet origin $q_branch && git -C $remote_dir checkout --quiet -B $q_branch FETCH_HEAD; else git clone --quiet --branch $q_branch $q_repo $remote_dir; fi"
  else
    # A clean copy: tracked and untracked-but-not-ignored files (no .venv, runs/, caches).
    stage_parent=${TMPDIR:-/tmp}/abpo_jax_stage.$$
    stage="$stage_parent/abpo_jax"
    [ "$dry_run" = 1 ] || trap 'rm -rf "$stage_parent"' EXIT
    run mkdir -p "$stage"
    # shellcheck disable=SC2016  # $1/$2 expand in the inner bash, not here
    run bash -c 'git -C "$1" ls-files -z --cached --others --exclude-standard | tar -C "$1" --null --ignore-failed-read -T - -cf - | tar -C "$2" -xf -' _ "$local_dir" "$stage"
    run "${gcloud_tpu[@]}" scp --recurse "$stage" "$tpu:~" "${where[@]}" --worker=all
  fi
fi

q_python=$(printf %q "$python")

# 3. install (Python 3.11+ venv; Ubuntu 22.04 TPU images ship 3.10)
if [ "$skip_install" = 0 ]; then
  extra=
  # Orbax reaches gs:// through etils.epath -> fsspec -> gcsfs
  [[ "$ckpt_dir" != gs://* && "$run_dir" != gs://* ]] || extra=' && python -m pip install --quiet gcsfs'
  on_all_workers "set -euo pipefail; cd $remote_dir; command -v $q_python >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $q_python $q_python-venv; }; [ -x .venv/bin/python ] || $q_python -m venv .venv; . .venv/bin/activate; bash launch/install.sh --tpu$extra"
fi

if [ "$setup_only" = 1 ]; then
  [ "$dry_run" = 1 ] || echo "tpu_train.sh: setup done (--setup-only); rerun without it to train"
  exit 0
fi

# 4. train on all workers at once
train_args=(--config="$config")
[ -z "$run_dir" ] || train_args+=(--config.run_dir="$run_dir")
[ -z "$ckpt_dir" ] || train_args+=(--config.checkpoint.dir="$ckpt_dir")
train_args+=("${overrides[@]}")
q_args=$(printf ' %q' "${train_args[@]}")
run mkdir -p "$log_dir"
# ABPO_DISTRIBUTED=1: every worker joins jax.distributed (auto-detected TPU topology).
on_all_workers "set -euo pipefail; cd $remote_dir; . .venv/bin/activate; mkdir -p logs; export ABPO_DISTRIBUTED=1; abpo-jax $command_name$q_args 2>&1 | tee -a \"logs/$command_name-\$(hostname).log\"" \
  --output-directory="$log_dir"
[ "$dry_run" = 1 ] || echo "tpu_train.sh: done; per-worker logs in $log_dir/ (and ~/abpo_jax/logs/ on each worker)"
