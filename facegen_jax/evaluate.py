r"""FID and KID between two image folders (or saved statistics), as pytorch-fid's command line computes FID.

  python -m facegen_jax.evaluate --real faces/ --fake samples/ --inception inception.npz \
      [--batch_size 50] [--kid_subsets 100] [--kid_subset_size 1000] [--nokid] [--save_stats real.npz]

--inception is the .npz of `python -m facegen_jax.convert inception`. A folder's images are the files directly
in it with pytorch-fid's extensions (bmp jpg jpeg pgm png ppm tif tiff webp, any case), in sorted order, read as
RGB uint8 and scaled to [0, 1]; sizes may differ (each is resized to 299 inside the network). --real or --fake
may instead be a statistics .npz (ours, which keeps the features KID needs, or pytorch-fid's mu/sigma
files, FID only); --save_stats writes the statistics of --real to reuse as such.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from facegen_jax import errors
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception

_REAL = flags.DEFINE_string("real", None, "Folder of reference images, or a statistics .npz.")
_FAKE = flags.DEFINE_string("fake", None, "Folder of generated images, or a statistics .npz.")
_INCEPTION = flags.DEFINE_string("inception", None, "Inception weights from `python -m facegen_jax.convert "
                                 "inception`.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Images per Inception call (split over the devices).")
_KID = flags.DEFINE_bool("kid", True, "Also compute KID.")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", fid.KID_SUBSETS, "KID: number of random subsets.")
_KID_SUBSET_SIZE = flags.DEFINE_integer("kid_subset_size", fid.KID_SUBSET_SIZE,
                                        "KID: images per subset (at most the smaller image count).")
_SAVE_STATS = flags.DEFINE_string("save_stats", None, "Also write the statistics of --real to this .npz.")

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def image_files(folder: str) -> list[str]:
  """The images directly in `folder`, sorted; UserError if it is missing or holds none."""
  if not os.path.isdir(folder):
    raise errors.DataError(f"{folder} is not a directory: give a folder of images or a statistics .npz")
  files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                 if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name)))
  if not files:
    raise errors.DataError(f"{folder} holds no images (extensions {' '.join(IMAGE_EXTENSIONS)})")
  return files


def read_image(path: str) -> np.ndarray:
  """(H, W, 3) uint8, as pytorch-fid's `Image.open(path).convert("RGB")`."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise errors.DataError(f"cannot read image {path} ({e}): remove or replace it") from e


def image_batches(files: list[str], batch_size: int) -> Iterator[np.ndarray]:
  """uint8 NHWC batches of up to `batch_size` images, a new batch wherever the image size changes."""
  batch = []
  for path in files:
    image = read_image(path)
    if batch and (image.shape != batch[0].shape or len(batch) == batch_size):
      yield np.stack(batch)
      batch = []
    batch.append(image)
  if batch:
    yield np.stack(batch)


def folder_statistics(folder: str, variables, *, batch_size: int = 50, mesh=None) -> fid.Statistics:
  """Statistics (with features) of the images in `folder`."""
  files = image_files(folder)
  if len(files) < 2:
    raise errors.DataError(f"{folder} holds {len(files)} image: FID needs at least 2 (thousands for a usable value)")
  features = fid.extract_features(variables, image_batches(files, batch_size), mesh=mesh, batch_size=batch_size)
  return fid.Statistics.of(features)


def statistics(path: str, variables, *, batch_size: int = 50) -> fid.Statistics:
  if path.endswith(".npz") and not os.path.isdir(path):
    return fid.Statistics.load(path)
  return folder_statistics(path, variables, batch_size=batch_size)


def run(real: str, fake: str, weights: str, *, batch_size: int = 50, with_kid: bool = True,
        kid_subsets: int = fid.KID_SUBSETS, kid_subset_size: int = fid.KID_SUBSET_SIZE,
        save_stats: str | None = None) -> dict[str, float]:
  for name, path in (("--real", real), ("--fake", fake)):
    if not os.path.exists(path):
      raise errors.DataError(f"{name} {path} does not exist: give a folder of images or a statistics .npz")
  if batch_size < 1:
    raise errors.ConfigError(f"--batch_size must be positive, got {batch_size}")
  variables = inception.load_params(weights)
  real_stats = statistics(real, variables, batch_size=batch_size)
  if save_stats:
    real_stats.save(save_stats)
  fake_stats = statistics(fake, variables, batch_size=batch_size)
  if with_kid and (real_stats.features is None or fake_stats.features is None):
    raise errors.DataError("KID needs features, and a pytorch-fid statistics file holds only mu and sigma: "
                           "pass --nokid, or give the image folder")
  result = fid.metrics(real_stats, fake_stats, with_kid=with_kid, num_subsets=kid_subsets,
                       subset_size=kid_subset_size, option="--kid_subset_size")
  result["real_count"], result["fake_count"] = real_stats.count, fake_stats.count
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    for flag in (_REAL, _FAKE, _INCEPTION):
      if not flag.value:
        raise errors.ConfigError(f"--{flag.name} is required")
    result = run(_REAL.value, _FAKE.value, _INCEPTION.value, batch_size=_BATCH_SIZE.value, with_kid=_KID.value,
                 kid_subsets=_KID_SUBSETS.value, kid_subset_size=_KID_SUBSET_SIZE.value,
                 save_stats=_SAVE_STATS.value)
  except errors.UserError as e:
    print(f"facegen_jax.evaluate: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(f"images: real {result['real_count']}, fake {result['fake_count']}")
  print(f"FID: {result['fid']:.6f}")
  if "kid_mean" in result:
    print(f"KID: {result['kid_mean']:.6g} +- {result['kid_std']:.6g} "
          f"({_KID_SUBSETS.value} subsets of {_KID_SUBSET_SIZE.value})")


if __name__ == "__main__":
  app.run(main)
