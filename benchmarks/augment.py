r"""Times facegen_jax.augment on one batch: ADA ('bg' and 'bgc') at p = 0 and p = 1, and DiffAugment.

  python benchmarks/augment.py [--sizes 128,256] [--batch 1] [--repeats 15]

For each image size: the minimum and median time of the jitted augment (compiled as training compiles it,
`compile.jit`) and of augment with its gradient w.r.t. the images (what a G step adds), after a warm-up call.
At p = 1 every image is resampled; at p = 0 none is and the resampling is skipped.

Measured (jax 0.10.2, 2 CPU cores shared with other jobs at a load of 6-7, so medians vary by ~30%), batch 1,
ms min / median:

                   128 px                          256 px
                   forward       with gradient     forward       with gradient
  ada bg p = 0      0.1 /  0.1     0.2 /  0.2       0.1 /  0.2     5.1 /   6.1
  ada bg p = 1      6.0 / 10.5    19.8 / 25.7      66.2 / 75.8   125.4 / 136.0
  ada bgc p = 1     8.1 / 13.4    25.6 / 30.6      66.1 / 74.9   100.6 / 110.2
  diffaugment       1.0 /  1.2     1.5 /  1.7       1.6 /  2.4     3.4 /   3.7

At 256 px the reflect-padded, 2x upsampled image (1532 x 1532 x 3) dominates: its two filter passes are about
half of the forward.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import augment
from facegen_jax import compile as compile_lib

_SIZES = flags.DEFINE_list("sizes", ["128", "256"], "Square image sizes.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per measurement.")

CASES = (("ada bg", dict(kind="ada", color=False), 0.0), ("ada bg", dict(kind="ada", color=False), 1.0),
         ("ada bgc", dict(kind="ada", color=True), 1.0), ("diffaugment", dict(kind="diffaugment"), 0.0))


def _time(fn, *args):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1000 * (time.perf_counter() - start))
  return f"{min(times):7.1f} / {np.median(times):7.1f}"


def main(_):
  rng = jax.random.PRNGKey(1)
  for size in map(int, _SIZES.value):
    images = jax.random.uniform(jax.random.PRNGKey(0), (_BATCH.value, size, size, 3), minval=-1, maxval=1)
    print(f"{_BATCH.value} x {size} x {size} x 3, ms min / median")
    for name, overrides, p in CASES:
      config = augment.default_config()
      config.update(overrides)
      extra = {"aug_p": jnp.float32(p)}
      forward = compile_lib.jit(lambda x, k, c=config, e=extra: augment.augment(c, x, k, e))
      gradient = compile_lib.jit(jax.grad(lambda x, k, c=config, e=extra: jnp.sum(augment.augment(c, x, k, e) ** 2)))
      label = f"{name} p = {p:g}" if config.kind == "ada" else name
      print(f"  {label:14s} forward {_time(forward, images, rng)}   with gradient {_time(gradient, images, rng)}",
            flush=True)


if __name__ == "__main__":
  app.run(main)
