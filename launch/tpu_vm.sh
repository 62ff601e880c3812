#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create it, install facegen_jax on every worker, train, follow the log,
# delete it. Every worker runs the same `python -m facegen_jax.main`; jax.distributed finds its peers from the
# TPU metadata, and all workers write one checkpoint directory, so the workdir is a gs:// path.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${REPO}/launch/lib.sh"
# These go into commands run on the workers, whose shell expands the ~.
# shellcheck disable=SC2088
readonly REMOTE_DIR='~/facegen_jax'
# shellcheck disable=SC2088
readonly REMOTE_LOG='~/facegen_jax_train.log'
# shellcheck disable=SC2088
readonly REMOTE_PID='~/facegen_jax_train.pid'

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh COMMAND [options] [-- facegen_jax.main flags...]

commands:
  create   create the TPU VM (--queued: as a queued resource, which waits for capacity)
  setup    copy this repo (its committed HEAD) to every worker and install requirements.txt + jax[tpu]
           into ~/facegen_jax/.venv (Python 3.11, made with uv)
  train    start python -m facegen_jax.main on every worker (nohup, log in ~/facegen_jax_train.log)
  logs     follow the log of worker 0 (or --worker N)
  stop     stop the training started by `train` on every worker
  delete   delete the TPU VM (with --queued: the queued resource and its TPU VM)

options:
  --name NAME               TPU name (default facegen-jax)
  --zone ZONE               e.g. us-central2-b (default: gcloud's compute/zone)
  --project PROJECT         (default: gcloud's core/project)
  --accelerator-type TYPE   e.g. v4-8 (one host), v4-32 (4 hosts) (default v4-8)
  --version RUNTIME         TPU software version (default tpu-ubuntu2204-base)
  --queued                  create/delete a queued resource instead of a TPU VM
  --spot                    create: use spot capacity
  --config FILE[:PRESET]    train: e.g. configs/spade.py
  --workdir gs://BUCKET/DIR train: checkpoints, TensorBoard logs and samples (required, gs:// only)
  --tfds-name NAME          train: read TFDS dataset NAME (adds --config.input.source=tfds ...tfds.name=NAME)
  --tfds-data-dir gs://...  train: its TFDS data_dir
  --worker N                logs: which worker (default 0)
  --dry-run                 print the commands (one per line, prefixed "+ ") and run nothing
  -h, --help                this text

Flags after `--` go to facegen_jax.main unchanged, e.g. -- --config.batch_size=256

example (v4-32 pod slice):
  launch/tpu_vm.sh create --name faces --zone us-central2-b --accelerator-type v4-32
  launch/tpu_vm.sh setup  --name faces --zone us-central2-b
  launch/tpu_vm.sh train  --name faces --zone us-central2-b --config configs/spade.py \
      --workdir gs://my-bucket/spade --tfds-name celebamask_hq/512 --tfds-data-dir gs://my-bucket/tfds \
      -- --config.input.tfds.label_key=label
  launch/tpu_vm.sh logs   --name faces --zone us-central2-b
  launch/tpu_vm.sh delete --name faces --zone us-central2-b
EOF
}

command=""
name="facegen-jax"
zone=""
project=""
accelerator_type="v4-8"
version="tpu-ubuntu2204-base"
queued=false
spot=false
config=""
workdir=""
tfds_name=""
tfds_data_dir=""
worker=""
dry_run=false
main_args=()

while [[ $# -gt 0 ]]; do
  next_option "$@"
  case "${option}" in
    --name | --zone | --project | --accelerator-type | --version | --config | --workdir | --tfds-name | \
      --tfds-data-dir | --worker)
      option_value "$@"
      [[ -n "${value}" ]] || die_usage "option ${option} needs a value"
      case "${option}" in
        --name) name="${value}" ;;
        --zone) zone="${value}" ;;
        --project) project="${value}" ;;
        --accelerator-type) accelerator_type="${value}" ;;
        --version) version="${value}" ;;
        --config) config="${value}" ;;
        --workdir) workdir="${value}" ;;
        --tfds-name) tfds_name="${value}" ;;
        --tfds-data-dir) tfds_data_dir="${value}" ;;
        --worker) worker="${value}" ;;
      esac
      ;;
    --queued | --spot | --dry-run | -h | --help)
      option_flag
      case "${option}" in
        --queued) queued=true ;;
        --spot) spot=true ;;
        --dry-run) dry_run=true ;;
        -h | --help)
          usage
          exit 0
          ;;
      esac
      ;;
    --)
      shift
      main_args=("$@")
      break
      ;;
    -*) die_usage "unknown option: ${option}" ;;
    *)
      [[ -z "${command}" ]] || die_usage "one command only (got '${command}' and '${option}')"
      command="${option}"
      ;;
  esac
  shift "${option_words}"
done

case "${command}" in
  create | setup | train | logs | stop | delete) ;;
  "") die_usage "missing COMMAND (create, setup, train, logs, stop or delete)" ;;
  *) die_usage "unknown command: ${command} (expected create, setup, train, logs, stop or delete)" ;;
esac
if [[ -n "${worker}" && "${command}" != logs ]]; then
  die_usage "option --worker is for logs; ${command} runs on every worker"
fi
if [[ -n "${worker}" && ! "${worker}" =~ ^[0-9]+$ ]]; then
  die_usage "option --worker needs a worker number, got '${worker}'"
fi
if [[ ${#main_args[@]} -gt 0 && "${command}" != train ]]; then
  die_usage "flags after -- are for train, not ${command}"
fi

gcloud_scope=()
[[ -z "${zone}" ]] || gcloud_scope+=("--zone=${zone}")
[[ -z "${project}" ]] || gcloud_scope+=("--project=${project}")

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "${name}" "--worker=$1" ${gcloud_scope[@]+"${gcloud_scope[@]}"} --command "$2"
}

create() {
  local spot_flag=()
  [[ "${spot}" == false ]] || spot_flag=(--spot)
  if [[ "${queued}" == true ]]; then
    run gcloud compute tpus queued-resources create "${name}" "--node-id=${name}" \
      "--accelerator-type=${accelerator_type}" "--runtime-version=${version}" ${gcloud_scope[@]+"${gcloud_scope[@]}"} \
      ${spot_flag[@]+"${spot_flag[@]}"}
    echo "# the TPU VM exists once 'gcloud compute tpus queued-resources describe ${name}' says ACTIVE" >&2
  else
    run gcloud compute tpus tpu-vm create "${name}" "--accelerator-type=${accelerator_type}" \
      "--version=${version}" ${gcloud_scope[@]+"${gcloud_scope[@]}"} ${spot_flag[@]+"${spot_flag[@]}"}
  fi
}

setup() {
  local jax_version tarball
  jax_version="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' "${REPO}/requirements.txt")"
  [[ -n "${jax_version}" ]] || { echo "tpu_vm.sh: no jax==VERSION line in requirements.txt" >&2; exit 1; }
  if [[ -n "$(git -C "${REPO}" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    echo "tpu_vm.sh: warning: uncommitted changes are not copied (setup copies the committed HEAD)" >&2
  fi
  tarball="${TMPDIR:-/tmp}/facegen_jax-${name}.tar.gz"
  run git -C "${REPO}" archive --format=tar.gz "--output=${tarball}" HEAD
  run gcloud compute tpus tpu-vm scp "${tarball}" "${name}:facegen_jax.tar.gz" --worker=all ${gcloud_scope[@]+"${gcloud_scope[@]}"}
  run rm -f "${tarball}"
  # jax>=0.7 needs Python 3.11+, newer than the TPU images' system Python, so uv brings one into a venv.
  on_workers all "set -e; mkdir -p ${REMOTE_DIR}; tar -xzf ~/facegen_jax.tar.gz -C ${REMOTE_DIR}; \
cd ${REMOTE_DIR}; python3 -m pip install --user --quiet --upgrade uv; \
[ -x .venv/bin/python ] || ~/.local/bin/uv venv --python 3.11 .venv; \
~/.local/bin/uv pip install --python .venv/bin/python -r requirements.txt \"jax[tpu]==${jax_version}\""
}

train() {
  [[ -n "${config}" ]] || die_usage "train needs --config (e.g. --config configs/spade.py)"
  [[ -n "${workdir}" ]] || die_usage "train needs --workdir gs://BUCKET/DIR"
  [[ "${workdir}" == gs://* ]] || die_usage "option --workdir must be a gs:// path (every worker writes the \
same checkpoints), got '${workdir}'"
  if [[ -n "${tfds_data_dir}" && -z "${tfds_name}" ]]; then
    die_usage "option --tfds-data-dir needs --tfds-name"
  fi
  # Cloud TPU VMs set none of the variables main.py looks for, so multi-host initialisation is asked for.
  local args=(--config "${config}" --workdir "${workdir}" --multiprocess)
  if [[ -n "${tfds_name}" ]]; then
    args+=(--config.input.source=tfds "--config.input.tfds.name=${tfds_name}")
  fi
  [[ -z "${tfds_data_dir}" ]] || args+=("--config.input.tfds.data_dir=${tfds_data_dir}")
  args+=(${main_args[@]+"${main_args[@]}"})
  # Every worker must start: the run waits for all of them in jax.distributed.initialize.
  on_workers all "set -e; cd ${REMOTE_DIR}; nohup .venv/bin/python -m facegen_jax.main $(quote_all "${args[@]}") \
>> ${REMOTE_LOG} 2>&1 < /dev/null & echo \$! > ${REMOTE_PID}"
}

case "${command}" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) on_workers "${worker:-0}" "tail -n 200 -F ${REMOTE_LOG}" ;;
  stop) on_workers all "[ -f ${REMOTE_PID} ] && kill \$(cat ${REMOTE_PID}) || true" ;;
  delete)
    if [[ "${queued}" == true ]]; then
      run gcloud compute tpus queued-resources delete "${name}" --force ${gcloud_scope[@]+"${gcloud_scope[@]}"}
    else
      run gcloud compute tpus tpu-vm delete "${name}" ${gcloud_scope[@]+"${gcloud_scope[@]}"}
    fi
    ;;
esac
