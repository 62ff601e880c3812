"""Optimizers per parameter group (facegen_jax/optim.py): schedules, weight decay, clipping, frozen patterns."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import optim
from facegen_jax import train
from input_pipeline import pipeline
from tests import family_doubles

_PARAMS = {"encoder": {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.zeros(3)}},
           "decoder": {"kernel": jnp.full((2, 2), 2.0)}}


def _config(**group):
  config = ml_collections.ConfigDict({"num_train_steps": 100, "optim": {"g": optim.config(**group)}})
  return config


def test_schedules_constant_linear_and_step():
  constant = optim.learning_rate_schedule(optim.config(lr=1.0), 100)
  assert [float(constant(s)) for s in (0, 99)] == [1.0, 1.0]
  linear = optim.learning_rate_schedule(optim.config(lr=1.0, decay_start_step=50), 100)
  np.testing.assert_allclose([float(linear(s)) for s in (0, 50, 75, 100)], [1.0, 1.0, 0.5, 0.0])
  # SATNet's LambdaLR 1 - max(0, it - 400k) / 450k over 450k iterations: 0.889 of the lr at the end.
  longer = optim.learning_rate_schedule(optim.config(lr=1.0, decay_start_step=40, decay_steps=45), 45)
  np.testing.assert_allclose([float(longer(s)) for s in (0, 40, 45)], [1.0, 1.0, 1 - 5 / 45], rtol=1e-6)
  step = optim.learning_rate_schedule(optim.config(lr=1.0, decay_every_steps=10, decay_factor=0.5), 100)
  np.testing.assert_allclose([float(step(s)) for s in (0, 9, 10, 25)], [1.0, 1.0, 0.5, 0.25])


def test_weight_decay_is_coupled_for_adam_and_decoupled_for_adamw():
  params = {"w": jnp.array([1.0])}
  grads = {"w": jnp.array([0.0])}
  # torch.optim.Adam(weight_decay=0.1): the decay enters the gradient, so Adam normalises it: a full lr step.
  adam = optim.create(_config(lr=0.01, weight_decay=0.1), "g")
  updates, _ = adam.update(grads, adam.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.01], rtol=1e-4)
  # torch.optim.AdamW: lr * weight_decay * w, outside the moments.
  adamw = optim.create(_config(name="adamw", lr=0.01, weight_decay=0.1), "g")
  updates, _ = adamw.update(grads, adamw.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.001], rtol=1e-4)


def test_clip_by_global_norm():
  params = {"w": jnp.zeros(2)}
  tx = optim.create(_config(name="adam", lr=1.0, b1=0.0, b2=0.0, eps=0.0, clip_global_norm=1.0), "g")
  clip = optax.clip_by_global_norm(1.0)
  clipped, _ = clip.update({"w": jnp.array([30.0, 40.0])}, clip.init(params))
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
  updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-1.0, -1.0], rtol=1e-5)  # Adam with b2 = 0: sign of the clipped grad.


def test_frozen_leaves_get_no_update_and_no_moments():
  tx = optim.create(_config(lr=0.1, frozen=("encoder/.*",)), "g")
  opt_state = tx.init(_PARAMS)
  arrays = [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]
  # Adam's two moments of the decoder's 2x2 kernel only.
  assert sorted(x.shape for x in arrays) == [(2, 2), (2, 2)]
  grads = jax.tree.map(jnp.ones_like, _PARAMS)
  updates, _ = tx.update(grads, opt_state, _PARAMS)
  params = optax.apply_updates(_PARAMS, updates)
  jax.tree.map(np.testing.assert_array_equal, params["encoder"], _PARAMS["encoder"])
  assert not np.array_equal(params["decoder"]["kernel"], _PARAMS["decoder"]["kernel"])


def test_config_errors_name_the_key():
  with pytest.raises(errors.ConfigError, match=r"pattern 'nothing/.\*' matches no parameter of group 'g'"):
    optim.check_frozen(_config(frozen=("nothing/.*",)), "g", _PARAMS)
  with pytest.raises(errors.ConfigError, match=r"no optimizer for parameter group 'd': set config.optim.d"):
    optim.create(_config(), "d")
  with pytest.raises(errors.ConfigError, match=r"config.optim.g.lr must be > 0"):
    optim.create(_config(lr=0.0), "g")
  with pytest.raises(errors.ConfigError, match=r"both decay_start_step .* and decay_every_steps"):
    optim.create(_config(decay_start_step=5, decay_every_steps=10), "g")
  with pytest.raises(errors.ConfigError, match=r"decay_steps 10 is the length of the linear decay"):
    optim.create(_config(decay_steps=10), "g")


def test_a_frozen_pattern_keeps_its_leaves_bit_identical_through_training(monkeypatch):
  """tiny_inpainter freezes refine/embed by pattern (and its "coarse" group has no optimizer): over 5 jitted
  steps those leaves stay bit-identical and have no optimizer moments, while the rest of the group moves."""
  monkeypatch.setitem(families.FAMILIES, "tiny_inpainter", family_doubles.tiny_inpainter)
  config = family_doubles.tiny_inpainter.get_config()
  programs = train.Programs(config)
  state = programs.init(programs.init_key)
  before = jax.device_get(state.params)
  moments = [x.shape for x in jax.tree.leaves(state.opt_state["refine"]) if x.ndim > 0]
  assert sorted(moments) == sorted(2 * [x.shape for x in jax.tree.leaves(before["refine"]["head"])])
  iterator = pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size)
  for _ in range(5):
    state, _ = programs.step(state, programs.global_batch(next(iterator)))
  after = jax.device_get(state.params)
  for frozen in (after["refine"]["embed"], after["coarse"]):
    original = before["refine"]["embed"] if frozen is after["refine"]["embed"] else before["coarse"]
    jax.tree.map(np.testing.assert_array_equal, frozen, original)
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["refine"]["head"]),
                                                      jax.tree.leaves(before["refine"]["head"])))
  config.optim.refine.frozen = ("nowhere/.*",)
  with pytest.raises(errors.ConfigError, match="'nowhere/.\\*' matches no parameter"):
    train.Programs(config)
