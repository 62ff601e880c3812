"""facegen_jax/align.py: SATNet's five-point similarity alignment into 200x232 and its side-face rejection."""

import importlib.util
import sys

import numpy as np
import pytest

from facegen_jax import align
from facegen_jax.errors import DataError, UserError

# A frontal face in WebCaricature's 17-point order (x right, y down), about the size of an aligned face:
# contour top/left/bottom/right, brows, eye corners, nose tip, upper lip, left mouth corner, lower lip, right corner.
FRONTAL17 = np.array([
    [100, 20], [30, 120], [100, 220], [170, 120],
    [55, 85], [75, 82], [125, 82], [145, 85],
    [62, 105], [85, 106], [115, 106], [138, 105],
    [100, 145], [99, 175], [78, 185], [101, 195], [122, 185]], np.float64)


def _similarity(rng, mirror=False):
  """A random 2x3 similarity (rotation up to 40 degrees, scale 0.5-3, shift), optionally mirrored."""
  angle, scale = rng.uniform(-0.7, 0.7), rng.uniform(0.5, 3.0)
  linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  if mirror:
    linear = linear @ np.diag([-1.0, 1.0])
  return np.hstack([linear, rng.uniform(-50, 300, (2, 1))])


def test_reference_points_and_size_are_satnets():
  assert align.ALIGNED_SIZE == (200, 232)
  np.testing.assert_allclose(align.reference_points()[0], [(30.2946 + 2) * 2, (51.6963 + 2) * 2])
  np.testing.assert_allclose(align.reference_points(0, 1), align.SPHEREFACE_REFERENCE)


@pytest.mark.parametrize("mirror", [False, True])
def test_five_points_land_on_the_reference(mirror):
  rng = np.random.default_rng(int(mirror))
  reference = align.reference_points()
  for _ in range(20):
    to_image = _similarity(rng, mirror)
    five = align.transform_points(to_image, reference) + rng.normal(0, 0.05, (5, 2))
    matrix = align.similarity_transform(five, reference)
    assert np.abs(align.transform_points(matrix, five) - reference).max() < 0.5
    assert (np.linalg.det(matrix[:, :2]) < 0) == mirror  # the reflective fit is taken for a mirrored face
  with pytest.raises(DataError, match="two distinct landmarks"):
    align.similarity_transform(np.ones((5, 2)), reference)
  with pytest.raises(DataError, match="two distinct landmarks"):
    align.similarity_transform(reference, np.ones((5, 2)))


def test_the_originals_choice_between_the_two_fits():
  """matlab_cp2tform's own example (MATLAB gives the non-reflective fit there). The Python port mirrors its
  destination points in place before comparing the two fits, so it takes the reflective one; we do as it does."""
  uv = np.array([[0, 0], [6, 3], [-2, 5]])
  xy = np.array([[-1, -1], [0, -10], [4, 4]])
  matlab = np.array([[-0.0764, -1.6190], [1.6190, -0.0764], [-3.2156, 0.0290]]).T  # cp2tform's tdata.T, as 2x3
  np.testing.assert_allclose(align.similarity_transform(uv, xy, reflective=False), matlab, atol=1e-4)
  python_port = np.array([[-0.90974236, -2.05425695], [-2.05425695, 0.90974236], [7.69100836, -2.0203037]]).T
  np.testing.assert_allclose(align.similarity_transform(uv, xy), python_port, atol=1e-6)


def test_warp_moves_pixels_as_the_transform_says():
  rng = np.random.default_rng(2)
  matrix = _similarity(rng)
  matrix[:, 2] = (40.0, -30.0)
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
  # A linear ramp is reproduced exactly by bilinear sampling: out(x, y) = ramp(M^-1 (x, y)) where it is inside.
  h, w = 180, 150
  ys, xs = np.mgrid[0:h, 0:w]
  ramp = np.stack([xs, ys, 0.5 * xs - 2 * ys + 7], axis=-1).astype(np.float64)
  out = align.warp_affine(ramp, matrix, (200, 232))
  oys, oxs = np.mgrid[0:232, 0:200]
  sx = inverse[0, 0] * oxs + inverse[0, 1] * oys + inverse[0, 2]
  sy = inverse[1, 0] * oxs + inverse[1, 1] * oys + inverse[1, 2]
  inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
  assert inside.mean() > 0.2
  np.testing.assert_allclose(out[inside][:, 0], sx[inside], atol=1e-9)
  np.testing.assert_allclose(out[inside][:, 1], sy[inside], atol=1e-9)
  far = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
  assert far.any() and not out[far].any()  # zeros outside, as cv2's BORDER_CONSTANT
  # A bright dot goes where the matrix sends it (intensity centroid), in a uint8 image.
  dot = np.zeros((h, w), np.uint8)
  dot[90:93, 60:63] = 255
  warped = align.warp_affine(dot, matrix, (200, 232))
  assert warped.dtype == np.uint8
  weights = warped.astype(np.float64)
  centroid = np.array([(weights * oxs).sum(), (weights * oys).sum()]) / weights.sum()
  np.testing.assert_allclose(centroid, align.transform_points(matrix, [[61, 91]])[0], atol=0.05)


def test_align_face_warps_into_200x232_and_moves_the_landmarks():
  rng = np.random.default_rng(3)
  to_image = np.array([[1.2, 0.5, 60.0], [-0.5, 1.2, 140.0]])  # a tilted face in a 500x600 photo
  landmarks = align.transform_points(to_image, FRONTAL17)
  photo = rng.integers(0, 256, (600, 500, 3), np.uint8)
  face = align.align_face(photo, align.five_points_from_webcaricature17(landmarks), landmarks)
  assert face.image.shape == (232, 200, 3) and face.image.dtype == np.uint8
  assert face.landmarks.shape == (17, 2)
  np.testing.assert_allclose(face.landmarks, align.transform_points(face.matrix, landmarks))
  # The aligned image shows each landmark at its moved position: on a photo whose channels are its own x and y
  # coordinates, the aligned pixel nearest a moved landmark holds (nearly) the landmark's photo coordinates.
  ys, xs = np.mgrid[0:600, 0:500]
  coordinates = align.align_face(np.stack([xs, ys], -1).astype(np.float64), align.five_points_from_webcaricature17(
      landmarks), landmarks).image
  scale = 1 / np.sqrt(abs(np.linalg.det(face.matrix[:, :2])))  # photo pixels per aligned pixel
  for (x, y), original in zip(np.rint(face.landmarks).astype(int), landmarks):
    if not (0 <= x < 200 and 0 <= y < 232):
      continue  # the chin may fall just below the crop
    assert np.linalg.norm(coordinates[y, x] - original) <= 0.71 * scale
  assert align.align_face(photo, align.five_points_from_webcaricature17(landmarks)).landmarks.shape == (5, 2)


def test_five_points():
  lm17 = np.arange(34, dtype=np.float64).reshape(17, 2)
  np.testing.assert_array_equal(align.five_points_from_webcaricature17(lm17),
                                [(lm17[8] + lm17[9]) / 2, (lm17[10] + lm17[11]) / 2, lm17[12], lm17[14], lm17[16]])
  lm68 = np.arange(136, dtype=np.float64).reshape(68, 2)
  np.testing.assert_array_equal(align.five_points_from_dlib68(lm68),
                                [(lm68[36] + lm68[39]) / 2, (lm68[42] + lm68[45]) / 2, lm68[30], lm68[60], lm68[64]])
  with pytest.raises(DataError, match=r"68 landmarks .* got shape \(17, 2\)"):
    align.five_points_from_dlib68(lm17)


def _aligned(landmarks17):
  to_image = np.array([[1.3, -0.4, 80.0], [0.4, 1.3, 30.0]])  # a tilted, larger face in some photo
  in_photo = align.transform_points(to_image, landmarks17)
  five = align.five_points_from_webcaricature17(in_photo)
  return align.transform_points(align.similarity_transform(five, align.reference_points()), in_photo)


def test_side_face_rejection():
  assert align.landmark_order_ok(FRONTAL17)
  assert align.is_frontal(_aligned(FRONTAL17))
  swapped = FRONTAL17.copy()
  swapped[[8, 9, 10, 11]] = swapped[[10, 11, 8, 9]]  # eyes swapped: the corners' left-to-right order breaks
  assert not align.landmark_order_ok(swapped) and not align.is_frontal(_aligned(swapped))
  side = FRONTAL17.copy()
  side[4:17, 0] = 30 + (side[4:17, 0] - 30) * 0.3  # a head turned away: the inner face squeezed to the left edge
  side[12, 0] = 25  # the nose tip beyond the left contour
  assert not align.landmark_order_ok(side) and not align.is_frontal(_aligned(side))
  mirrored_mouth = FRONTAL17.copy()
  mirrored_mouth[[14, 16]] = mirrored_mouth[[16, 14]]
  assert not align.is_frontal(_aligned(mirrored_mouth))


def test_distance_bound_is_pi_d_squared_over_a_tenth_of_the_image():
  """A point d from its reference is rejected when pi d^2 > 0.10 * 200 * 232 (d > 38.43 px)."""
  bound = np.sqrt(0.10 * 200 * 232 / np.pi)
  aligned = _aligned(FRONTAL17)
  mouth_left = align.reference_points()[3]
  for d, frontal in ((bound - 0.05, True), (bound + 0.05, False)):
    moved = aligned.copy()
    moved[14] = mouth_left + (0, d)  # straight down, still above the chin: the order checks hold
    assert align.landmark_order_ok(moved)
    assert align.is_frontal(moved) == frontal
  # Inside the image: with the default rate no reference point is within d of an edge, so test it at rate 1.
  for x, frontal in ((0.5, True), (-0.5, False)):
    moved = aligned.copy()
    moved[1, 0], moved[14, 0] = -10.0, x  # the left mouth corner at the image's left edge, the contour beyond
    assert align.landmark_order_ok(moved)
    assert align.is_frontal(moved, rate=1.0) == frontal


def test_detect_landmarks_without_dlib_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "dlib", None)  # as if the optional wheel were not installed
  with pytest.raises(UserError, match="pip install -r requirements-align.txt") as info:
    align.detect_landmarks(np.zeros((64, 64, 3), np.uint8))
  assert "\n" not in str(info.value)
  find_spec = importlib.util.find_spec  # the model file's package missing (found without importing it)
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "face_recognition_models" else find_spec(name, *args))
  with pytest.raises(UserError, match="face-recognition-models is not installed.*requirements-align.txt"):
    align.dlib_predictor_file()
