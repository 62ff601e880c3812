"""Augmentation of every image a discriminator sees: ADA (Karras et al. 2020) or DiffAugment (Zhao et al. 2020).

  config.augment = augment.default_config()   # kind "none" | "ada" | "diffaugment"

A family calls, inside its jitted step,

  x = augment.augment(config.augment, images, rng, state.extra)        # on reals and fakes, D and G steps
  extra, metrics = augment.update(config.augment, state.extra, jnp.sign(real_logits), batch_size)

and keeps `init_extra(config.augment)` in the train state's `extra` (checkpointed, so p resumes exactly).

ADA is stylegan2-ada-pytorch's `AugmentPipe` ('bg' with `color=False`, 'bgc' with `color=True`): x-flip,
90-degree rotations and integer translation, isotropic scaling, pre-rotation, anisotropic scaling, post-rotation
and fractional translation composed into one inverse homogeneous matrix per image, executed as reflect padding,
2x upsampling with the sym6 wavelet low-pass, bilinear sampling and 2x downsampling; then brightness, contrast,
luma flip, hue rotation and saturation as one 4x4 colour matrix. Each op happens with probability
`multiplier * p`, and p follows the sign of D's outputs on reals (`update`). Not implemented: the original's
image-space filtering and corruptions (its 'f', 'n' and 'c': imgfilter, noise, cutout).

Differences from the original:
- An image that draws no geometric op (or no colour op) is returned untouched, so p = 0 is the identity; the
  original resamples every image through the filter once the pipe exists, even at p = 0.
  `resample_unaugmented=True` restores that.
- The original pads the batch by the largest margin its transforms need, at most the image size minus one;
  shapes must be static here, so every image is reflect-padded by that maximum. The results are the same (a
  larger reflect padding only adds pixels no sample reaches), at the cost of upsampling a 3x larger image.
- Randomness is per image (one key each), so a result does not depend on the batch or its sharding.

Gradients w.r.t. the images are reverse mode (jax.grad, jax.vjp, also of a gradient penalty); the filters'
custom VJPs leave forward mode (jax.jvp) undefined.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np

from facegen_jax import errors

KINDS = ("none", "ada", "diffaugment")
GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
DIFFAUGMENT_OPS = ("color", "translation", "cutout")
_NONNEGATIVE = (GEOMETRIC_OPS + COLOR_OPS + ("xint_max", "scale_std", "rotate_max", "aniso_std", "xfrac_std",
                                              "brightness_std", "contrast_std", "hue_max", "saturation_std"))

# Daubechies' symlet-6 decomposition low-pass (PyWavelets' `sym6.dec_lo`), the original's geometric filter.
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148])
# Extra border the resampled grid keeps on each side, in input pixels (a quarter of the filter's taps).
_FILTER_PAD = len(SYM6) // 4


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "none"
  # ada: p moves every `interval` steps toward E[sign(D(real))] = `target`, by interval * batch / (kimg * 1000)
  # (it can go from 0 to 1 in `kimg` thousand images); clamped at 0 and, if set, at `p_max`.
  c.target = 0.6
  c.interval = 4
  c.kimg = 500.0
  c.initial_p = 0.0
  c.p_max = config_dict.placeholder(float)
  # Per-op probability multipliers and parameter ranges, as the original AugmentPipe's arguments.
  c.xflip, c.rotate90, c.xint, c.xint_max = 1.0, 1.0, 1.0, 0.125
  c.scale, c.rotate, c.aniso, c.xfrac = 1.0, 1.0, 1.0, 1.0
  c.scale_std, c.rotate_max, c.aniso_std, c.xfrac_std = 0.2, 1.0, 0.2, 0.125
  c.color = True  # False: geometry only (the original's 'bg'; Face2webtoon's choice); True: 'bgc'.
  c.brightness, c.contrast, c.lumaflip, c.hue, c.saturation = 1.0, 1.0, 1.0, 1.0, 1.0
  c.brightness_std, c.contrast_std, c.hue_max, c.saturation_std = 0.2, 0.5, 1.0, 1.0
  c.resample_unaugmented = False  # True: the original's filtering of images no op was drawn for.
  # diffaugment: comma-separated ops of DiffAugment_pytorch.py, in the order given.
  c.policy = "color,translation,cutout"
  c.translation_ratio = 0.125
  c.cutout_ratio = 0.5
  return c


def _resolved(aug_config) -> ml_collections.ConfigDict:
  """aug_config over the defaults (None or a config without some keys takes the defaults)."""
  merged = default_config()
  if aug_config is not None:
    merged.update(aug_config.to_dict() if hasattr(aug_config, "to_dict") else dict(aug_config))
  return merged


def _policy(c) -> list[str]:
  return [name.strip() for name in c.policy.split(",") if name.strip()]


def validate(aug_config) -> None:
  """ConfigError naming the key and the fix for any setting `augment` and `update` cannot run with."""
  known = set(default_config().keys())
  given = aug_config.to_dict() if hasattr(aug_config, "to_dict") else dict(aug_config or {})
  unknown = sorted(set(given) - known)
  if unknown:
    raise errors.ConfigError(f"config.augment has unknown keys {unknown}: use {sorted(known)}")
  c = _resolved(aug_config)
  if c.kind not in KINDS:
    raise errors.ConfigError(f"config.augment.kind={c.kind!r}: set --config.augment.kind to one of {KINDS}")
  if c.kind == "ada":
    if not -1.0 < c.target < 1.0:
      raise errors.ConfigError(f"config.augment.target={c.target} is a mean sign: set it inside (-1, 1), "
                               f"e.g. --config.augment.target=0.6")
    if not isinstance(c.interval, int) or c.interval < 1:
      raise errors.ConfigError(f"config.augment.interval={c.interval!r}: set a positive number of steps")
    if not c.kimg > 0:
      raise errors.ConfigError(f"config.augment.kimg={c.kimg}: set a positive ramp length in thousands of images")
    for key in _NONNEGATIVE + ("initial_p",):
      if not c[key] >= 0:
        raise errors.ConfigError(f"config.augment.{key}={c[key]} must be >= 0")
    if c.p_max is not None and c.p_max < c.initial_p:
      raise errors.ConfigError(f"config.augment.p_max={c.p_max} is below initial_p={c.initial_p}: raise "
                               f"--config.augment.p_max or unset it")
    if not any(c[op] > 0 for op in GEOMETRIC_OPS + (COLOR_OPS if c.color else ())):
      raise errors.ConfigError("config.augment.kind='ada' with every op multiplier at 0 augments nothing: set "
                               "--config.augment.kind=none, or a multiplier (e.g. --config.augment.xflip=1)")
  if c.kind == "diffaugment":
    policy = _policy(c)
    bad = [name for name in policy if name not in DIFFAUGMENT_OPS]
    if bad or not policy:
      raise errors.ConfigError(f"config.augment.policy={c.policy!r}: use comma-separated ops from "
                               f"{DIFFAUGMENT_OPS}, e.g. --config.augment.policy=color,translation,cutout")
    for key in ("translation_ratio", "cutout_ratio"):
      if not 0 <= c[key] <= 1:
        raise errors.ConfigError(f"config.augment.{key}={c[key]}: set it within [0, 1]")


def init_extra(aug_config) -> dict[str, jax.Array]:
  """The arrays `update` owns in the train state's `extra`: p, the last r_t and the signs since the last
  adjustment; {} for kinds without state."""
  c = _resolved(aug_config)
  if c.kind != "ada":
    return {}
  return {"aug_p": jnp.asarray(c.initial_p, jnp.float32), "aug_rt": jnp.zeros((), jnp.float32),
          "aug_signs": jnp.zeros((), jnp.float32), "aug_count": jnp.zeros((), jnp.float32),
          "aug_steps": jnp.zeros((), jnp.int32)}


def update(aug_config, extra: dict, real_signs: jax.Array, batch_size: int) -> tuple[dict, dict]:
  """Adds this step's signs of D on reals (one per image) and, every `interval` steps, moves p by
  sign(r_t - target) * batch_size * interval / (kimg * 1000) with r_t their mean (training_loop.py's ADA
  heuristic). `real_signs` has one sign per image, (B,); any other shape is averaged over all its elements.
  Returns (extra, {"aug/p", "aug/rt"}), r_t being the last adjustment's; (extra, {}) for kinds without state."""
  c = _resolved(aug_config)
  if c.kind != "ada":
    return extra, {}
  signs = extra["aug_signs"] + jnp.sum(real_signs.astype(jnp.float32))
  count = extra["aug_count"] + real_signs.size
  steps = extra["aug_steps"] + 1
  adjust = steps >= c.interval
  rt = signs / jnp.maximum(count, 1.0)
  step_size = batch_size * c.interval / (c.kimg * 1000)
  p = jnp.maximum(extra["aug_p"] + jnp.sign(rt - c.target) * jnp.float32(step_size), 0.0)
  if c.p_max is not None:
    p = jnp.minimum(p, c.p_max)
  zero = jnp.zeros((), jnp.float32)
  new = {"aug_p": jnp.where(adjust, p, extra["aug_p"]), "aug_rt": jnp.where(adjust, rt, extra["aug_rt"]),
         "aug_signs": jnp.where(adjust, zero, signs), "aug_count": jnp.where(adjust, zero, count),
         "aug_steps": jnp.where(adjust, jnp.zeros_like(steps), steps)}
  return {**extra, **new}, {"aug/p": new["aug_p"], "aug/rt": new["aug_rt"]}


def augment(aug_config, images: jax.Array, rng: jax.Array, extra: dict | None = None) -> jax.Array:
  """images (B, H, W, C) in [-1, 1], augmented per image with its own key from `rng`; same shape and dtype.
  Differentiable w.r.t. images. ADA reads p from extra["aug_p"]."""
  c = _resolved(aug_config)
  if c.kind == "none":
    return images
  dtype = jnp.promote_types(images.dtype, jnp.float32)
  keys = jax.random.split(rng, images.shape[0])
  if c.kind == "diffaugment":
    out = jax.vmap(functools.partial(_diffaugment_one, c=c))(images.astype(dtype), keys)
  else:
    if not extra or "aug_p" not in extra:
      raise ValueError("ADA reads p from extra['aug_p']: keep augment.init_extra(config.augment) in the train "
                       "state's extra and pass it to augment")
    out = _ada(c, images.astype(dtype), keys, extra["aug_p"])
  return out.astype(images.dtype)


# ---------------------------------------------------------------------------------------------------------
# ADA


def _ada(c, images, keys, p):
  _, height, width, channels = images.shape
  # Every number an image draws, in one call: each random call is a threefry hash that takes XLA:CPU 0.3-0.7 s
  # to compile on 2 cores.
  draws = jax.vmap(lambda k: jax.random.uniform(k, (_GEOMETRY_DRAWS + _COLOR_DRAWS,)))(keys)
  p = jnp.asarray(p, jnp.float32)
  if any(c[op] > 0 for op in GEOMETRIC_OPS):
    g_inv = jax.vmap(lambda u: _geometry_matrix(c, u, p, height, width))(draws[:, :_GEOMETRY_DRAWS])
    applied = jnp.any(g_inv != jnp.eye(3), axis=(1, 2)) | c.resample_unaugmented

    def resample_batch(x):
      return jnp.where(applied[:, None, None, None], jax.vmap(_resample)(x, g_inv.astype(x.dtype)), x)

    # The whole resampling is skipped when no image needs it (most steps while p is small).
    images = lax.cond(jnp.any(applied), resample_batch, lambda x: x, images)
  if c.color and any(c[op] > 0 for op in COLOR_OPS):
    color = jax.vmap(lambda u: _color_matrix(c, u, p, channels))(draws[:, _GEOMETRY_DRAWS:])
    applied = jnp.any(color != jnp.eye(4), axis=(1, 2))
    images = jnp.where(applied[:, None, None, None], jax.vmap(_apply_color)(images, color.astype(images.dtype)),
                       images)
  return images


def _matrix(rows) -> jax.Array:
  return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in row]) for row in rows])


def _translate2d(tx, ty):
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale2d(sx, sy):
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate2d(theta):
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])


def _mm(*matrices):
  """Product of small matrices as broadcast sums: float32 on TPU too, where a dot rounds to bfloat16."""
  return functools.reduce(lambda a, b: jnp.sum(a[:, :, None] * b[None, :, :], axis=1), matrices)


_GEOMETRY_DRAWS, _COLOR_DRAWS = 18, 10


def _normal(u):
  """Standard normal values from uniform ones in [0, 1), as jax.random.normal makes them."""
  return np.sqrt(2) * lax.erf_inv(jnp.clip(2 * u - 1, np.nextafter(np.float32(-1), np.float32(0)), 1))


def _geometry_matrix(c, draws, p, height, width) -> jax.Array:
  """The inverse transform (output pixel -> input pixel, centred pixel coordinates) of one image from its
  uniform draws: the original's ops in its order, each where(drawn, op, identity) so that an image with no op
  gets exactly the identity. Each op has its own draws, so turning one off leaves the others' unchanged."""
  u, z = draws[:14], _normal(draws[14:18])
  eye = jnp.eye(3)
  g = eye

  def chain(g, gate, prob, inverse_op):
    return _mm(g, jnp.where(u[gate] < prob, inverse_op, eye))

  if c.xflip > 0:
    g = chain(g, 1, c.xflip * p, _scale2d(1 - 2 * jnp.floor(u[0] * 2), 1))
  if c.rotate90 > 0:
    g = chain(g, 3, c.rotate90 * p, _rotate2d(np.pi / 2 * jnp.floor(u[2] * 4)))
  if c.xint > 0:
    t = (u[4:6] * 2 - 1) * c.xint_max
    g = chain(g, 6, c.xint * p, _translate2d(-jnp.round(t[0] * width), -jnp.round(t[1] * height)))
  if c.scale > 0:
    s = jnp.exp2(z[0] * c.scale_std)
    g = chain(g, 7, c.scale * p, _scale2d(1 / s, 1 / s))
  # Pre- and post-rotation each with this probability, so that one or both happen with probability rotate * p.
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - c.rotate * p, 0, 1))
  if c.rotate > 0:
    g = chain(g, 9, p_rot, _rotate2d((u[8] * 2 - 1) * np.pi * c.rotate_max))
  if c.aniso > 0:
    s = jnp.exp2(z[1] * c.aniso_std)
    g = chain(g, 10, c.aniso * p, _scale2d(1 / s, s))
  if c.rotate > 0:
    g = chain(g, 12, p_rot, _rotate2d((u[11] * 2 - 1) * np.pi * c.rotate_max))
  if c.xfrac > 0:
    t = z[2:4] * c.xfrac_std
    g = chain(g, 13, c.xfrac * p, _translate2d(-t[0] * width, -t[1] * height))
  return g


def _resample(image: jax.Array, g_inv: jax.Array) -> jax.Array:
  """One (H, W, C) image through `g_inv` as the original executes it: reflect pad, 2x up, sample, 2x down."""
  height, width, _ = image.shape
  pad_y, pad_x = height - 1, width - 1  # The original's largest margin (torch's reflect pad needs pad < size).
  x = _upsample2x(jnp.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect"))
  up_h, up_w = x.shape[:2]
  # In the 2x grid; the half-pixel shift around the transform is the original's (training/augment.py).
  g = _mm(_translate2d(-0.5, -0.5), _scale2d(2, 2), g_inv, _scale2d(0.5, 0.5), _translate2d(0.5, 0.5))
  out_h, out_w = 2 * (height + 2 * _FILTER_PAD), 2 * (width + 2 * _FILTER_PAD)
  ys = (jnp.arange(out_h, dtype=image.dtype) - (out_h - 1) / 2)[:, None]
  xs = (jnp.arange(out_w, dtype=image.dtype) - (out_w - 1) / 2)[None, :]
  src_x = g[0, 0] * xs + g[0, 1] * ys + g[0, 2] + (up_w - 1) / 2
  src_y = g[1, 0] * xs + g[1, 1] * ys + g[1, 2] + (up_h - 1) / 2
  return _downsample2x(_bilinear(x, src_y, src_x))


def _bilinear(image: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
  """image (H, W, C) at fractional pixel positions (pixel centres at integers), zero outside: grid_sample's
  bilinear with align_corners=False and zero padding. By hand: one gather of all C channels per corner is 4x
  faster on CPU than map_coordinates (a gather per channel), 6x with the gradient (a 1532^2 image, 256 px)."""
  height, width, channels = image.shape
  flat = image.reshape(height * width, channels)
  x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
  fx, fy = src_x - x0, src_y - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  out = 0
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      yi, xi = y0 + dy, x0 + dx
      inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
      index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
      weight = jnp.where(inside, wy * wx, 0)
      out = out + jnp.take(flat, index, axis=0, mode="clip") * weight[..., None]
  return out


def _upsample2x(x: jax.Array) -> jax.Array:
  """upfirdn2d.upsample2d(x, sym6, up=2): zero insertion, then convolution with the filter normalised to sum 1
  times the gain 2 per axis; (2H, 2W) from (H, W). The zeros the filter reaches beyond the edges are padded
  once, on both axes, before the first pass (which keeps zero rows zero)."""
  x = jnp.pad(x, ((_UP_PAD, _UP_PAD), (_UP_PAD, _UP_PAD), (0, 0)))
  return _UP2[0](_UP2[1](x))


def _downsample2x(x: jax.Array) -> jax.Array:
  """upfirdn2d.downsample2d(x, sym6, down=2, padding=-2 * _FILTER_PAD, flip_filter=True): correlation with the
  normalised filter over the grid less one pixel each side, every second output kept; (H, W) from
  (2H + 12, 2W + 12)."""
  return _DOWN2[0](_DOWN2[1](x))


# The filters along one axis are sums of shifted slices; their adjoints are written out the same way, because
# autodiff's transposes of these slices (pads, interior pads) took XLA:CPU 7x (up) and 20x (down) the forward's
# time at 256 px; written out, the whole gradient of the resampling is 3x faster.
_UP_TAPS = [float(t) for t in (2 * SYM6 / SYM6.sum())[::-1]]  # The convolution's flipped filter, gain 2.
_DOWN_TAPS = [float(t) for t in SYM6 / SYM6.sum()]
_HALF = len(SYM6) // 2  # Taps per polyphase component.
_UP_PAD = _HALF // 2  # Zeros each side of an upsampled axis that the filter reaches.


def _slice(x, start, length, axis):
  return lax.slice_in_dim(x, start, start + length, axis=axis)


def _pad(x, before, after, axis):
  return jnp.pad(x, [(before, after) if a == axis else (0, 0) for a in range(x.ndim)])


def _interleave(even, odd, axis):
  x = jnp.stack([even, odd], axis=axis + 1)
  return x.reshape(x.shape[:axis] + (2 * even.shape[axis],) + x.shape[axis + 2:])


def _deinterleave(x, axis):
  x = x.reshape(x.shape[:axis] + (x.shape[axis] // 2, 2) + x.shape[axis + 1:])
  return lax.index_in_dim(x, 0, axis + 1, keepdims=False), lax.index_in_dim(x, 1, axis + 1, keepdims=False)


def _up2(x, axis):
  """x zero-padded by 3 along `axis` (n + 6) -> 2n: out[2j] = sum_a taps[2a] x[j + a],
  out[2j + 1] = sum_a taps[2a + 1] x[j + a + 1] (x[j + 3] is the unpadded x[j])."""
  n = x.shape[axis] - 2 * _UP_PAD
  even = sum(_UP_TAPS[2 * a] * _slice(x, a, n, axis) for a in range(_HALF))
  odd = sum(_UP_TAPS[2 * a + 1] * _slice(x, a + 1, n, axis) for a in range(_HALF))
  return _interleave(even, odd, axis)


def _up2_adjoint(d, axis):
  n = d.shape[axis] // 2
  even, odd = _deinterleave(d, axis)
  even, odd = _pad(even, 5, 6, axis), _pad(odd, 6, 5, axis)
  return sum(_UP_TAPS[2 * a] * _slice(even, 5 - a, n + 6, axis)
             + _UP_TAPS[2 * a + 1] * _slice(odd, 5 - a, n + 6, axis) for a in range(_HALF))


def _down2(x, axis):
  """out[i] = sum_t taps[t] x[2i + 1 + t]: n outputs from 2n + 12."""
  n = x.shape[axis] // 2 - 2 * _FILTER_PAD
  pairs = x.reshape(x.shape[:axis] + (n + 2 * _FILTER_PAD, 2) + x.shape[axis + 1:])
  even, odd = lax.index_in_dim(pairs, 0, axis + 1, False), lax.index_in_dim(pairs, 1, axis + 1, False)
  # x[2i + 1 + t]: odd[i + b] for t = 2b, even[i + b + 1] for t = 2b + 1.
  return sum(_DOWN_TAPS[2 * b] * _slice(odd, b, n, axis) + _DOWN_TAPS[2 * b + 1] * _slice(even, b + 1, n, axis)
             for b in range(_HALF))


def _down2_adjoint(d, axis):
  n = d.shape[axis]
  padded = _pad(d, 6, 6, axis)
  even = sum(_DOWN_TAPS[2 * b + 1] * _slice(padded, 5 - b, n + 6, axis) for b in range(_HALF))
  odd = sum(_DOWN_TAPS[2 * b] * _slice(padded, 6 - b, n + 6, axis) for b in range(_HALF))
  return _interleave(even, odd, axis)


def _linear_pair(forward, adjoint):
  """forward and adjoint as custom_vjp functions whose gradients are each other: reverse mode to any order (a
  gradient penalty through the augmentation works); forward mode (jax.jvp) is not defined."""
  f, a = jax.custom_vjp(forward), jax.custom_vjp(adjoint)
  f.defvjp(lambda x: (f(x), None), lambda _, d: (a(d),))
  a.defvjp(lambda d: (a(d), None), lambda _, x: (f(x),))
  return f, a


_UP2 = {axis: _linear_pair(functools.partial(_up2, axis=axis), functools.partial(_up2_adjoint, axis=axis))[0]
        for axis in (0, 1)}
_DOWN2 = {axis: _linear_pair(functools.partial(_down2, axis=axis),
                             functools.partial(_down2_adjoint, axis=axis))[0] for axis in (0, 1)}


_LUMA = np.array([1, 1, 1, 0]) / np.sqrt(3)  # The grey axis colours rotate around and flip along.


def _color_matrix(c, draws, p, channels) -> jax.Array:
  """The 4x4 homogeneous colour transform of one image (colour_out = C @ colour_in) from its uniform draws,
  identity when no op drawn."""
  u, z = draws[:7], _normal(draws[7:10])
  eye = jnp.eye(4)
  v = jnp.asarray(_LUMA, jnp.float32)
  vv = jnp.outer(v, v)
  m = eye

  def chain(m, gate, prob, op):
    return _mm(jnp.where(u[gate] < prob, op, eye), m)

  if c.brightness > 0:
    m = chain(m, 0, c.brightness * p, eye.at[:3, 3].set(z[0] * c.brightness_std))
  if c.contrast > 0:
    s = jnp.exp2(z[1] * c.contrast_std)
    m = chain(m, 1, c.contrast * p, jnp.diag(jnp.stack([s, s, s, jnp.ones_like(s)])))
  if c.lumaflip > 0:
    m = chain(m, 3, c.lumaflip * p, eye - 2 * vv * jnp.floor(u[2] * 2))  # Householder reflection.
  if c.hue > 0 and channels > 1:
    m = chain(m, 5, c.hue * p, _rotate3d(v, (u[4] * 2 - 1) * np.pi * c.hue_max))
  if c.saturation > 0 and channels > 1:
    s = jnp.exp2(z[2] * c.saturation_std)
    m = chain(m, 6, c.saturation * p, vv + (eye - vv) * s)
  return m


def _rotate3d(v, theta):
  """Rotation by theta around the unit axis v[:3] (Rodrigues), homogeneous 4x4."""
  x, y, z = v[0], v[1], v[2]
  s, cos = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - cos
  return _matrix([[x * x * cc + cos, x * y * cc - z * s, x * z * cc + y * s, 0],
                  [y * x * cc + z * s, y * y * cc + cos, y * z * cc - x * s, 0],
                  [z * x * cc - y * s, z * y * cc + x * s, z * z * cc + cos, 0],
                  [0, 0, 0, 1]])


def _apply_color(image: jax.Array, m: jax.Array) -> jax.Array:
  channels = image.shape[-1]
  if channels == 3:  # Written out: float32 on TPU too (no bfloat16 dot), one elementwise loop on CPU.
    return sum(image[..., c:c + 1] * m[:3, c] for c in range(3)) + m[:3, 3]
  if channels == 1:
    grey = jnp.mean(m[:3], axis=0)  # One channel: the mean of the RGB rows, as the original.
    return image * jnp.sum(grey[:3]) + grey[3]
  raise ValueError(f"ADA colour ops need 1 or 3 channels, got {channels}: set --config.augment.color=False")


# ---------------------------------------------------------------------------------------------------------
# DiffAugment


def _diffaugment_one(image: jax.Array, key: jax.Array, *, c) -> jax.Array:
  """DiffAugment_pytorch.py's ops on one (H, W, C) image: colour (brightness +-0.5, saturation x[0, 2], contrast
  x[0.5, 1.5]), translation by up to ratio * size whole pixels with zero fill, cutout of a ratio * size
  rectangle (zeros) centred anywhere, each dimension's offset uniform over the original's integer range."""
  height, width, _ = image.shape
  u = jax.random.uniform(key, (7,))  # One call (see _ada): 3 colour, 2 translation, 2 cutout.

  def randint(v, low, high):  # Uniform over low..high-1.
    return jnp.minimum(jnp.floor(v * (high - low)).astype(jnp.int32) + low, high - 1)

  x = image
  for name in _policy(c):
    if name == "color":
      x = x + (u[0] - 0.5)
      mean = jnp.mean(x, axis=-1, keepdims=True)
      x = (x - mean) * (u[1] * 2) + mean
      mean = jnp.mean(x)
      x = (x - mean) * (u[2] + 0.5) + mean
    elif name == "translation":
      shift = [int(size * c.translation_ratio + 0.5) for size in (height, width)]
      ty, tx = randint(u[3], -shift[0], shift[0] + 1), randint(u[4], -shift[1], shift[1] + 1)
      rows, cols = jnp.arange(height) + ty, jnp.arange(width) + tx
      inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
      x = jnp.roll(x, (-ty, -tx), axis=(0, 1)) * inside[..., None]
    elif name == "cutout":
      size = [int(s * c.cutout_ratio + 0.5) for s in (height, width)]
      corner = [randint(v, 0, n + 1 - cs % 2) - cs // 2 for v, n, cs in zip(u[5:7], (height, width), size)]
      in_y = (jnp.arange(height) >= corner[0]) & (jnp.arange(height) < corner[0] + size[0])
      in_x = (jnp.arange(width) >= corner[1]) & (jnp.arange(width) < corner[1] + size[1])
      x = x * ~(in_y[:, None] & in_x[None, :])[..., None]
  return x
