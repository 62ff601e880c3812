r"""Times one family's jitted train step and its input pipeline on this machine.

  python benchmarks/train_step.py --config configs/dcgan.py [--config.batch_size=64] [--steps 10]

Prints the compile time, the median step time over --steps steps after --warmup, steps/s and images/s, and the
input pipeline's images/s at the same batch size (--input_batches 0 skips it). The state is donated as in training.

SPADE128 (configs/spade.py, --config.loss_weights.vgg=0), G+D step on the idle 2-core VM, interleaved with
benchmarks/spade_torch.py (NVlabs SPADE, torch 2.13 CPU, 2 threads) in the same session:
  batch 4: 7.9 s median (min 7.6 s), 8.7-9.6 s in earlier runs; NVlabs SPADE 9.2-10.1 s (min 8.1-9.6 s).
  batch 1: 2.95-2.99 s median; NVlabs SPADE 3.50 s (min 3.06 s).
  History at batch 4: phase convs everywhere 44 s (under load), im2col everywhere 13.4 s, the current lowering
  rule (nets/conv.py) 9.6 s, spectral norm without kernel transposes 9.1 s, the scheduler option 7.9-9.6 s.
"""

import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from facegen_jax import families
from facegen_jax import train
from input_pipeline import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dcgan.py.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 20, "Batches read to time the input pipeline; 0 skips it.")
flags.mark_flag_as_required("config")


def _time_input(config) -> float:
  iterator = pipeline.create_train_iterator(config.input, seed=config.seed, global_batch_size=config.batch_size)
  next(iterator)  # Start-up (threads, first reads) is not throughput.
  start = time.perf_counter()
  for _ in range(_INPUT_BATCHES.value):
    next(iterator)
  return _INPUT_BATCHES.value * config.batch_size / (time.perf_counter() - start)


def main(_):
  config = _CONFIG.value
  family = families.get_family(config.family)
  train.validate_config(config)
  family.validate(config)
  programs = train.Programs(config)  # init (with the EMA groups when config.ema_decay > 0), step, sample
  state = programs.init(programs.init_key)
  iterator = pipeline.create_train_iterator(config.input, seed=config.seed, global_batch_size=config.batch_size)
  batch = programs.global_batch(next(iterator))
  step_fn = programs.step

  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  input_rate = _time_input(config) if _INPUT_BATCHES.value else None
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"{jax.default_backend()} x{jax.device_count()}")
  print(f"family {config.family}, batch {config.batch_size}, resolution {config.input.resolution}")
  print(f"compile: {compile_s:.1f} s")
  print(f"train step: median {median * 1000:.0f} ms over {len(times)} (min {min(times) * 1000:.0f}, "
        f"max {max(times) * 1000:.0f}); {1 / median:.2f} steps/s; {config.batch_size / median:.1f} images/s")
  if input_rate is not None:
    print(f"input pipeline: {input_rate:.0f} images/s")


if __name__ == "__main__":
  app.run(main)
