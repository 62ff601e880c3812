"""Per-example transforms that keep an image and its parsing map aligned.

Every transform is a top-level function or class so that grain can pickle it into worker processes.
Examples are dicts: `"image"` uint8 (H, W, 3), optional `"label"` uint8 (H, W), and scalar int fields,
which pass through untouched.
"""

import dataclasses

import grain
import numpy as np
from PIL import Image


RESIZE_MODES = ("square", "shorter_side")


def resize(example: dict, size: int, mode: str = "square") -> dict:
  """Resizes to size x size ("square", SPADE's `resize`) or the shorter side to size keeping the aspect ratio
  ("shorter_side", torchvision's `Resize(int)`); bicubic for the image, nearest for the label so no new
  classes appear."""
  out = dict(example)
  height, width = example["image"].shape[:2]
  if mode == "shorter_side":
    scale = size / min(height, width)
    target = (max(size, round(height * scale)), max(size, round(width * scale)))
  else:
    target = (size, size)
  if (height, width) != target:
    image = Image.fromarray(example["image"]).resize(target[::-1], Image.Resampling.BICUBIC)
    out["image"] = np.asarray(image)
  if "label" in example and example["label"].shape != target:
    label = Image.fromarray(example["label"]).resize(target[::-1], Image.Resampling.NEAREST)
    out["label"] = np.asarray(label)
  return out


def crop(example: dict, top: int, left: int, size: int) -> dict:
  out = dict(example)
  out["image"] = example["image"][top:top + size, left:left + size]
  if "label" in example:
    out["label"] = example["label"][top:top + size, left:left + size]
  return out


def flip_left_right(example: dict) -> dict:
  out = dict(example)
  out["image"] = example["image"][:, ::-1]
  if "label" in example:
    out["label"] = example["label"][:, ::-1]
  return out


def to_float(example: dict) -> dict:
  """Image to float32 in [-1, 1], label and scalars to int32: the dtypes the train step expects."""
  out = {key: np.asarray(value, np.int32) for key, value in example.items()}
  # ascontiguousarray: a flipped view would otherwise be copied again by every consumer.
  out["image"] = np.ascontiguousarray(example["image"], np.float32) / np.float32(127.5) - np.float32(1.0)
  return out


@dataclasses.dataclass(frozen=True)
class Resize(grain.transforms.Map):
  size: int
  mode: str = "square"

  def map(self, element: dict) -> dict:
    return resize(element, self.size, self.mode)


@dataclasses.dataclass(frozen=True)
class CropAndFlip(grain.transforms.RandomMap):
  """Crops `size` x `size` (random or centred) and flips with probability 1/2 (if `random_flip`).

  `rng` is grain's per-record generator, seeded from the pipeline seed and the record's position in the
  repeated stream, so the same (seed, epoch, record) always gets the same crop and flip.
  """
  size: int
  random_crop: bool
  random_flip: bool

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    height, width = element["image"].shape[:2]
    # Always draw all three, so switching one option off does not change the draws of the others.
    top_u, left_u, flip_u = rng.random(3)
    if self.random_crop:
      top = int(top_u * (height - self.size + 1))
      left = int(left_u * (width - self.size + 1))
    else:
      top, left = (height - self.size) // 2, (width - self.size) // 2
    if (height, width) != (self.size, self.size):
      element = crop(element, top, left, self.size)
    if self.random_flip and flip_u < 0.5:
      element = flip_left_right(element)
    return element


class ToFloat(grain.transforms.Map):

  def map(self, element: dict) -> dict:
    return to_float(element)
