#!/usr/bin/env bash
# One host, several GPUs, one process: JAX sees every visible GPU and train.py shards the batch over all of them.
#   launch/multi_gpu.sh --gpus 4 -- --config configs/spade.py --workdir runs/spade
# Paths in the main flags are relative to the repo root (the script runs there).
#
# The environment it sets, each only if not already set by you:
#   JAX_PLATFORMS=cuda               fail at start-up if JAX finds no GPU, rather than train on the CPU
#   TF_FORCE_GPU_ALLOW_GROWTH=true   TFDS and clu import TensorFlow; with a GPU build of it (not the pinned
#                                    tensorflow-cpu) it would otherwise reserve GPU memory JAX needs
# and on request:
#   CUDA_VISIBLE_DEVICES             --gpus N (the first N) or --gpu-ids 0,2,...
#   XLA_PYTHON_CLIENT_MEM_FRACTION   --mem-fraction F: share of each GPU's memory JAX takes at start (JAX's
#                                    default is 0.75; raise it to fit larger batches on a dedicated machine)
#   XLA_PYTHON_CLIENT_PREALLOCATE    --no-preallocate: allocate on demand (slower, for shared GPUs)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${REPO}/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/multi_gpu.sh [options] -- --config FILE[:PRESET] --workdir DIR [facegen_jax.main flags...]

Runs python -m facegen_jax.main as one process on this host's GPUs (all visible ones by default).

options:
  --gpus N            use the first N GPUs (sets CUDA_VISIBLE_DEVICES=0,...,N-1)
  --gpu-ids LIST      use these GPUs, e.g. 0,2,3 (sets CUDA_VISIBLE_DEVICES=LIST)
  --mem-fraction F    XLA_PYTHON_CLIENT_MEM_FRACTION, e.g. 0.9 (JAX's default 0.75)
  --no-preallocate    XLA_PYTHON_CLIENT_PREALLOCATE=false: take GPU memory as needed
  --dry-run           print the command (with its environment) and run nothing
  -h, --help          this text
EOF
}

visible_devices=""
mem_fraction=""
preallocate=true
dry_run=false
main_args=()

while [[ $# -gt 0 ]]; do
  next_option "$@"
  case "${option}" in
    --gpus | --gpu-ids | --mem-fraction)
      option_value "$@"
      case "${option}" in
        --gpus)
          [[ "${value}" =~ ^[1-9][0-9]*$ ]] || die_usage "option --gpus needs a positive number, got '${value}'"
          visible_devices="$(seq -s, 0 $((value - 1)))"
          ;;
        --gpu-ids)
          [[ "${value}" =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "option --gpu-ids needs a list like 0,2,3, got '${value}'"
          visible_devices="${value}"
          ;;
        --mem-fraction)
          [[ "${value}" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] ||
            die_usage "option --mem-fraction needs a number in (0, 1], got '${value}'"
          mem_fraction="${value}"
          ;;
      esac
      ;;
    --no-preallocate | --dry-run | -h | --help)
      option_flag
      case "${option}" in
        --no-preallocate) preallocate=false ;;
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

environment=()
[[ -n "${JAX_PLATFORMS:-}" ]] || environment+=(JAX_PLATFORMS=cuda)
[[ -n "${TF_FORCE_GPU_ALLOW_GROWTH:-}" ]] || environment+=(TF_FORCE_GPU_ALLOW_GROWTH=true)
[[ -z "${visible_devices}" ]] || environment+=("CUDA_VISIBLE_DEVICES=${visible_devices}")
[[ -z "${mem_fraction}" ]] || environment+=("XLA_PYTHON_CLIENT_MEM_FRACTION=${mem_fraction}")
[[ "${preallocate}" == true ]] || environment+=(XLA_PYTHON_CLIENT_PREALLOCATE=false)
# --nomultiprocess: one process, even inside a SLURM allocation whose variables would start jax.distributed.
cmd=(env ${environment[@]+"${environment[@]}"} python -m facegen_jax.main --nomultiprocess "${main_args[@]}")

echo "+ cd $(quote "${REPO}")"
echo "+ $(quote_all "${cmd[@]}")"
if [[ "${dry_run}" == false ]]; then
  cd "${REPO}"
  exec "${cmd[@]}"
fi
