#!/usr/bin/env bash
# Runs a config on N simulated CPU devices, to try the sharded code path on a laptop before a pod:
#   launch/simulated_devices.sh 8 --config configs/dcgan.py:cpu --workdir runs/dcgan_8dev
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_DEVICES [facegen_jax.main flags...]" >&2
  exit 2
fi
devices=$1
shift
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu
exec python -m facegen_jax.main "$@"
