"""Per-record figures of an inpainting composite against the original: hole L1, PSNR, SSIM and LPIPS.

Images are NHWC in [-1, 1] (the pipeline's range); `hole_mask` is 1 in the HOLE (the pipeline's and the mask
PNGs' convention, white = hole), (B, H, W) or (B, H, W, 1). Every figure is (B,), so a family's eval_scores can
average them over records, and all are pure jax (jit-able):

  hole_l1  mean |composite - original| over the hole's pixels and channels, in [0, 1] units (half the [-1, 1]
           difference: the scale TFill's evaluation.py reports its l1loss in); 0 for a record without a hole.
  psnr     of the whole composite, dm_pix.psnr on [0, 1] images (peak 1, as TFill's evaluation's
           data_range=1); inf where the composite equals the original.
  ssim     of the whole composite, dm_pix.ssim on [0, 1] images: the Gaussian-window SSIM of Wang et al. (11x11,
           sigma 1.5, K 0.01 / 0.03, valid region, mean over pixels and channels). TFill's evaluation.py uses
           skimage's default uniform 11x11 window with sample covariances instead, which scores a little
           differently.
  lpips    LPIPS-VGG v0.1 (nets/lpips.py) of the whole composite; only when lpips_params is given. (TFill's
           evaluation.py reports LPIPS-AlexNet; this is the VGG distance TFill trains with.)

The composite keeps the original's pixels outside the hole, so its whole-image PSNR, SSIM and LPIPS measure the
hole and its borders only.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

from facegen_jax.nets import lpips as lpips_lib


def _hole(hole_mask: jax.Array) -> jax.Array:
  """(B, H, W, 1) float32."""
  mask = jnp.asarray(hole_mask, jnp.float32)
  return mask[..., None] if mask.ndim == 3 else mask


def hole_l1(composite: jax.Array, original: jax.Array, hole_mask: jax.Array) -> jax.Array:
  """(B,) mean |composite - original| / 2 over hole pixels and channels ([0, 1] units); 0 without a hole."""
  hole = _hole(hole_mask)
  diff = jnp.abs(composite.astype(jnp.float32) - original.astype(jnp.float32)) * 0.5
  total = jnp.sum(diff * hole, axis=(1, 2, 3))
  count = jnp.sum(hole, axis=(1, 2, 3)) * composite.shape[-1]
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _unit(x: jax.Array) -> jax.Array:
  return (x.astype(jnp.float32) + 1.0) * 0.5


def psnr(composite: jax.Array, original: jax.Array) -> jax.Array:
  """(B,) PSNR in dB of images in [-1, 1], measured on [0, 1] (peak 1)."""
  return dm_pix.psnr(_unit(composite), _unit(original))


def ssim(composite: jax.Array, original: jax.Array) -> jax.Array:
  """(B,) Gaussian-window SSIM (dm_pix defaults) of images in [-1, 1], measured on [0, 1]; at least 11 px."""
  return dm_pix.ssim(_unit(composite), _unit(original), max_val=1.0)


def scores(lpips_params, composite: jax.Array, original: jax.Array, hole_mask: jax.Array) -> dict[str, jax.Array]:
  """{"hole_l1", "psnr", "ssim"[, "lpips"]}: (B,) each; "lpips" only when lpips_params is not None."""
  result = {"hole_l1": hole_l1(composite, original, hole_mask), "psnr": psnr(composite, original),
            "ssim": ssim(composite, original)}
  if lpips_params is not None:
    result["lpips"] = lpips_lib.distance(lpips_params, composite.astype(jnp.float32),
                                         original.astype(jnp.float32))
  return result
