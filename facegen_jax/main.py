r"""Trains a facegen_jax family.

  python -m facegen_jax.main --config configs/dcgan.py:cpu --workdir runs/dcgan_cpu \
      [--config.batch_size=64 ...]
  python -m facegen_jax.main --config configs/spade.py --describe   # parameter counts and shapes, no training

Run it again with the same --workdir to resume from the last checkpoint. On a multi-host TPU slice or a
SLURM/GPU cluster start the same command on every host; `jax.distributed` finds its peers from the environment.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from facegen_jax import errors
from facegen_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file in configs/, e.g. configs/dcgan.py:cpu.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and samples go.")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", None,
    "Call jax.distributed.initialize() (auto-detected on Cloud TPU, SLURM and with JAX_COORDINATOR_ADDRESS).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for clusters JAX does not detect (then also "
    "--num_processes and --process_id); implies --multiprocess.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index.")
_DESCRIBE = flags.DEFINE_bool("describe", False, "Print every network's parameter count and output shapes, then "
                              "exit without training (--workdir is not needed).")
flags.mark_flags_as_required(["config"])


def _is_multiprocess_environment() -> bool:
  return any(name in os.environ for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                                             "MEGASCALE_COORDINATOR_ADDRESS"))


def _quiet_orbax(record) -> bool:
  # Orbax logs every save's internals at INFO (dozens of lines per checkpoint); keep its warnings and errors.
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DESCRIBE.value:
    from facegen_jax import describe  # pylint: disable=g-import-not-at-top
    sys.exit(errors.run_command("facegen_jax", lambda: print(describe.text(_CONFIG.value), flush=True)))
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (where checkpoints, logs and samples go)")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  multiprocess = _MULTIPROCESS.value
  if multiprocess is None:
    multiprocess = _is_multiprocess_environment()
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(*explicit)  # On CPU the collectives go through gloo (JAX's default).
  elif multiprocess:
    jax.distributed.initialize()
  logging.info("JAX %s, process %d of %d", jax.__version__, jax.process_index(), jax.process_count())
  code = errors.run_command("facegen_jax", lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))
  if code:
    sys.exit(code)


if __name__ == "__main__":
  app.run(main)
