r"""Cross-device collectives per train step, from the compiled HLO: what data parallelism costs without a pod.

  python benchmarks/collectives.py [--devices 8] [--preset tiny] [--per_device_batch 1] [--family spade]

For each registered family (or --family): the family's config (configs/<family>.py, --preset as its get_config
argument; '' = the paper's setup), a global batch of --per_device_batch x --devices, the state sharded as
training shards it, and the train step jitted exactly as training jits it (`train.jit_train_step`), lowered and
compiled for --devices simulated CPU devices from abstract shapes (nothing is allocated or run). Prints each
collective kind with its count and the bytes of its results, beside the bytes of G's and D's parameters: with
replicated parameters and a split batch, one step's gradient all-reduces should move about the parameter bytes
(XLA combines them into a few large all-reduces; the remainder is BatchNorm statistics and metric means).
SPADE's VGG loss needs weights, so it is off here (vgg=0), which does not change G's or D's collectives.

Measured (jax 0.10.2, 8 simulated CPU devices, batch 1 per device, paper setups):
  DCGAN-64:  28 all-reduces, 34.8 MiB = 1.44x the 24.2 MiB of G + D: both gradients plus one more D-sized
             reduction that this script does not yet attribute (compile 6 s).
  SPADE-128: 98 all-reduces 374.5 MiB (= 1.00x the 374.2 MiB of G + D), 8 all-to-alls 7.3 MiB and 74
             collective-permutes 22.7 MiB (sync batch norm over the split batch); 1.08x in all (compile 43 s).
  Before common.shard_over_batch, DCGAN's z was replicated and every device ran G on the whole batch: 5
  all-reduces, only D's gradient (0.38x in the tiny preset).
"""

import os
import re
import sys
import time

_DEVICES_FLAG = "--devices"


def _early_devices(argv) -> int:
  # XLA reads the device count when JAX starts, before absl parses flags.
  for i, arg in enumerate(argv):
    if arg.startswith(_DEVICES_FLAG + "="):
      return int(arg.split("=", 1)[1])
    if arg == _DEVICES_FLAG and i + 1 < len(argv):
      return int(argv[i + 1])
  return 8


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_early_devices(sys.argv)}").strip()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import importlib
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from facegen_jax import families
from facegen_jax import train
from facegen_jax.families import common

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%name = SHAPE op(` or `op-done(`; an async pair is counted at its -done, whose result is the collective's.
_INSTRUCTION = re.compile(r"=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape: `f32[2,3]{1,0}` or a tuple `(f32[2], bf16[4,4])` (summed)."""
  total = 0
  for match in _ARRAY.finditer(shape):
    dims = [int(d) for d in match["dims"].split(",") if d]
    total += DTYPE_BYTES[match["dtype"]] * int(np.prod(dims, dtype=np.int64))
  return total


def count_collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{kind: (count, bytes of the results)} over the HLO module text; every kind present, zeros if absent."""
  counts = {kind: [0, 0] for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.search(line)
    if match is None or match["suffix"] == "-start":
      continue
    counts[match["op"]][0] += 1
    counts[match["op"]][1] += shape_bytes(match["shape"])
  return {kind: (c, b) for kind, (c, b) in counts.items()}


_FAMILY = flags.DEFINE_string("family", None, "One family; default all of families.FAMILIES.")
_PRESET = flags.DEFINE_string("preset", "", "The config's preset ('' = the paper's setup, 'cpu', 'tiny').")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before JAX starts).")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 1, "Examples per device.")


def _abstract(tree, sharding_tree):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding_tree)


def _batch_shapes(config, batch_size: int) -> dict:
  res = config.input.resolution
  batch = {"image": jax.ShapeDtypeStruct((batch_size, res, res, 3), jnp.float32)}
  if config.family == "spade":
    batch["label"] = jax.ShapeDtypeStruct((batch_size, res, res), jnp.int32)
  return batch


def _report(name: str) -> None:
  config = importlib.import_module(f"configs.{name}").get_config(_PRESET.value)
  notes = []
  if "loss_weights" in config and config.loss_weights.get("vgg"):
    config.loss_weights.vgg = 0.0
    notes.append("VGG loss off")
  devices = jax.device_count()
  config.batch_size = _PER_DEVICE_BATCH.value * devices
  family = families.get_family(name)
  mesh = train.create_mesh()
  key = jax.random.key(0)
  abstract_state = jax.eval_shape(lambda k: families.init_state(config, k), key)
  state_sharding = train._state_shardings(abstract_state, mesh)  # pylint: disable=protected-access
  batch_sharding = NamedSharding(mesh, P("data"))
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding),
                       _batch_shapes(config, config.batch_size))
  step = train.jit_train_step(family, config, key, state_sharding, batch_sharding)
  start = time.perf_counter()
  compiled = step.lower(_abstract(abstract_state, state_sharding), batch).compile()
  seconds = time.perf_counter() - start
  counts = count_collectives(compiled.as_text())
  param_bytes = {part: 4 * common.count_params(getattr(abstract_state, part)) for part in ("g_params", "d_params")}
  size = config.model.get("image_size", config.model.get("crop_size"))
  print(f"\n{name} ({_PRESET.value or 'paper setup'}, {size} px{', ' + ', '.join(notes) if notes else ''}), "
        f"global batch {config.batch_size} over {devices} devices; compiled in {seconds:.0f} s")
  print(f"  parameters: G {param_bytes['g_params'] / 2**20:.2f} MiB, D {param_bytes['d_params'] / 2**20:.2f} MiB, "
        f"together {sum(param_bytes.values()) / 2**20:.2f} MiB")
  print(f"  {'collective':<20}{'count':>7}{'MiB':>12}")
  for kind, (count, nbytes) in counts.items():
    print(f"  {kind:<20}{count:>7}{nbytes / 2**20:>12.3f}")
  total_count, total_bytes = sum(c for c, _ in counts.values()), sum(b for _, b in counts.values())
  print(f"  {'total':<20}{total_count:>7}{total_bytes / 2**20:>12.3f}"
        f"   ({total_bytes / max(sum(param_bytes.values()), 1):.2f}x the parameter bytes)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices")
  for name in [_FAMILY.value] if _FAMILY.value else sorted(families.FAMILIES):
    _report(name)


if __name__ == "__main__":
  app.run(main)
