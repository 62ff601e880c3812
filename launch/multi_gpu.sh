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

die_usage() {
  echo "multi_gpu.sh: $1" >&2
  echo "run launch/multi_gpu.sh --help for the options" >&2
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

visible_devices=""
mem_fraction=""
preallocate=true
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
    --gpus | --gpu-ids | --mem-fraction)
      if [[ "${has_value}" == false ]]; then
        if [[ $# -lt 2 || "$2" == --* ]]; then
          die_usage "option ${option} needs a value"
        fi
        value="$2"
        shift
      fi
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
      [[ "${has_value}" == false ]] || die_usage "option ${option} takes no value"
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
