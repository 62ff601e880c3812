"""TFill's families (coarse `tfill`, `tfill_refine`), their configs, the pipeline's masks and `inpaint` at each
image's own size: losses by hand, mask polarity, the bicubic resize against torch, the composite, presets, a short
run whose hole error falls."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import tfill as tfill_configs
from configs import tfill_refine as tfill_refine_configs
from facegen_jax import compile as compile_lib
from facegen_jax import describe
from facegen_jax import errors
from facegen_jax import families
from facegen_jax import inpaint
from facegen_jax import rundir
from facegen_jax.families import tfill
from facegen_jax.families import tfill_refine
from input_pipeline import pipeline
from tests import contract
from tests.conftest import tiny_config

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


# --- parameter counts at the real options ---

def test_real_counts_through_networks():
  counts = {row["name"]: row["params"] for row in describe.networks(tfill_configs.get_config())}
  assert counts == {"E": 3_328_576, "T": 38_374_912, "G": 22_475_783, "D": 19_048_993}
  counts = {row["name"]: row["params"] for row in describe.networks(tfill_configs.get_config("refine"))}
  assert counts["G_Ref"] == 45_268_041 and counts["D_Ref"] == 19_056_401
  assert families.get_family("tfill_refine").CONTRACT.optimizer_groups == ("g_ref", "d_ref")


# --- the bicubic resize ---

@pytest.mark.parametrize("shape,size", [((2, 16, 16, 3), (37, 29)), ((1, 64, 48, 1), (16, 16)),
                                        ((1, 32, 32, 3), (256, 256))])
def test_resize_bicubic_is_torchs_align_corners(shape, size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bicubic",
                                         align_corners=True).permute(0, 2, 3, 1).numpy()
  got = np.asarray(tfill.resize_bicubic(jnp.asarray(x), size))
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_resize_bicubic_keeps_corners_and_constants():
  x = np.random.default_rng(1).normal(size=(1, 9, 9, 2)).astype(np.float32)
  y = np.asarray(tfill.resize_bicubic(jnp.asarray(x), 33))
  np.testing.assert_allclose(y[0, ::4, ::4], x[0], atol=1e-5)  # align_corners: every 4th output is an input
  np.testing.assert_allclose(tfill.resize_bicubic(jnp.ones((1, 8, 8, 1)), 3), 1.0, atol=1e-6)


# --- losses by hand ---

def _loss_config(**weights):
  config = tiny_config("tfill")
  config.loss_weights.update(dict(gan=1.0, l1=10.0, lpips=0.0, **weights))
  return config


def test_generator_loss_by_hand_holes_count_three_times():
  real = np.zeros((1, 2, 2, 3), np.float32)
  fake = real.copy()
  fake[0, 0, 0] = 0.4   # a hole pixel, error 0.4 in each channel
  fake[0, 1, 1] = -0.2  # a visible pixel, error 0.2
  hole = np.zeros((1, 2, 2, 1), np.float32)
  hole[0, 0, 0] = 1.0   # batch convention: 1 = hole
  visible = 1.0 - hole
  logits = np.array([[0.5]], np.float32)
  total, terms = tfill.generator_loss(_loss_config(), jnp.asarray(fake), jnp.asarray(real), jnp.asarray(visible),
                                      jnp.asarray(logits), None, None)
  n = 12  # L1Loss: the mean over all B * H * W * C elements
  assert float(terms["g/l1_hole"]) == pytest.approx(3 * 0.4 / n)
  assert float(terms["g/l1_visible"]) == pytest.approx(3 * 0.2 / n)
  assert float(terms["g/l1"]) == pytest.approx(3 * (3 * 0.4 / n) + 3 * 0.2 / n)
  assert float(terms["g/hole_l1"]) == pytest.approx(0.4)  # per hole element
  assert float(terms["g/gan"]) == pytest.approx(np.log1p(np.exp(-0.5)))
  assert float(total) == pytest.approx(np.log1p(np.exp(-0.5)) + 10 * (3 * 1.2 / n + 0.6 / n), rel=1e-6)
  # Polarity: with the mask inverted the same errors weigh the other way round.
  _, swapped = tfill.generator_loss(_loss_config(), jnp.asarray(fake), jnp.asarray(real), jnp.asarray(hole),
                                    jnp.asarray(logits), None, None)
  assert float(swapped["g/l1"]) == pytest.approx(3 * (3 * 0.2 / n) + 3 * 0.4 / n)


def test_discriminator_loss_by_hand():
  real, fake = jnp.array([[1.0], [2.0]]), jnp.array([[-1.0], [0.0]])
  total, terms = tfill.discriminator_loss(_loss_config(), lambda x: x, real, fake, jax.random.key(0))
  softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
  want_real = np.mean([softplus(-1.0), softplus(-2.0)])
  want_fake = np.mean([softplus(-1.0), softplus(0.0)])
  assert float(terms["d/real"]) == pytest.approx(want_real) and float(terms["d/fake"]) == pytest.approx(want_fake)
  assert float(total) == pytest.approx(want_real + want_fake)
  # R1 of D(x) = sum(x * 3): the gradient is 3 everywhere, so 0.5 * 9 * (elements per example).
  d = lambda x: 3.0 * jnp.sum(x, axis=(1, 2, 3))[:, None]  # noqa: E731
  images = jnp.zeros((2, 2, 2, 3))
  _, terms = tfill.discriminator_loss(_loss_config(r1=1.0), d, images, images, jax.random.key(0))
  assert float(terms["d/r1"]) == pytest.approx(0.5 * 9 * 12)
  # TFill's gradient penalty: (|grad| - 1)^2 with |grad| = 3 sqrt(12).
  _, terms = tfill.discriminator_loss(_loss_config(gp=1.0), d, images, images, jax.random.key(0))
  assert float(terms["d/gp"]) == pytest.approx((3 * np.sqrt(12) - 1) ** 2, rel=1e-5)


# --- the forward pass ---

@pytest.fixture(scope="module")
def tiny_params():
  config = tiny_config("tfill")
  return config, jax.device_get(_jit(functools.partial(tfill.init, config))(jax.random.key(0)))["params"]


def _batch(config, n=2, seed=0):
  c = ml_collections.ConfigDict(config.input.to_dict())
  c.read_threads = 1
  iterator = pipeline.create_train_iterator(c, seed=seed, global_batch_size=n)
  return next(iterator)


def test_coarse_composite_keeps_visible_pixels_exactly(tiny_params):
  config, params = tiny_params
  batch = _batch(config)
  out = _jit(lambda g, x, m: tfill.coarse(config, g, x, m, jax.random.key(3)))(params["g"], batch["image"],
                                                                                batch["mask"])
  out = jax.device_get(out)
  hole = batch["mask"][..., 0] > 0.5
  assert hole.any() and (~hole).any()
  np.testing.assert_array_equal(out["composite"][~hole], batch["image"][~hole])
  np.testing.assert_array_equal(out["composite"][hole], out["upsampled"][hole])
  assert out["img_g"].shape == (2, 16, 16, 3) and out["composite"].shape == (2, 32, 32, 3)
  # TFill's mask is 1 = visible: the fixed-size mask is the downsampled complement of the batch's hole mask.
  fixed = np.asarray(tfill.resize_bicubic(jnp.asarray(1 - batch["mask"]), 16)) > 0.9
  np.testing.assert_array_equal(out["fixed_mask"] > 0.5, fixed)
  # E sees m * image: changing the pixels inside the hole changes nothing of the output.
  scribbled = np.where(batch["mask"] > 0.5, 0.7, batch["image"]).astype(np.float32)
  again = jax.device_get(_jit(lambda g, x, m: tfill.coarse(config, g, x, m, jax.random.key(3)))(
      params["g"], scribbled, batch["mask"]))
  np.testing.assert_array_equal(again["img_g"], out["img_g"])


# --- presets and validation ---

def _tiny(**overrides):
  return tiny_config("tfill", **overrides)


@pytest.mark.parametrize("overrides,message", [
    ({"model.embed_dim": 48}, "embed_dim 48 must be ngf * 16"),
    ({"model.fixed_size": 24}, "fixed_size 24 must be a power of 2"),
    ({"model.fixed_size": 64}, "fine_size 32 is below fixed_size 64"),
    ({"batch_size": 6}, "batch must be 1, 2, 3 or a multiple of 4"),
    ({"input.masks.kind": "none"}, "--config.input.masks.kind=random"),
    ({"loss_weights.l1": -1.0}, "each >= 0"),
    ({"lpips.random_init": False, "lpips.weights": "/nowhere/lpips.npz"}, "config.lpips.weights"),
])
def test_bad_settings_are_config_errors(overrides, message):
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
    tfill.validate(_tiny(**overrides))


def test_presets_validate_and_name_what_they_need():
  for preset in ("", "cpu", "tiny"):
    tfill.validate(tfill_configs.get_config(preset))
  refine = tfill_configs.get_config("refine")
  assert refine.family == "tfill_refine" and tuple(refine.init_from.groups) == ("g",)
  with pytest.raises(errors.ConfigError, match="--config.init_from.workdir"):
    tfill_refine.validate(refine)
  refine.init_from.workdir = "runs/tfill"
  tfill_refine.validate(refine)
  refine.init_from.groups = ("d",)
  with pytest.raises(errors.ConfigError, match="needs the coarse run's 'g'"):
    tfill_refine.validate(refine)
  tfill_refine.validate(tfill_refine_configs.get_config("tiny"))
  personal = tfill_configs.get_config("personal")
  personal.init_from.workdir = "runs/tfill"
  assert personal.input.folder.heldout == 0.1
  tfill.validate(personal)  # held-out photos from the training folder
  personal.input.folder.heldout = 0
  with pytest.raises(errors.ConfigError, match="--config.input.folder.heldout .*--config.eval.image_dir"):
    tfill.validate(personal)
  personal.eval.image_dir = "me/heldout"  # or from a folder of their own
  tfill.validate(personal)
  with pytest.raises(errors.ConfigError, match="--config.input.folder.image_dir"):
    pipeline.validate(personal.input)
  assert personal.eval.best_metric == "fid" and personal.init_from.required
  with pytest.raises(ValueError, match="unknown preset 'nope'"):
    tfill_configs.get_config("nope")


# --- masks in the input pipeline ---

def _mask_input(kind, **overrides):
  c = pipeline.default_input_config()
  c.resolution, c.read_threads = 64, 1
  c.synthetic.num_examples = 12
  c.masks.kind = kind
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return c


@pytest.mark.parametrize("kind", ["random", "surgical", "mask"])
def test_masks_are_fixed_per_record_and_seed(kind):
  first = pipeline.create_source(_mask_input(kind))
  again = pipeline.create_source(_mask_input(kind))
  other_seed = pipeline.create_source(_mask_input(kind, **{"masks.seed": 1}))
  masks = [first[i]["mask"] for i in range(6)]
  assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} and m.any() for m in masks)
  for i, m in enumerate(masks):
    np.testing.assert_array_equal(m, again[i]["mask"])
  # The seed draws the hole (TFill's kinds), the template kind ("mask"); a surgical hole is the face's geometry.
  differ = any(not np.array_equal(m, other_seed[i]["mask"]) for i, m in enumerate(masks))
  assert differ == (kind != "surgical")
  if kind != "random":  # A medical mask covers the mouth: synthetic labels 10-12 (mouth, lips) under the hole.
    for i, m in enumerate(masks):
      mouth = np.isin(first[i]["label"], (10, 11, 12))
      assert (m[mouth] > 0).mean() > 0.95


def test_masks_mix_band_and_batch_field():
  source = pipeline.create_source(_mask_input("random", **{"masks.band": (0.1, 0.2)}))
  kinds = {source.kind_of(i) for i in range(40)}
  assert kinds == {"boxes", "strokes"}  # the centre box (25 %) is outside the band
  for i in range(4):
    assert 0.1 <= np.mean(source[i]["mask"] > 0) <= 0.2
  assert {pipeline.create_source(_mask_input("random")).kind_of(i) for i in range(60)} == {
      "center", "boxes", "strokes"}
  iterator = pipeline.create_train_iterator(_mask_input("random"), seed=0, global_batch_size=4)
  batch = next(iterator)
  state = iterator.get_state()
  after = next(iterator)
  iterator.set_state(state)
  np.testing.assert_array_equal(next(iterator)["mask"], after["mask"])  # resumes with the same masks
  assert batch["mask"].shape == (4, 64, 64, 1) and set(np.unique(batch["mask"])) <= {0.0, 1.0}


def test_mask_settings_errors(tmp_path):
  with pytest.raises(errors.ConfigError, match="68 landmarks"):
    pipeline.validate(_mask_input("surgical", source="folder", **{"folder.image_dir": str(tmp_path)}))
  with pytest.raises(errors.ConfigError, match="--config.input.masks.kind to one of"):
    pipeline.validate(_mask_input("scarf"))
  with pytest.raises(errors.ConfigError, match="masks.band"):
    pipeline.validate(_mask_input("random", **{"masks.band": (0.5, 0.2)}))
  with pytest.raises(errors.ConfigError, match="--config.input.masks.mask_dir"):
    pipeline.validate(_mask_input("folder"))
  (tmp_path / "m").mkdir()
  hole = np.zeros((20, 20), np.uint8)
  hole[5:10] = 255
  Image.fromarray(hole).save(tmp_path / "m" / "a.png")
  source = pipeline.create_source(_mask_input("folder", **{"masks.mask_dir": str(tmp_path / "m")}))
  np.testing.assert_array_equal(source[3]["mask"] > 0, np.asarray(Image.fromarray(hole).resize((64, 64), 0)) > 0)


# --- training: the hole error falls ---

def _short_run_config():
  config = tiny_config("tfill")
  config.model.update(ngf=4, embed_dim=64, num_heads=4, dim_conv=32)
  config.batch_size = 8
  config.input.synthetic.num_examples = 64
  config.input.read_threads = 2
  config.loss_weights.lpips = 0.0
  config.optim.g.lr = 1e-3
  return config


@pytest.mark.slow  # 56 s at load 6 on 2 cores
@pytest.mark.optimised  # 40 steps
def test_hole_l1_falls_in_a_short_run():
  config = _short_run_config()
  state = _jit(functools.partial(families.init_state, config))(jax.random.key(0))
  step = compile_lib.jit(functools.partial(tfill.train_step, config), donate_argnums=0)
  iterator = pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size)
  hole_l1 = []
  for i in range(40):
    state, metrics = step(state, next(iterator), jax.random.key(i))
    hole_l1.append(float(metrics["g/hole_l1"]))
  assert np.all(np.isfinite(hole_l1))
  assert np.mean(hole_l1[-5:]) < 0.7 * np.mean(hole_l1[:5]), hole_l1


# The refine stage's frozen coarse group (no optimizer, no movement) and its trained g_ref / d_ref are checked by
# the contract case of tfill_refine at the end of this file (every optimizer-less group must not move).


# --- inpaint at each image's own size ---

def test_inpaint_composites_at_each_images_own_size(tiny_params, tmp_path):
  config, params = tiny_params
  state = _jit(functools.partial(families.init_state, config))(jax.random.key(0)).replace(params=params)
  rundir.save_state(tmp_path / "run", config, jax.device_get(state), step=0)
  rng = np.random.default_rng(0)
  (tmp_path / "faces").mkdir()
  (tmp_path / "masks").mkdir()
  sizes = {"a": (40, 48), "b": (32, 32)}
  for name, (h, w) in sizes.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / "faces" / f"{name}.png")
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4:h // 2, w // 4:3 * w // 4] = 255
    Image.fromarray(hole).save(tmp_path / "masks" / f"{name}.png")
  assert inpaint.main(["--workdir", str(tmp_path / "run"), "--images", str(tmp_path / "faces"), "--masks",
                       str(tmp_path / "masks"), "--out", str(tmp_path / "out"), "--save_raw", "--batch_size", "2"]) == 0
  generated = jax.device_get(_jit(functools.partial(tfill.generate, config))(state, {
      "image": np.stack([np.asarray(Image.open(tmp_path / "faces" / f"{n}.png").resize((32, 32), Image.BICUBIC),
                                    np.float32) / 127.5 - 1 for n in sizes]),
      "mask": np.stack([(np.asarray(Image.open(tmp_path / "masks" / f"{n}.png").resize((32, 32), Image.NEAREST))
                         >= 128).astype(np.float32)[..., None] for n in sizes])}, jax.random.fold_in(
                             jax.random.key(0), 0))["inpainted"])
  for k, (name, (h, w)) in enumerate(sizes.items()):
    out = np.load(tmp_path / "out" / f"{name}.npy")
    assert out.shape == (h, w, 3) and np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).shape == (h, w, 3)
    face = np.asarray(Image.open(tmp_path / "faces" / f"{name}.png"), np.float32) / 127.5 - 1
    hole = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png")) >= 128
    np.testing.assert_array_equal(out[~hole], face[~hole])  # the input's own pixels, exactly
    want = np.clip(inpaint.resize_float(generated[k], (h, w)), -1, 1)
    np.testing.assert_allclose(out[hole], want[hole], atol=1e-5)


def test_attention_aware_gradients_stay_finite_under_jit():
  """G_Ref's AttnAware with keys exactly visible (m = 1): XLA folded (1 - m) + 1e-8 into 1 - m = 0 (NaN gradients
  in the refine step) until an optimization barrier kept the order."""
  from facegen_jax.nets import tfill as nets  # pylint: disable=g-import-not-at-top
  x, pre = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)), jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
  m = jnp.broadcast_to((jnp.arange(16).reshape(1, 4, 4, 1) < 6).astype(jnp.float32), (2, 4, 4, 1))
  module = nets.AttnAware()
  params = module.init(jax.random.key(2), x, pre, m)["params"]
  grads = jax.jit(jax.grad(lambda p, x, pre, m: jnp.sum(module.apply({"params": p}, x, pre, m) ** 2)))(
      params, x, pre, m)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --- the family contract (tests/contract.py) ---

CONTRACT_FAMILIES = ("tfill", "tfill_refine")


@pytest.mark.parametrize("name", CONTRACT_FAMILIES)
def test_keeps_the_family_contract(name, tmp_path):
  contract.check(tiny_config(name), tmp_path)
