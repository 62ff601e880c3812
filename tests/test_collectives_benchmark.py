"""benchmarks/collectives.py's HLO reading: counts and bytes on a fixed module text and on a compiled step."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, device_env

_SPEC = importlib.util.spec_from_file_location("collectives", REPO / "benchmarks" / "collectives.py")
collectives = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(collectives)

_HLO = """
HloModule step
ENTRY %main (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %all-reduce = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %p0), replica_groups={{0,1}}, to_apply=%add
  %all-reduce.1 = (f32[3]{0}, bf16[2,5]{1,0}) all-reduce(f32[3]{0} %a, bf16[2,5]{1,0} %b), to_apply=%add
  %all-gather-start = (bf16[2,4]{1,0}, bf16[4,4]{1,0}) all-gather-start(bf16[2,4]{1,0} %c), dimensions={0}
  %all-gather-done = bf16[4,4]{1,0} all-gather-done((bf16[2,4]{1,0}, bf16[4,4]{1,0}) %all-gather-start)
  %collective-permute = s32[7]{0} collective-permute(s32[7]{0} %d), source_target_pairs={{0,1},{1,0}}, metadata={op_name="jit(step)/jvp()/slice" stack_frame_id=3}
  %not-a-collective = f32[2]{0} add(f32[2]{0} %e, f32[2]{0} %f)
  ROOT %r = f32[4,8]{1,0} copy(%all-reduce)
}
"""


def test_counts_and_bytes_of_a_fixed_module():
  counts = collectives.count_collectives(_HLO)
  assert counts["all-reduce"] == (2, 4 * 8 * 4 + 3 * 4 + 2 * 5 * 2)
  assert counts["all-gather"] == (1, 4 * 4 * 2)  # the async pair once, at its -done
  assert counts["collective-permute"] == (1, 7 * 4)
  assert counts["reduce-scatter"] == counts["all-to-all"] == (0, 0)
  assert collectives.shape_bytes("(f32[2,3]{1,0}, pred[5]{0}, f32[]{})") == 24 + 5 + 4
  assert [c.op_name for c in collectives.find_collectives(_HLO)] == ["", "", "", "jit(step)/jvp()/slice"]
  assert collectives.collectives_in_loops(_HLO) == 0


_LOOP_HLO = """
HloModule loop
%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %a, f32[] %b)
}
%reduced (p: f32[16]) -> f32[16] {
  %p = f32[16]{0} parameter(0)
  ROOT %all-reduce.2 = f32[16]{0} all-reduce(f32[16]{0} %p), to_apply=%add
}
%body (t: (s32[], f32[16])) -> (s32[], f32[16]) {
  %t = (s32[], f32[16]{0}) parameter(0)
  %x = f32[16]{0} get-tuple-element((s32[], f32[16]{0}) %t), index=1
  %all-gather = f32[16]{0} all-gather(f32[2]{0} %x), dimensions={0}
  %call = f32[16]{0} call(f32[16]{0} %all-gather), to_apply=%reduced
  ROOT %out = (s32[], f32[16]{0}) tuple(s32[] %i, f32[16]{0} %call)
}
%cond (t: (s32[], f32[16])) -> pred[] {
  %t = (s32[], f32[16]{0}) parameter(0)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}
ENTRY %main (x: f32[16]) -> f32[16] {
  %x = f32[16]{0} parameter(0)
  %all-reduce.1 = f32[16]{0} all-reduce(f32[16]{0} %x), to_apply=%add
  %init = (s32[], f32[16]{0}) tuple(s32[] %zero, f32[16]{0} %all-reduce.1)
  %while = (s32[], f32[16]{0}) while((s32[], f32[16]{0}) %init), condition=%cond, body=%body
  ROOT %r = f32[16]{0} get-tuple-element((s32[], f32[16]{0}) %while), index=1
}
"""


def test_collectives_inside_a_loop_body_and_what_it_calls_are_flagged():
  assert collectives.count_collectives(_LOOP_HLO)["all-reduce"] == (2, 2 * 16 * 4)
  assert collectives.collectives_in_loops(_LOOP_HLO) == 2  # the body's all-gather and the called all-reduce


_PSUM = """
import importlib.util, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
spec = importlib.util.spec_from_file_location("collectives", "benchmarks/collectives.py")
collectives = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collectives)
assert jax.device_count() == 4
mesh = Mesh(np.asarray(jax.devices()), ("data",))
fn = jax.jit(lambda x: jnp.sum(x, axis=0), in_shardings=NamedSharding(mesh, P("data")),
             out_shardings=NamedSharding(mesh, P()))
text = fn.lower(jax.ShapeDtypeStruct((4, 256), jnp.float32)).compile().as_text()
print(collectives.count_collectives(text)["all-reduce"])
"""


@pytest.mark.slow
def test_a_sum_over_the_split_axis_is_one_all_reduce_of_its_size():
  env = device_env(4)
  result = subprocess.run([sys.executable, "-c", _PSUM], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == str((1, 256 * 4))


@pytest.mark.slow
def test_dcgan_reduces_each_gradient_once_on_eight_devices():
  """benchmarks/collectives.py on DCGAN-64 (the paper setup), 4 examples per device, at XLA's default
  optimisation (what training runs; the suite's -O0 happens to hide the difference): the all-reduces carry each
  parameter's gradient once, plus BatchNorm statistics and metrics (measured 1.00x the parameter bytes). With D
  called on real and fake apart, some compiles reduced D's weight gradient once per call (1.44x; failed here on
  2026-12-02 on a loaded machine): D now judges both in one call."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "collectives.py"), "--family", "dcgan",
                           "--per_device_batch", "4", "--jsonl"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  [report] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  counts = report["collectives"]
  assert (report["family"], report["devices"], report["batch_size"], report["in_loops"]) == ("dcgan", 8, 32, 0)
  params = report["g_bytes"] + report["d_bytes"]
  assert params <= counts["all-reduce"]["bytes"] <= 1.02 * params, (counts, params)
  assert all(counts[kind]["count"] == 0 for kind in ("all-gather", "reduce-scatter", "all-to-all",
                                                     "collective-permute")), counts
