"""Per-example transforms that keep an image and everything drawn on it aligned.

Every transform is a top-level function or class so that grain can pickle it into worker processes.
Examples are dicts: `"image"` uint8 (H, W, 3); spatial fields, arrays of shape (H, W) or (H, W, C) such as
`"label"` uint8 (H, W) and `"mask"` uint8 (H, W) (255 = hole), which are resized with nearest neighbour,
cropped and flipped with the image; `"landmarks"` float32 (K, 2) points (x, y) in pixels from the image's
top-left corner (a pixel's centre is at +0.5), moved with the image; and scalars and other arrays, which
pass through untouched.

Sizes are an int (square) or a (height, width) pair.
"""

from collections.abc import Sequence
import dataclasses

import grain
import numpy as np
from PIL import Image


RESIZE_MODES = ("square", "shorter_side")
# Always spatial, even when stored at a size other than the image's (a label map saved at another resolution).
SPATIAL_KEYS = ("label", "mask")
LANDMARKS_KEY = "landmarks"


def hw(size: int | Sequence[int]) -> tuple[int, int]:
  """(height, width) of an int (square) or a (height, width) pair."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  height, width = size
  return int(height), int(width)


def spatial_keys(example: dict) -> list[str]:
  """The fields moved pixel for pixel with the image: label, mask, and any (H, W[, C]) array of its size."""
  size = example["image"].shape[:2]
  return [key for key, value in example.items()
          if key != "image" and key != LANDMARKS_KEY and np.ndim(value) in (2, 3)
          and (key in SPATIAL_KEYS or np.shape(value)[:2] == size)]


def _resize_nearest(array: np.ndarray, target: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) or (H, W, C) array through PIL, one channel at a time."""
  if array.ndim == 3:
    return np.stack([_resize_nearest(array[..., c], target) for c in range(array.shape[-1])], axis=-1)
  if array.dtype == np.uint8:
    return np.asarray(Image.fromarray(array).resize(target[::-1], Image.Resampling.NEAREST))
  # PIL holds single channels as uint8, int32 or float32; nearest neighbour copies values, so the round trip
  # through int32 / float32 is exact for the ints and floats a source stores.
  kind = np.float32 if np.issubdtype(array.dtype, np.floating) else np.int32
  resized = Image.fromarray(np.ascontiguousarray(array, kind)).resize(target[::-1], Image.Resampling.NEAREST)
  return np.asarray(resized).astype(array.dtype)


def resize(example: dict, size: int | Sequence[int], mode: str = "square") -> dict:
  """Resizes to `size` ("square", SPADE's `resize`: an int is both sides) or by the smallest aspect-keeping
  scale that covers `size` ("shorter_side": an int is the shorter side, torchvision's `Resize(int)`); bicubic
  for the image, nearest for spatial fields so no new classes appear, landmarks scaled."""
  out = dict(example)
  height, width = example["image"].shape[:2]
  size_h, size_w = hw(size)
  if mode == "shorter_side":
    scale = max(size_h / height, size_w / width)
    target = (max(size_h, round(height * scale)), max(size_w, round(width * scale)))
  else:
    target = (size_h, size_w)
  if (height, width) != target:
    image = Image.fromarray(example["image"]).resize(target[::-1], Image.Resampling.BICUBIC)
    out["image"] = np.asarray(image)
  for key in spatial_keys(example):
    if example[key].shape[:2] != target:
      out[key] = _resize_nearest(example[key], target)
  if LANDMARKS_KEY in example:
    factor = np.array([target[1] / width, target[0] / height], np.float32)
    out[LANDMARKS_KEY] = np.asarray(example[LANDMARKS_KEY], np.float32) * factor
  return out


def crop(example: dict, top: int, left: int, size: int | Sequence[int]) -> dict:
  out = dict(example)
  height, width = hw(size)
  for key in ["image"] + spatial_keys(example):
    out[key] = example[key][top:top + height, left:left + width]
  if LANDMARKS_KEY in example:
    out[LANDMARKS_KEY] = np.asarray(example[LANDMARKS_KEY], np.float32) - np.array([left, top], np.float32)
  return out


def flip_left_right(example: dict) -> dict:
  out = dict(example)
  width = example["image"].shape[1]
  for key in ["image"] + spatial_keys(example):
    out[key] = example[key][:, ::-1]
  if LANDMARKS_KEY in example:
    # Points keep their index: a left-eye point is then on the image's other side. Models that need
    # semantic left/right swap their indices themselves (the order is the dataset's).
    points = np.array(example[LANDMARKS_KEY], np.float32)
    points[:, 0] = width - points[:, 0]
    out[LANDMARKS_KEY] = points
  return out


def field_name(key: str) -> str:
  """The field a batch key holds, without its domain: "b/mask" -> "mask"."""
  return key.rsplit("/", 1)[-1]


def to_float(example: dict) -> dict:
  """The dtypes the train step expects: image (and panel records' panels) float32 in [-1, 1]; mask float32
  (..., 1) in {0, 1} with 1 = hole; landmarks and other float fields float32; label and other ints int32. Keys
  may carry a domain prefix ("a/image")."""
  out = {}
  for key, value in example.items():
    name = field_name(key)
    if name in ("image", "panels"):
      # ascontiguousarray: a flipped view would otherwise be copied again by every consumer.
      out[key] = np.ascontiguousarray(value, np.float32) / np.float32(127.5) - np.float32(1.0)
    elif name == "mask":
      out[key] = (np.asarray(value) > 127).astype(np.float32)[..., None]
    elif np.issubdtype(np.asarray(value).dtype, np.floating):
      out[key] = np.asarray(value, np.float32)
    else:
      out[key] = np.asarray(value, np.int32)
  return out


@dataclasses.dataclass(frozen=True)
class Resize(grain.transforms.Map):
  size: int | tuple[int, int]
  mode: str = "square"

  def map(self, element: dict) -> dict:
    return resize(element, self.size, self.mode)


@dataclasses.dataclass(frozen=True)
class CropAndFlip(grain.transforms.RandomMap):
  """Crops `size` (an int: square; or (height, width)), random or centred, and flips with probability 1/2
  (if `random_flip`).

  `rng` is grain's per-record generator, seeded from the pipeline seed and the record's position in the
  repeated stream, so the same (seed, epoch, record) always gets the same crop and flip.
  """
  size: int | tuple[int, int]
  random_crop: bool
  random_flip: bool

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    height, width = element["image"].shape[:2]
    crop_h, crop_w = hw(self.size)
    # Always draw all three, so switching one option off does not change the draws of the others.
    top_u, left_u, flip_u = rng.random(3)
    if self.random_crop:
      top = int(top_u * (height - crop_h + 1))
      left = int(left_u * (width - crop_w + 1))
    else:
      top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if (height, width) != (crop_h, crop_w):
      element = crop(element, top, left, (crop_h, crop_w))
    if self.random_flip and flip_u < 0.5:
      element = flip_left_right(element)
    return element


class ToFloat(grain.transforms.Map):

  def map(self, element: dict) -> dict:
    return to_float(element)
