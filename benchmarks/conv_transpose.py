r"""Times DCGAN-64's transposed convolutions (and strided convolutions), flax/XLA against facegen_jax.nets.conv.

  python benchmarks/conv_transpose.py [--batch 64] [--repeats 5] [--skip_flax] [--discriminator]

For each generator layer at the given batch: the median time of one forward + backward pass (output, gradient
for the input and the kernel), after a warm-up call, over --repeats calls, for flax's `nn.ConvTranspose` (XLA's
`lax.conv_transpose`), for `conv.ConvTranspose` compiled with the default options, and for it compiled with
`compile.CPU_COMPILER_OPTIONS`; then the same for the whole generator (BatchNorm and ReLU included).
--discriminator adds the discriminator's strided layers, `nn.Conv` against `conv.Conv`.
Flax's layers take seconds each on CPU; --skip_flax leaves them out.
"""

import functools
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from facegen_jax import compile as compile_lib
from facegen_jax.nets import conv

_BATCH = flags.DEFINE_integer("batch", 64, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_SKIP_FLAX = flags.DEFINE_bool("skip_flax", False, "Do not time flax's layers (seconds per call on CPU).")
_DISCRIMINATOR = flags.DEFINE_bool("discriminator", False, "Also time the discriminator's strided convs.")

# DCGAN-64 generator (nz=100, ngf=64): (in, out, input size, stride, torch padding), all 4x4 kernels.
GENERATOR_LAYERS = [(100, 512, 1, 1, 0), (512, 256, 4, 2, 1), (256, 128, 8, 2, 1), (128, 64, 16, 2, 1),
                    (64, 3, 32, 2, 1)]
# Its discriminator (ndf=64): (in, out, input size), 4x4 kernels, stride 2, padding 1.
DISCRIMINATOR_LAYERS = [(3, 64, 64), (64, 128, 32), (128, 256, 16), (256, 512, 8)]


def _median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _forward_backward(apply_fn, compiler_options=None):
  def fn(params, x, dy):
    y, pullback = jax.vjp(apply_fn, params, x)
    return y, pullback(dy)
  return jax.jit(fn, compiler_options=compiler_options)


def _time_variants(variants, params, x) -> dict[str, float]:
  """{name: median seconds} for variants {name: (apply_fn, compiler_options)} of the same function."""
  y = jax.eval_shape(next(iter(variants.values()))[0], params, x)
  dy = jax.random.normal(jax.random.key(2), y.shape, y.dtype)
  return {name: _median_seconds(_forward_backward(fn, options), params, x, dy)
          for name, (fn, options) in variants.items()}


def _print_row(label: str, gflop: float, times: dict[str, float]):
  cells = [f"{name} {seconds * 1e3:8.1f} ms" for name, seconds in times.items()]
  fastest = min(times.values())
  speedup = f"  flax/fastest {times['flax'] / fastest:6.1f}x" if "flax" in times else ""
  print(f"{label:<28} {gflop:6.2f} GFLOP  " + "  ".join(cells) + speedup
        + f"  ({gflop / fastest:.0f} GFLOP/s)", flush=True)


def _variants(flax_apply, ours_apply):
  variants = {} if _SKIP_FLAX.value else {"flax": (flax_apply, None)}
  variants["ours"] = (ours_apply, None)
  variants["ours+opts"] = (ours_apply, compile_lib.CPU_COMPILER_OPTIONS)
  return variants


class _Generator(nn.Module):
  """DCGAN-64's generator with a choice of transposed convolution."""
  conv_transpose: type

  @nn.compact
  def __call__(self, x):
    for i, (_, features, _, stride, padding) in enumerate(GENERATOR_LAYERS):
      x = self.conv_transpose(features, (4, 4), stride, conv.torch_transpose_padding(4, padding),
                              use_bias=False)(x)
      if i < len(GENERATOR_LAYERS) - 1:
        x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
    return jnp.tanh(x)


def main(_):
  batch = _BATCH.value
  print(f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs), batch {batch}, median of {_REPEATS.value} forward+backward calls")
  print("ours+opts: compiled with compile.CPU_COMPILER_OPTIONS (Eigen instead of YNNPACK for convolutions)")
  total = {}
  for c_in, c_out, size, stride, padding in GENERATOR_LAYERS:
    layer = functools.partial(nn.ConvTranspose, c_out, (4, 4), stride, conv.torch_transpose_padding(4, padding),
                              use_bias=False)
    ours = functools.partial(conv.ConvTranspose, c_out, (4, 4), stride,
                             conv.torch_transpose_padding(4, padding), use_bias=False)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, c_in))
    params = ours().init(jax.random.key(1), x)
    times = _time_variants(_variants(layer().apply, ours().apply), params, x)
    out_size = (size - 1) * stride - 2 * padding + 4
    gflop = 3 * 2 * batch * size ** 2 * 16 * c_in * c_out / 1e9  # Every input pixel meets every tap.
    _print_row(f"G {c_in}->{c_out} {size}->{out_size}", gflop, times)
    for name, seconds in times.items():
      total[name] = total.get(name, 0.0) + seconds
  print(f"{'G layers, sum':<28} " + "  ".join(f"{n} {s * 1e3:8.1f} ms" for n, s in total.items()), flush=True)

  z = jax.random.normal(jax.random.key(0), (batch, 1, 1, GENERATOR_LAYERS[0][0]))
  flax_g, ours_g = _Generator(nn.ConvTranspose), _Generator(conv.ConvTranspose)
  variables = ours_g.init(jax.random.key(1), z)
  def apply(module):
    return lambda params, z: module.apply({**variables, "params": params}, z, mutable=["batch_stats"])[0]
  times = _time_variants(_variants(apply(flax_g), apply(ours_g)), variables["params"], z)
  _print_row("G whole (BN, ReLU, tanh)", 3 * 2 * 6.65 * batch / 64, times)

  if _DISCRIMINATOR.value:
    for c_in, c_out, size in DISCRIMINATOR_LAYERS:
      x = jax.random.normal(jax.random.key(0), (batch, size, size, c_in))
      args = (c_out, (4, 4), 2, 1)
      params = nn.Conv(*args, use_bias=False).init(jax.random.key(1), x)
      times = _time_variants(
          _variants(nn.Conv(*args, use_bias=False).apply, conv.Conv(*args, use_bias=False).apply), params, x)
      gflop = 3 * 2 * batch * (size // 2) ** 2 * c_out * c_in * 16 / 1e9
      _print_row(f"D {c_in}->{c_out} {size}->{size // 2}", gflop, times)


if __name__ == "__main__":
  app.run(main)
