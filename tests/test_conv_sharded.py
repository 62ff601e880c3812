"""facegen_jax.nets.conv's k4 s2 p2 convolutions (the SPADE discriminator's) with the batch split over 8 simulated
devices: the same numbers as on one device, up to float rounding of the order of XLA's own convolution.

The phase path's input gradient slices phases out of a padded convolution, which an SPMD-partitioning or odd-size
bug would get wrong by O(1) in some elements; float64 leaves nothing else (measured: every lowering within 3e-15
of `lax.conv_general_dilated` + autodiff, on 1 and on 8 devices). In float32 the error is rounding, as large as
XLA's own convolution's (all within 8e-7 of the float64 reference, relative to the largest element).
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, device_env

# Input sizes the SPADE discriminator's k4 s2 p2 layers see: even (32 -> 17) and odd (17 -> 9, 9 -> 5).
SIZES = (32, 17, 9)
IMPLS = ("xla", "phase", "im2col")
OUTPUTS = ("y", "dx", "dk")

_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from facegen_jax import compile as compile_lib
from facegen_jax.nets import conv

sizes, impls = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert jax.device_count() == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

def value_and_grads(impl):
  def fn(x, k, dy):
    y, pullback = jax.vjp(lambda x, k: conv.conv(x, k, 2, ((2, 2), (2, 2)), impl=impl), x, k)
    return (y, *pullback(dy))
  return fn

def run(impl, devices, args):
  if devices == 1:  # The train step's compiler options: XLA's convolutions on Eigen, as in training.
    return compile_lib.jit(value_and_grads(impl))(*args)
  args = [jax.device_put(a, s) for a, s in zip(args, (split, replicated, split))]
  return compile_lib.jit(value_and_grads(impl), out_shardings=(split, split, replicated))(*args)

errors = {}
for size in sizes:
  rng = np.random.default_rng(size)
  c_in, c_out, out = 8, 16, size // 2 + 1
  arrays = (rng.normal(size=(8, size, size, c_in)), rng.normal(size=(4, 4, c_in, c_out)) / np.sqrt(16 * c_in),
            rng.normal(size=(8, out, out, c_out)))
  reference = [np.asarray(r) for r in run("xla", 1, [jnp.asarray(a, jnp.float64) for a in arrays])]
  for dtype in ("float32", "float64"):
    args = [jnp.asarray(a, dtype) for a in arrays]
    results = {}
    for impl in impls:
      for devices in (1, 8):
        results[impl, devices] = [np.asarray(r, np.float64) for r in run(impl, devices, args)]
        errors[f"{size}/{dtype}/{impl}/{devices}"] = [
            float(np.abs(r - e).max() / np.abs(e).max()) for r, e in zip(results[impl, devices], reference)]
      errors[f"{size}/{dtype}/{impl}/1-vs-8"] = [
          float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(results[impl, 8], results[impl, 1])]
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def errors():
  """{"size/dtype/impl/devices": [relative error of y, dx, dk]}: each result's largest deviation from the float64
  reference (1 device, XLA's convolution and autodiff), relative to the reference's largest element; for
  devices "1-vs-8", the deviation of the 8-device result from the 1-device one. One subprocess, 8 devices."""
  env = device_env(8)
  result = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(SIZES), json.dumps(IMPLS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return {key: dict(zip(OUTPUTS, value)) for key, value in json.loads(result.stdout.splitlines()[-1]).items()}


def _failures(errors, dtype, bound):
  return {key: value for key, value in errors.items() if f"/{dtype}/" in key and max(value.values()) > bound}


@pytest.mark.slow
def test_float64_is_exact_on_one_and_eight_devices(errors):
  # A misplaced tap, halo row or phase would be O(1); reassociated float64 sums are ~1e-15.
  assert not _failures(errors, "float64", 1e-13)


@pytest.mark.slow
def test_float32_error_is_xla_convolution_rounding(errors):
  """Every lowering within a few float32 ulps of the float64 reference, on 1 and 8 devices (measured: at most
  7.2e-7), and the phase path within a small multiple of XLA's own convolution's error for the same output
  (measured: its input gradient 2-3.3x XLA's, 1.2-1.3e-7 there; value and kernel gradient the same)."""
  assert not _failures(errors, "float32", 2e-6)
  for size in SIZES:
    for devices in ("1", "8"):
      xla, phase = errors[f"{size}/float32/xla/{devices}"], errors[f"{size}/float32/phase/{devices}"]
      for output in OUTPUTS:
        assert phase[output] <= 8 * max(xla[output], 1e-7), (size, devices, output, phase, xla)


@pytest.mark.slow
def test_eight_devices_differ_from_one_by_rounding_only(errors):
  # Forward and input gradient are per-example (the batch split), the kernel gradient a sum over the batch that
  # 8 devices add in another order.
  assert not _failures({k: v for k, v in errors.items() if k.endswith("/1-vs-8")}, "float32", 2e-6)
  assert not _failures({k: v for k, v in errors.items() if k.endswith("/1-vs-8")}, "float64", 1e-13)
