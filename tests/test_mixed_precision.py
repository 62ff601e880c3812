"""config.compute_dtype="bfloat16": every convolution of the train step runs in bfloat16, while parameters,
optimizer state, EMA, running and spectral statistics and the losses stay float32, close to the float32 step.

Structure and dtypes come from lowering and `jax.eval_shape` (no compile) for every family; the numbers from
running DCGAN's step. Measured once for SPADE's tiny step too: losses within 1.1e-3 relative of float32.
"""

import re

import jax
import numpy as np
import pytest

from facegen_jax import families
from facegen_jax import train
from input_pipeline import pipeline
from tests.conftest import tiny_config


def _step_and_inputs(family, dtype, abstract=False):
  """The jitted guarded step, a step-0 state (shapes and dtypes only when `abstract`: lowering needs no values,
  and building a family's real state eagerly costs more than the lowering) and one batch."""
  config = tiny_config(family, compute_dtype=dtype, ema_decay=0.5)
  key = jax.random.key(0)
  if abstract:
    state = jax.eval_shape(lambda k: families.init_state(config, k), key)
  else:
    state = families.init_state(config, key)
  batch = next(pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size))
  return jax.jit(train._guarded_step(families.get_family(family), config, key)), state, batch


def _conv_result_types(step, state, batch) -> list[str]:
  return re.findall(r"stablehlo\.convolution.*?->\s*tensor<([^>]*)>", step.lower(state, batch).as_text())


@pytest.mark.parametrize("family", sorted(families.FAMILIES))
def test_bfloat16_convolutions_with_a_float32_state(family):
  f32_convs = _conv_result_types(*_step_and_inputs(family, "float32", abstract=True))
  step, state, batch = _step_and_inputs(family, "bfloat16", abstract=True)
  bf16_convs = _conv_result_types(step, state, batch)
  assert f32_convs and not any("bf16" in t for t in f32_convs)
  assert len(bf16_convs) == len(f32_convs) and all(t.endswith("bf16") for t in bf16_convs), bf16_convs
  new_state, metrics = jax.eval_shape(step, state, batch)
  # The same structure and dtypes: parameters, Adam moments, EMA, batch and spectral statistics.
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert after.dtype == before.dtype
  assert {str(x.dtype) for x in jax.tree.leaves(new_state)} <= {"float32", "int32"}
  assert all(m.dtype == np.float32 for m in metrics.values())


def test_bfloat16_dcgan_step_is_close_to_float32():
  results = {}
  for dtype in ("float32", "bfloat16"):
    step, state, batch = _step_and_inputs("dcgan", dtype)
    results[dtype] = jax.device_get(step(state, batch))
  (f32_state, f32_metrics), (bf16_state, bf16_metrics) = results["float32"], results["bfloat16"]
  for name, value in bf16_metrics.items():  # measured: within 1.2e-3 relative
    assert np.isfinite(value), name
    np.testing.assert_allclose(value, f32_metrics[name], rtol=1e-2, atol=1e-3, err_msg=name)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16_state.params["g"]))
  # The update moved G by about as much as in float32 (Adam's first step is ~lr * sign(grad) per weight).
  for a, b, before in zip(jax.tree.leaves(f32_state.params["g"]), jax.tree.leaves(bf16_state.params["g"]),
                          jax.tree.leaves(_step_and_inputs("dcgan", "float32")[1].params["g"])):
    moved_f32, moved_bf16 = np.abs(a - before).mean(), np.abs(b - before).mean()
    assert moved_bf16 == pytest.approx(moved_f32, rel=0.1)
