"""What the browser app (`facegen_jax.app`) does besides drawing the page: load runs, read uploads, run a model's
compiled generator, make label maps, masks and panel records. No gradio here, so it is tested without a browser.

Each loaded run keeps one jitted generator per output (`infer.generator`), so a request compiles only the first
time a model sees an input shape; the log line of every request says which it was and how long it took.
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from facegen_jax import align
from facegen_jax import errors
from facegen_jax import images as images_lib
from facegen_jax import infer
from facegen_jax import masks as masks_lib
from facegen_jax.families import spade
from input_pipeline import panels as panels_lib
from input_pipeline import pipeline
from input_pipeline import synthetic

MAX_SIDE = 2048  # uploads larger than this on a side are shrunk first (a phone photo is ~4000 px)
MAX_PIXELS = 50_000_000  # PIL refuses more than 2x this as a decompression bomb; we refuse it with a message
# The page's tabs: "label" (label map -> face), "sample", "translate", "inpaint", "complete".
TABS = ("label", "translate", "inpaint", "complete", "sample")


@dataclasses.dataclass
class Model:
  """A restored run and its compiled generators (built on first use, one per output; reused after)."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  family: types.ModuleType
  state: object
  step: int
  generators: dict = dataclasses.field(default_factory=dict)
  compiled: set = dataclasses.field(default_factory=set)  # (output, input signature) already compiled
  requests: int = 0

  @property
  def task(self) -> str:
    return self.family.CONTRACT.task

  @property
  def inputs(self) -> tuple[str, ...]:
    return next(iter(self.family.CONTRACT.eval_outputs.values())).inputs

  @property
  def tab(self) -> str:
    """Which tab serves it: a sampling family conditioned on a label map gets the painting tab."""
    return "label" if self.task == "sample" and "label" in self.inputs else self.task

  @property
  def size(self) -> tuple[int, int]:
    return infer.resolution(self.config)


def load_models(workdirs: Sequence[str]) -> tuple[list[Model], list[str]]:
  """The runs that load, and one message per run directory that does not (missing, no config, unknown family,
  no checkpoint), so the app serves the rest."""
  models, problems = [], []
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      problems.append(f"{workdir}: no such directory")
      continue
    try:
      config, family, state, step = infer.load_run(workdir, None, step=None, best=False)
    except (errors.UserError, FileNotFoundError, ValueError) as e:
      problems.append(f"{workdir}: {e}")
      continue
    name = os.path.basename(os.path.normpath(workdir)) or workdir
    if any(m.name == name for m in models):
      name = workdir
    models.append(Model(name, workdir, config, family, state, step))
    logging.info("app: %s: %s model (task %r) at step %d", workdir, config.family, family.CONTRACT.task, step)
  for problem in problems:
    logging.warning("app: not serving %s", problem)
  return models, problems


def _signature(output: str, data: dict, count: int) -> tuple:
  return (output, count) + tuple(sorted((k, np.shape(v)) for k, v in data.items()))


def generate(model: Model, output: str, data: dict, count: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
  """(images (count, H, W, 3) in [-1, 1], a one-line latency note) of `output` for `count` rows of `data`, in one
  batch through the model's compiled generator."""
  if output not in model.generators:
    model.generators[output] = infer.generator(model.config, model.family, output)
  signature = _signature(output, data, count)
  first = signature not in model.compiled
  start = time.perf_counter()
  [(_, _, images)] = list(infer.generate_batches(model.config, model.family, model.state, model.generators[output],
                                                 data, count, seed=seed, batch_size=count))
  seconds = time.perf_counter() - start
  model.compiled.add(signature)
  model.requests += 1
  what = "first request of this shape (compiles)" if first else "request"
  note = f"{model.name} {output}: {what} {seconds:.2f} s (#{model.requests})"
  logging.info("app: %s", note)
  print(f"facegen_jax.app: {note}", flush=True)
  return images, note


# --- uploads ---


def read_upload(path: str | None, what: str) -> tuple[np.ndarray, list[str]]:
  """(uint8 (H, W, 3), notes) of an uploaded file; a UserError names what is wrong with it. Images above
  MAX_SIDE are shrunk (said in the notes)."""
  if not path:
    raise errors.UserError(f"upload {what} first")
  name = os.path.basename(path)
  try:
    with Image.open(path) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise errors.UserError(f"{what} {name} is {width}x{height}: too large to read (over {MAX_PIXELS:,} pixels)")
      image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale already
      image = image.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise errors.UserError(f"{what} {name} is not an image we can read ({type(e).__name__}): upload a PNG or "
                           "JPEG") from e
  notes = []
  if max(width, height) > MAX_SIDE:
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    notes.append(f"{what} resized from {width}x{height} to {image.size[0]}x{image.size[1]}")
  return np.asarray(image), notes


def _centre_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
  """(left, top, crop width, crop height): the largest centred box of `size`'s aspect in a height x width image."""
  target = size[1] / size[0]
  if abs(width / height - target) <= 0.01:
    return 0, 0, width, height
  crop_w, crop_h = (round(height * target), height) if width / height > target else (width, round(width / target))
  return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def fit(image: np.ndarray, size: tuple[int, int], what: str = "the photo") -> tuple[np.ndarray, list[str]]:
  """uint8 (H, W, 3) centre-cropped to `size`'s aspect and resized (bicubic) to it, as (H, W, 3) in [-1, 1]. No
  landmark alignment: the crop is said in the notes when it cut anything off."""
  height, width = image.shape[:2]
  left, top, crop_w, crop_h = _centre_box(height, width, size)
  notes = []
  if (crop_w, crop_h) != (width, height):
    image = image[top:top + crop_h, left:left + crop_w]
    notes.append(f"{what} centre-cropped to {crop_w}x{crop_h}")
  resized = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC), np.float32)
  return resized / 127.5 - 1.0, notes


def fit_points(points: np.ndarray, shape: tuple[int, ...], size: tuple[int, int]) -> np.ndarray:
  """(N, 2) x, y points of an image of `shape` moved as `fit` moves its pixels (pixel centres at integers)."""
  left, top, crop_w, crop_h = _centre_box(shape[0], shape[1], size)
  scale = np.array([size[1] / crop_w, size[0] / crop_h])
  return (np.asarray(points, np.float64) - np.array([left, top]) + 0.5) * scale - 0.5


def _source_domain(model: Model, field: str):
  """(the domain's input config, its synthetic domain name) of a batch field such as "a/image"."""
  inputs = model.config.input
  key = field.split("/", 1)[0] if "/" in field else None
  if key is None or key not in inputs:
    return inputs, inputs.get("synthetic", {}).get("domain") or "photo"
  position = list(inputs.domains).index(key) if key in inputs.get("domains", ()) else 0
  return inputs[key], inputs[key].synthetic.get("domain") or ("photo", "toon")[min(position, 1)]


def face_template(model: Model, field: str) -> tuple[np.ndarray, str]:
  """(five points (5, 2) x, y in the model's input frame, what they are) where the model's training faces have
  their eye centres, nose tip and mouth corners: the synthetic renderer's average face for a synthetic domain (the
  faces the run trained on), else SATNet's alignment (SphereFace's points, 200x232). The template's frame goes
  through what evaluation does to an image: resize to cover config.input.load_size (or the resolution), centre crop."""
  source, domain = _source_domain(model, field)
  if source.get("source", "synthetic") == "synthetic":
    side = 256
    points = np.mean([align.five_points_from_dlib68(synthetic.landmarks68(0, i, side, domain))
                      for i in range(32)], axis=0)
    frame, what = (side, side), f"the synthetic {domain} faces' average"
  else:
    points, frame, what = align.reference_points(), align.ALIGNED_SIZE, "SATNet's (SphereFace's five points)"
  height, width = model.size
  load_h, load_w = pipeline.load_size_hw(model.config.input)
  scale = np.array([load_w / frame[0], load_h / frame[1]])
  if model.config.input.get("resize", "square") != "square":
    scale[:] = scale.max()  # shorter side to the load size, aspect kept
  # pixel centres at integers: x' = (x + 0.5) * scale - 0.5, then the centre crop's offset
  points = (points + 0.5) * scale - 0.5 - (np.array(frame) * scale - np.array([width, height])) / 2
  return points, what


def prepare_face(model: Model, field: str, image: np.ndarray, what: str = "the photo",
                 detect=None) -> tuple[np.ndarray, list[str], np.ndarray | None]:
  """(the model's input (H, W, 3) in [-1, 1], notes, its 68 landmarks in that frame or None): the face aligned as
  the model's training faces are (`face_template`) from dlib's landmarks when the optional landmark extra is
  installed and finds a face; else `fit`'s centre crop, and the notes say why."""
  detect = detect or align.detect_landmarks
  try:
    landmarks = detect(image)
  except errors.DataError as e:  # (a UserError too) no face
    fitted, notes = fit(image, model.size, what)
    return fitted, notes + [f"{what} not aligned: {e}; centre-cropped"], None
  except errors.UserError:  # the extra is not installed
    fitted, notes = fit(image, model.size, what)
    return fitted, notes + [f"{what} not aligned (landmark detection needs the optional extra: pip install -r "
                            "requirements-align.txt); centre-cropped"], None
  template, described = face_template(model, field)
  matrix = align.similarity_transform(align.five_points_from_dlib68(landmarks), template)
  shrink = 2 * np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  if shrink < 1:  # bilinear warps alias below half size: Lanczos-shrink the photo first, to twice the model's scale
    small = Image.fromarray(image).resize((max(1, round(image.shape[1] * shrink)),
                                           max(1, round(image.shape[0] * shrink))), Image.Resampling.LANCZOS)
    factors = np.array([small.size[0] / image.shape[1], small.size[1] / image.shape[0]])
    image, landmarks = np.asarray(small), (landmarks + 0.5) * factors - 0.5
    matrix = align.similarity_transform(align.five_points_from_dlib68(landmarks), template)
  height, width = model.size
  warped = align.warp_affine(image.astype(np.float32), matrix, (width, height))
  notes = [f"{what} aligned by its dlib landmarks to {described} eyes, nose and mouth"]
  return warped / 127.5 - 1.0, notes, align.transform_points(matrix, landmarks)


# --- label maps ---


def palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) uint8: the colours the page paints classes with (SPADE's visualizer's)."""
  return spade.label_palette(num_classes)


def class_names(num_classes: int) -> list[str]:
  names = list(synthetic.CLASS_NAMES)
  return names[:num_classes] if num_classes <= len(names) else [f"class {i}" for i in range(num_classes)]


def colour_label(label: np.ndarray, num_classes: int, scale: int = 1) -> np.ndarray:
  """int (H, W) -> uint8 (H*scale, W*scale, 3) in the palette's colours."""
  image = palette(num_classes)[np.asarray(label)]
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def label_from_colours(rgb: np.ndarray, num_classes: int, size: tuple[int, int]) -> np.ndarray:
  """A painted (H, W, 3) image -> int32 (size) class map: each pixel's nearest palette colour (brush edges blend
  colours), then resized nearest."""
  rgb = np.asarray(rgb)[..., :3].astype(np.int32)
  table = palette(num_classes).astype(np.int32)
  distances = np.square(rgb[..., None, :] - table[None, None]).sum(-1)
  label = np.argmin(distances, axis=-1).astype(np.uint8)
  return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.Resampling.NEAREST), np.int32)


def example_label(index: int, size: tuple[int, int], num_classes: int) -> np.ndarray:
  """The synthetic renderer's parsing map of face `index` (CelebAMask-HQ's 19 classes) at `size`."""
  label = synthetic.render(0, int(index), max(size))["label"]
  label = np.minimum(label, num_classes - 1).astype(np.uint8)
  return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.Resampling.NEAREST), np.int32)


def example_face(index: int, resolution: int = 256, domain: str = "photo") -> np.ndarray:
  return synthetic.render(0, int(index), resolution, domain)["image"]


# --- masks ---


def mean_landmarks(size: tuple[int, int], count: int = 32) -> np.ndarray:
  """(68, 2) dlib-style landmarks of an average aligned face at `size`: the synthetic renderer's faces, averaged
  (they are drawn centred as aligned crops are), so a mask can be placed without a landmark detector."""
  side = 256
  points = np.mean([synthetic.landmarks68(0, i, side) for i in range(count)], axis=0)
  return (points + 0.5) * np.array([size[1] / side, size[0] / side]) - 0.5


def face_landmarks(image: np.ndarray, detect=None) -> tuple[np.ndarray | None, str]:
  """(dlib's 68 landmarks of the face in `image`, or None, and where a mask goes: "the face's landmarks (dlib)", or
  the average face's position and why)."""
  try:
    return (detect or align.detect_landmarks)(image), "the face's dlib landmarks"
  except errors.DataError:  # (a UserError too)
    return None, "the average face position (dlib found no face)"
  except errors.UserError:
    return None, "the average face position (landmark extra not installed)"


def medical_mask(image: np.ndarray, kind: str = "surgical", seed: int = 0,
                 landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(masked uint8 image, hole bool (H, W)): masks.py's `kind` template warped onto `landmarks` (68, 2), by
  default the average face's."""
  rng = np.random.default_rng(seed)
  landmarks = mean_landmarks(image.shape[:2]) if landmarks is None else landmarks
  face = masks_lib.mask_face(image, landmarks, kind, style=masks_lib.random_style(kind, rng))
  return face.image, face.hole


def hole_from_layers(layers: Sequence[np.ndarray | None], size: tuple[int, int]) -> np.ndarray:
  """A brush's layers (RGBA, painted where alpha > 0) -> float32 (size + (1,)) hole, 1 wherever any stroke covers
  part of a model pixel (box-filtered, so thin strokes are kept)."""
  painted = None
  for layer in layers:
    if layer is None:
      continue
    layer = np.asarray(layer)
    alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[-1] == 4 else np.any(layer > 0, axis=-1)
    painted = alpha if painted is None else painted | alpha
  if painted is None or not painted.any():
    raise errors.UserError("the mask is empty: paint the hole with the brush, or press 'medical mask'")
  coverage = np.asarray(Image.fromarray(painted.astype(np.uint8) * 255).resize((size[1], size[0]),
                                                                               Image.Resampling.BOX))
  return (coverage > 0).astype(np.float32)[..., None]


def box_from_layers(layers: Sequence[np.ndarray | None]) -> tuple[int, int, int, int]:
  """The (x1, y1, x2, y2) bounding box of what was painted on the layers; a UserError when nothing was."""
  painted = None
  for layer in layers:
    if layer is not None and np.asarray(layer).ndim == 3:
      alpha = np.asarray(layer)[..., -1] > 0
      painted = alpha if painted is None else painted | alpha
  if painted is None or not painted.any():
    raise errors.UserError("no face box: paint over the face on the last panel (its bounding box is the box)")
  ys, xs = np.nonzero(painted)
  return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def side_by_side(*images: np.ndarray, height: int = 256) -> np.ndarray:
  """uint8 images scaled (nearest) to one height and put side by side with a 4 px white gap."""
  scaled = []
  for image in images:
    image = np.asarray(image)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    scaled.append(np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.NEAREST)))
  gap = np.full((height, 4, 3), 255, np.uint8)
  return np.concatenate([x for image in scaled for x in (image, gap)][:-1], axis=1)


def to_uint8(images: np.ndarray) -> np.ndarray:
  return images_lib.to_uint8(images)


def grid(images: np.ndarray) -> np.ndarray:
  return images_lib.make_grid(images)


# --- panels ---


def example_sequence(model: Model, index: int) -> tuple[list[np.ndarray], tuple[int, int, int, int]]:
  """(panels uint8 at their own size, the last one's face box) of synthetic sequence `index`."""
  p = model.config.input.panels
  sequence = panels_lib.draw_sequence(0, int(index), num_panels=p.num_panels, size=max(4 * p.panel_size, 128),
                                      num_identities=8)
  return [np.asarray(x) for x in sequence["panels"]], tuple(int(v) for v in sequence["face_boxes"][-1])


def complete(model: Model, panels: Sequence[np.ndarray], box, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                           str]:
  """(the last panel with the completed face pasted into `box`, the face, latency note) for a sequence of
  uint8 panels whose last one holds the face at `box` (x1, y1, x2, y2 in its pixels)."""
  p = model.config.input.panels
  if len(panels) != p.num_panels:
    raise errors.UserError(f"{model.name} completes sequences of {p.num_panels} panels: got {len(panels)}")
  try:
    record = panels_lib.make_record(panels, box, panel_size=p.panel_size, face_size=p.face_size,
                                    torchvision_resize=bool(p.torchvision_resize), where="the last panel")
  except errors.DataError as e:
    raise errors.UserError(str(e)) from e
  data = {"panels": (record["panels"].astype(np.float32) / 127.5 - 1.0)[None]}
  output = next(iter(model.family.CONTRACT.eval_outputs))
  images, note = generate(model, output, data, 1, seed=seed)
  face = to_uint8(images[0])
  x1, y1, x2, y2 = (int(v) for v in box)
  pasted = np.array(panels[-1], copy=True)
  pasted[y1:y2, x1:x2] = np.clip(np.round(panels_lib.resize_bilinear(face, (y2 - y1, x2 - x1))), 0, 255)
  return pasted, face, note


def translate_inputs(model: Model, direction: str, image: np.ndarray, style: np.ndarray | None) -> dict:
  """The batch fields of one translation: the source image (and a reference style image) as (1, H, W, 3)."""
  [field] = [f for f in model.family.CONTRACT.eval_outputs[direction].inputs if f.endswith("image")]
  data = {field: image[None]}
  if style is not None:
    data["style"] = style[None]
  return data


def has_random_styles(model: Model, direction: str) -> bool:
  """Whether `eval_inputs` draws something per record from the seed (a style code) for this direction: then the
  tab offers a style seed, 'another style' and a reference style."""
  [field] = [f for f in model.family.CONTRACT.eval_outputs[direction].inputs if f.endswith("image")]
  height, width = model.size
  data = {field: np.zeros((1, height, width, 3), np.float32)}
  drawn = jax.eval_shape(lambda: model.family.eval_inputs(model.config, jax.random.key(0), 1, data))
  return bool(set(drawn) - set(data))
