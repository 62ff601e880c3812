r"""Cross-device collectives per train step, from the compiled HLO: what data parallelism costs without a pod.

  python benchmarks/collectives.py [--devices 8] [--preset tiny] [--per_device_batch 1] [--family spade]
                                   [--sources 12] [--jsonl]

For each registered family (or --family): the family's config (configs/<family>.py, --preset as its get_config
argument; '' = the paper's setup), a global batch of --per_device_batch x --devices with the shapes of one batch
of the config's input pipeline, the state sharded as training shards it, and the train step jitted exactly as
training jits it (`train.Programs`), lowered and compiled for --devices simulated CPU devices from abstract
shapes (no state is allocated, no step runs). Prints each collective kind with its count and the bytes of its
results (per device; a ring all-reduce sends about 2 (n-1)/n of that), beside the bytes of G's and D's
parameters; --sources N lists the N largest with their arrays and the JAX operations they came from. Counts
are static (a collective in a loop body would count once; the script warns if there is one).
SPADE's VGG loss needs converted weights, so it is off here (vgg=0, printed): VGG is frozen, so it adds no
gradient to reduce; what it would add to the other collectives is not measured.

With replicated parameters and a split batch, a step's gradient all-reduces should move about the parameter
bytes (XLA combines them into a few large tuple all-reduces; BatchNorm statistics and metrics add < 0.1 MiB).
Measured (jax 0.10.2 CPU, 8 simulated devices, paper setups, XLA's default optimisation; MiB of results; compile
times on 2 cores shared with other jobs):

              batch/device  all-reduce        all-to-all   collective-permute  params G + D   compile
  DCGAN-64    1 and 4        42    24.2 MiB   -            -                   13.6 + 10.6    20-23 s
  SPADE-128   1 and 4        98   374.5 MiB   -            -                   353.0 + 21.2   109-110 s

Both reduce each parameter's gradient once (1.00x). What changed, and what the numbers were before:
- DCGAN's D used to be called on the real and the fake batch separately (so BatchNorm sees them apart, as the
  original does). Compiles of that code gave either 42 all-reduces at 1.00x (XLA combined the two calls' weight
  gradients) or 28 of 34.8 MiB, 1.44x (D's reduced once per call): both on 2026-12-02, the second while the
  machine was loaded, so whether they combine is up to the compiler. D now judges real and fake in one call,
  interleaved and batch-normalised apart (dcgan._BatchNormGroups, flax's BatchNorm statistics per batch), so the
  program holds one D weight gradient; tests/test_collectives_benchmark.py asserts the 1.00x. Step time at batch
  64, interleaved: 1.28, 1.26, 1.14 s against 1.34, 1.14, 1.18 s for the two calls (no difference past noise).
- SPADE's D used to see concat(fake, real): with the batch split over devices that puts all fakes on the first
  half of the devices and all reals on the second, so D's input is shuffled across devices and each layer's
  output (kept for feature matching) moved back when split into its halves. An earlier CPU compile showed 8
  all-to-all + 74 collective-permutes (30 MiB at batch 32); this jax's CPU compiles show none for the same code,
  but the tiny step compiled for TPU v5e:2x2 (benchmarks/tpu_aot.py) still had 103 collective-permutes. Fake
  and real are now interleaved (fake_0, real_0, fake_1, ...; spade._discriminate), so every device keeps its own
  pairs: none on CPU or TPU (tests/test_tpu_aot.py asserts it).
Before common.shard_over_batch, DCGAN's z was replicated and every device ran G on the whole batch: 5
all-reduces, only D's gradient (0.38x in the tiny preset).
"""

import collections
import dataclasses
import json
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

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import importlib
import jax
import numpy as np

from facegen_jax import families
from facegen_jax import train
from input_pipeline import pipeline

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%name = SHAPE op(` or `op-done(`; an async pair is counted at its -done, whose result is the collective's.
_INSTRUCTION = re.compile(r"=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
# A computation's header line ends with "{", its body with a line "}"; while loops name theirs with body=%name.
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[^\s(]+)[^\n]*\{\n(?P<body>.*?)^\}", re.M | re.S)
_CALLEES = re.compile(r"\b(?:body|condition|calls|to_apply|branch_computations|true_computation|"
                      r"false_computation)=\{?(?P<names>%[^\s,}]+(?:,\s*%[^\s,}]+)*)")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str       # one of COLLECTIVES
  nbytes: int     # bytes of its result (all its tuple elements)
  op_name: str    # the JAX operation it came from (HLO metadata), "" if none
  shape: str = ""  # its result's HLO shape


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape: `f32[2,3]{1,0}` or a tuple `(f32[2], bf16[4,4])` (summed)."""
  total = 0
  for match in _ARRAY.finditer(shape):
    dims = [int(d) for d in match["dims"].split(",") if d]
    total += DTYPE_BYTES[match["dtype"]] * int(np.prod(dims, dtype=np.int64))
  return total


def find_collectives(hlo_text: str) -> list[Collective]:
  """Every collective instruction of the HLO module text, in order; an async start/done pair once."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.search(line)
    if match is None or match["suffix"] == "-start":
      continue
    op_name = _OP_NAME.search(line)
    found.append(Collective(match["op"], shape_bytes(match["shape"]), op_name["op_name"] if op_name else "",
                            match["shape"]))
  return found


def count_collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{kind: (count, bytes of the results)} over the HLO module text; every kind present, zeros if absent."""
  counts = {kind: [0, 0] for kind in COLLECTIVES}
  for collective in find_collectives(hlo_text):
    counts[collective.kind][0] += 1
    counts[collective.kind][1] += collective.nbytes
  return {kind: (c, b) for kind, (c, b) in counts.items()}


def collectives_in_loops(hlo_text: str) -> int:
  """Collectives inside while loops (their bodies and what those call): the counts above are static, so one
  there runs once per iteration but is counted once."""
  bodies = {m["name"]: m["body"] for m in _COMPUTATION.finditer(hlo_text)}
  callees = {name: [c.lstrip("%") for m in _CALLEES.finditer(body) for c in re.split(r",\s*", m["names"])]
             for name, body in bodies.items()}
  todo = [name.lstrip("%") for name in re.findall(r"\bbody=(%[^\s,}]+)", hlo_text)]
  in_loops = set()
  while todo:
    name = todo.pop()
    if name not in in_loops and name in bodies:
      in_loops.add(name)
      todo.extend(callees[name])
  return sum(len(find_collectives(bodies[name])) for name in in_loops)


_FAMILY = flags.DEFINE_list("family", None, "Families (comma-separated); default all of families.FAMILIES.")
_PRESET = flags.DEFINE_string("preset", "", "The config's preset ('' = the paper's setup, 'cpu', 'tiny').")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before JAX starts, unless XLA_FLAGS "
                                "already sets --xla_force_host_platform_device_count).")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 1, "Examples per device.")
_SOURCES = flags.DEFINE_integer("sources", 0, "Also list the N largest collectives with the JAX operation each "
                                "came from (HLO metadata), to see where the bytes go.")
_JSONL = flags.DEFINE_bool("jsonl", False, "Also print each family's figures as one JSON line (`{\"family\": ...}`).")


def abstract_batch(config, sharding) -> dict:
  """The shapes of one global batch of the config's input pipeline: the fields training feeds the step."""
  iterator = pipeline.create_train_iterator(config.input, seed=config.seed, global_batch_size=config.batch_size)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in next(iterator).items()}


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _print_table(counts: dict[str, tuple[int, int]], param_bytes: int) -> None:
  print(f"  {'collective':<20}{'count':>7}{'MiB':>12}")
  for kind, (count, nbytes) in counts.items():
    print(f"  {kind:<20}{count:>7}{nbytes / 2**20:>12.3f}")
  total_count, total_bytes = sum(c for c, _ in counts.values()), sum(b for _, b in counts.values())
  print(f"  {'total':<20}{total_count:>7}{total_bytes / 2**20:>12.3f}"
        f"   ({total_bytes / max(param_bytes, 1):.2f}x the parameter bytes)")


def _shape_summary(shape: str, limit: int = 5) -> str:
  """`(f32[3]{0}, f32[3]{0}, bf16[2,5]{1,0})` -> `f32[3] x2, bf16[2,5]`, largest first: a gradient reduced twice
  shows as its kernel shapes x2."""
  arrays = collections.Counter(m[0] for m in _ARRAY.finditer(shape))
  ordered = sorted(arrays.items(), key=lambda item: -shape_bytes(item[0]) * item[1])
  parts = [f"{array} x{n}" if n > 1 else array for array, n in ordered]
  return ", ".join(parts[:limit]) + (f", +{len(parts) - limit} more" if len(parts) > limit else "")


def _print_sources(found: list[Collective], limit: int) -> None:
  print(f"  the {min(limit, len(found))} largest: result arrays, and the JAX operation(s) they came from")
  for collective in sorted(found, key=lambda c: -c.nbytes)[:limit]:
    op_name = collective.op_name.removeprefix("jit(step)/")
    print(f"    {collective.kind:<19}{collective.nbytes / 2**20:>9.3f} MiB  {_shape_summary(collective.shape)}")
    print(f"    {'':<32}{op_name[:100] + '...' if len(op_name) > 100 else op_name}")


def _report(name: str) -> None:
  config = importlib.import_module(f"configs.{name}").get_config(_PRESET.value)
  notes = []
  if "loss_weights" in config and config.loss_weights.get("vgg"):
    # The VGG loss needs converted weights (config.vgg_weights); VGG is frozen, so it adds no gradient to reduce.
    config.loss_weights.vgg = 0.0
    notes.append("VGG loss off")
  devices = jax.device_count()
  config.batch_size = _PER_DEVICE_BATCH.value * devices
  family = families.get_family(name)
  train.validate_config(config)
  family.validate(config)
  programs = train.Programs(config)
  abstract_state = programs.abstract_state
  start = time.perf_counter()
  hlo = programs.step.lower(programs.target(), abstract_batch(config, programs.batch_sharding)).compile(
      ).as_text()
  seconds = time.perf_counter() - start
  found = find_collectives(hlo)
  counts = count_collectives(hlo)
  g_bytes, d_bytes = _nbytes(abstract_state.params["g"]), _nbytes(abstract_state.params["d"])
  size = config.model.get("image_size", config.model.get("crop_size"))
  print(f"\n{name} ({_PRESET.value or 'paper setup'}, {size} px{', ' + ', '.join(notes) if notes else ''}), "
        f"global batch {config.batch_size} over {devices} devices; compiled in {seconds:.0f} s")
  print(f"  parameters: G {g_bytes / 2**20:.2f} MiB, D {d_bytes / 2**20:.2f} MiB, "
        f"together {(g_bytes + d_bytes) / 2**20:.2f} MiB")
  _print_table(counts, g_bytes + d_bytes)
  ratio = counts["all-reduce"][1] / max(g_bytes + d_bytes, 1)
  if abs(ratio - 1) > 0.1:
    print(f"  note: the all-reduces move {ratio:.2f}x the parameter bytes, not ~1x (see this script's docstring; "
          f"--sources 10 lists the largest)")
  in_loops = collectives_in_loops(hlo)
  if in_loops:
    print(f"  warning: {in_loops} of these collectives sit inside while loops and run once per iteration; the "
          "counts above are per appearance, so they understate the step's collectives")
  if _SOURCES.value:
    _print_sources(found, _SOURCES.value)
  if _JSONL.value:
    print(json.dumps({"family": name, "preset": _PRESET.value, "devices": devices, "batch_size": config.batch_size,
                      "g_bytes": g_bytes, "d_bytes": d_bytes, "in_loops": in_loops,
                      "collectives": {kind: {"count": c, "bytes": b} for kind, (c, b) in counts.items()}}))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices")
  if jax.device_count() != _DEVICES.value:
    print(f"note: {jax.device_count()} devices, not --devices {_DEVICES.value}: "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} already set the count")
  for name in _FAMILY.value or sorted(families.FAMILIES):
    _report(name)


if __name__ == "__main__":
  app.run(main)
