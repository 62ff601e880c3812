"""Comic panel sequences for SSuperGAN: context panels and a target panel whose face is painted white.

Ask for them with `config.input.record = "panels"` (the default "image" reads single faces). A record, as the
train step sees it (B = the batch size, S = panels.num_panels, P = panels.panel_size, F = panels.face_size):
  "panels"    float32 (B, S, P, P, 3) in [-1, 1]: the S panels of a sequence, each resized (squashed) to P x P,
              the target LAST, its face box filled white (+1: SSuperGAN's mask_val 1 in [0, 1] space). The
              models get no separate mask: the hole is just white pixels.
  "image"     float32 (B, F, F, 3) in [-1, 1]: the target's real face, cropped from the target panel before it was
              painted (face box of the panel at its own size) and resized to F x F.
  "face_box"  int32 (B, 4): x1, y1, x2, y2 of the white box in the resized target panel (x2, y2 exclusive), where
              `generate --paste` puts a generated face back.
  "identity"  int32 (B,): synthetic sequences only, the identity of the sequence's character.
Sources store uint8; the pipeline's `transforms.to_float` maps "panels" and "image" to [-1, 1].

Settings (`config.input.panels`): num_panels S (3), panel_size P (300; the cpu presets 96), face_size F (the same
reference as input.resolution: setting one sets both; 64), domain (the synthetic sequences' drawing style, "toon";
input.synthetic.domain is for face images) and torchvision_resize (below). The panel sources use the input's
`source` names:
* "synthetic" (the default; no download): `SyntheticPanels`. Sequence n shows identity n % num_identities
  (input.synthetic.num_identities, default num_examples // 4) of `synthetic.render` in every panel, at a new view
  (pose, expression) and a new size, position and mirror each time, over a comic background (flat, horizon,
  gradient, halftone dots or rays) inside a black frame, with speech bubbles that may hide part of a context
  panel's face (never the target's) and, in some panels, a second character of another identity behind it. So
  the context panels tell who the masked face is. Deterministic per (input.synthetic.seed, n).
* "folder": `FolderPanels` of input.folder.image_dir = SEQ_DIR, laid out as
      SEQ_DIR/boxes.json      {"<id>": [x1, y1, x2, y2], ...}: the target's face box in the last panel's own pixels
      SEQ_DIR/<id>/0.png ...  the S panels (.png, .jpg, .jpeg, .bmp, .webp) in name order (zero-pad: 00.png,
                              01.png, ... past ten), the target last, at any size (squashed to P x P)
      SEQ_DIR/<id>/face.png   optional: the target's real face; without it the face is cropped from the last
                              panel at its box, which must then not be painted yet
  The last panel may already be painted white (filling again changes nothing): the same layout is what
  `generate --panels SEQ_DIR [--paste SEQ_DIR/boxes.json]` reads, where no real face is needed
  (`FolderPanels(..., faces=False)`), and what `export_sequences` writes from any panel source.
* "tfds": `TfdsPanels` of a dataset built by input_pipeline/golden_panels.py (input.tfds.name = "golden_panels"):
  whole panel images plus SSuperGAN's crop areas; each panel is cropped to its area at read time.

Resizing. SSuperGAN's GoldenPanelsDataset fills the face box at the panel's own size, then resizes with
torchvision's tensor resize (bilinear without antialiasing), so the box's edges blend into their neighbours and
a downscaled panel aliases. By default here panels and faces are resized bilinearly with antialiasing (torch's
antialias=True, PIL's bilinear filter) and the box is filled after resizing, scaled outwards to whole pixels, so
it is exactly white and exactly where face_box says. `panels.torchvision_resize = True` restores the original:
fill first, bilinear without antialiasing (torch's interpolate, align_corners=False), and face_box its
`return_mask` box (each coordinate int(c * P / size)). Either way results are rounded to uint8 (the original keeps
floats: at most 0.5/255 apart).
"""

import colorsys
from collections.abc import Iterable, Mapping, Sequence
import functools
import json
import math
import operator
import os

import grain
import ml_collections
import numpy as np
from PIL import Image

from facegen_jax.errors import ConfigError, DataError
from input_pipeline import sources
from input_pipeline import synthetic

RECORDS = ("image", "panels")
BOXES_FILE = "boxes.json"
FACE_STEM = "face"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MIN_PANEL_SIZE, MAX_PANEL_SIZE = 16, 1024
MIN_FACE_SIZE = 8

_C = {name: i for i, name in enumerate(synthetic.CLASS_NAMES)}
# What a face detector's box holds: the face and its features, not hair, hat, ears or neck.
_FACE_CLASSES = np.isin(np.arange(synthetic.NUM_CLASSES), [_C[c] for c in (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")])
_INK = 18.0  # Frame, outline and lettering colour.


def default_config(face_size) -> ml_collections.ConfigDict:
  """config.input.panels; `face_size` is input.resolution's FieldReference, so the two are one setting."""
  config = ml_collections.ConfigDict()
  config.num_panels = 3        # S: the context panels and the target, last (SSuperGAN's seq_size 3).
  config.panel_size = 300      # P: SSuperGAN's panel_dim 300 x 300; the cpu presets use 96.
  config.face_size = face_size  # F: the target face crop (SSuperGAN's img_size 64); input.resolution too.
  config.domain = "toon"       # Drawing style of the synthetic sequences (comics); synthetic.domain is not used.
  # True: GoldenPanelsDataset's order and resize (fill, then bilinear without antialiasing); see the docstring.
  config.torchvision_resize = False
  return config


def record_kind(input_config) -> str:
  return input_config.get("record", "image")  # A config saved before panel records existed reads images.


# ----------------------------------------------------------------------------------------------------------------
# Resizing and the record.


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
  """Torch's bilinear interpolate along one axis (align_corners=False; with antialias the filter widens by the scale
  when downsampling, as torch's antialias=True and PIL do) as (out_size, K) source indices and float32 weights."""
  scale = in_size / out_size
  rows = []
  for i in range(out_size):
    if antialias:
      support = scale if scale >= 1 else 1.0
      inv = 1 / scale if scale >= 1 else 1.0
      centre = scale * (i + 0.5)
      lo = max(int(centre - support + 0.5), 0)
      hi = min(int(centre + support + 0.5), in_size)
      taps = np.maximum(0.0, 1 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv))
      rows.append((np.arange(lo, hi), taps / taps.sum()))
    else:
      src = max((i + 0.5) * scale - 0.5, 0.0)
      i0 = min(int(src), in_size - 1)
      frac = min(max(src - i0, 0.0), 1.0)
      rows.append((np.array([i0, min(i0 + 1, in_size - 1)]), np.array([1 - frac, frac])))
  width = max(len(index) for index, _ in rows)
  indices = np.zeros((out_size, width), np.intp)  # Padded with zero weights on the last tap.
  weights = np.zeros((out_size, width), np.float32)
  for i, (index, taps) in enumerate(rows):
    indices[i, :len(index)], indices[i, len(index):] = index, index[-1]
    weights[i, :len(taps)] = taps
  indices.flags.writeable = weights.flags.writeable = False
  return indices, weights


def resize_bilinear(image: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
  """An (H, W, C) image resized to size = (height, width) bilinearly, as float32 (torch's interpolate)."""
  image = np.asarray(image, np.float32)
  height, width = image.shape[:2]
  if (height, width) == tuple(size):
    return image.copy()
  # Weighted sums of a few gathered rows, then columns: a dense matmul would be as fast on an idle core, but
  # BLAS's threads in every reader thread made it 10x slower on loaded cores.
  index, weight = _taps(height, size[0], antialias)
  rows = weight[:, 0, None, None] * image[index[:, 0]]
  for k in range(1, index.shape[1]):
    rows += weight[:, k, None, None] * image[index[:, k]]
  index, weight = _taps(width, size[1], antialias)
  out = weight[None, :, 0, None] * rows[:, index[:, 0]]
  for k in range(1, index.shape[1]):
    out += weight[None, :, k, None] * rows[:, index[:, k]]
  return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def check_box(box, width: int, height: int, where: str) -> tuple[int, int, int, int]:
  """The face box (x1, y1, x2, y2) as ints, or a DataError naming `where` if it is not a box inside the panel."""
  try:
    x1, y1, x2, y2 = (int(v) if isinstance(v, float) and v.is_integer() else operator.index(v) for v in box)
  except (TypeError, ValueError):
    raise DataError(f"{where}: face box {box!r} is not four integers x1, y1, x2, y2") from None
  if not 0 <= x1 < x2 <= width or not 0 <= y1 < y2 <= height:
    raise DataError(f"{where}: face box {[x1, y1, x2, y2]} is empty or outside the {width}x{height} panel "
                    "(need 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height): fix the box")
  return x1, y1, x2, y2


def make_record(panels: Sequence[np.ndarray], face_box, *, panel_size: int, face_size: int,
                torchvision_resize: bool = False, face: np.ndarray | None = None, where: str = "sequence") -> dict:
  """The uint8 record of S panels at their own sizes (uint8 (H, W, 3), the target last) and the target's face box
  (x1, y1, x2, y2 in the target's pixels): panels (S, P, P, 3), image (F, F, 3), face_box int32 (4,).

  `face`: the target's real face (uint8 (h, w, 3)) if the target panel is painted already; else it is cropped
  from the target at `face_box`. `where` names the sequence in errors."""
  target = np.asarray(panels[-1])
  height, width = target.shape[:2]
  x1, y1, x2, y2 = check_box(face_box, width, height, where)
  antialias = not torchvision_resize
  if face is None:
    face = target[y1:y2, x1:x2]
  record = {"image": _to_uint8(resize_bilinear(face, (face_size, face_size), antialias=antialias))}
  size = (panel_size, panel_size)
  if torchvision_resize:
    # GoldenPanelsDataset.__getitem__: the box is filled at the panel's own size, then the panel resized; the
    # box is return_mask's int(c * P / size).
    painted = target.copy()
    painted[y1:y2, x1:x2] = 255
    resized = [resize_bilinear(p, size, antialias=False) for p in list(panels[:-1]) + [painted]]
    box = (x1 * panel_size // width, y1 * panel_size // height, x2 * panel_size // width,
           y2 * panel_size // height)
  else:
    resized = [resize_bilinear(p, size) for p in panels]
    # Outwards to whole pixels, so no resized pixel that saw the face stays unpainted.
    box = (x1 * panel_size // width, y1 * panel_size // height, -(-x2 * panel_size // width),
           -(-y2 * panel_size // height))
    resized[-1][box[1]:box[3], box[0]:box[2]] = 255
  record["panels"] = np.stack([_to_uint8(p) for p in resized])
  record["face_box"] = np.asarray(box, np.int32)
  return record


# ----------------------------------------------------------------------------------------------------------------
# Synthetic sequences.


def native_size(panel_size: int, face_size: int) -> int:
  """The side synthetic panels are drawn at before resizing to P: large enough that the target's face (about 0.2
  to 0.4 of it) is cropped at about F pixels or more."""
  return max(panel_size, 4 * face_size)


def _colour(u_hue: float, u_sat: float, u_val: float, *, sat=(0.25, 0.8), val=(0.45, 0.95)) -> np.ndarray:
  s = sat[0] + (sat[1] - sat[0]) * u_sat
  v = val[0] + (val[1] - val[0]) * u_val
  return np.array(colorsys.hsv_to_rgb(u_hue, s, v), np.float32) * 255


def _background(u: np.ndarray, n: int) -> np.ndarray:
  """A comic panel's background from 12 uniforms: flat, horizon, gradient, halftone dots or rays."""
  c = (np.arange(n, dtype=np.float32) + 0.5) / n
  y, x = c[:, None], c[None, :]
  c0, c1 = _colour(*u[0:3]), _colour(*u[3:6], val=(0.3, 0.9))
  kind = int(u[6] * 5)
  if kind == 0:
    weight = np.zeros((n, n), np.float32)
  elif kind == 1:  # Sky and ground.
    weight = np.broadcast_to(y > 0.45 + 0.35 * u[7], (n, n)).astype(np.float32)
  elif kind == 2:  # A vertical gradient.
    weight = np.broadcast_to(y, (n, n))
  elif kind == 3:  # Halftone dots on a slanted grid.
    period = 1 / (9 + 10 * u[8])
    gx, gy = (x + 0.5 * y) / period, y / period
    dist = np.hypot(gx - np.round(gx), gy - np.round(gy))
    weight = (dist < 0.18 + 0.17 * u[9]).astype(np.float32)
  else:  # Rays from a point, alternating sectors.
    angle = np.arctan2(y - u[10], x - u[11])
    weight = (np.sin(angle * (8 + 2 * int(u[9] * 6))) > 0).astype(np.float32)
  return c0 + weight[..., None] * (c1 - c0)


def _face_square(label: np.ndarray) -> tuple[int, int, int, int]:
  """The square (x1, y1, x2, y2) around the face's classes in a rendered label map, as a detector's box."""
  face = _FACE_CLASSES[label]
  rows, cols = np.flatnonzero(face.any(axis=1)), np.flatnonzero(face.any(axis=0))
  cx, cy = (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2
  half = max(cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]) / 2
  return int(cx - half), int(cy - half), int(math.ceil(cx + half)), int(math.ceil(cy + half))


def _paste(canvas: np.ndarray, character: dict, x0: int, y0: int) -> None:
  """Paints a rendered character's non-background pixels onto the canvas with its top-left corner at (x0, y0)."""
  n, size = canvas.shape[0], character["image"].shape[0]
  top, left = max(y0, 0), max(x0, 0)
  bottom, right = min(y0 + size, n), min(x0 + size, n)
  if bottom <= top or right <= left:
    return
  window = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
  body = character["label"][window] > 0
  canvas[top:bottom, left:right][body] = character["image"][window][body]


def _character(seed: int, view: int, size: int, domain: str, num_identities: int, mirror: bool) -> dict:
  """A rendered head and shoulders of `size` pixels: image and label (0 = background, not painted)."""
  drawn = min(max(size, synthetic.MIN_RESOLUTION), synthetic.MAX_RESOLUTION)
  example = synthetic.render(seed, view, drawn, domain, num_identities)
  image, label = example["image"], example["label"]
  if drawn != size:  # Beyond the renderer's range (panels over 512 px).
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST))
  if mirror:
    image, label = image[:, ::-1], label[:, ::-1]
  return {"image": image, "label": label}


def _overlap(a, b) -> int:
  """Pixels shared by two boxes (x1, y1, x2, y2)."""
  return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Pixels within `radius` (Chebyshev) of the mask."""
  height, width = mask.shape
  padded = np.zeros((height + 2 * radius, width + 2 * radius), bool)
  padded[radius:radius + height, radius:radius + width] = mask
  grown = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      grown |= padded[dy:dy + height, dx:dx + width]
  return grown


def _bubble(canvas: np.ndarray, u: np.ndarray, towards: tuple[float, float], thickness: int) -> tuple:
  """Draws a speech bubble (outlined ellipse, lettering, a tail towards `towards`) from 9 uniforms; its box."""
  n = canvas.shape[0]
  rx, ry = (0.12 + 0.16 * u[0]) * n, (0.07 + 0.07 * u[1]) * n
  bx, by = (0.12 + 0.76 * u[2]) * n, (0.06 + 0.34 * u[3]) * n
  box = (int(bx - rx) - thickness, int(by - ry) - thickness, int(bx + rx) + thickness + 1,
         int(by + ry) + 2 * thickness + int(0.12 * n) + 1)
  x1, y1, x2, y2 = max(box[0], 0), max(box[1], 0), min(box[2], n), min(box[3], n)
  y = np.arange(y1, y2, dtype=np.float32)[:, None] + 0.5
  x = np.arange(x1, x2, dtype=np.float32)[None, :] + 0.5
  inside = np.square((x - bx) / rx) + np.square((y - by) / ry)
  # The tail: a narrow triangle from under the bubble towards the speaker, as long as 0.12 n at most.
  tx, ty = towards
  length = max(math.hypot(tx - bx, ty - by), 1.0)
  dx, dy = (tx - bx) / length, (ty - by) / length
  along = (x - bx) * dx + (y - by) * dy
  across = np.abs((x - bx) * dy - (y - by) * dx)
  reach = ry + 0.12 * n * (0.5 + 0.5 * u[4])
  tail = (along > 0) & (along < reach) & (across < 0.25 * rx * (1 - along / reach))
  window = canvas[y1:y2, x1:x2]
  shape = (inside < 1) | tail
  window[_dilate(shape, thickness)] = _INK  # The outline.
  window[shape] = 250.0
  # Lettering: two or three lines of "words".
  lines = 2 + int(u[5] * 2)
  for k in range(lines):
    row = by + ry * (-0.45 + 0.9 * (k + 0.5) / lines)
    half = rx * 0.7 * math.sqrt(max(0.0, 1 - ((row - by) / ry) ** 2))
    words = np.sin((x - bx) * (0.5 + u[6]) * 12 / rx * math.pi + 7 * u[7] + k) > -0.5
    text = (np.abs(y - row) < max(1.0, 0.06 * ry)) & (np.abs(x - bx) < half) & words
    window[text & (inside < 1)] = _INK + 40
  return box


def draw_sequence(seed: int, index: int, *, num_panels: int, size: int, num_identities: int,
                  domain: str = "toon") -> dict:
  """Sequence `index`: "panels" [S uint8 (size, size, 3)], "face_boxes" [S main-character face squares (x1, y1,
  x2, y2)], "identity" and "other" (the second character's identity, or -1): every draw from (seed, index)."""
  rng = np.random.default_rng([seed, 7, index])
  u = rng.random(4)
  identity = index % num_identities
  other = (identity + 1 + int(u[0] * (num_identities - 1))) % num_identities if num_identities > 1 else -1
  other_p = 0.25 + 0.5 * u[1]  # How often the second character shows in this sequence.
  panels, boxes = [], []
  thickness = max(2, round(size / 128))  # Of the frame and outlines.
  margin = thickness + 1
  for j in range(num_panels):
    target = j == num_panels - 1
    v = np.random.default_rng([seed, 7, index, j]).random(48)  # One fixed draw per panel.
    canvas = _background(v[0:12], size)
    view = lambda who: who + (index * num_panels + j) * num_identities  # A new view of `who` in every panel.
    c = int((0.5 + 0.45 * v[12]) * size)
    main = _character(seed, view(identity), c, domain, num_identities, v[13] < 0.5)
    fx1, fy1, fx2, fy2 = _face_square(main["label"])
    x_lo, x_hi = margin - fx1, size - margin - fx2
    y_lo, y_hi = margin - fy1, size - margin - fy2
    x0 = int(x_lo + v[14] * max(x_hi - x_lo, 0))
    y0 = int(np.clip(size - c + v[15] * 0.3 * c, y_lo, max(y_lo, y_hi)))
    face = (x0 + fx1, y0 + fy1, x0 + fx2, y0 + fy2)
    if other >= 0 and v[16] < other_p:
      side = 1 if (face[0] + face[2]) / 2 < size / 2 else -1
      c2 = int((0.45 + 0.35 * v[17]) * size)
      second = _character(seed, view(other), c2, domain, num_identities, v[18] < 0.5)
      centre = size / 2 + side * (0.2 + 0.3 * v[19]) * size
      _paste(canvas, second, int(centre - c2 / 2), int(size - c2 + v[20] * 0.25 * c2))
    _paste(canvas, main, x0, y0)
    area = (face[2] - face[0]) * (face[3] - face[1])
    for b in range(int(v[21] * 2.6)):  # 0, 1 or 2 bubbles.
      u_b = v[22 + 9 * b:31 + 9 * b]
      trial = canvas.copy()
      bubble = _bubble(trial, u_b, ((face[0] + face[2]) / 2, face[1]), thickness)
      # A bubble may hide up to a third of a context panel's face, none of the target's.
      if _overlap(bubble, face) <= (0 if target else area / 3):
        canvas = trial
    canvas[:thickness], canvas[-thickness:], canvas[:, :thickness], canvas[:, -thickness:] = (_INK,) * 4
    panels.append(_to_uint8(canvas))
    boxes.append(face)
  return {"panels": panels, "face_boxes": boxes, "identity": identity, "other": other}


class SyntheticPanels(grain.sources.RandomAccessDataSource):
  """`num_examples` synthetic sequences (`draw_sequence`) as records; num_identities defaults to num_examples // 4."""

  def __init__(self, num_examples: int, *, num_panels: int = 3, panel_size: int = 300, face_size: int = 64,
               seed: int = 0, num_identities: int | None = None, domain: str = "toon",
               torchvision_resize: bool = False):
    if num_examples < 1:
      raise ConfigError(f"synthetic num_examples={num_examples!r} is invalid: use an integer >= 1")
    if domain not in synthetic.DOMAINS:
      raise ConfigError(f"panels domain={domain!r} is invalid: use one of {synthetic.DOMAINS}")
    if num_identities is not None and num_identities < 1:
      raise ConfigError(f"synthetic num_identities={num_identities!r} is invalid: use an integer >= 1")
    self.num_examples, self.num_panels, self.seed, self.domain = num_examples, num_panels, seed, domain
    self.panel_size, self.face_size, self.torchvision_resize = panel_size, face_size, torchvision_resize
    self.num_identities = max(1, num_examples // 4) if num_identities is None else num_identities
    self.size = native_size(panel_size, face_size)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} synthetic sequences")
    drawn = draw_sequence(self.seed, index, num_panels=self.num_panels, size=self.size,
                          num_identities=self.num_identities, domain=self.domain)
    record = make_record(drawn["panels"], drawn["face_boxes"][-1], panel_size=self.panel_size,
                         face_size=self.face_size, torchvision_resize=self.torchvision_resize)
    record["identity"] = np.asarray(drawn["identity"], np.int32)
    return record

  def __repr__(self) -> str:
    return (f"SyntheticPanels(num_examples={self.num_examples}, num_panels={self.num_panels}, panel_size="
            f"{self.panel_size}, face_size={self.face_size}, seed={self.seed}, num_identities={self.num_identities}, "
            f"domain={self.domain!r})")


# ----------------------------------------------------------------------------------------------------------------
# A folder of sequences.


def _sequence_files(folder: str) -> tuple[list[str], str | None]:
  """(the panel files of a sequence folder in name order, its face file or None)."""
  panels, face = [], None
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    path = os.path.join(folder, name)
    if ext.lower() not in EXTENSIONS or not os.path.isfile(path):
      continue
    if stem == FACE_STEM:
      face = path
    else:
      panels.append(path)
  return panels, face


def read_boxes(path: str) -> dict[str, list]:
  """{id: [x1, y1, x2, y2]} of a boxes JSON, or a DataError naming the file and the fix."""
  try:
    with open(path) as f:
      boxes = json.load(f)
  except FileNotFoundError:
    raise DataError(f"'{path}' does not exist: write the target face boxes there as {{\"<id>\": [x1, y1, x2, y2]}} "
                    "(see input_pipeline/panels.py)") from None
  except (OSError, ValueError) as e:
    raise DataError(f"'{path}' cannot be read as JSON ({e}): write it as {{\"<id>\": [x1, y1, x2, y2]}}") from None
  bad = None if isinstance(boxes, dict) else "the file"
  for key, box in boxes.items() if bad is None else ():
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in box)):
      bad = f"the entry {key!r}: {box!r}"
      break
  if bad:
    raise DataError(f"'{path}': {bad} is not {{\"<id>\": [x1, y1, x2, y2]}} with integer pixel coordinates: fix it")
  return boxes


class FolderPanels(grain.sources.RandomAccessDataSource):
  """The sequences of SEQ_DIR (the layout in the module docstring) as records.

  With `faces` (training) every sequence needs a box in SEQ_DIR/boxes.json and a real face (face.png or an
  unpainted target). Without (`generate --panels`), records have "panels" and, where boxes.json gives one,
  "face_box" (the box filled again); `ids` names the sequences. `flag` is where image_dir lives in the config.
  """

  def __init__(self, seq_dir: str, *, num_panels: int, panel_size: int, face_size: int,
               torchvision_resize: bool = False, faces: bool = True, flag: str = "input.folder"):
    if not os.path.isdir(seq_dir):
      raise DataError(f"{flag}.image_dir '{seq_dir}' does not exist or is not a folder: set --config.{flag}.image_dir "
                      "to a folder of sequences <id>/ (see input_pipeline/panels.py)")
    self.ids = sorted(entry.name for entry in os.scandir(seq_dir) if entry.is_dir(follow_symlinks=True))
    if not self.ids:
      raise DataError(f"'{seq_dir}' holds no sequence folders: put each sequence's {num_panels} panels in "
                      f"{os.path.join(seq_dir, '<id>')}/ (see input_pipeline/panels.py)")
    boxes_path = os.path.join(seq_dir, BOXES_FILE)
    boxes = read_boxes(boxes_path) if faces or os.path.exists(boxes_path) else {}
    self._files = []
    for name in self.ids:
      panels, face = _sequence_files(os.path.join(seq_dir, name))
      if len(panels) != num_panels:
        raise DataError(f"'{os.path.join(seq_dir, name)}' holds {len(panels)} panel images, not "
                        f"input.panels.num_panels={num_panels}: give every sequence {num_panels} panels "
                        f"(extensions {EXTENSIONS}; '{FACE_STEM}.*' is the real face) or set "
                        "--config.input.panels.num_panels")
      if faces and name not in boxes:
        raise DataError(f"'{boxes_path}' has no box for sequence '{name}': add \"{name}\": [x1, y1, x2, y2] (the "
                        "face box in its last panel's pixels)")
      self._files.append((panels, face))
    self._boxes = [boxes.get(name) for name in self.ids]
    self.seq_dir, self.num_panels, self.panel_size, self.face_size = seq_dir, num_panels, panel_size, face_size
    self.torchvision_resize, self.faces, self._flag = torchvision_resize, faces, flag
    self._unreadable = set()

  def __len__(self) -> int:
    return len(self.ids)

  def __repr__(self) -> str:
    return f"FolderPanels({self.seq_dir!r}, {len(self)} sequences of {self.num_panels} panels)"

  def __getitem__(self, index: int) -> dict | None:
    index = operator.index(index) % len(self)
    (panel_paths, face_path), box = self._files[index], self._boxes[index]
    path = panel_paths[0]
    try:
      panels = []
      for path in panel_paths:
        panels.append(sources.read_image(path, "RGB"))
      face = None
      if face_path is not None and self.faces:
        path = face_path
        face = sources.read_image(path, "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      sources._note_unreadable(path, e)  # pylint: disable=protected-access  # One log per file, process-wide.
      self._unreadable.add(index)
      if len(self._unreadable) == len(self):
        raise DataError(f"none of the {len(self)} sequences under '{self.seq_dir}' can be read (e.g. '{path}': "
                        f"{e}): check the files") from None
      return None
    where = f"sequence '{os.path.join(self.seq_dir, self.ids[index])}' ({BOXES_FILE})"
    if box is None:  # generate --panels without a box: the panels as they are.
      size = (self.panel_size, self.panel_size)
      return {"panels": np.stack([_to_uint8(resize_bilinear(p, size, antialias=not self.torchvision_resize))
                                  for p in panels])}
    if self.faces and face is None:
      x1, y1, x2, y2 = check_box(box, panels[-1].shape[1], panels[-1].shape[0], where)
      if np.all(panels[-1][y1:y2, x1:x2] >= 250):
        face_file = os.path.join(self.seq_dir, self.ids[index], FACE_STEM + ".png")
        raise DataError(f"{where}: the last panel '{panel_paths[-1]}' is painted white at the face box and there is "
                        f"no {FACE_STEM}.png: save the real face as '{face_file}' or give the unpainted panel")
    record = make_record(panels, box, panel_size=self.panel_size, face_size=self.face_size,
                         torchvision_resize=self.torchvision_resize, face=face, where=where)
    if not self.faces:
      del record["image"]
    return record


def export_sequences(records: Iterable[Mapping], seq_dir: str, ids: Iterable[str] | None = None) -> list[str]:
  """Writes uint8 records (a panel source's) as SEQ_DIR/<id>/ (panels, face.png) plus SEQ_DIR/boxes.json; returns
  the ids (default "000000", ...). Reading it back at the same sizes gives the same records."""
  os.makedirs(seq_dir, exist_ok=True)
  boxes_path = os.path.join(seq_dir, BOXES_FILE)
  boxes = read_boxes(boxes_path) if os.path.exists(boxes_path) else {}
  written = []
  ids = iter(ids) if ids is not None else (f"{i:06d}" for i in range(1 << 62))
  for record, name in zip(records, ids):
    folder = os.path.join(seq_dir, name)
    os.makedirs(folder, exist_ok=True)
    width = len(str(len(record["panels"]) - 1))
    for j, panel in enumerate(np.asarray(record["panels"], np.uint8)):
      Image.fromarray(panel).save(os.path.join(folder, f"{j:0{width}d}.png"))
    Image.fromarray(np.asarray(record["image"], np.uint8)).save(os.path.join(folder, FACE_STEM + ".png"))
    boxes[name] = [int(v) for v in record["face_box"]]
    written.append(name)
  with open(boxes_path, "w") as f:
    json.dump(boxes, f, indent=0)
  return written


# ----------------------------------------------------------------------------------------------------------------
# Golden Age panels (TFDS).


def golden_face_box(panel_areas, face_area, where: str) -> tuple[int, int, int, int]:
  """The last panel's face_area [x1, y1, x2, y2] shifted by its panel_area's origin and clipped to that crop, as
  GoldenPanelsDataset's f_shifted; a DataError naming `where` if an area is empty or the box leaves the crop."""
  for area in panel_areas:
    x1, y1, x2, y2 = (int(v) for v in area)
    if x2 <= x1 or y2 <= y1:
      raise DataError(f"{where}: panel_area {[x1, y1, x2, y2]} is empty: rebuild the sequence JSON")
  px1, py1, px2, py2 = (int(v) for v in panel_areas[-1])
  fx1, fy1, fx2, fy2 = (int(v) for v in face_area)
  box = (max(fx1 - px1, 0), max(fy1 - py1, 0), min(fx2 - px1, px2 - px1), min(fy2 - py1, py2 - py1))
  return check_box(box, px2 - px1, py2 - py1,
                   f"{where} (face_area {[fx1, fy1, fx2, fy2]} in panel_area {[px1, py1, px2, py2]})")


def golden_crops(images: Sequence[Image.Image], panel_areas, face_area, where: str):
  """SSuperGAN's crops of one sequence: each panel image cropped to its panel_area (PIL's crop: black outside the
  image, as TF.crop of a PIL image), and `golden_face_box`. Returns (uint8 crops, face box)."""
  box = golden_face_box(panel_areas, face_area, where)
  crops = [np.asarray(image.crop(tuple(int(v) for v in area))) for image, area in zip(images, panel_areas)]
  return crops, box


def decode_panel(data: bytes, where: str) -> Image.Image:
  """An RGB PIL image of a stored panel file, or a DataError naming it."""
  import io  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as image:
      return image.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(f"{where} cannot be decoded ({type(e).__name__}: {e}): replace the file and rebuild") from None


class TfdsPanels(grain.sources.RandomAccessDataSource):
  """Records of a TFDS panel dataset (input_pipeline/golden_panels.py's features) read by random access."""

  FEATURES = ("panels", "panel_areas", "face_areas", "paths")

  def __init__(self, data_source, *, name: str, num_panels: int, panel_size: int, face_size: int,
               torchvision_resize: bool = False, flag: str = "input.tfds"):
    if not len(data_source):
      raise DataError(f"TFDS dataset '{name}' has no examples in this split: check --config.{flag}.split")
    first = data_source[0]
    missing = [f for f in self.FEATURES if f not in first]
    if missing:
      raise ConfigError(f"TFDS dataset '{name}' has no {missing} features, so it is not a panel dataset (it has "
                        f"{sorted(first)}): set --config.{flag}.name=golden_panels or --config.input.record=image")
    if len(first["panels"]) != num_panels:
      raise ConfigError(f"TFDS dataset '{name}' has sequences of {len(first['panels'])} panels, not "
                        f"input.panels.num_panels={num_panels}: set --config.input.panels.num_panels="
                        f"{len(first['panels'])}")
    self._source, self._name = data_source, name
    self.num_panels, self.panel_size, self.face_size = num_panels, panel_size, face_size
    self.torchvision_resize = torchvision_resize

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TfdsPanels({self._name!r}, {len(self)} sequences of {self.num_panels} panels)"

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in example["paths"]]
    where = f"tfds {self._name} record {index}"
    images = [decode_panel(data, f"{where} panel '{path}'") for data, path in zip(example["panels"], paths)]
    crops, box = golden_crops(images, example["panel_areas"], example["face_areas"][-1], where)
    return make_record(crops, box, panel_size=self.panel_size, face_size=self.face_size,
                       torchvision_resize=self.torchvision_resize, where=where)


# ----------------------------------------------------------------------------------------------------------------
# The pipeline's side: validation, sources, the log line.


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate(input_config) -> None:
  """Raises ConfigError for the first panel setting that cannot work (with input.record = "panels")."""
  c, p = input_config, input_config.panels
  if c.get("domains") or c.get("groups"):
    raise ConfigError("input.record 'panels' reads one source of sequences: unset --config.input.domains and "
                      "--config.input.groups, or set --config.input.record=image")
  for field, low, high in (("num_panels", 2, 64), ("panel_size", MIN_PANEL_SIZE, MAX_PANEL_SIZE),
                           ("face_size", MIN_FACE_SIZE, MAX_PANEL_SIZE)):
    if not _is_int(p[field]) or not low <= p[field] <= high:
      raise ConfigError(f"input.panels.{field} {p[field]!r} is not an int in [{low}, {high}]: fix "
                        f"--config.input.panels.{field}")
  if c.resolution != p.face_size:
    raise ConfigError(f"input.panels.face_size {p.face_size} and input.resolution {c.resolution} differ (panel "
                      "records' image is the face crop): set them equal")
  if c.source == "synthetic":
    s = c.synthetic
    if p.domain not in synthetic.DOMAINS:
      raise ConfigError(f"input.panels.domain {p.domain!r} is unknown: set --config.input.panels.domain to one of "
                        f"{synthetic.DOMAINS}")
    if not _is_int(s.num_examples) or s.num_examples < 1:
      raise ConfigError(f"input.synthetic.num_examples {s.num_examples!r} must be a positive int (sequences): fix "
                        "--config.input.synthetic.num_examples")
    if not _is_int(s.seed) or s.seed < 0:
      raise ConfigError(f"input.synthetic.seed {s.seed!r} must be a non-negative int: fix "
                        "--config.input.synthetic.seed")
    if s.num_identities is not None and (not _is_int(s.num_identities) or s.num_identities < 1):
      raise ConfigError(f"input.synthetic.num_identities {s.num_identities!r} must be a positive int or None: fix "
                        "--config.input.synthetic.num_identities")
  elif c.source == "folder" and not c.folder.image_dir:
    raise ConfigError("input.folder.image_dir is not set: set --config.input.folder.image_dir to a folder of "
                      "sequences (see input_pipeline/panels.py)")
  elif c.source == "tfds" and not c.tfds.name:
    raise ConfigError("input.tfds.name is not set: set --config.input.tfds.name=golden_panels")


def create_source(input_config) -> grain.sources.RandomAccessDataSource:
  """The configured panel source (validated by `validate` first)."""
  c, p = input_config, input_config.panels
  sizes = dict(num_panels=p.num_panels, panel_size=p.panel_size, face_size=p.face_size,
               torchvision_resize=bool(p.torchvision_resize))
  if c.source == "synthetic":
    return SyntheticPanels(c.synthetic.num_examples, seed=c.synthetic.seed, num_identities=c.synthetic.num_identities,
                           domain=p.domain, **sizes)
  if c.source == "folder":
    return FolderPanels(c.folder.image_dir, **sizes)
  t = c.tfds
  data_source = sources.open_tfds(t.name, split=t.split, data_dir=t.data_dir)
  return TfdsPanels(data_source, name=t.name, **sizes)


def describe(input_config, source) -> str:
  """One line for the log: where the sequences come from, how many, and their sizes."""
  c, p = input_config, input_config.panels
  if c.source == "synthetic":
    where = (f"synthetic {p.domain} panel sequences (seed {c.synthetic.seed}, "
             f"{getattr(source, 'num_identities', '?'):,} identities)")
  elif c.source == "folder":
    where = f"panel sequences in '{c.folder.image_dir}'"
  else:
    where = f"tfds {c.tfds.name}[{c.tfds.split}]" + (f" in '{c.tfds.data_dir}'" if c.tfds.data_dir else "")
  resize = "fill then torchvision resize" if p.torchvision_resize else "antialiased resize"
  return (f"{where}: {len(source):,} sequences of {p.num_panels} panels at {p.panel_size}x{p.panel_size}, target "
          f"face box white, faces {p.face_size}x{p.face_size} ({resize}), {c.worker_count} workers x "
          f"{c.read_threads} threads")
