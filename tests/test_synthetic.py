"""Tests for the procedural face dataset: API, determinism, identities, label/pixel agreement, statistics."""

import numpy as np
import pytest

from facegen_jax import errors
from input_pipeline import synthetic

ATTRIBUTES = ("identity", "group", "male", "long_hair", "glasses", "hat", "earrings")
C = {name: i for i, name in enumerate(synthetic.CLASS_NAMES)}


def _erode(mask, steps):
  """Pixels whose 4-neighbourhood lies in `mask`, `steps` times: the interior, away from boundaries."""
  for _ in range(steps):
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
                         & mask[1:-1, 2:])
    mask = inner
  return mask


def _median_colour(example, name, erode=1):
  return np.median(example["image"][_erode(example["label"] == C[name], erode)], axis=0)


def test_constants():
  assert synthetic.NUM_CLASSES == len(synthetic.CLASS_NAMES) == 19
  assert synthetic.CLASS_NAMES[0] == "background" and synthetic.CLASS_NAMES[-1] == "cloth"
  assert synthetic.GROUP_NAMES == ("woman_no_glasses", "man_no_glasses", "man_glasses", "woman_glasses")
  assert synthetic.DOMAINS == ("photo", "toon")


@pytest.mark.parametrize("resolution", [32, 64, 128, 512])
@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_shapes_and_dtypes(resolution, domain):
  ex = synthetic.SyntheticFaces(8, resolution, domain=domain)[np.int64(3)]
  assert ex["image"].shape == (resolution, resolution, 3) and ex["image"].dtype == np.uint8
  assert ex["label"].shape == (resolution, resolution) and ex["label"].dtype == np.uint8
  assert ex["label"].max() < synthetic.NUM_CLASSES
  for key in ATTRIBUTES:
    assert ex[key].shape == () and ex[key].dtype == np.int32, key
  assert set(ex) == {"image", "label", *ATTRIBUTES}


def test_deterministic_random_access():
  ds = synthetic.SyntheticFaces(100, 64, seed=7)
  later, first = ds[42], ds[41]
  again = synthetic.render(7, 42, 64, "photo", ds.num_identities)
  for key in later:
    np.testing.assert_array_equal(later[key], again[key])
  assert not np.array_equal(later["image"], first["image"])
  other_seed = synthetic.SyntheticFaces(100, 64, seed=8)[42]
  assert not np.array_equal(later["image"], other_seed["image"])


@pytest.mark.parametrize("resolution", [31, 513, 0, -64, 64.0, "64"])
def test_bad_resolution_raises(resolution):
  with pytest.raises(errors.ConfigError, match=r"resolution=.*\[32, 512\]"):
    synthetic.SyntheticFaces(10, resolution)
  with pytest.raises(errors.ConfigError, match=r"\[32, 512\]"):
    synthetic.render(0, 0, resolution)


def test_bad_arguments_raise():
  with pytest.raises(errors.ConfigError, match="domain='anime'"):
    synthetic.SyntheticFaces(10, 64, domain="anime")
  with pytest.raises(errors.ConfigError, match="num_examples=0"):
    synthetic.SyntheticFaces(0, 64)
  with pytest.raises(errors.ConfigError, match="num_identities=0"):
    synthetic.SyntheticFaces(10, 64, num_identities=0)
  with pytest.raises(errors.ConfigError, match="seed=-1"):
    synthetic.SyntheticFaces(10, 64, seed=-1)
  with pytest.raises(errors.ConfigError, match="num_identities=0"):
    synthetic.render(0, 3, 64, num_identities=0)
  ds = synthetic.SyntheticFaces(10, 64)
  assert len(ds) == 10
  with pytest.raises(IndexError):
    ds[10]


def test_identity_is_index_modulo_num_identities():
  assert synthetic.SyntheticFaces(40, 32).num_identities == 10
  assert synthetic.SyntheticFaces(3, 32).num_identities == 1
  ds = synthetic.SyntheticFaces(40, 32, num_identities=7)
  assert [int(ds[i]["identity"]) for i in (0, 6, 7, 15, 39)] == [0, 6, 0, 1, 4]


def test_views_of_one_identity_share_traits_but_not_pose():
  for domain in synthetic.DOMAINS:
    ds = synthetic.SyntheticFaces(60, 128, domain=domain, num_identities=12)
    for i in range(12):
      a, b = ds[i], ds[i + 24]
      for key in ATTRIBUTES:
        assert a[key] == b[key], key
      assert not np.array_equal(a["label"], b["label"])  # pose and expression change
      for name in ("skin", "hair"):
        if min((a["label"] == C[name]).sum(), (b["label"] == C[name]).sum()) < 50:
          continue
        difference = np.abs(_median_colour(a, name) - _median_colour(b, name)).max()
        # Toon colours are flat: equal. Photo colours vary only with light and noise.
        assert difference <= (0 if domain == "toon" else 45), (domain, i, name)


def test_photo_and_toon_share_identity_but_not_pixels():
  eye_area = {}
  for domain in synthetic.DOMAINS:
    examples = [synthetic.render(3, i, 96, domain) for i in range(20)]
    eye_area[domain] = sum(np.isin(e["label"], [C["l_eye"], C["r_eye"]]).sum() for e in examples)
    if domain == "photo":
      photos = examples
  for photo, toon in zip(photos, examples):
    for key in ATTRIBUTES:
      assert photo[key] == toon[key]
    assert np.abs(photo["image"].astype(int) - toon["image"]).mean() > 5
  assert eye_area["toon"] > 1.5 * eye_area["photo"]  # toon eyes are exaggerated


def test_photo_pixels_agree_with_labels():
  """Inside a part the colour varies little (light, noise); between parts it varies a lot."""
  ratios = []
  for i in range(16):
    ex = synthetic.render(1, i, 128, "photo")
    parts = [ex["image"][_erode(ex["label"] == k, 2)].astype(float) for k in range(1, synthetic.NUM_CLASSES)]
    parts = [p for p in parts if len(p) >= 20]
    pixels = np.concatenate(parts)
    within = sum(np.square(p - p.mean(0)).sum() for p in parts) / len(pixels)
    ratios.append(within / pixels.var(0).sum())
    skin = ex["image"][_erode(ex["label"] == C["skin"], 2)].astype(float)
    assert 1 < skin.std(0).mean() < 30  # shading and noise, but no foreign colours
  assert max(ratios) < 0.4 and np.median(ratios) < 0.1, ratios


def test_toon_parts_are_flat():
  for i in range(12):
    ex = synthetic.render(1, i, 128, "toon")
    for k in range(1, synthetic.NUM_CLASSES):
      if k in (C["l_eye"], C["r_eye"], C["mouth"]):  # irises, pupils, highlights, teeth
        continue
      pixels = ex["image"][_erode(ex["label"] == k, 1)]
      if len(pixels):
        assert np.ptp(pixels, axis=0).max() <= 1, (i, synthetic.CLASS_NAMES[k])


def test_toon_has_dark_outlines():
  ex = synthetic.render(2, 5, 128, "toon")
  lab, img = ex["label"], ex["image"].astype(float)
  boundary = np.zeros(lab.shape, bool)
  boundary[:, :-1] = lab[:, 1:] != lab[:, :-1]
  interior = _erode(lab == C["skin"], 2)
  assert img[boundary].mean() < 0.6 * img[interior].mean()


def test_all_classes_appear():
  seen = np.zeros(synthetic.NUM_CLASSES, bool)
  for i in range(200):
    seen[np.unique(synthetic.render(0, i, 64)["label"])] = True
  assert seen.all(), [n for n, s in zip(synthetic.CLASS_NAMES, seen) if not s]


def test_group_frequencies_and_consistency():
  ds = synthetic.SyntheticFaces(2000, 32, seed=5, domain="toon", num_identities=2000)
  examples = [ds[i] for i in range(len(ds))]
  stats = {key: np.array([int(e[key]) for e in examples]) for key in ATTRIBUTES}
  expected_group = np.where(stats["male"] == 1, 1 + stats["glasses"], 3 * stats["glasses"])
  np.testing.assert_array_equal(stats["group"], expected_group)
  frequencies = np.bincount(stats["group"], minlength=4) / len(examples)
  np.testing.assert_allclose(frequencies, [0.45, 0.35, 0.12, 0.08], atol=0.04)
  male = stats["male"] == 1
  assert stats["long_hair"][~male].mean() > 0.4 > 0.2 > stats["long_hair"][male].mean()
  assert stats["earrings"][~male].mean() > 3 * stats["earrings"][male].mean()
  assert 0.05 < stats["hat"].mean() < 0.3


def test_gender_shows_in_pixels():
  women, men = [], []
  for i in range(150):
    ex = synthetic.render(4, i, 64, "toon")
    if (ex["label"] == C["l_lip"]).sum() > 4:
      lip = _median_colour(ex, "l_lip", erode=0) - _median_colour(ex, "skin")
      (men if ex["male"] else women).append(lip[0] - lip[1])  # redness against the skin
  assert np.mean(women) > np.mean(men) + 15


def test_variety():
  images = np.stack([synthetic.render(9, i, 64)["image"] for i in range(32)]).astype(float)
  assert images.std(axis=0).mean() > 35
  tones = [_median_colour(synthetic.render(9, i, 64, "toon"), "skin").mean() for i in range(60)]
  assert np.ptp(tones) > 100  # light to dark skin


def test_head_window_matches_full_grid(monkeypatch):
  """Small parts are evaluated in a window around the head; it must hold all of them."""
  examples = [synthetic.render(6, i, r, d) for i in range(40) for r in (32, 80) for d in synthetic.DOMAINS]
  monkeypatch.setattr(synthetic, "_HEAD_RADIUS", 100.0)
  full = [synthetic.render(6, i, r, d) for i in range(40) for r in (32, 80) for d in synthetic.DOMAINS]
  for a, b in zip(examples, full):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_works_as_grain_source():
  grain = pytest.importorskip("grain")
  batch = grain.MapDataset.source(synthetic.SyntheticFaces(8, 32)).batch(4)[1]
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["group"].shape == (4,) and batch["group"].dtype == np.int32
