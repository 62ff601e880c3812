r"""Hole masks for face inpainting: MaskTheFace's medical masks and TFill's boxes, strokes and mask folders.

  python -m facegen_jax.masks --images DIR --out OUT [--type surgical|n95|kn95|cloth|random|center|boxes|strokes]
      [--ratio LO,HI] [--seed S] [--dilate PX] [--variant auto|front|left|right] [--landmarks FILE.json]
  python -m facegen_jax.masks --synthetic N [--resolution 256] [--domain photo|toon] --out OUT [same flags]

writes OUT/masks/<stem>.png (8-bit grey, white = hole: what `inpaint --masks` and the image-folder source's
mask_dir read), OUT/masked/<stem>.png (the face wearing the mask; a box or stroke hole is grey, the value 0 of
mask * image in [-1, 1]) and OUT/masks.json (type, template variant and hole ratio per file), as Triple-Dots
prepared its datasets; --synthetic renders input_pipeline/synthetic.py faces (also written, to OUT/images/).

Holes are bool (H, W) arrays here, True = hole; `visible` gives the models' mask (TFill's convention: 1 = visible,
0 = hole). Each record's mask is drawn from `record_rng(seed, key)`, key = its index or its file's path under
--images, so evaluation masks never change from one run to the next, nor when files are added.

Face masks follow MaskTheFace (aqeelanwar/MaskTheFace utils/aux_functions.py get_six_points / mask_face): six
points from dlib's 68 landmarks, a template whose six reference points are in the same order (a, b, c, f, e, d),
the homography of those onto the face, the `_left` / `_right` template beyond 13 degrees of yaw, and the hole =
every pixel the warped template's alpha touches (MaskTheFace's compositing alters all of them). The templates are
drawn here (`draw_template`), not MaskTheFace's PNGs. cv2 is not a dependency (an opencv wheel for one homography
and one warp of host-side data prep), so the homography (normalised DLT refined by Levenberg-Marquardt, as
cv2.findHomography's method 0) and the bilinear warp are numpy. Landmarks come from the synthetic faces' own
geometry (`synthetic.landmarks68`), a --landmarks file, or dlib (`align.detect_landmarks`, optional).
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import math
import os
import sys
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from facegen_jax import errors

TEMPLATE_KINDS = ("surgical", "n95", "kn95", "cloth")
TFILL_KINDS = ("center", "boxes", "strokes")  # TFill's mask_type 0 (centre box), 1 (rectangles), 2 (irregular)
KINDS = TEMPLATE_KINDS + ("random",) + TFILL_KINDS
VARIANTS = ("front", "left", "right")
YAW_THRESHOLD = 13.0  # degrees; mask_face's `threshold`
BANDS = {"10-20": (0.1, 0.2), "20-30": (0.2, 0.3), "30-40": (0.3, 0.4)}  # Triple-Dots' hole-ratio bands
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_STREAM = 0x6D61736B  # "mask": record_rng's streams differ from other users of (seed, index)


def record_rng(seed: int, key: int | str) -> np.random.Generator:
  """The generator of record `key` (an index, or a file's relative path), independent of every other record."""
  if isinstance(key, str):
    key = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
  if not isinstance(seed, (int, np.integer)) or seed < 0 or key < 0:
    raise errors.ConfigError(f"mask seed={seed!r} and key={key!r} must be integers >= 0")
  return np.random.default_rng([_STREAM, int(seed), int(key)])


def visible(hole: np.ndarray) -> np.ndarray:
  """(H, W) hole -> (H, W, 1) float32, 1 = visible, 0 = hole (TFill's convention; image_m = mask * image)."""
  return (~np.asarray(hole, bool)).astype(np.float32)[..., None]


def hole_ratio(hole: np.ndarray) -> float:
  return float(np.mean(np.asarray(hole, bool)))


def parse_ratio(text: str) -> tuple[float, float]:
  """'LO,HI' (fractions of the image, e.g. 0.1,0.2) or a band name of BANDS -> (lo, hi)."""
  if text in BANDS:
    return BANDS[text]
  try:
    lo, hi = (float(x) for x in text.split(","))
  except ValueError:
    lo = hi = None
  if lo is None or not 0 <= lo < hi <= 1:
    raise errors.ConfigError(f"--ratio {text!r} is invalid: give LO,HI with 0 <= LO < HI <= 1 (fractions of the "
                             f"image, e.g. 0.1,0.2) or one of {sorted(BANDS)}")
  return lo, hi


# --- MaskTheFace's six points ---


class SixPoints(NamedTuple):
  points: np.ndarray  # (6, 2) x, y in the order a, b, c, f, e, d (mask_face's `six_points`)
  angle: float  # degrees: the nose line's direction minus the nose-root-to-lower-lip line's (get_angle)


def _direction_deg(p, q) -> float:
  """The direction of line p-q in [0, 180) degrees (get_angle's normalisation; y points down)."""
  return math.degrees(math.atan2(q[1] - p[1], q[0] - p[0])) % 180.0


def _chin_crossings(p, q, chin, tol: float = 1.0) -> list[np.ndarray]:
  """Crossings of the infinite line p-q with each segment of the polyline `chin`, in chin order; a crossing
  counts within `tol` px of a segment's bounding box (line_intersection's +-1)."""
  d = np.asarray(q, float) - p
  found = []
  for s0, s1 in zip(chin[:-1], chin[1:]):
    e = s1 - s0
    denom = d[0] * e[1] - d[1] * e[0]
    if abs(denom) < 1e-12:
      continue
    k = ((s0[0] - p[0]) * e[1] - (s0[1] - p[1]) * e[0]) / denom
    x = p + k * d
    lo, hi = np.minimum(s0, s1) - tol, np.maximum(s0, s1) + tol
    if np.all(x >= lo) and np.all(x <= hi):
      found.append(x)
  return found


def _ellipse_outline(points: np.ndarray) -> np.ndarray | None:
  """An ellipse fitted to `points` (direct least squares: 4ac - b^2 = 1), sampled as a closed polyline."""
  x, y = points[:, 0] - points[:, 0].mean(), points[:, 1] - points[:, 1].mean()
  design = np.stack([x * x, x * y, y * y, x, y, np.ones_like(x)], 1)
  scatter = design.T @ design
  constraint = np.zeros((6, 6))
  constraint[0, 2] = constraint[2, 0] = 2
  constraint[1, 1] = -1
  try:
    values, vectors = np.linalg.eig(np.linalg.solve(scatter, constraint))
  except np.linalg.LinAlgError:
    return None
  values = np.real(values)
  ok = np.flatnonzero(np.isfinite(values) & (values > 0))
  if not ok.size:
    return None
  a, b, c, d, e, f = np.real(vectors[:, ok[0]])
  centre = np.linalg.solve([[2 * a, b], [b, 2 * c]], [-d, -e])
  # axes from the quadratic form at the centre
  f0 = f + 0.5 * (d * centre[0] + e * centre[1])
  evals, evecs = np.linalg.eigh([[a, b / 2], [b / 2, c]])
  if np.any(evals * -f0 <= 0):
    return None
  radii = np.sqrt(-f0 / evals)
  t = np.linspace(0, 2 * np.pi, 73)
  local = np.stack([radii[0] * np.cos(t), radii[1] * np.sin(t)], 1) @ evecs.T
  return local + centre + points.mean(axis=0)


def six_points(landmarks) -> SixPoints:
  """MaskTheFace's get_six_points on dlib's 68 landmarks (x, y).

  b: the nose bridge's midpoint (27 and 30). e: where the jaw (0-16) meets the perpendicular to the eye line
  (shifted down by half the nose length) through the eyes' midpoint, averaged with where it meets the line from
  the nose root through the lower lip's mean. a, c: the first and last jaw crossings of the eye line shifted
  down by the nose length (too few: the jaw's fitted ellipse, then jaw ends 0 and 16; from the ellipse we take
  the outermost crossings). d, f: the same at the lower lip's lowest y.
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
    raise errors.DataError(f"face masks need dlib's 68 landmarks as a (68, 2) array of x, y; got {lm.shape}")
  chin, root, tip = lm[0:17], lm[27], lm[30]
  left_eye, right_eye = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
  bottom_lip = lm[[54, 55, 56, 57, 58, 59, 48, 64, 65, 66, 67, 60]]  # face_recognition's "bottom_lip"
  nose_length = tip[1] - root[1]
  eye_vector = right_eye - left_eye
  normal = np.array([-eye_vector[1], eye_vector[0]])

  def shifted(dy):  # the eye line moved down by dy
    return left_eye + (0, dy), right_eye + (0, dy)

  half = shifted(nose_length / 2)
  mid = (half[0] + half[1]) / 2
  lip_mean = bottom_lip.mean(axis=0)
  first = [c[0] for c in (_chin_crossings(mid, mid + normal, chin), _chin_crossings(root, lip_mean, chin)) if c]
  if not first:
    raise errors.DataError("the landmarks' jaw (0-16) does not meet the face's centre line: not a face's 68 points")
  e = np.mean(first, axis=0)
  b = (root + tip) / 2
  crossings = _chin_crossings(*shifted(nose_length), chin)
  if len(crossings) < 2:
    outline = _ellipse_outline(chin)
    crossings = [] if outline is None else _chin_crossings(*shifted(nose_length), outline)
    crossings = sorted(crossings, key=lambda p: p[0])
    if len(crossings) < 2:
      crossings = [chin[0], chin[-1]]
  a, c = crossings[0], crossings[-1]
  lips = _chin_crossings(*shifted(bottom_lip[:, 1].max() - (left_eye[1] + right_eye[1]) / 2), chin)
  if not lips:
    raise errors.DataError("the landmarks' jaw (0-16) does not reach the lower lip's level: not a face's 68 points")
  d, f = lips[0], lips[-1]
  angle = _direction_deg(root, tip) - _direction_deg(root, lip_mean)
  return SixPoints(np.stack([a, b, c, f, e, d]), float(angle))


def variant_for(angle: float, threshold: float = YAW_THRESHOLD) -> str:
  """mask_face's template choice: "_right" below -threshold degrees, "_left" above it."""
  return "right" if angle < -threshold else "left" if angle > threshold else "front"


# --- the homography and the warp ---


def _normaliser(points: np.ndarray) -> np.ndarray:
  """Hartley's similarity: centroid to 0, mean distance sqrt(2)."""
  centre = points.mean(axis=0)
  spread = np.sqrt(np.sum((points - centre) ** 2, axis=1)).mean()
  if spread < 1e-12:
    raise errors.DataError("a homography needs points that are not all the same")
  s = math.sqrt(2) / spread
  return np.array([[s, 0, -s * centre[0]], [0, s, -s * centre[1]], [0, 0, 1.0]])


def project(matrix, points) -> np.ndarray:
  """(N, 2) points through a 3x3 homography."""
  points = np.asarray(points, np.float64)
  q = np.hstack([points, np.ones((len(points), 1))]) @ np.asarray(matrix, np.float64).T
  return q[:, :2] / q[:, 2:]


def _reprojection(h: np.ndarray, src: np.ndarray, dst: np.ndarray):
  """Residuals (2N,) and their Jacobian (2N, 8) in the first eight entries of H (H[2, 2] = 1)."""
  x, y = src[:, 0], src[:, 1]
  w = h[6] * x + h[7] * y + 1
  px, py = (h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w
  zero, one = np.zeros_like(x), np.ones_like(x)
  jx = np.stack([x, y, one, zero, zero, zero, -px * x, -px * y], 1) / w[:, None]
  jy = np.stack([zero, zero, zero, x, y, one, -py * x, -py * y], 1) / w[:, None]
  return np.concatenate([px - dst[:, 0], py - dst[:, 1]]), np.concatenate([jx, jy])


def homography(src, dst, *, refine: bool = True) -> np.ndarray:
  """The 3x3 H (H[2, 2] = 1) with dst ~ H [src, 1]: the normalised DLT over all N >= 4 pairs, then (refine)
  Levenberg-Marquardt on the squared reprojection error, as cv2.findHomography(src, dst) (method 0) fits it.
  Four pairs, or six that are a projective image of each other, are mapped exactly."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 4:
    raise ValueError(f"homography needs two (N >= 4, 2) point arrays, got {src.shape} and {dst.shape}")
  ts, td = _normaliser(src), _normaliser(dst)
  s, d = project(ts, src), project(td, dst)
  rows = []
  for (x, y), (u, v) in zip(s, d):
    rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
    rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
  _, singular, vt = np.linalg.svd(np.array(rows))
  if singular[7] < 1e-10 * singular[0]:
    raise errors.DataError("these points do not determine a homography (three or more lie on a line)")
  matrix = np.linalg.inv(td) @ vt[-1].reshape(3, 3) @ ts
  matrix = matrix / matrix[2, 2]
  if not refine or len(src) == 4:
    return matrix
  h, damping = matrix.ravel()[:8].copy(), 1e-3
  residual, jacobian = _reprojection(h, src, dst)
  cost = residual @ residual
  for _ in range(100):
    normal, gradient = jacobian.T @ jacobian, jacobian.T @ residual
    step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
    trial = h + step
    r, j = _reprojection(trial, src, dst)
    if r @ r < cost:
      h, residual, jacobian, cost, damping = trial, r, j, r @ r, damping * 0.1
      if np.linalg.norm(step) < 1e-12 * (1 + np.linalg.norm(h)):
        break
    else:
      damping *= 10
      if damping > 1e12:
        break
  return np.append(h, 1.0).reshape(3, 3)


def warp_perspective(image: np.ndarray, matrix, size: tuple[int, int]) -> np.ndarray:
  """(H', W', C) float32: out[y, x] = bilinear `image` (H, W, C) at H^-1 (x, y), zeros outside; `size` is
  (W', H'); pixel centres at integers (cv2.warpPerspective's INTER_LINEAR, BORDER_CONSTANT 0, in float).
  Only the output box that the image's corners map to is sampled."""
  image = np.asarray(image, np.float32)
  width, height = size
  out = np.zeros((height, width, image.shape[2]), np.float32)
  h, w = image.shape[:2]
  corners = np.array([[-1, -1], [w, -1], [w, h], [-1, h]], np.float64)
  q = np.hstack([corners, np.ones((4, 1))]) @ np.asarray(matrix, np.float64).T
  if np.all(q[:, 2] > 0):  # the whole template in front: its corners bound it
    box = q[:, :2] / q[:, 2:]
    x0, y0 = np.clip(np.floor(box.min(axis=0)).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(box.max(axis=0)).astype(int) + 1, 0, [width, height])
  else:
    x0, y0, x1, y1 = 0, 0, width, height
  if x1 <= x0 or y1 <= y0:
    return out
  inverse = np.linalg.inv(np.asarray(matrix, np.float64))
  ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
  q = inverse[:, 0, None, None] * xs + inverse[:, 1, None, None] * ys + inverse[:, 2, None, None]
  with np.errstate(divide="ignore", invalid="ignore"):
    sx, sy = q[0] / q[2], q[1] / q[2]
  valid = np.isfinite(sx) & np.isfinite(sy) & (q[2] > 0)
  sx, sy = np.where(valid, sx, -10.0), np.where(valid, sy, -10.0)
  ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
  fx, fy = (sx - ix).astype(np.float32), (sy - iy).astype(np.float32)
  acc = np.zeros((y1 - y0, x1 - x0, image.shape[2]), np.float32)
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      px, py = ix + dx, iy + dy
      inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
      tap = image[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
      acc += (np.where(inside, wx * wy, 0.0)[..., None] * tap).astype(np.float32)
  out[y0:y1, x0:x1] = acc
  return out


# --- procedural mask templates ---
# A template is drawn in mask coordinates (s across, -1 .. 1 between the side anchors; t down, 0 .. 1 from the nose
# bridge to the chin) on a cylinder seen from a yaw: x = X0 + R sin(PHI s + yaw), y = Y0 + T t. "left" / "right"
# turn it as MaskTheFace's _left / _right PNGs are turned (b near a, or near c).

_R, _PHI, _T, _MARGIN = 300.0, math.radians(55), 400.0, 12.0
_YAW = {"front": 0.0, "left": math.radians(-30), "right": math.radians(30)}
# The six anchors (a, b, c, f, e, d) of each kind in (s, t), in masks.cfg's arrangement: a, c high on the sides, b at
# the top centre, d, f low on the sides, e at the bottom centre. d, f sit ~0.8 as far apart as a, c, as the face
# points do (the jaw narrows from the nose tip to the lower lip), so six points fit one homography closely.
_ANCHORS = {
    "surgical": [(-1, 0.24), (0, 0.04), (1, 0.24), (0.75, 0.66), (0, 0.96), (-0.75, 0.66)],
    "n95": [(-0.93, 0.42), (0, 0.05), (0.93, 0.42), (0.75, 0.68), (0, 0.97), (-0.75, 0.68)],
    "kn95": [(-1, 0.12), (0, 0.03), (1, 0.12), (0.75, 0.55), (0, 0.98), (-0.75, 0.55)],
    "cloth": [(-0.85, 0.24), (0, 0.05), (0.85, 0.24), (0.64, 0.66), (0, 0.97), (-0.64, 0.66)],
}
_COLOURS = {  # RGB choices per kind; the first is the default
    "surgical": [(150, 195, 235), (236, 238, 240), (150, 215, 190), (235, 180, 200), (60, 62, 70)],
    "n95": [(238, 236, 228), (225, 228, 232)],
    "kn95": [(242, 242, 244), (205, 208, 214), (48, 50, 56)],
    "cloth": [(40, 42, 48), (32, 74, 140), (160, 40, 50), (90, 120, 80), (210, 190, 160), (120, 80, 140)],
}
TEXTURES = ("plain", "stripes", "checks", "dots", "weave")


class Template(NamedTuple):
  rgba: np.ndarray  # (h, w, 4) uint8, alpha 255 on the mask
  points: np.ndarray  # (6, 2) the anchors a, b, c, f, e, d in its pixels


def _shape(kind: str, s: np.ndarray, t: np.ndarray):
  """(inside, top edge, bottom edge) of the kind's outline at (s, t)."""
  a = np.abs(s)
  if kind == "surgical":  # a rectangle whose top rises to the nose and bottom drops to the chin
    top, bottom = 0.22 * s * s, 1.0 - 0.3 * a ** 3
    return (a <= 1.04) & (t >= top) & (t <= bottom), top, bottom
  if kind == "n95":  # a dome: an ellipse narrowed towards the nose (an egg)
    taper = 0.62 + 0.38 * np.clip(t / 0.55, 0, 1)
    inside = np.square(s / (1.06 * taper)) + np.square((t - 0.55) / 0.55) < 1
    return inside, np.full_like(s, 0.0), np.full_like(s, 1.1)
  if kind == "kn95":  # two folded panels meeting in a point at the chin
    top, bottom = 0.02 + 0.08 * a, 1.0 - 0.45 * a ** 1.3
    return (a <= 1.02) & (t >= top) & (t <= bottom), top, bottom
  top, bottom = 0.03 + 0.2 * a, 1.0 - 0.32 * s * s  # cloth: a peak at the nose, sides narrowing downwards
  return (a <= 1.12 - 0.12 * t) & (t >= top) & (t <= bottom), top, bottom


def _texture(texture: str, s: np.ndarray, t: np.ndarray, freq: float) -> np.ndarray:
  """A brightness pattern in [0, 1] over the mask's surface."""
  if texture == "stripes":
    return (np.sin(freq * (s + 0.6 * t)) > 0).astype(np.float32)
  if texture == "checks":
    return ((np.sin(freq * s) > 0) ^ (np.sin(freq * t) > 0)).astype(np.float32)
  if texture == "dots":
    return (np.square(np.sin(freq * s)) + np.square(np.sin(freq * t)) < 0.35).astype(np.float32)
  if texture == "weave":
    return 0.5 + 0.25 * np.sin(4 * freq * s) * np.sin(4 * freq * t)
  return np.zeros_like(s)


def _surface(kind: str, s, t, top, bottom, colour, texture, freq):
  """RGB (N, 3) in [0, 255] of the mask's surface: colour, folds, seams and texture, before lighting."""
  shade = np.ones_like(s)
  rel = (t - top) / np.maximum(bottom - top, 1e-6)  # 0 at the top edge, 1 at the bottom edge
  if kind == "surgical":
    for fold in (0.3, 0.5, 0.7):  # pleats: a shadow under each fold, a highlight above it
      shade -= 0.22 * np.exp(-np.square((rel - fold) / 0.03)) * (rel > fold)
      shade += 0.08 * np.exp(-np.square((rel - fold + 0.04) / 0.03))
    shade -= 0.1 * ((rel < 0.07) | (rel > 0.93) | (np.abs(s) > 0.97))  # bound edges
    shade -= 0.15 * ((np.abs(rel - 0.035) < 0.008) & (np.sin(60 * s) > 0))  # stitching
  elif kind == "n95":
    shade -= 0.12 * np.exp(-np.square((rel - 0.42 - 0.1 * s * s) / 0.02))  # the dome's seam
    clip = (np.abs(s) < 0.32) & (rel < 0.07)
    shade -= 0.25 * clip  # nose clip
    text = (rel > 0.6) & (rel < 0.8) & (np.abs(s) < 0.45) & (np.sin(40 * t) > 0.3) & (np.sin(90 * s) > -0.6)
    shade -= 0.45 * text
  elif kind == "kn95":
    shade -= 0.18 * (np.abs(s) < 0.012)  # centre fold
    shade -= 0.12 * np.exp(-np.square((rel - 0.25) / 0.015))  # cross fold
    shade -= 0.2 * (((rel < 0.05) | (rel > 0.95)) & (np.sin(70 * (s + t)) > 0))  # dotted welded edge
  else:
    shade -= 0.15 * (np.abs(s) < 0.01)  # centre seam
    shade -= 0.1 * ((rel < 0.04) | (rel > 0.96))  # hem
  rgb = np.asarray(colour, np.float32)[None, :] * shade[:, None]
  if texture != "plain":  # MaskTheFace's pattern: blended with weight 0.5
    pattern = _texture(texture, s, t, freq)[:, None]
    rgb = 0.5 * rgb + 0.5 * (rgb * 0.45 + pattern * (255 - rgb * 0.45))
  return rgb


def draw_template(kind: str, variant: str = "front", *, colour=None, texture: str = "plain", freq: float = 18.0,
                  scale: float = 1.0) -> Template:
  """Our drawing of a `kind` mask seen from `variant` ("front", "left", "right"), with MaskTheFace's anchors."""
  if kind not in TEMPLATE_KINDS or variant not in VARIANTS or texture not in TEXTURES:
    raise errors.ConfigError(f"mask template {kind!r}/{variant!r}/{texture!r} is invalid: use a kind of "
                             f"{TEMPLATE_KINDS}, a variant of {VARIANTS} and a texture of {TEXTURES}")
  colour = _COLOURS[kind][0] if colour is None else colour
  r, height, margin, yaw = _R * scale, _T * scale, _MARGIN * scale, _YAW[variant]
  anchors = np.array(_ANCHORS[kind], np.float64)
  # the horizontal extent of the drawn surface (|s| <= 1.12): where it ends on the cylinder
  phis = np.clip(np.array([-1.12, 1.12]) * _PHI + yaw, -math.pi / 2, math.pi / 2)
  x_lo, x_hi = r * np.sin(phis)
  x0, y0 = margin - x_lo, margin + 0.02 * height
  w, h = int(math.ceil(x_hi - x_lo + 2 * margin)), int(math.ceil(1.06 * height + 2 * margin))
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  sin_phi = (xs - x0) / r
  t = (ys - y0) / height
  front = np.abs(sin_phi) < 1
  s = (np.arcsin(np.clip(sin_phi, -1, 1)) - yaw) / _PHI
  inside, top, bottom = _shape(kind, s, t)
  inside &= front
  rgba = np.zeros((h, w, 4), np.float32)
  phi = _PHI * s[inside] + yaw
  rgb = _surface(kind, s[inside], t[inside], top[inside], bottom[inside], colour, texture, freq)
  rgba[inside, :3] = rgb * (0.8 + 0.2 * np.cos(phi))[:, None]  # the cylinder's light falls off to its sides
  rgba[inside, 3] = 255
  points = np.stack([x0 + r * np.sin(_PHI * anchors[:, 0] + yaw), y0 + height * anchors[:, 1]], 1)
  return Template(np.clip(np.rint(rgba), 0, 255).astype(np.uint8), points)


def random_style(kind: str, rng: np.random.Generator) -> dict:
  """A colour, texture and pattern frequency for `kind` (textures on cloth only, as MaskTheFace's patterns)."""
  colours = _COLOURS[kind]
  colour = np.array(colours[int(rng.integers(len(colours)))], np.float32)
  if kind == "cloth" and rng.random() < 0.3:  # any hue
    colour = np.array(colorsys.hsv_to_rgb(rng.random(), 0.3 + 0.5 * rng.random(), 0.3 + 0.6 * rng.random())) * 255
  texture = TEXTURES[int(rng.integers(len(TEXTURES)))] if kind == "cloth" else "plain"
  return {"colour": tuple(float(c) for c in colour), "texture": texture, "freq": float(10 + 20 * rng.random())}


# --- face masks ---


class FaceMask(NamedTuple):
  image: np.ndarray  # (H, W, 3) uint8, the face wearing the mask
  hole: np.ndarray  # (H, W) bool, True where the warped template's alpha is > 0 (and its dilation)
  variant: str
  points: np.ndarray  # the six face points a, b, c, f, e, d


def dilate(hole: np.ndarray, radius: float) -> np.ndarray:
  """The hole grown by a disc of `radius` px (to cover a real mask's outline, Triple-Dots' future work)."""
  hole = np.asarray(hole, bool)
  if radius <= 0 or not hole.any():
    return hole
  return ndimage.distance_transform_edt(~hole) <= radius


def _brightness(rgb: np.ndarray) -> float:
  return float(np.max(rgb, axis=-1).mean()) if rgb.size else 0.0


def mask_face(image, landmarks, kind: str = "surgical", *, variant: str = "auto", style: dict | None = None,
              dilate_px: float = 0.0) -> FaceMask:
  """MaskTheFace's mask_face with our templates: the `kind` template (variant "auto": chosen by the landmarks'
  yaw) warped onto the six points of `landmarks` (68, 2), composited over `image` (H, W, 3) uint8.

  Its brightness is matched to the image's (mask_face's HSV V shift, measured over the template's opaque pixels
  rather than its whole canvas); colours blend by the warped alpha instead of cv2.add's saturating sum.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise errors.DataError(f"mask_face needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
  six = six_points(landmarks)
  if variant == "auto":
    variant = variant_for(six.angle)
  face_width = float(np.linalg.norm(six.points[2] - six.points[0]))
  scale = float(np.clip(face_width / (2 * _R * math.sin(_PHI)) * 1.5, 0.05, 1.0))  # ~1.5 template px per face px
  template = draw_template(kind, variant, scale=scale, **(style or {}))
  matrix = homography(template.points, six.points)
  premultiplied = template.rgba.astype(np.float32)
  alpha_t = premultiplied[..., 3:] / 255
  opaque = template.rgba[..., 3] > 0
  gain = 1 + (_brightness(image.astype(np.float32)) - _brightness(premultiplied[opaque][:, :3])) / 255
  premultiplied[..., :3] = np.clip(premultiplied[..., :3] * gain, 0, 255) * alpha_t
  height, width = image.shape[:2]
  warped = warp_perspective(premultiplied, matrix, (width, height))
  alpha = np.clip(warped[..., 3:] / 255, 0, 1)
  out = image.astype(np.float32) * (1 - alpha) + warped[..., :3]
  hole = dilate(warped[..., 3] > 0.5 / 255, dilate_px)
  return FaceMask(np.clip(np.rint(out), 0, 255).astype(np.uint8), hole, variant, six.points)


def fit_to_band(hole: np.ndarray, band: tuple[float, float], what: str = "the mask") -> np.ndarray:
  """The hole dilated by the smallest radius that brings its ratio into [lo, hi]; a DataError if none does."""
  lo, hi = band
  ratio = hole_ratio(hole)
  if ratio > hi:
    raise errors.DataError(f"{what} covers {ratio:.1%} of the image, above the band's {hi:.0%}: the face is too "
                           "large for this band (crop wider, or choose a higher --ratio)")
  if ratio >= lo:
    return np.asarray(hole, bool)
  if not np.any(hole):
    raise errors.DataError(f"{what} is empty: it cannot be grown into the band")
  distance = ndimage.distance_transform_edt(~np.asarray(hole, bool))
  radii = np.sort(np.unique(distance))
  counts = np.searchsorted(np.sort(distance.ravel()), radii, side="right") / distance.size
  k = int(np.searchsorted(counts, lo))
  if k >= len(radii) or counts[k] > hi:
    raise errors.DataError(f"{what} cannot be grown into [{lo:.0%}, {hi:.0%}]: one step jumps past it")
  return distance <= radii[k]


# --- TFill's mask types (lyndonzheng/TFill util/task.py, dataloader/data_loader.py) ---


def center_hole(height: int, width: int) -> np.ndarray:
  """center_mask: rows [H/4, 3H/4) and columns [W/4, 3W/4) (int() of each bound), 1/4 of the image."""
  hole = np.zeros((height, width), bool)
  hole[int(height / 4):int(height * 3 / 4), int(width / 4):int(width * 3 / 4)] = True
  return hole


def _box(rng: np.random.Generator, height: int, width: int, count: int) -> tuple[slice, slice]:
  """One of random_regular_mask's `count` rectangles: a corner below size - size/(count+1), each side between
  size/(count+7) and min(size - corner, size/2)."""
  spans = []
  for size in (height, width):
    start = int(rng.integers(0, int(size - size / (count + 1)) + 1))
    low, high = int(size / (count + 7)), min(int(size - start), int(size / 2))
    spans.append(slice(start, start + int(rng.integers(low, max(low, high) + 1))))
  return spans[0], spans[1]


def _stamp_capsule(hole: np.ndarray, p, q, radius: float) -> None:
  """Sets the pixels within `radius` of the segment p-q (x, y; a disc if p == q)."""
  height, width = hole.shape
  lo = np.floor(np.minimum(p, q) - radius).astype(int)
  hi = np.ceil(np.maximum(p, q) + radius).astype(int) + 1
  x0, y0 = max(lo[0], 0), max(lo[1], 0)
  x1, y1 = min(hi[0], width), min(hi[1], height)
  if x1 <= x0 or y1 <= y0:
    return
  ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
  d = np.asarray(q, float) - p
  length2 = float(d @ d)
  k = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / length2, 0, 1) if length2 > 0 else 0.0
  hole[y0:y1, x0:x1] |= np.square(xs - p[0] - k * d[0]) + np.square(ys - p[1] - k * d[1]) <= radius * radius


def _stroke(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """One shape of random_irregular_mask: a thick line (20 %), a disc (30 %) or a thick elliptical arc (50 %),
  widths and radii from 2 to a tenth of the shorter side (drawn here by distance, not cv2)."""
  hole = np.zeros((height, width), bool)
  widest = max(3, int(min(height, width) / 10))
  kind = rng.random()
  if kind < 0.2:
    p = rng.integers(1, [width + 1, height + 1], size=(2, 2)).astype(float)
    _stamp_capsule(hole, p[0], p[1], rng.integers(2, widest + 1) / 2)
  elif kind < 0.5:
    centre = rng.integers(1, [width + 1, height + 1]).astype(float)
    _stamp_capsule(hole, centre, centre, float(rng.integers(2, widest + 1)))
  else:
    centre = rng.integers(1, [width + 1, height + 1]).astype(float)
    axes = rng.integers(1, [width + 1, height + 1]).astype(float)
    rotation, start, end = np.radians(rng.integers(3, 181, size=3))
    start, end = min(start, end), max(start, end)
    radius = rng.integers(2, widest + 1) / 2
    angles = np.linspace(start, end, max(2, int(np.degrees(end - start) / 4) + 2))
    local = np.stack([axes[0] * np.cos(angles), axes[1] * np.sin(angles)], 1)
    c, s = math.cos(rotation), math.sin(rotation)
    points = local @ np.array([[c, s], [-s, c]]) + centre
    for p, q in zip(points[:-1], points[1:]):
      _stamp_capsule(hole, p, q, radius)
  return hole


def _in_band(rng, height, width, band, draw, what: str, attempts: int = 2000) -> np.ndarray:
  """Shapes from `draw` added one by one, each kept only if the union stays <= hi, until the ratio is >= lo."""
  lo, hi = band
  hole = np.zeros((height, width), bool)
  for _ in range(attempts):
    grown = hole | draw()
    if hole_ratio(grown) <= hi:
      hole = grown
      if hole_ratio(hole) >= lo:
        return hole
  raise errors.DataError(f"no {what} mask in [{lo:.0%}, {hi:.0%}] after {attempts} shapes at {height}x{width}")


def box_hole(rng: np.random.Generator, height: int, width: int, band: tuple[float, float] | None = None):
  """random_regular_mask: 1-5 rectangles; with `band`, rectangles of its distribution until the ratio is in it."""
  count = int(rng.integers(1, 6))

  def draw():
    hole = np.zeros((height, width), bool)
    hole[_box(rng, height, width, count)] = True
    return hole

  if band is not None:
    return _in_band(rng, height, width, band, draw, "boxes")
  return np.any([draw() for _ in range(count)], axis=0)


def stroke_hole(rng: np.random.Generator, height: int, width: int, band: tuple[float, float] | None = None):
  """random_irregular_mask: 16-64 free-form shapes (on the strokes; TFill's own returns them inverted); with
  `band`, shapes until the ratio is in it."""
  if band is not None:
    return _in_band(rng, height, width, band, lambda: _stroke(rng, height, width), "strokes")
  return np.any([_stroke(rng, height, width) for _ in range(int(rng.integers(16, 65)))], axis=0)


def random_hole(kind: str, rng: np.random.Generator, height: int, width: int,
                band: tuple[float, float] | None = None) -> np.ndarray:
  """A TFill hole of `kind` ("center", "boxes", "strokes"); the centre box is 25 % whatever the band says."""
  if kind == "center":
    hole = center_hole(height, width)
    if band is not None and not band[0] <= hole_ratio(hole) <= band[1]:
      raise errors.ConfigError(f"the centre mask covers 25 %, outside --ratio {band[0]},{band[1]}")
    return hole
  if kind == "boxes":
    return box_hole(rng, height, width, band)
  if kind == "strokes":
    return stroke_hole(rng, height, width, band)
  raise errors.ConfigError(f"mask kind {kind!r} is not one of TFill's {TFILL_KINDS}")


def folder_hole(mask_files: Sequence[str], index: int, height: int, width: int) -> np.ndarray:
  """A user mask (white = hole) for record `index`: file index % len(files) in sorted order (TFill's test loader
  takes mask `item`), resized to (height, width) nearest."""
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  if not mask_files:
    raise errors.DataError("the mask folder has no mask files (8-bit grey PNGs, white = hole)")
  path = sorted(mask_files)[index % len(mask_files)]
  try:
    mask = sources.read_mask(str(path))
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.DataError(f"cannot read mask '{path}' ({e}): masks are 8-bit grey PNGs, white = hole") from e
  if mask.shape != (height, width):
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
  return mask >= 128


# --- the command line ---


def _read_rgb(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image.load()
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.DataError(f"cannot read image '{path}' ({e}): is it an image file?") from e


def _image_files(root: str) -> list[tuple[str, str]]:
  """(key, path) of the images under `root`, key = the path relative to root without its extension."""
  if not os.path.isdir(root):
    raise errors.UserError(f"--images {root} is not a directory of images")
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      stem, ext = os.path.splitext(name)
      if ext.lower() in IMAGE_EXTENSIONS:
        found.append((os.path.relpath(os.path.join(dirpath, stem), root), os.path.join(dirpath, name)))
  if not found:
    raise errors.UserError(f"--images {root} has no images ({' '.join(IMAGE_EXTENSIONS)})")
  return found


def _read_landmarks(path: str) -> dict[str, np.ndarray]:
  """{key or file name: (68, 2)} from a JSON object of 68 [x, y] pairs per image."""
  try:
    with open(path) as f:
      table = json.load(f)
    return {k: np.asarray(v, np.float64).reshape(68, 2) for k, v in table.items()}
  except (OSError, ValueError, AttributeError) as e:
    raise errors.UserError(f"--landmarks {path} is not a JSON object of 68 [x, y] pairs per image ({e})") from e


def make_mask(image: np.ndarray, rng: np.random.Generator, kind: str, *, landmarks=None, band=None,
              variant: str = "auto", dilate_px: float = 0.0) -> dict:
  """One record's masked image (uint8), hole and what was drawn, for any kind of KINDS."""
  height, width = image.shape[:2]
  if kind == "random":
    kind = TEMPLATE_KINDS[int(rng.integers(len(TEMPLATE_KINDS)))]
  if kind in TEMPLATE_KINDS:
    style = random_style(kind, rng)
    face = mask_face(image, landmarks() if callable(landmarks) else landmarks, kind, variant=variant, style=style,
                     dilate_px=dilate_px)
    hole = face.hole if band is None else fit_to_band(face.hole, band, f"the {kind} mask")
    return {"masked": face.image, "hole": hole, "kind": kind, "variant": face.variant}
  hole = dilate(random_hole(kind, rng, height, width, band), dilate_px)
  grey = np.where(hole[..., None], np.uint8(128), image)  # 0 in [-1, 1]: what the model sees in a hole
  return {"masked": grey.astype(np.uint8), "hole": hole, "kind": kind, "variant": ""}


def record_hole(kind: str, seed: int, index: int, height: int, width: int, *, band=None, image=None, landmarks=None,
                mask_files: Sequence[str] | None = None, dilate_px: float = 0.0) -> np.ndarray:
  """Record `index`'s hole (H, W) bool for a data pipeline: any kind of KINDS, or "folder" (`mask_files`, white =
  hole); the face kinds need the record's `image` and `landmarks`. The same for the same (seed, index) always."""
  if kind == "folder":
    return dilate(folder_hole(mask_files or [], index, height, width), dilate_px)
  if kind in TEMPLATE_KINDS + ("random",) and (image is None or landmarks is None):
    raise errors.ConfigError(f"mask kind {kind!r} draws a face mask: it needs the record's image and landmarks")
  if image is None:
    image = np.zeros((height, width, 3), np.uint8)
  return make_mask(image, record_rng(seed, index), kind, landmarks=landmarks, band=band,
                   dilate_px=dilate_px)["hole"]


def run(out: str, *, images: str | None = None, synthetic: int = 0, resolution: int = 256, domain: str = "photo",
        kind: str = "surgical", ratio: str | None = None, seed: int = 0, dilate_px: float = 0.0,
        variant: str = "auto", landmarks: str | None = None, skip_errors: bool = False) -> list[dict]:
  """Masks a folder (or `synthetic` rendered faces) into out/masks, out/masked (and out/images); returns the
  manifest it writes to out/masks.json."""
  from facegen_jax import align  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top

  if kind not in KINDS:
    raise errors.ConfigError(f"--type {kind!r} is not one of {KINDS}")
  if variant not in ("auto",) + VARIANTS:
    raise errors.ConfigError(f"--variant {variant!r} is not one of {('auto',) + VARIANTS}")
  if dilate_px < 0:
    raise errors.ConfigError(f"--dilate {dilate_px} must be >= 0 (pixels)")
  band = None if ratio is None else parse_ratio(ratio)
  if (images is None) == (not synthetic):
    raise errors.UserError("give either --images DIR or --synthetic N")
  table = _read_landmarks(landmarks) if landmarks else None
  if images is not None:
    records = [(key, path) for key, path in _image_files(images)]
  else:
    records = [(f"{i:06d}", i) for i in range(synthetic)]
  for sub in ("masks", "masked") + (("images",) if synthetic else ()):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  manifest, skipped = [], []
  for key, source in records:
    try:
      if images is None:
        image = synthetic_lib.render(seed, source, resolution, domain)["image"]
        points = lambda i=source: synthetic_lib.landmarks68(seed, i, resolution, domain)
        Image.fromarray(image).save(os.path.join(out, "images", key + ".png"))
      else:
        image = _read_rgb(source)
        if table is not None:
          name = os.path.basename(source)
          if key not in table and name not in table:
            raise errors.DataError(f"--landmarks {landmarks} has no entry for {key} (or {name})")
          points = table.get(key, table.get(name))
        else:
          points = lambda im=image: align.detect_landmarks(im)
      result = make_mask(image, record_rng(seed, key if images is not None else source), kind, landmarks=points,
                         band=band, variant=variant, dilate_px=dilate_px)
    except errors.DataError as e:
      if not skip_errors:
        raise errors.DataError(f"{key}: {e} (--skip_errors skips such images)") from e
      skipped.append(key)
      print(f"facegen_jax.masks: skipped {key}: {e}", file=sys.stderr)
      continue
    for sub, array in (("masks", np.where(result["hole"], 255, 0).astype(np.uint8)), ("masked", result["masked"])):
      path = os.path.join(out, sub, key + ".png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(array).save(path)
    manifest.append({"key": key, "type": result["kind"], "variant": result["variant"],
                     "hole_ratio": round(hole_ratio(result["hole"]), 6)})
  with open(os.path.join(out, "masks.json"), "w") as f:
    json.dump({"seed": seed, "type": kind, "ratio": band, "dilate": dilate_px, "skipped": skipped,
               "records": manifest}, f, indent=1)
  if not manifest:
    raise errors.DataError(f"no image could be masked ({len(skipped)} skipped)")
  print(f"facegen_jax.masks: {len(manifest)} masks written to {out}" + (f", {len(skipped)} skipped" if skipped else ""))
  return manifest


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.masks", description=__doc__.splitlines()[0])
  p.add_argument("--images", help="a directory of face photos (landmarks from dlib or --landmarks)")
  p.add_argument("--synthetic", type=int, default=0, help="render N synthetic faces instead of --images")
  p.add_argument("--resolution", type=int, default=256, help="--synthetic's size")
  p.add_argument("--domain", default="photo", choices=("photo", "toon"), help="--synthetic's style")
  p.add_argument("--out", required=True)
  p.add_argument("--type", default="surgical", choices=KINDS)
  p.add_argument("--ratio", help="hole-ratio band LO,HI (e.g. 0.1,0.2) or one of " + ", ".join(BANDS))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dilate", type=float, default=0.0, help="grow the hole by this many pixels")
  p.add_argument("--variant", default="auto", choices=("auto",) + VARIANTS, help="template view (auto: by yaw)")
  p.add_argument("--landmarks", help="JSON {image key or file name: 68 [x, y]} instead of dlib")
  p.add_argument("--skip_errors", action="store_true", help="skip unreadable or faceless images, listing them")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  return errors.run_command("facegen_jax.masks", lambda: run(
      args.out, images=args.images, synthetic=args.synthetic, resolution=args.resolution, domain=args.domain,
      kind=args.type, ratio=args.ratio, seed=args.seed, dilate_px=args.dilate, variant=args.variant,
      landmarks=args.landmarks, skip_errors=args.skip_errors))


if __name__ == "__main__":
  sys.exit(main())
