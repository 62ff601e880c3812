r"""Times FID Inception feature extraction (images/s), as `metrics.fid.extract_features` runs it.

  python benchmarks/inception.py [--inception inception.npz] [--batch 50] [--size 64] [--repeats 3]

One jitted call on a batch of --size x --size uint8 images (resized to 299 inside), over the mesh of all
devices, with `compile.CPU_COMPILER_OPTIONS` on CPU; the median of --repeats calls after a warm-up call.
Without --inception the weights are random (the speed is the same). Prints the load average too: on a shared
machine the figure is only meaningful beside it.
"""

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from facegen_jax.metrics import fid
from facegen_jax.metrics import inception

_INCEPTION = flags.DEFINE_string("inception", None, "Converted weights (.npz); random weights if unset.")
_BATCH = flags.DEFINE_integer("batch", 50, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 64, "Input image size (resized to 299 in the network).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls.")


def main(argv):
  del argv
  if _INCEPTION.value:
    variables = inception.load_params(_INCEPTION.value)
  else:
    variables = jax.jit(inception.InceptionV3().init)(jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))
  mesh = fid.create_mesh()
  fn = fid.feature_fn(mesh)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  images = np.random.default_rng(0).integers(0, 256, (_BATCH.value, _SIZE.value, _SIZE.value, 3), np.uint8)
  start = time.perf_counter()
  jax.block_until_ready(fn(variables, images))
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(variables, images))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  print(f"Inception pool3 features, batch {_BATCH.value} of {_SIZE.value}x{_SIZE.value} -> 299, "
        f"{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} CPUs")
  print(f"first call (compile + run) {compile_seconds:.1f} s; median of {_REPEATS.value}: {seconds:.2f} s/batch, "
        f"{_BATCH.value / seconds:.1f} images/s")
  print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
  app.run(main)
