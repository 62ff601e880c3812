"""The family contract (facegen_jax/families/__init__.py) as one check, `check(config, tmp_path)`, called by each
family's own test file (and tests/test_families.py for the test doubles).

Each family checks it in its own file, beside its own tests: a family's tests and its contract case compile the
same init and step, shared in memory where the file passes its own `train.Programs` in, else through the
persistent compilation cache (tests/conftest.py), which serves programs compiled earlier on the same machine
(`--dist loadfile` keeps a file on one worker). tests/test_families.py checks that every
registered family has its case (`CONTRACT_FAMILIES` of the modules in `MODULES`).
"""

import jax
import numpy as np

from facegen_jax import families
from facegen_jax import rundir
from facegen_jax import state as state_lib
from facegen_jax import train
from input_pipeline import pipeline

# The test modules that check the contract of the families they name in CONTRACT_FAMILIES.
MODULES = ("tests.test_dcgan", "tests.test_munit", "tests.test_spade", "tests.test_ssupergan", "tests.test_tfill",
           "tests.test_ugatit")


def _copy(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def _moved(before, after) -> dict[str, bool]:
  return {jax.tree_util.keystr(path): not np.array_equal(old, new) for (path, old), new in zip(
      jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True)}


def check(config, tmp_path, programs: train.Programs | None = None) -> None:
  """Two loop steps move exactly the optimised groups; samples, eval outputs and a save / restore as declared.

  `programs`: a test file's own `train.Programs(config)`, so the compiled init and step are reused in memory
  (loading them from the persistent cache takes a quarter to a third of compiling them: MUNIT's tiny step 13 s,
  its init 6 s, measured).
  """
  family = families.get_family(config.family)
  contract = family.CONTRACT
  assert isinstance(contract, families.Contract) and contract.task in families.TASKS
  family.validate(config)
  if programs is None:
    programs = train.Programs(config)
  assert programs.config == config, "programs compiled for another config"
  state = programs.init(programs.init_key)
  assert set(contract.optimizer_groups) <= set(state.params) and set(state.opt_state) == set(
      contract.optimizer_groups)
  before = _copy(state)
  iterator = pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size)
  host_batch = next(iterator)
  for _ in range(2):
    state, metrics = programs.step(state, programs.global_batch(host_batch))
  assert int(state.step) == 2
  assert metrics and all(np.isfinite(float(v)) for v in metrics.values()), metrics
  after = _copy(state)
  for group in state.params:
    moved = _moved(before.params[group], after.params[group])
    if group in contract.optimizer_groups:
      assert any(moved.values()), f"group {group!r} did not move"
    else:
      assert not any(moved.values()), f"frozen group {group!r} moved: {[k for k, m in moved.items() if m]}"

  # The loop's own sample inputs: a batch of num_sample_images (more than a tiny config's training batch).
  inputs = train._sample_inputs(programs, pipeline.create_sources(config.input))  # pylint: disable=protected-access
  height, width = pipeline.resolution_hw(config.input)
  for image in programs.sample(state, inputs).values():
    assert image.shape == (config.num_sample_images, height, width, 3)
    assert float(np.abs(image).max()) <= 1.0 + 1e-6
  size = 2
  data = {field: host_batch[field][:size] for out in contract.eval_outputs.values() for field in out.inputs}
  # Jitted, as infer.py and the evaluator call it (eagerly, TFill's took 36 s of op-by-op dispatch).
  generate = jax.jit(lambda state, inputs, key: family.generate(config, state, inputs, key))
  generated = generate(state_lib.inference_state(state), family.eval_inputs(config, jax.random.key(1), size, data),
                       jax.random.key(2))
  assert set(contract.eval_outputs) <= set(generated)
  for output in contract.eval_outputs:
    assert generated[output].shape == (size, height, width, 3)

  rundir.save_state(tmp_path / "run", config, jax.device_get(state), step=2)
  restored, step = rundir.restore_state(tmp_path / "run", rundir.load_config(tmp_path / "run"))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, _copy(state), _copy(restored))
