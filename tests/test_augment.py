"""facegen_jax.augment: ADA's pipeline (identity at p = 0, the blits, the filter against a numpy upfirdn2d, the
p controller), DiffAugment, gradients, shapes and dtypes. Tiny images; the file runs in well under 30 s."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import augment
from facegen_jax import compile as compile_lib
from facegen_jax import errors
from tests.conftest import REPO, device_env

ALL_OPS = augment.GEOMETRIC_OPS + augment.COLOR_OPS
# Tiny programs run a few times: XLA:CPU's quick compilation halves this file's time (same numbers).
jit = functools.partial(compile_lib.jit, run_once=True)


def _config(kind="ada", **overrides):
  c = augment.default_config()
  c.kind = kind
  c.update(overrides)
  return c


def _only(*ops, **overrides):
  """ADA with every op off but `ops`."""
  return _config(**{op: float(op in ops) for op in ALL_OPS}, **overrides)


def _smooth(shape, seed=0):
  """(B, H, W, C) images of a few low-frequency waves in [-1, 1], so resampling errors are small."""
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  out = np.zeros(shape)
  for _ in range(4):
    fy, fx = rng.uniform(-0.25, 0.25, 2)
    out += rng.uniform(-0.25, 0.25, (b, 1, 1, c)) * np.cos(fy * y + fx * x + rng.uniform(0, 6.3))[None, ..., None]
  return jnp.asarray(out, jnp.float32)


def _extra(p):
  return {"aug_p": jnp.float32(p)}


@functools.lru_cache(maxsize=None)
def _jitted(config_json):
  """One compiled augment per config (as JSON, which the cache can hash) and input shape."""
  c = augment.default_config()
  c.update(json.loads(config_json))
  return jit(lambda images, rng, p: augment.augment(c, images, rng, {"aug_p": p}))


def _run(c, images, p, seed=0):
  return _jitted(c.to_json())(images, jax.random.PRNGKey(seed), jnp.float32(p))


# ---------------------------------------------------------------------------------------------------------
# Identity and plumbing


SHAPE = (6, 12, 12, 3)  # Most tests share this shape, so they share compiled programs.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_p_zero_returns_the_images_bit_identical_and_p_one_keeps_the_dtype(dtype):
  images = (_smooth(SHAPE) * 0.9).astype(dtype)
  out = _run(_config(), images, 0.0)
  assert out.dtype == dtype and out.shape == images.shape
  np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), np.asarray(images.astype(jnp.float32)))
  out = _run(_config(), images, 1.0)
  assert out.dtype == dtype and np.isfinite(np.asarray(out.astype(jnp.float32))).all()
  assert not np.allclose(np.asarray(out.astype(jnp.float32)), np.asarray(images.astype(jnp.float32)))


def test_kind_none_returns_the_input():
  images = _smooth((2, 8, 8, 3))
  assert augment.augment(_config("none"), images, jax.random.PRNGKey(0), {}) is images
  assert augment.init_extra(_config("none")) == {} and augment.init_extra(_config("diffaugment")) == {}
  assert augment.update(_config("none"), {}, jnp.ones(2), 2) == ({}, {})


def test_diffaugment_keeps_bfloat16():
  out = _run(_config("diffaugment"), _smooth(SHAPE).astype(jnp.bfloat16), 0.0)
  assert out.dtype == jnp.bfloat16 and out.shape == SHAPE


def test_non_square_grey_images_batch_of_one_and_the_originals_resampling_of_every_image():
  shape = (1, 10, 14, 1)
  images = jax.random.uniform(jax.random.PRNGKey(0), shape, minval=-1, maxval=1)
  c = _config(resample_unaugmented=True)
  out = _run(c, images, 0.0)
  assert out.shape == shape and not np.array_equal(np.asarray(out), np.asarray(images))
  # The identity resampling of an orthogonal wavelet's 2x up and down is exact up to rounding.
  np.testing.assert_allclose(out, images, atol=1e-5)
  out = _run(c, images, 1.0)
  assert out.shape == shape and np.isfinite(np.asarray(out)).all() and not np.allclose(out, images)


def test_diffaugment_non_square_images():
  shape = (3, 9, 13, 3)
  out = _run(_config("diffaugment"), _smooth(shape), 1.0)
  assert out.shape == shape and np.isfinite(np.asarray(out)).all()


def test_first_and_second_order_gradients_pass_to_the_images():
  images = _smooth((2, 12, 10, 3))
  weights = jax.random.normal(jax.random.PRNGKey(3), images.shape)
  c, diff = _config(), _config("diffaugment")

  def loss(x, c):
    return jnp.sum(jnp.sin(augment.augment(c, x, jax.random.PRNGKey(1), _extra(1.0))) * weights)

  def r1_penalty(x):  # A gradient penalty through the augmentation, as StyleGAN2-ADA's R1 on augmented reals.
    return jnp.sum(jax.grad(loss)(x, c) ** 2)

  grads = jit(lambda x: (jax.grad(loss)(x, c), jax.grad(r1_penalty)(x), jax.grad(loss)(x, diff)))(images)
  for g in grads:
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).max() > 0.1


def test_same_key_same_output_each_image_its_own_transform_whatever_the_others():
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]), SHAPE[0], axis=0)
  c = _config()
  a, b = _run(c, images, 1.0, seed=5), _run(c, images, 1.0, seed=5)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(_run(c, images, 1.0, seed=6), a)
  diffs = [np.abs(np.asarray(a[i] - a[j])).max() for i in range(6) for j in range(i + 1, 6)]
  assert min(diffs) > 1e-3  # Six copies of one image, six different results.
  # Image 0's result depends on image 0 and its key only, whatever the other images are.
  others = images.at[1:].set(_smooth((5,) + SHAPE[1:], seed=3))
  np.testing.assert_allclose(_run(c, others, 1.0, seed=5)[0], a[0], atol=1e-6)
  alone = _run(c, images, 0.0, seed=5)  # p = 0: no image augmented, the cond skips the resampling.
  np.testing.assert_array_equal(np.asarray(alone), np.asarray(images))


# ---------------------------------------------------------------------------------------------------------
# ADA's blits and filter


def test_xflip_gives_the_image_or_its_mirror():
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]), SHAPE[0], axis=0)
  out = np.asarray(_run(_only("xflip"), images, 1.0, seed=1))
  image = np.asarray(images[0])
  kinds = []
  for o in out:
    if np.array_equal(o, image):
      kinds.append("same")
    else:
      # Mirrored through the original's resampling (its half-pixel shift around the transform with an asymmetric
      # filter): close to, not exactly, the mirror image, as in stylegan2-ada-pytorch.
      np.testing.assert_allclose(o, image[:, ::-1], atol=0.03)
      kinds.append("mirror")
  assert set(kinds) == {"same", "mirror"}


def test_rotate90_gives_one_of_the_four_rotations():
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]), SHAPE[0], axis=0)
  out = np.asarray(_run(_only("rotate90"), images, 1.0))
  image = np.asarray(images[0])
  found = set()
  for o in out:
    errs = [np.abs(o - np.rot90(image, k)).max() for k in range(4)]
    k = int(np.argmin(errs))
    assert errs[k] < 0.03 and sorted(errs)[1] > 0.1, errs
    found.add(k)
  assert len(found) >= 3


def test_integer_translation_moves_whole_pixels_with_reflect_padding():
  _, h, w, _ = SHAPE
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]), SHAPE[0], axis=0)
  out = np.asarray(_run(_only("xint"), images, 1.0))
  padded = np.pad(np.asarray(images[0]), ((2, 2), (2, 2), (0, 0)), mode="reflect")
  shifts = set()
  for o in out:
    # xint_max 0.125 of 12 px, rounded: up to 2 px each way.
    errs = {(dy, dx): np.abs(o - padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]).max()
            for dy in range(-2, 3) for dx in range(-2, 3)}
    best = min(errs, key=errs.get)
    assert errs[best] < 1e-5, errs[best]
    shifts.add(best)
  assert len(shifts) > 1


def _upfirdn1d(x, f, *, up=1, down=1, pad=(0, 0), flip_filter=False, gain=1.0):
  """upfirdn2d's documented steps along the last axis, in numpy: insert up-1 zeros after each sample, pad (crop
  if negative), convolve (correlate with flip_filter) keeping full-overlap outputs only, keep every down-th."""
  z = np.zeros(x.shape[:-1] + (x.shape[-1] * up,))
  z[..., ::up] = x
  z = np.pad(z, [(0, 0)] * (z.ndim - 1) + [(max(pad[0], 0), max(pad[1], 0))])
  z = z[..., max(-pad[0], 0):z.shape[-1] - max(-pad[1], 0)]
  f = np.asarray(f, np.float64) * gain
  f = f if flip_filter else f[::-1]
  n = z.shape[-1] - len(f) + 1
  return sum(f[t] * z[..., t:t + n] for t in range(len(f)))[..., ::down]


def _separable(fn, image_hwc):
  """A 1-D op along W then H of an (H, W, C) image."""
  x = np.moveaxis(image_hwc, 2, 0)
  x = fn(x)
  x = np.swapaxes(fn(np.swapaxes(x, 1, 2)), 1, 2)
  return np.moveaxis(x, 0, 2)


FILTER = augment.SYM6 / augment.SYM6.sum()
# upsample2d(x, f, up=2): padding ((fw + 1) // 2, (fw - 2) // 2), gain 2 per axis; downsample2d(x, f, down=2,
# padding=-6, flip_filter=True): padding (-6 + (fw - 1) // 2, -6 + (fw - 2) // 2).
UP = functools.partial(_upfirdn1d, f=FILTER, up=2, pad=(6, 5), gain=2.0)
DOWN = functools.partial(_upfirdn1d, f=FILTER, down=2, pad=(-1, -1), flip_filter=True)


def test_up_and_down_filters_match_a_numpy_upfirdn2d():
  x = np.random.default_rng(0).standard_normal((7, 9, 2))
  y = np.random.default_rng(1).standard_normal((2 * 5 + 12, 2 * 4 + 12, 2))
  up, down = jit(lambda x, y: (augment._upsample2x(x), augment._downsample2x(y)))(
      jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(up, _separable(UP, x), atol=2e-6)
  np.testing.assert_allclose(down, _separable(DOWN, y), atol=2e-6)


def test_resampling_at_the_identity_is_only_the_filter():
  h, w = 12, 16
  x = np.random.default_rng(2).uniform(-1, 1, (h, w, 3))
  out = np.asarray(jit(augment._resample)(jnp.asarray(x, jnp.float32), jnp.eye(3)))
  # Reference: reflect pad by size - 1, 2x up, the output grid is then a centred crop of whole pixels, 2x down.
  up = _separable(UP, np.pad(x, ((h - 1, h - 1), (w - 1, w - 1), (0, 0)), mode="reflect"))
  oy, ox = (up.shape[0] - 2 * (h + 6)) // 2, (up.shape[1] - 2 * (w + 6)) // 2
  expected = _separable(DOWN, up[oy:oy + 2 * (h + 6), ox:ox + 2 * (w + 6)])
  np.testing.assert_allclose(out, expected, atol=2e-6)
  # sym6 is orthogonal: up then down is the identity, so even white noise comes back within rounding.
  np.testing.assert_allclose(out, x, atol=2e-6)


def test_filter_adjoints_are_the_transposes():
  rng = np.random.default_rng(3)
  cases = [(forward, adjoint, shape, axis)
           for forward, adjoint, shape in [(augment._up2, augment._up2_adjoint, (13, 15, 2)),
                                           (augment._down2, augment._down2_adjoint, (26, 30, 2))]
           for axis in (0, 1)]
  xs = [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _, _, shape, _ in cases]
  ds = [jnp.asarray(rng.standard_normal(jax.eval_shape(lambda v, f=f, a=a: f(v, a), x).shape), jnp.float32)
        for (f, _, _, a), x in zip(cases, xs)]

  @jit
  def both(xs, ds):
    return [(jax.vjp(lambda v, f=f, a=a: f(v, a), x)[1](d)[0], adjoint(d, a))
            for (f, adjoint, _, a), x, d in zip(cases, xs, ds)]

  for by_autodiff, written in both(xs, ds):
    np.testing.assert_allclose(written, by_autodiff, atol=1e-5)


def test_hue_keeps_the_luma_axis():
  images = _smooth(SHAPE)
  out = np.asarray(_run(_only("hue"), images, 1.0))
  # A hue rotation turns colours around the grey axis: the per-pixel channel mean stays.
  np.testing.assert_allclose(out.mean(-1), np.asarray(images).mean(-1), atol=1e-5)
  assert not np.allclose(out, images)


# ---------------------------------------------------------------------------------------------------------
# The p controller


def _steps(c, signs_per_step, batch_size):
  update = jit(lambda extra, signs: augment.update(c, extra, signs, batch_size))
  extra, history = augment.init_extra(c), []
  for signs in signs_per_step:
    extra, metrics = update(extra, jnp.asarray(signs, jnp.float32))
    history.append((float(metrics["aug/p"]), float(metrics["aug/rt"])))
  return extra, history


def test_p_rises_while_d_is_confident_and_falls_when_not_every_interval_steps():
  c = _config(interval=4, kimg=0.1)  # step = 2 * 4 / 100 = 0.08
  step = np.float32(2 * 4 / 100)
  extra, history = _steps(c, [[1, 1]] * 8 + [[1, -1]] * 4 + [[-1, -1]] * 12, batch_size=2)
  p = [h[0] for h in history]
  assert p[:3] == [0.0] * 3 and p[3] == step and p[4:7] == [step] * 3  # Moves only on every 4th step.
  assert p[7] == np.float32(step + step)
  assert p[11] == np.float32(np.float32(step + step) - step)  # r_t = 0 < 0.6: down.
  assert history[11][1] == 0.0 and history[7][1] == 1.0 and history[12][1] == 0.0  # r_t kept between.
  assert p[15] == 0.0 and p[23] == 0.0  # Clamped at 0.
  assert int(extra["aug_steps"]) == 0 and float(extra["aug_count"]) == 0


def test_p_max_clamps_and_initial_p_starts():
  c = _config(interval=1, kimg=0.001, initial_p=0.25, p_max=0.5)
  assert float(augment.init_extra(c)["aug_p"]) == 0.25
  _, history = _steps(c, [[1.0] * 4] * 3, batch_size=4)
  assert [h[0] for h in history] == [0.5, 0.5, 0.5]


def test_update_keeps_other_extra_entries():
  c = _config()
  extra = {**augment.init_extra(c), "other": jnp.ones(3)}
  new, _ = augment.update(c, extra, jnp.ones(2), 2)
  assert set(new) == set(extra) and new["other"] is extra["other"]


# ---------------------------------------------------------------------------------------------------------
# DiffAugment


def test_diffaugment_translation_shifts_whole_pixels_with_zeros():
  _, h, w, _ = SHAPE
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]) + 2.0, SHAPE[0], axis=0)  # No zeros of its own.
  out = np.asarray(_run(_config("diffaugment", policy="translation"), images, 0.0))
  padded = np.pad(np.asarray(images[0]), ((2, 2), (2, 2), (0, 0)))  # int(12 / 8 + 0.5): up to 2 px.
  shifts = set()
  for o in out:
    matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(o, padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w])]
    assert len(matches) == 1
    shifts.add(matches[0])
  assert len(shifts) > 1


def test_diffaugment_cutout_zeros_a_half_size_square():
  images = jnp.repeat(_smooth((1,) + SHAPE[1:]) + 2.0, SHAPE[0], axis=0)
  out = np.asarray(_run(_config("diffaugment", policy="cutout"), images, 0.0))
  for o in out:
    zero = np.all(o == 0, axis=-1)
    rows, cols = np.nonzero(zero)
    assert 0 < zero.sum() <= 36 and zero.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # One rectangle.
    np.testing.assert_array_equal(o[~zero], np.asarray(images[0])[~zero])


def test_diffaugment_color_ranges():
  images = _smooth(SHAPE)
  out = np.asarray(_run(_config("diffaugment", policy="color"), images, 0.0))
  assert not np.allclose(out, images)
  # Brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]: the image mean moves by the brightness only.
  shift = out.mean(axis=(1, 2, 3)) - np.asarray(images).mean(axis=(1, 2, 3))
  assert np.abs(shift).max() <= 0.5 + 1e-5 and np.ptp(shift) > 0.1


# ---------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("overrides, message", [
    (dict(kind="adaa"), "config.augment.kind"),
    (dict(kind="ada", target=1.5), "target"),
    (dict(kind="ada", interval=0), "interval"),
    (dict(kind="ada", kimg=0.0), "kimg"),
    (dict(kind="ada", xflip=-1.0), "xflip"),
    (dict(kind="ada", initial_p=0.5, p_max=0.2), "p_max"),
    (dict(kind="ada", color=False, **{op: 0.0 for op in augment.GEOMETRIC_OPS}), "kind=none"),
    (dict(kind="diffaugment", policy="color,flip"), "policy"),
])
def test_validate_names_the_key(overrides, message):
  c = augment.default_config()
  c.update(overrides)
  with pytest.raises(errors.ConfigError, match=message):
    augment.validate(c)


def test_validate_accepts_the_defaults_and_rejects_unknown_keys():
  for kind in augment.KINDS:
    augment.validate(_config(kind))
  with pytest.raises(errors.ConfigError, match="unknown keys"):
    augment.validate(dict(kind="ada", tagret=0.6))


# ---------------------------------------------------------------------------------------------------------
# Against torch's grid_sample


@pytest.mark.slow
def test_resampling_matches_the_originals_steps_with_torch_grid_sample():
  """The original's execution for a batch (its batch-wide margin, reflect pad, upsample2d, affine_grid and
  grid_sample in normalised coordinates, downsample2d), rebuilt from torch and the numpy upfirdn2d above, against
  ours with its fixed padding; on G_inv drawn by our sampler at p = 1."""
  torch = pytest.importorskip("torch")
  b, h, w = 4, 12, 16
  x = np.asarray(_smooth((b, h, w, 3), seed=4), np.float64)
  c = augment._resolved(_only(*augment.GEOMETRIC_OPS))
  draws = jax.random.uniform(jax.random.PRNGKey(7), (b, augment._GEOMETRY_DRAWS))
  g_inv = np.asarray(jax.vmap(lambda u: augment._geometry_matrix(c, u, jnp.float32(1.0), h, w))(draws), np.float64)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  corners = np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T
  reach = (g_inv @ corners)[:, :2, :].transpose(1, 0, 2).reshape(2, -1)
  margin = np.concatenate([-reach, reach]).max(axis=1) + np.array([6 - cx, 6 - cy] * 2)
  mx0, my0, mx1, my1 = np.ceil(np.clip(margin, 0, [w - 1, h - 1] * 2)).astype(int)
  padded = np.pad(x, ((0, 0), (my0, my1), (mx0, mx1), (0, 0)), mode="reflect")
  up = np.stack([_separable(UP, image) for image in padded])

  def t2(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])

  def s2(sx, sy):
    return np.diag([sx, sy, 1.0])

  out_h, out_w = 2 * (h + 6), 2 * (w + 6)
  g = t2((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv
  g = s2(2, 2) @ g @ s2(0.5, 0.5)
  g = t2(-0.5, -0.5) @ g @ t2(0.5, 0.5)
  g = s2(2 / up.shape[2], 2 / up.shape[1]) @ g @ s2(out_w / 2, out_h / 2)
  grid = torch.nn.functional.affine_grid(torch.from_numpy(g[:, :2, :]), [b, 3, out_h, out_w], align_corners=False)
  sampled = torch.nn.functional.grid_sample(torch.from_numpy(up).permute(0, 3, 1, 2), grid, mode="bilinear",
                                            padding_mode="zeros", align_corners=False)
  expected = np.stack([_separable(DOWN, image) for image in sampled.permute(0, 2, 3, 1).numpy()])
  ours = np.asarray(jax.vmap(augment._resample)(jnp.asarray(x, jnp.float32), jnp.asarray(g_inv, jnp.float32)))
  assert np.abs(ours - x).max() > 0.1
  np.testing.assert_allclose(ours, expected, atol=2e-5)


_SHARDED_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from facegen_jax import augment
assert jax.device_count() == 4, jax.devices()
split = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
x = jax.random.uniform(jax.random.PRNGKey(0), (8, 12, 10, 3), minval=-1, maxval=1)
errors = {}
for kind in ("ada", "diffaugment"):
  c = augment.default_config()
  c.kind = kind
  aug = lambda x: augment.augment(c, x, jax.random.PRNGKey(3), {"aug_p": jnp.float32(0.5)})
  images_and_grad = lambda x: (aug(x), jax.grad(lambda x: jnp.sum(aug(x) ** 2))(x))
  one = jax.jit(images_and_grad)(x)
  four = jax.jit(images_and_grad, out_shardings=(split, split))(jax.device_put(x, split))
  errors[kind] = [float(jnp.abs(a - b).max()) for a, b in zip(one, four)]
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_a_batch_split_over_devices_gets_the_same_augmentations():
  """Per-image keys: 4 simulated devices give the images and gradients of 1 (p = 0.5, some images resampled)."""
  env = device_env(4, PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])
  for kind, (image_error, grad_error) in errors.items():
    assert image_error <= 1e-6 and grad_error <= 1e-5, (kind, errors)
