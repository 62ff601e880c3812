"""Image grids and PNG files for samples."""

import io
import math

from etils import epath
import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8, rounding as torchvision's save_image does (x * 255 + 0.5, clamped)."""
  return np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, columns: int | None = None, padding: int = 2) -> np.ndarray:
  """(N, H, W, C) in [-1, 1] -> one (rows*H', columns*W', C) uint8 image, close to square."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(image: np.ndarray, path: epath.PathLike) -> None:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  epath.Path(path).write_bytes(buffer.getvalue())
