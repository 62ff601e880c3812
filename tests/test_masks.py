"""facegen_jax/masks.py: MaskTheFace's geometry on the synthetic faces' parsing maps, the homography and warp,
TFill's mask types and hole-ratio bands, per-record determinism, and the command line end to end."""

import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import optimize

from facegen_jax import errors
from facegen_jax import masks
from input_pipeline import synthetic

_C = {name: i for i, name in enumerate(synthetic.CLASS_NAMES)}


def _face(index, resolution=128, domain="photo"):
  record = synthetic.render(0, index, resolution, domain)
  return record, synthetic.landmarks68(0, index, resolution, domain)


def _rotate(points, degrees, centre):
  c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
  return (points - centre) @ np.array([[c, s], [-s, c]]) + centre


# --- landmarks of the synthetic faces ---


@pytest.mark.parametrize("domain", ["photo", "toon"])
def test_synthetic_landmarks_sit_on_their_parts(domain):
  for index in range(10):
    record, lm = _face(index, 128, domain)
    label = lambda p: record["label"][int(round(p[1])), int(round(p[0]))]
    assert label(lm[36:42].mean(axis=0)) in (_C["r_eye"], _C["eye_g"])  # image-left eye is the person's right
    assert label(lm[42:48].mean(axis=0)) in (_C["l_eye"], _C["eye_g"])
    assert label(lm[30]) == _C["nose"]
    assert label((lm[51] + lm[57]) / 2) in (_C["u_lip"], _C["l_lip"], _C["mouth"])
    assert label(lm[8] + (lm[57] - lm[8]) * 0.1) == _C["skin"]  # just inside the chin
    assert np.all(np.diff(lm[[36, 39, 42, 45], 0]) > 0) and lm[0, 0] < lm[8, 0] < lm[16, 0]
    assert lm[27, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]


# --- MaskTheFace's six points ---


def test_six_points_follow_get_six_points_on_a_level_face():
  _, lm = _face(3, 256)
  left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
  lm = _rotate(lm, -math.degrees(math.atan2(*(right - left)[::-1])), lm[30])  # eyes level
  six = masks.six_points(lm)
  a, b, c, f, e, d = six.points
  eye_y = lm[36:48].mean(axis=0)[1]
  np.testing.assert_allclose(b, (lm[27] + lm[30]) / 2)
  np.testing.assert_allclose([a[1], c[1]], eye_y + lm[30, 1] - lm[27, 1], atol=1e-9)
  lip_y = lm[[54, 55, 56, 57, 58, 59, 48, 64, 65, 66, 67, 60], 1].max()
  np.testing.assert_allclose([d[1], f[1]], lip_y, atol=1e-9)
  jaw = lm[0:17]

  def distance_to_jaw(p):
    seg = jaw[1:] - jaw[:-1]
    k = np.clip(np.sum((p - jaw[:-1]) * seg, 1) / np.sum(seg * seg, 1), 0, 1)
    return np.min(np.linalg.norm(jaw[:-1] + k[:, None] * seg - p, axis=1))

  assert max(distance_to_jaw(p) for p in (a, c, d, f, e)) < 1e-9
  assert a[0] < d[0] < e[0] < f[0] < c[0] and e[1] > d[1] > a[1]
  assert abs(six.angle) < 13 and masks.variant_for(six.angle) == "front"


def test_yaw_beyond_13_degrees_picks_the_left_or_right_template():
  record, lm = _face(1, 128)
  for shift, expected in ((0.0, "front"), (6.0, "right"), (-6.0, "left")):
    turned = lm.copy()
    turned[30:36, 0] += shift  # the nose tip swings towards where the face turns
    six = masks.six_points(turned)
    assert masks.variant_for(six.angle) == expected, (shift, six.angle)
    face = masks.mask_face(record["image"], turned, "surgical")
    assert face.variant == expected
    mouth = np.isin(record["label"], [_C["mouth"], _C["u_lip"], _C["l_lip"]])
    assert face.hole[mouth].mean() >= 0.9
  assert masks.variant_for(13.5) == "left" and masks.variant_for(-13.5) == "right"
  assert masks.variant_for(12.9) == "front"


def test_landmarks_that_are_not_a_face_raise():
  with pytest.raises(errors.DataError, match="68 landmarks"):
    masks.six_points(np.zeros((5, 2)))
  _, lm = _face(0)
  flat = lm.copy()
  flat[0:17, 1] = 0  # the jaw above the eyes: nothing to cross
  with pytest.raises(errors.DataError, match="jaw"):
    masks.six_points(flat)


# --- the surgical mask on the synthetic faces, against their parsing maps ---


@pytest.mark.parametrize("kind", masks.TEMPLATE_KINDS)
def test_mask_covers_lower_nose_mouth_and_chin_but_not_the_eyes(kind):
  eye_hits, eye_total = 0, 0
  for index in range(12):
    domain = "toon" if index % 4 == 3 else "photo"
    record, lm = _face(index, 128, domain)
    face = masks.mask_face(record["image"], lm, kind)
    label, hole = record["label"], face.hole
    rows = np.arange(label.shape[0])[:, None]
    mouth = np.isin(label, [_C["mouth"], _C["u_lip"], _C["l_lip"]])
    lower_nose = (label == _C["nose"]) & (rows >= lm[30, 1])
    chin = (label == _C["skin"]) & (rows >= lm[57, 1])
    assert hole[mouth].mean() >= 0.99 and hole[lower_nose].mean() >= 0.99, (kind, index)
    assert hole[chin].mean() >= 0.9, (kind, index, hole[chin].mean())
    for eye in (lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)):
      assert not hole[int(round(eye[1])), int(round(eye[0]))], (kind, index)
    eyes = np.isin(label, [_C["l_eye"], _C["r_eye"]])
    if domain == "photo":
      eye_hits, eye_total = eye_hits + hole[eyes].sum(), eye_total + eyes.sum()
    # the face outside the hole is untouched, and the hole is where the template was drawn
    np.testing.assert_array_equal(face.image[~hole], record["image"][~hole])
    assert np.any(face.image[hole] != record["image"][hole])
    assert 0.015 < masks.hole_ratio(hole) < 0.08
  assert eye_hits <= 0.02 * eye_total, (kind, eye_hits, eye_total)  # measured: 0 (surgical, kn95, cloth), 0.8 % (n95)


def test_dilation_grows_the_hole_by_a_disc():
  record, lm = _face(2, 128)
  plain = masks.mask_face(record["image"], lm, "surgical").hole
  grown = masks.mask_face(record["image"], lm, "surgical", dilate_px=3).hole
  assert np.all(grown[plain]) and grown.sum() > plain.sum()
  ys, xs = np.nonzero(grown & ~plain)
  py, px = np.nonzero(plain)
  nearest = np.min(np.hypot(ys[:, None] - py[None], xs[:, None] - px[None]), axis=1)
  assert nearest.max() <= 3 and nearest.min() >= 1


def test_face_mask_grown_into_a_ratio_band():
  record, lm = _face(5, 128)
  hole = masks.mask_face(record["image"], lm, "surgical").hole
  for band in masks.BANDS.values():
    fitted = masks.fit_to_band(hole, band)
    assert band[0] <= masks.hole_ratio(fitted) <= band[1] and np.all(fitted[hole])
  with pytest.raises(errors.DataError, match="above the band"):
    masks.fit_to_band(hole, (0.0, 0.01))


# --- the homography and the warp ---


def _template_and_face():
  template = masks.draw_template("surgical", scale=0.3)
  return template, masks.six_points(_face(4, 256)[1]).points


def test_homography_maps_consistent_points_exactly():
  template, _ = _template_and_face()
  truth = np.array([[0.9, 0.15, 40.0], [-0.1, 1.1, 12.0], [4e-4, -2e-4, 1.0]])
  target = masks.project(truth, template.points)
  found = masks.homography(template.points, target)
  np.testing.assert_allclose(masks.project(found, template.points), target, atol=1e-9)
  np.testing.assert_allclose(found, truth, rtol=1e-9, atol=1e-12)
  four = masks.homography(template.points[:4], target[:4])  # four pairs: exact, no refinement
  np.testing.assert_allclose(masks.project(four, template.points[:4]), target[:4], atol=1e-9)


def test_homography_of_six_face_points_minimises_the_reprojection_error():
  template, points = _template_and_face()
  found = masks.homography(template.points, points)
  dlt = masks.homography(template.points, points, refine=False)
  error = lambda h: (masks.project(np.append(h, 1).reshape(3, 3), template.points) - points).ravel()
  reference = optimize.least_squares(error, dlt.ravel()[:8], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
  # the minimum is flat: the same mapped points and cost, parameters within ~1e-6 relative
  np.testing.assert_allclose(masks.project(found, template.points),
                             masks.project(np.append(reference, 1).reshape(3, 3), template.points), atol=1e-5)
  cost = lambda h: np.sum(error(h) ** 2)
  assert cost(found.ravel()[:8]) <= cost(reference) * (1 + 1e-9) < cost(dlt.ravel()[:8]) * (1 - 1e-3)
  # these six points fit one homography to within a pixel or two (face ~60 px wide)
  assert np.abs(error(found.ravel()[:8])).max() < 2.5


def test_homography_of_collinear_points_raises():
  line = np.stack([np.arange(6.0), 2 * np.arange(6.0)], 1)
  with pytest.raises(errors.DataError, match="line"):
    masks.homography(line, line + 1)


def test_warp_perspective_is_bilinear_sampling_at_the_inverse_map():
  rng = np.random.default_rng(0)
  image = rng.random((20, 30, 2)).astype(np.float32)
  shift = np.array([[1, 0, 3], [0, 1, -2], [0, 0, 1.0]])
  out = masks.warp_perspective(image, shift, (30, 20))
  np.testing.assert_array_equal(out[:18, 3:], image[2:, :27])  # out(x, y) = image(x - 3, y + 2)
  assert not out[18:].any() and not out[:, :3].any()
  matrix = np.array([[1.1, 0.2, 1.5], [-0.1, 0.9, 2.0], [1e-3, 2e-3, 1.0]])
  out = masks.warp_perspective(image, matrix, (30, 20))
  for y, x in ((5, 7), (10, 12), (14, 20)):
    sx, sy = masks.project(np.linalg.inv(matrix), [[x, y]])[0]
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    fx, fy = sx - x0, sy - y0
    expected = ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x0 + 1]
                + (1 - fx) * fy * image[y0 + 1, x0] + fx * fy * image[y0 + 1, x0 + 1])
    np.testing.assert_allclose(out[y, x], expected, rtol=1e-5)


@pytest.mark.parametrize("kind", masks.TEMPLATE_KINDS)
def test_templates_anchor_inside_their_masks_in_every_view(kind):
  for variant in masks.VARIANTS:
    template = masks.draw_template(kind, variant, scale=0.25)
    alpha = template.rgba[..., 3]
    assert set(np.unique(alpha)) == {0, 255}
    for name, (x, y) in zip("abcfed", template.points):
      window = alpha[max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3]
      assert window.any(), (kind, variant, name)  # each anchor on or inside the outline
    a, b, c = template.points[:3]
    share = (b[0] - a[0]) / (c[0] - a[0])  # where the nose lies between the sides
    assert {"front": 0.45 < share < 0.55, "left": share < 0.4, "right": share > 0.6}[variant], (variant, share)


# --- TFill's mask types, bands and determinism ---


def test_center_hole_is_tfills_center_mask():
  hole = masks.center_hole(10, 14)
  expected = np.zeros((10, 14), bool)
  expected[2:7, 3:10] = True  # int(10/4):int(30/4), int(14/4):int(42/4)
  np.testing.assert_array_equal(hole, expected)
  np.testing.assert_array_equal(masks.visible(hole)[..., 0], (~expected).astype(np.float32))
  with pytest.raises(errors.ConfigError, match="25 %"):
    masks.random_hole("center", masks.record_rng(0, 0), 64, 64, (0.1, 0.2))


@pytest.mark.parametrize("kind", ["boxes", "strokes"])
@pytest.mark.parametrize("band", list(masks.BANDS.values()))
def test_random_holes_fall_in_the_requested_band(kind, band):
  for index in range(6):
    hole = masks.random_hole(kind, masks.record_rng(3, index), 96, 80, band)
    assert hole.shape == (96, 80) and band[0] <= masks.hole_ratio(hole) <= band[1]


def test_masks_are_fixed_per_record():
  a = masks.stroke_hole(masks.record_rng(0, 7), 64, 64)
  np.testing.assert_array_equal(a, masks.stroke_hole(masks.record_rng(0, 7), 64, 64))
  assert np.any(a != masks.stroke_hole(masks.record_rng(0, 8), 64, 64))
  assert np.any(a != masks.stroke_hole(masks.record_rng(1, 7), 64, 64))
  # recorded when written: evaluation masks must not change between versions
  assert masks.hole_ratio(a) == 0.263427734375
  assert masks.hole_ratio(masks.box_hole(masks.record_rng(0, "a/b"), 64, 64)) == 0.2109375
  unbanded = [masks.hole_ratio(masks.box_hole(masks.record_rng(0, i), 64, 64)) for i in range(20)]
  assert min(unbanded) > 0 and max(unbanded) < 1


def test_folder_hole_reads_white_as_hole(tmp_path):
  paths = []
  for i, value in enumerate((0, 255)):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = value
    mask[0, 7] = 255
    paths.append(str(tmp_path / f"m{i}.png"))
    Image.fromarray(mask).save(paths[-1])
  hole = masks.folder_hole(paths, 3, 16, 16)  # record 3 -> file 1, resized nearest
  expected = np.zeros((16, 16), bool)
  expected[:, :8] = True
  expected[0:2, 14:16] = True
  np.testing.assert_array_equal(hole, expected)
  assert masks.folder_hole(paths, 2, 8, 8).sum() == 1


def test_record_hole_is_the_data_side_entry(tmp_path):
  record, lm = _face(0, 64)
  for kind in ("center", "boxes", "strokes"):
    hole = masks.record_hole(kind, 5, 3, 64, 64)
    np.testing.assert_array_equal(hole, masks.random_hole(kind, masks.record_rng(5, 3), 64, 64))
  face = masks.record_hole("random", 5, 3, 64, 64, image=record["image"], landmarks=lm, band=(0.1, 0.2))
  assert 0.1 <= masks.hole_ratio(face) <= 0.2
  np.testing.assert_array_equal(face, masks.record_hole("random", 5, 3, 64, 64, image=record["image"],
                                                        landmarks=lm, band=(0.1, 0.2)))
  Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "m.png")
  assert masks.record_hole("folder", 0, 9, 8, 8, mask_files=[str(tmp_path / "m.png")]).all()
  with pytest.raises(errors.ConfigError, match="image and landmarks"):
    masks.record_hole("surgical", 0, 0, 64, 64)


def test_parse_ratio():
  assert masks.parse_ratio("0.1,0.2") == (0.1, 0.2) and masks.parse_ratio("30-40") == (0.3, 0.4)
  for bad in ("0.2", "0.3,0.2", "10,20", "a,b", "-0.1,0.2"):
    with pytest.raises(errors.ConfigError, match="--ratio"):
      masks.parse_ratio(bad)


# --- the command line ---


def _pngs(folder):
  return {name: np.asarray(Image.open(os.path.join(folder, name))) for name in sorted(os.listdir(folder))}


def test_cli_on_synthetic_faces_is_deterministic(tmp_path):
  args = ["--synthetic", "3", "--resolution", "64", "--type", "random", "--seed", "2"]
  assert masks.main(args + ["--out", str(tmp_path / "a")]) == 0
  assert masks.main(args + ["--out", str(tmp_path / "b")]) == 0
  first, second = _pngs(tmp_path / "a" / "masks"), _pngs(tmp_path / "b" / "masks")
  assert sorted(first) == ["000000.png", "000001.png", "000002.png"]
  for name, mask in first.items():
    np.testing.assert_array_equal(mask, second[name])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
  manifest = json.loads((tmp_path / "a" / "masks.json").read_text())
  assert [r["type"] in masks.TEMPLATE_KINDS for r in manifest["records"]] == [True] * 3
  images, masked = _pngs(tmp_path / "a" / "images"), _pngs(tmp_path / "a" / "masked")
  for name, mask in first.items():
    kept = mask == 0
    np.testing.assert_array_equal(masked[name][kept], images[name][kept])
    assert abs(manifest["records"][int(name[:6])]["hole_ratio"] - np.mean(mask == 255)) < 1e-6


def test_cli_on_a_folder_with_landmarks_and_a_band(tmp_path):
  folder = tmp_path / "faces"
  (folder / "sub").mkdir(parents=True)
  table = {}
  for i, name in enumerate(("x.png", "sub/y.jpg")):
    record, lm = _face(i, 96)
    Image.fromarray(record["image"]).save(folder / name, quality=95)
    table[os.path.splitext(name)[0]] = lm.tolist()
  (tmp_path / "lm.json").write_text(json.dumps(table))
  out = tmp_path / "out"
  assert masks.main(["--images", str(folder), "--out", str(out), "--landmarks", str(tmp_path / "lm.json"),
                     "--type", "n95", "--ratio", "0.1,0.2"]) == 0
  for key in ("x", "sub/y"):
    mask = np.asarray(Image.open(out / "masks" / f"{key}.png"))
    assert mask.shape == (96, 96) and 0.1 <= np.mean(mask == 255) <= 0.2
  out = tmp_path / "strokes"
  assert masks.main(["--images", str(folder), "--out", str(out), "--type", "strokes", "--ratio", "20-30"]) == 0
  mask = np.asarray(Image.open(out / "masks" / "x.png")) == 255
  masked = np.asarray(Image.open(out / "masked" / "x.png"))
  assert 0.2 <= mask.mean() <= 0.3 and np.all(masked[mask] == 128)
  np.testing.assert_array_equal(masked[~mask], np.asarray(Image.open(folder / "x.png"))[~mask])


def test_cli_errors(tmp_path, capsys, monkeypatch):
  folder = tmp_path / "faces"
  folder.mkdir()
  Image.fromarray(_face(0, 64)[0]["image"]).save(folder / "good.png")
  out = str(tmp_path / "out")
  assert masks.main(["--images", str(folder), "--out", out, "--ratio", "20,10"]) == 2
  assert "--ratio '20,10' is invalid" in capsys.readouterr().err
  monkeypatch.setitem(sys.modules, "dlib", None)  # as if the optional dlib wheel were not installed
  assert masks.main(["--images", str(folder), "--out", out]) == 2
  assert "landmark detection needs dlib" in capsys.readouterr().err
  assert masks.main(["--images", str(folder), "--out", out, "--type", "boxes"]) == 0  # no landmarks needed
  (folder / "broken.png").write_bytes(b"not a png")
  assert masks.main(["--images", str(folder), "--out", out, "--type", "boxes"]) == 2
  err = capsys.readouterr().err
  assert "cannot read image" in err and "broken.png" in err
  assert masks.main(["--images", str(folder), "--out", out, "--type", "boxes", "--skip_errors"]) == 0
  assert json.loads(open(os.path.join(out, "masks.json")).read())["skipped"] == ["broken"]
  assert "skipped broken: cannot read image" in capsys.readouterr().err
  (folder / "broken.png").unlink()
  (tmp_path / "lm.json").write_text(json.dumps({"other": np.zeros((68, 2)).tolist()}))
  assert masks.main(["--images", str(folder), "--out", out, "--landmarks", str(tmp_path / "lm.json")]) == 2
  assert "no entry for good" in capsys.readouterr().err
  assert masks.main(["--out", out]) == 2
  assert "either --images DIR or --synthetic N" in capsys.readouterr().err
