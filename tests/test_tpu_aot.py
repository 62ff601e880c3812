"""Ahead-of-time compilation for a TPU slice with libtpu's deviceless compiler: benchmarks/tpu_aot.py's report, and
the XLA:TPU option in facegen_jax/compile.py that the SPADE step needs to compile at all.

Every compile runs in a subprocess: XLA:TPU's failed CHECKs abort the process that compiles.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from facegen_jax import compile as compile_lib
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                       reason="libtpu is not installed (pip install 'jax[tpu]'): no TPU compiler to compile with"),
]

_ABORT = "space_to_batch_converter"
# The smallest SPADE step that aborts: the tiny preset, one example per device of the smallest slice.
_SPADE_TINY = ("--config", "configs/spade.py:tiny", "--topology", "v5e:2x2", "--config.batch_size=4")


def _tpu_aot(*args, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "benchmarks" / "tpu_aot.py"), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


# The trigger on its own: the kernel gradient of a convolution of `jax.nn.one_hot` labels computed in the program
# (SPADE's convolutions of the label map); the same values from jnp.where compile.
_REPRODUCTION = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
one_hot, options = sys.argv[1], json.loads(sys.argv[2])
mesh = Mesh(np.array(topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices), ("data",))
def loss(kernel, labels):
  x = (jax.nn.one_hot(labels, 19) if one_hot == "one_hot" else
       jnp.where(labels[..., None] == jnp.arange(19), 1.0, 0.0))
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jax.nn.relu(y) ** 2)
step = jax.jit(jax.grad(loss), in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
               compiler_options=options)
step.lower(jax.ShapeDtypeStruct((3, 3, 19, 128), jnp.float32), jax.ShapeDtypeStruct((4, 32, 32), jnp.int32)).compile()
print("compiled")
"""


@pytest.mark.parametrize("one_hot, options, compiles", [
    ("one_hot", {}, False),
    ("one_hot", compile_lib.compiler_options("tpu"), True),
    ("where", {}, True),
])
def test_a_kernel_gradient_of_one_hot_labels_aborts_xla_tpu_without_the_option(one_hot, options, compiles):
  result = subprocess.run([sys.executable, "-c", _REPRODUCTION, one_hot, json.dumps(options)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1"))
  if compiles:
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
  else:
    assert result.returncode != 0 and _ABORT in result.stderr, (result.returncode, result.stderr[-3000:])


def test_spade_step_aborts_xla_tpu_without_the_option():
  result = _tpu_aot(*_SPADE_TINY, "--nocompile_options")
  assert result.returncode != 0 and _ABORT in result.stderr, (result.returncode, result.stderr[-3000:])


def test_spade_step_compiles_for_tpu_through_compile_jit():
  result = _tpu_aot(*_SPADE_TINY, "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report["compile_options"] == compile_lib.TPU_COMPILER_OPTIONS
  assert report["config"] == {"file": "configs/spade.py:tiny", "overrides": {"batch_size": 4}}
  assert (report["devices"], report["devices_per_chip"], report["per_device_batch"]) == (4, 1, 1)
  memory = report["memory_bytes"]
  assert all(memory[key] > 0 for key in ("arguments", "outputs", "aliased", "temporaries", "generated_code"))
  assert memory["aliased"] <= memory["outputs"]  # The new state is written over the donated old one.
  assert memory["total"] < report["hbm_bytes"] == 16 * 2**30 and report["fits"]
  assert report["flops"] > 0 and report["bytes_accessed"] > 0
  # Replicated parameters, split batch: the gradients are all-reduced.
  assert report["collectives"]["all-reduce"]["count"] > 0
  # D sees each fake beside its real (spade._discriminate), so no activation moves between devices; with
  # concat(fake, real) this step compiled with 103 collective-permutes (0.65 MB per step).
  assert report["collectives"]["all-to-all"]["count"] == report["collectives"]["collective-permute"]["count"] == 0
  assert report["collective_bytes"] == sum(c["bytes"] for c in report["collectives"].values())
  roofline = report["roofline"]
  assert roofline["step_seconds"] == max(roofline["compute_seconds"], roofline["memory_seconds"]) > 0
  assert roofline["compute_seconds"] == pytest.approx(report["flops"] / 197e12)
  assert roofline["memory_seconds"] == pytest.approx(report["bytes_accessed"] / 819e9)


def test_table_of_dcgan_on_a_small_slice():
  result = _tpu_aot("--config", "configs/dcgan.py:tiny", "--topology", "v5e:2x2")
  assert result.returncode == 0, result.stderr[-3000:]
  table = result.stdout
  assert "on v5e:2x2: 4 devices (TPU v5 lite, 1 per chip), global batch 8 (2 per device)" in table
  for text in ("arguments", "outputs", "temporaries", "generated code", "total", "HBM 16.0 GiB: fits", "FLOPs",
               "HBM bytes accessed", "all-reduce", "roofline at 197.0 TFLOP/s and 819 GB/s per device"):
    assert text in table, text
