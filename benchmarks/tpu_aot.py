r"""Compiles the real train step for a Cloud TPU slice ahead of time, on a machine without a TPU: does a config
fit in HBM at its batch size, and what does one step cost?

  python benchmarks/tpu_aot.py --config configs/spade.py --topology v5e:2x4 [--config.batch_size=64 ...]
                               [--compute_dtype bfloat16] [--json] [--nocompile_options]

Needs libtpu (`pip install "jax[tpu]==<the jax version>"`, any Linux x86-64 host). libtpu's deviceless compiler
(`jax.experimental.topologies.get_topology_desc`) describes the slice's chips as abstract devices; the train
step is built as training builds it (`build_step`), its state sharded as training shards it and the batch split
over all devices on "data", lowered from shapes alone (nothing is allocated, nothing runs) and compiled by
XLA:TPU. It prints, per device: the compiler's memory (arguments, outputs, the donated part of the arguments the
outputs reuse, temporaries, generated code) against the chip's HBM ("fits" / "does not fit"), the step's FLOPs
and HBM bytes (XLA's cost analysis), the collectives of the compiled program (benchmarks/collectives.py's
parser) and a roofline step time: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth). The roofline ignores
collectives, overlap and efficiency: a lower bound, not a prediction.

The step is traced as it is traced on a TPU host: the project picks some code paths from
`jax.default_backend()` (nets/conv.py's convolution lowerings, compile.py's XLA options), which here says "cpu",
so the step is built and traced with it answering "tpu" (`traced_for`).

Topologies are `<chip>:<shape>` as libtpu names them: v5e:2x2, v5e:2x4, v6e:2x4, v4:2x2x1, v5p:2x2x1 (libtpu
0.0.42.1 rejects shapes below one host's 2x2x1 chips). libtpu's v4 topologies have one device per TensorCore (2 per
chip) while v5p's have one per chip: per-device figures are compared with the chip's divided by its devices.

libtpu holds /tmp/libtpu_lockfile while a process uses it, so that two processes never drive one TPU; a
compile-only client drives none, so this script sets ALLOW_MULTIPLE_LIBTPU_LOAD=1 (it would otherwise fail with
"ABORTED: Internal error when accessing libtpu multi-process lockfile" while any other process on the machine,
e.g. a `python -c "import jax"` without JAX_PLATFORMS=cpu, has libtpu loaded).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
import time
from typing import NamedTuple
from unittest import mock

if __name__ == "__main__":
  # The host's devices are never used; without this JAX also tries to start libtpu's TPU backend (no TPU here).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

_BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [path for path in (os.path.dirname(_BENCHMARKS), _BENCHMARKS) if path not in sys.path]

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from jax.sharding import Mesh
from ml_collections import config_flags
import numpy as np

import collectives  # benchmarks/collectives.py: its HLO parser (also defines that script's flags, unused here).
from facegen_jax import compile as compile_lib
from facegen_jax import families
from facegen_jax import train

GiB = 2**30


class Chip(NamedTuple):
  device_kind: str    # what libtpu's devices call it
  peak_tflops: float  # dense bf16 matmul/convolution, per chip
  hbm_gib: float      # per chip
  hbm_gbps: float     # GB/s (1e9 bytes), per chip


# Google's Cloud TPU documentation, one page per chip (cloud.google.com/tpu/docs/v4, v5e, v5p-training, v6e):
# "peak compute per chip (bf16)", "HBM capacity" and "HBM bandwidth per chip". The pages give no float32 peak:
# JAX's default precision computes float32 matmuls and convolutions on TPU as one bfloat16 pass (float32
# accumulation), so a float32 step has the same peak; precision=HIGHEST would take 6 passes.
CHIPS = {
    "v4": Chip("TPU v4", peak_tflops=275, hbm_gib=32, hbm_gbps=1200),
    "v5e": Chip("TPU v5 lite", peak_tflops=197, hbm_gib=16, hbm_gbps=819),
    "v5p": Chip("TPU v5", peak_tflops=459, hbm_gib=95, hbm_gbps=2765),
    "v6e": Chip("TPU v6 lite", peak_tflops=918, hbm_gib=32, hbm_gbps=1640),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file with its preset, e.g. configs/spade.py; "
                                          "--config.x=y overrides as for facegen_jax.main.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x4", "<chip>:<shape> with chip one of v4, v5e, v5p, v6e.")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16"],
                                   "Sets config.compute_dtype (default: the config's).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_COMPILE_OPTIONS = flags.DEFINE_bool(
    "compile_options", True, "Compile with facegen_jax/compile.py's options for TPU, as training does; "
    "--nocompile_options leaves them out, to see whether a newer libtpu still needs them.")


def get_topology(name: str) -> tuple[Chip, list]:
  """'v5e:2x4' -> (its chip's figures, libtpu's abstract devices for the slice)."""
  chip_name, _, shape = name.partition(":")
  if chip_name not in CHIPS or not shape:
    raise ValueError(f"topology {name!r}: expected <chip>:<shape>, chip one of {sorted(CHIPS)}, e.g. v5e:2x4")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # See the module docstring; read when libtpu loads.
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  if devices[0].device_kind != CHIPS[chip_name].device_kind:
    raise ValueError(f"topology {name!r} has {devices[0].device_kind} devices, not {CHIPS[chip_name].device_kind}")
  return CHIPS[chip_name], devices


def devices_per_chip(devices) -> int:
  """Devices sharing a chip's coordinates (libtpu's v4 topologies: one per TensorCore)."""
  return len(devices) // len({tuple(d.coords) for d in devices})


@contextlib.contextmanager
def traced_for(platform: str, *, compile_options: bool = True):
  """Builds and traces programs as on `platform`: `jax.default_backend()` answers `platform` (see the module
  docstring); with compile_options=False compile.jit adds no per-backend XLA options."""
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(jax, "default_backend", return_value=platform))
    if not compile_options:
      stack.enter_context(mock.patch.object(compile_lib, "compiler_options", return_value=None))
    yield


def abstract_batch(config, sharding) -> dict:
  """The shapes of one global batch as the config's input pipeline yields it (images, SPADE's label maps, a
  translator's "a/..." and "b/..." fields, groups): one batch is read, from the synthetic faces by default."""
  return collectives.abstract_batch(config, sharding)


def build_step(config, mesh: Mesh):
  """(jitted train step, abstract sharded state, batch sharding), built by the loop's own builder on `mesh`:
  the only use of facegen_jax.train's API in this script."""
  programs = train.Programs(config, mesh)
  return programs.step, programs.target(), programs.batch_sharding


def analyse(config, topology: str, *, compile_options: bool = True) -> dict:
  """Compiles `config`'s train step for `topology` and returns the figures the script prints (per device)."""
  chip, devices = get_topology(topology)
  if config.batch_size % len(devices):
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the {len(devices)} devices of "
                     f"{topology}: set --config.batch_size")
  families.get_family(config.family).validate(config)
  share = devices_per_chip(devices)
  mesh = Mesh(np.array(devices), ("data",))
  start = time.perf_counter()
  with traced_for("tpu", compile_options=compile_options):
    step, state, batch_sharding = build_step(config, mesh)
    lowered = step.lower(state, abstract_batch(config, batch_sharding))
  lower_seconds = time.perf_counter() - start
  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  # CPU seconds too: on a shared machine the wall time says more about the other jobs than about the compiler.
  compile_seconds, compile_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

  memory = compiled.memory_analysis()
  nbytes = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
            "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
            "generated_code": memory.generated_code_size_in_bytes}
  # Outputs written over donated arguments (the new state over the old) take no memory of their own.
  nbytes["total"] = (nbytes["arguments"] + nbytes["outputs"] - nbytes["aliased"] + nbytes["temporaries"]
                     + nbytes["generated_code"])
  hbm = chip.hbm_gib * GiB / share
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # A list of one dict in older JAX versions.
  flops, bytes_accessed = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
  hlo = compiled.as_text()
  counts = collectives.count_collectives(hlo)
  compute_s = flops / (chip.peak_tflops * 1e12 / share)
  memory_s = bytes_accessed / (chip.hbm_gbps * 1e9 / share)
  return {
      "family": config.family, "topology": topology, "device_kind": devices[0].device_kind,
      "devices": len(devices), "devices_per_chip": share, "batch_size": config.batch_size,
      "per_device_batch": config.batch_size // len(devices), "compute_dtype": config.compute_dtype,
      "compile_options": _compiler_options_used(compile_options),
      "jax": jax.__version__, "libtpu": _libtpu_version(),
      "lower_seconds": round(lower_seconds, 1), "compile_seconds": round(compile_seconds, 1),
      "compile_cpu_seconds": round(compile_cpu_seconds, 1),
      "memory_bytes": nbytes, "hbm_bytes": int(hbm), "fits": nbytes["total"] <= hbm,
      "flops": flops, "bytes_accessed": bytes_accessed,
      "collectives": {kind: {"count": c, "bytes": b} for kind, (c, b) in counts.items()},
      "collective_bytes": sum(b for _, b in counts.values()),
      "collectives_in_loops": collectives.collectives_in_loops(hlo),
      "roofline": {"compute_seconds": compute_s, "memory_seconds": memory_s,
                   "step_seconds": max(compute_s, memory_s),
                   "bound": "compute" if compute_s >= memory_s else "memory",
                   "peak_tflops": chip.peak_tflops / share, "hbm_gbps": chip.hbm_gbps / share},
  }


def _compiler_options_used(compile_options: bool) -> dict:
  with traced_for("tpu", compile_options=compile_options):
    return compile_lib.compiler_options() or {}


def _libtpu_version() -> str:
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def format_report(result: dict, title: str = "") -> str:
  """The result of `analyse` as a short readable table."""
  m, roof = result["memory_bytes"], result["roofline"]
  lines = [
      f"{title or result['family']} on {result['topology']}: {result['devices']} devices ({result['device_kind']}, "
      f"{result['devices_per_chip']} per chip), global batch {result['batch_size']} "
      f"({result['per_device_batch']} per device), {result['compute_dtype']}",
      f"compiled in {result['compile_seconds']:.0f} s ({result['compile_cpu_seconds']:.0f} s of CPU; traced and "
      f"lowered in {result['lower_seconds']:.0f} s); "
      f"jax {result['jax']}, libtpu {result['libtpu']}, XLA options {result['compile_options'] or 'none'}",
      "per device                          GiB",
  ]
  for key, label in (("arguments", "arguments"), ("outputs", "outputs"),
                     ("aliased", "  of them over donated arguments"), ("temporaries", "temporaries"),
                     ("generated_code", "generated code"), ("total", "total")):
    lines.append(f"  {label:<30}{m[key] / GiB:>8.3f}")
  lines.append(f"  HBM {result['hbm_bytes'] / GiB:.1f} GiB: {'fits' if result['fits'] else 'does not fit'}")
  lines.append("per step, per device")
  flops = result["flops"]
  lines.append(f"  {'FLOPs':<30}" + (f"{flops / 1e12:>8.3f} T" if flops >= 1e11 else f"{flops / 1e9:>8.3f} G"))
  lines.append(f"  {'HBM bytes accessed':<30}{result['bytes_accessed'] / GiB:>8.3f} GiB")
  for kind, c in result["collectives"].items():
    if c["count"]:
      lines.append(f"  {kind:<30}{c['bytes'] / 2**20:>8.1f} MiB in {c['count']}")
  lines.append(f"  {'collectives':<30}{result['collective_bytes'] / 2**20:>8.1f} MiB")
  if result["collectives_in_loops"]:
    lines.append(f"  warning: {result['collectives_in_loops']} collectives sit in while loops and are counted once")
  lines.append(f"roofline at {roof['peak_tflops']:.1f} TFLOP/s and {roof['hbm_gbps']:.0f} GB/s per device: "
               f"compute {roof['compute_seconds'] * 1e3:.2f} ms, memory {roof['memory_seconds'] * 1e3:.2f} ms -> "
               f">= {roof['step_seconds'] * 1e3:.2f} ms per step ({roof['bound']}-bound)")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if _COMPUTE_DTYPE.value:
    config.compute_dtype = _COMPUTE_DTYPE.value
  result = analyse(config, _TOPOLOGY.value, compile_options=_COMPILE_OPTIONS.value)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  result["config"] = {"file": config_flags.get_config_filename(flags.FLAGS["config"]), "overrides": overrides}
  if _JSON.value:
    print(json.dumps(result, indent=1))
  else:
    title = " ".join([result["config"]["file"]] + [f"{k}={v}" for k, v in sorted(overrides.items())])
    print(format_report(result, title))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
