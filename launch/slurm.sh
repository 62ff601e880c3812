#!/usr/bin/env bash
# Submits launch/slurm.sbatch with the node and GPU counts as options:
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 -- --config configs/spade.py --workdir /shared/runs/spade
# Run it from anywhere with the Python environment active; the job starts in the repo root and inherits it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${REPO}/launch/lib.sh"

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
  next_option "$@"
  case "${option}" in
    --nodes | --gpus-per-node | --cpus-per-task | --partition | --account | --time | --job-name)
      option_value "$@"
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
      option_flag
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
  shift "${option_words}"
done

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

run "${sbatch_cmd[@]}"
if [[ "${dry_run}" == true ]]; then
  echo "# in the job, on the first node, launch/slurm.sbatch runs:"
  SLURM_JOB_NUM_NODES="${nodes}" SLURM_NTASKS_PER_NODE="${tasks_per_node}" SLURM_GPUS_PER_NODE="${gpus_per_node}" \
    SLURM_CPUS_PER_TASK="${cpus_per_task}" \
    bash "${REPO}/launch/slurm.sbatch" --dry-run "${main_args[@]}"
fi
