import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan as dcgan_config
from facegen_jax import errors
from facegen_jax import families
from facegen_jax.families import common
from facegen_jax.families import dcgan
from tests import contract
from tests.conftest import REPO, init_state, tiny_config


def test_parameter_counts_match_the_pytorch_original():
  # torch: sum(p.numel() for p in netG.parameters()) for nz=100, ngf=ndf=64, 64 px.
  config = dcgan_config.get_config()
  state = jax.eval_shape(functools.partial(families.init_state, config), jax.random.key(0))
  assert common.count_params(state.params["g"]) == 3_576_704
  assert common.count_params(state.params["d"]) == 2_765_568


@pytest.mark.parametrize("size", [32, 64])
def test_shapes(size):
  generator, discriminator = dcgan.Generator(size, ngf=4), dcgan.Discriminator(ndf=4)
  z = jnp.ones((2, 10))
  g_vars = generator.init(jax.random.key(0), z)
  images, _ = generator.apply(g_vars, z, mutable=["batch_stats"])
  assert images.shape == (2, size, size, 3)
  assert float(jnp.abs(images).max()) <= 1.0
  d_vars = discriminator.init(jax.random.key(1), images)
  logits, _ = discriminator.apply(d_vars, images, mutable=["batch_stats"])
  assert logits.shape == (2,)


def test_init_follows_weights_init():
  config = dcgan_config.get_config()
  state = init_state(config)
  kernel = np.asarray(state.params["g"]["ConvTranspose_1"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.001 and abs(kernel.mean()) < 0.001
  scale = np.asarray(state.params["g"]["BatchNorm_1"]["scale"])
  assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
  assert "bias" not in state.params["g"]["ConvTranspose_1"]


def test_d_init_torch_default_is_the_original_codes_d():
  """model.d_init="torch_default": D's kernels U(+-1/sqrt(fan_in)) and BatchNorm scale 1, as torch leaves them."""
  variables = dcgan.Discriminator(ndf=16, init_scheme="torch_default").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kernel = np.asarray(variables["params"]["Conv_1"]["kernel"])  # 4 x 4 x 16 -> 32
  bound = 1 / np.sqrt(4 * 4 * 16)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert abs(kernel.std() - bound / np.sqrt(3)) < 0.05 * bound
  np.testing.assert_array_equal(variables["params"]["BatchNorm_0"]["scale"], np.ones(32))
  with pytest.raises(errors.ConfigError, match="d_init must be one of normal, torch_default"):
    dcgan.validate(tiny_config("dcgan", **{"model.d_init": "xavier"}))


def test_grouped_batch_norm_equals_two_flax_calls():
  """D's BatchNorm on real and fake interleaved (groups=2) = flax's nn.BatchNorm called on real, then on fake: the
  outputs, the running statistics and the parameter gradients."""
  rng = np.random.default_rng(1)
  real = rng.normal(1.0, 2.0, (3, 2, 2, 5)).astype(np.float32)
  fake = rng.normal(-0.5, 0.5, (3, 2, 2, 5)).astype(np.float32)
  params = {"scale": rng.normal(1, 0.3, 5).astype(np.float32), "bias": rng.normal(0, 0.3, 5).astype(np.float32)}
  stats = {"mean": rng.normal(0, 1, 5).astype(np.float32), "var": rng.uniform(0.5, 2, 5).astype(np.float32)}
  weights = rng.normal(0, 1, (2, 3, 2, 2, 5)).astype(np.float32)  # a loss that weighs every output differently
  flax_norm, grouped_norm = dcgan._BatchNorm(use_running_average=False), dcgan._BatchNormGroups()

  def separate(params):
    y_real, upd = flax_norm.apply({"params": params, "batch_stats": stats}, real, mutable=["batch_stats"])
    y_fake, upd = flax_norm.apply({"params": params, "batch_stats": upd["batch_stats"]}, fake,
                                  mutable=["batch_stats"])
    return (y_real * weights[0]).sum() + (y_fake * weights[1]).sum(), (y_real, y_fake, upd["batch_stats"])

  def grouped(params):
    pairs = np.stack([real, fake], axis=1).reshape(6, 2, 2, 5)
    y, upd = grouped_norm.apply({"params": params, "batch_stats": stats}, pairs, use_running_average=False,
                                groups=2, mutable=["batch_stats"])
    return (y[0::2] * weights[0]).sum() + (y[1::2] * weights[1]).sum(), (y[0::2], y[1::2], upd["batch_stats"])

  (_, want), want_grad = jax.value_and_grad(separate, has_aux=True)(params)
  (_, got), got_grad = jax.value_and_grad(grouped, has_aux=True)(params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), got, want)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), got_grad, want_grad)
  eval_want = flax_norm.clone(use_running_average=True).apply({"params": params, "batch_stats": stats}, real)
  eval_got = grouped_norm.apply({"params": params, "batch_stats": stats}, real, use_running_average=True)
  np.testing.assert_allclose(eval_got, eval_want, rtol=1e-5, atol=1e-6)


def test_bad_image_size_is_a_config_error():
  config = tiny_config("dcgan", **{"model.image_size": 48, "input.resolution": 48})
  with pytest.raises(errors.ConfigError, match="power of two"):
    dcgan.validate(config)


def _moment_gap(fake, real):
  fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)  # numpy: no op-by-op compiles
  return float(np.abs(fake.mean((0, 1, 2)) - real.mean((0, 1, 2))).mean()
               + np.abs(fake.std((0, 1, 2)) - real.std((0, 1, 2))).mean())


def test_training_moves_samples_toward_the_data():
  """200 steps on 64 synthetic faces: G's colour statistics approach the real ones (at init G's outputs sit
  near 0 with a small spread). GAN training oscillates, so the end is the mean gap over steps 150, 175, 200;
  measured here over 2 init seeds x 2 conv lowerings: 0.32 -> 0.16..0.18 (ratio 0.50..0.58), while an
  untrained G stays at the start."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config("dcgan", batch_size=16, num_train_steps=200, **{"optim.g.lr": 1e-3, "optim.d.lr": 1e-3})
  iterator = pipeline.create_train_iterator(config.input, seed=0, global_batch_size=16)
  batches = [{"image": jnp.asarray(next(iterator)["image"])} for _ in range(4)]
  real = jnp.concatenate([b["image"] for b in batches])
  state = init_state(config)
  step = jax.jit(functools.partial(dcgan.train_step, config))
  inputs = dcgan.sample_inputs(config, jax.random.key(1), None)
  sample = jax.jit(lambda state: dcgan.sample(config, state, inputs)["generated"])
  gap = lambda: _moment_gap(sample(state), real)
  gap_before, gaps_after = gap(), []
  for i in range(config.num_train_steps):
    state, metrics = step(state, batches[i % len(batches)], jax.random.key(i))
    if i + 1 in (150, 175, 200):
      gaps_after.append(gap())
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert np.mean(gaps_after) < 0.7 * gap_before, (gap_before, gaps_after)


@pytest.mark.slow
def test_generate_command_writes_images_from_a_run(tmp_path):
  """`python -m facegen_jax.generate --num` on a trained run: seeded noise through G in eval mode; a bad --step
  is one error line and exit code 2."""
  from facegen_jax import rundir  # pylint: disable=g-import-not-at-top
  from facegen_jax import train  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config = tiny_config("dcgan", num_train_steps=2, checkpoint_every_steps=2)
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  command = [sys.executable, "-m", "facegen_jax.generate", "--workdir", str(tmp_path / "run"), "--num", "3",
             "--seed", "5", "--out", str(tmp_path / "out"), "--save_raw"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
  z = jax.random.normal(jax.random.key(5), (3, config.model.nz))
  run_config = rundir.load_config(tmp_path / "run")
  expected = jax.jit(lambda state, z: dcgan.generate(run_config, state, {"z": z}, None)["generated"])(state, z)
  for i in range(3):
    raw = np.load(tmp_path / "out" / f"{i:06d}.npy")
    np.testing.assert_allclose(raw, expected[i], atol=1e-5)
    assert np.asarray(Image.open(tmp_path / "out" / f"{i:06d}.png")).shape == (config.input.resolution,) * 2 + (3,)
  result = subprocess.run(command + ["--step", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("facegen_jax.generate: error: no checkpoint for step 1")


# --- the family contract (tests/contract.py) ---

CONTRACT_FAMILIES = ("dcgan",)


@pytest.mark.parametrize("name", CONTRACT_FAMILIES)
def test_keeps_the_family_contract(name, tmp_path):
  contract.check(tiny_config(name), tmp_path)
