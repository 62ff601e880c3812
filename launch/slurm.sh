#!/usr/bin/env bash
# Submits launch/slurm.sbatch with the node and GPU counts as options:
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 -- --config configs/spade.py --workdir /shared/runs/spade
# Run it from anywhere with the Python environment active; the job starts in the repo root and inherits it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

usage() {
  cat <<'EOF'
usage: launch/slurm.sh [options] -- --config FILE[:PRESET] --workdir DIR [facegen_jax.main flags...]

Submits launch/slurm.sbatch: srun starts python -m facegen_jax.main on every node, one process per GPU
(or per node with --per-node), and jax.distributed finds its peers from SLURM's environment.

options:
  --nodes N              nodes (default 1)
  --gpus-per-node N      GPUs per node (default 8)
  --per-node             one process per node driving all its GPUs (default: one process per GPU)
  --cpus-per-task N      CPU cores per process, for its input pipeline (default 8 per GPU it drives)
  --partition NAME       sbatch --partition
  --account NAME         sbatch --account
  --time TIME            sbatch --time, e.g. 2-00:00:00
  --job-name NAME        (default facegen-jax)
  --dry-run              print the sbatch command and the srun command the job would run; submit nothing
  -h, --help             this text

The workdir must be on storage every node sees (a shared filesystem or gs://).
EOF
}

die_usage() {
  echo "slurm.sh: $1" >&2
  echo "run launch/slurm.sh --help for the options" >&2
  exit 2
}

# Shell-quotes one word so printed commands can be pasted back: bare when safe, else in double quotes when
# nothing in it is special there, else shlex-style.
quote() {
  local squote="'" special='["$`\\!]'
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ ! "$1" =~ ${special} ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//${squote}/${squote}\"${squote}\"${squote}}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s' "${out}"
}

nodes=1
gpus_per_node=8
per_node=false
cpus_per_task=""
partition=""
account=""
time_limit=""
job_name="facegen-jax"
dry_run=false
main_args=()

while [[ $# -gt 0 ]]; do
  option="$1"
  value=""
  has_value=false
  if [[ "${option}" == --*=* ]]; then
    value="${option#*=}"
    option="${option%%=*}"
    has_value=true
  fi
  case "${option}" in
    --nodes | --gpus-per-node | --cpus-per-task | --partition | --account | --time | --job-name)
      if [[ "${has_value}" == false ]]; then
        if [[ $# -lt 2 || "$2" == --* ]]; then
          die_usage "option ${option} needs a value"
        fi
        value="$2"
        shift
      fi
      [[ -n "${value}" ]] || die_usage "option ${option} needs a value"
      case "${option}" in
        --nodes | --gpus-per-node | --cpus-per-task)
          [[ "${value}" =~ ^[1-9][0-9]*$ ]] || die_usage "option ${option} needs a positive number, got '${value}'"
          ;;
      esac
      case "${option}" in
        --nodes) nodes="${value}" ;;
        --gpus-per-node) gpus_per_node="${value}" ;;
        --cpus-per-task) cpus_per_task="${value}" ;;
        --partition) partition="${value}" ;;
        --account) account="${value}" ;;
        --time) time_limit="${value}" ;;
        --job-name) job_name="${value}" ;;
      esac
      ;;
    --per-node | --dry-run | -h | --help)
      [[ "${has_value}" == false ]] || die_usage "option ${option} takes no value"
      case "${option}" in
        --per-node) per_node=true ;;
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
    *) die_usage "unknown option: ${option} (facegen_jax.main flags go after --)" ;;
  esac
  shift
done

has_flag() {  # has_flag NAME: whether --NAME or --NAME=... is among the main flags
  local word
  for word in ${main_args[@]+"${main_args[@]}"}; do
    [[ "${word}" != "--$1" && "${word}" != "--$1="* ]] || return 0
  done
  return 1
}
has_flag config || die_usage "missing --config FILE after -- (e.g. -- --config configs/spade.py --workdir DIR)"
has_flag workdir || die_usage "missing --workdir DIR after --"

tasks_per_node="${gpus_per_node}"
[[ "${per_node}" == false ]] || tasks_per_node=1
[[ -n "${cpus_per_task}" ]] || cpus_per_task=$((8 * gpus_per_node / tasks_per_node))
sbatch_cmd=(sbatch "--job-name=${job_name}" "--nodes=${nodes}" "--ntasks-per-node=${tasks_per_node}"
  "--gpus-per-node=${gpus_per_node}" "--cpus-per-task=${cpus_per_task}")
[[ -z "${partition}" ]] || sbatch_cmd+=("--partition=${partition}")
[[ -z "${account}" ]] || sbatch_cmd+=("--account=${account}")
[[ -z "${time_limit}" ]] || sbatch_cmd+=("--time=${time_limit}")
sbatch_cmd+=("--chdir=${REPO}" "${REPO}/launch/slurm.sbatch" "${main_args[@]}")

echo "+ $(quote_all "${sbatch_cmd[@]}")"
if [[ "${dry_run}" == true ]]; then
  echo "# in the job, on the first node, launch/slurm.sbatch runs:"
  SLURM_JOB_NUM_NODES="${nodes}" SLURM_NTASKS_PER_NODE="${tasks_per_node}" SLURM_GPUS_PER_NODE="${gpus_per_node}" \
    SLURM_CPUS_PER_TASK="${cpus_per_task}" \
    bash "${REPO}/launch/slurm.sbatch" --dry-run "${main_args[@]}"
else
  "${sbatch_cmd[@]}"
fi
