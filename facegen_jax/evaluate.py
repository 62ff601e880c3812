r"""FID and KID of a trained run's generator, or between two image folders (as pytorch-fid's command line).

  python -m facegen_jax.evaluate --workdir runs/spade [--num_samples 10000] [--num_real N] [--step S | --best] \
      [--inception inception.npz] [--stats_dir DIR] [--batch_size 50] [--kid_subsets 100] [--kid_subset_size 1000]
  python -m facegen_jax.evaluate --real faces/ --fake samples/ --inception inception.npz \
      [--batch_size 50] [--kid_subsets 100] [--kid_subset_size 1000] [--nokid] [--save_stats real.npz]

--workdir evaluates as training does (`metrics.evaluator`): the run's config.eval, with any flag given here
taking precedence; with the run's eval.batch_size and eval.seed the samples, and so the numbers, are those
training logged for that checkpoint. Reference statistics are cached in --stats_dir (default: the run's
eval.stats_dir, else DIR/fid_stats).

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
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image

from facegen_jax import errors
from facegen_jax import rundir
from facegen_jax.metrics import evaluator as evaluator_lib
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run (or converter output) whose generator to evaluate.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "--workdir: generated images (default: the run's "
                                    "eval.num_samples).")
_NUM_REAL = flags.DEFINE_integer("num_real", None, "--workdir: reference images (default: eval.num_real, else "
                                 "num_samples).")
_STEP = flags.DEFINE_integer("step", None, "--workdir: checkpoint step (default: the latest).")
_BEST = flags.DEFINE_bool("best", False, "--workdir: the best-FID checkpoint training kept.")
_STATS_DIR = flags.DEFINE_string("stats_dir", None, "--workdir: cache of reference statistics.")
_REAL = flags.DEFINE_string("real", None, "Folder of reference images, or a statistics .npz.")
_FAKE = flags.DEFINE_string("fake", None, "Folder of generated images, or a statistics .npz.")
_INCEPTION = flags.DEFINE_string("inception", None, "Inception weights from `python -m facegen_jax.convert "
                                 "inception` (--workdir: default the run's eval.inception_weights).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per Inception call, split over the devices "
                                   "(default 50; --workdir: the run's eval.batch_size).")
_KID = flags.DEFINE_bool("kid", None, "Also compute KID (default on; --workdir: the run's eval.kid).")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", None, f"KID: number of random subsets (default "
                                    f"{fid.KID_SUBSETS}; --workdir: the run's eval.kid_subsets).")
_KID_SUBSET_SIZE = flags.DEFINE_integer("kid_subset_size", None, f"KID: images per subset, at most the smaller "
                                        f"image count (default {fid.KID_SUBSET_SIZE}; --workdir: the run's).")
_SAVE_STATS = flags.DEFINE_string("save_stats", None, "Also write the statistics of --real to this .npz.")

# eval.<key> -> the flag that sets it here, for error messages.
_FLAG_OF = {"inception_weights": "--inception", "kid_off": "--nokid"}

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


def run_workdir(workdir: str, *, step: int | None = None, best: bool = False, stats_dir: str | None = None,
                **overrides) -> dict[str, float]:
  """FID/KID of the run's generator as training computes them; `overrides` are config.eval keys (None: keep)."""
  config = rundir.load_config(workdir)
  settings = evaluator_lib.eval_config(config)
  settings.update({key: value for key, value in overrides.items() if value is not None})
  config.eval = settings
  option = lambda key: _FLAG_OF.get(key, f"--{key}")
  evaluator_lib.check_settings(settings, option)  # Before the checkpoint is read.
  mesh = fid.create_mesh()
  state, step = rundir.restore_state(workdir, config, step=step, best=best,
                                     sharding=NamedSharding(mesh, P()))
  stats_dir = stats_dir or settings.stats_dir or os.path.join(workdir, evaluator_lib.STATS_DIR)
  evaluator = evaluator_lib.Evaluator(config, mesh, stats_dir=stats_dir, option=option)
  result = {key.removeprefix("eval/"): value for key, value in evaluator(state).items()}
  result.update(step=step, real_count=evaluator_lib.num_real(settings), fake_count=settings.num_samples,
                kid_subsets=settings.kid_subsets, kid_subset_size=settings.kid_subset_size)
  return result


def _run_from_flags() -> dict[str, float]:
  if _WORKDIR.value:
    if _REAL.value or _FAKE.value or _SAVE_STATS.value:
      raise errors.ConfigError("--workdir evaluates a run's generator; --real/--fake/--save_stats compare two "
                               "folders: give one or the other")
    return run_workdir(_WORKDIR.value, step=_STEP.value, best=_BEST.value, stats_dir=_STATS_DIR.value,
                       num_samples=_NUM_SAMPLES.value, num_real=_NUM_REAL.value,
                       inception_weights=_INCEPTION.value, batch_size=_BATCH_SIZE.value, kid=_KID.value,
                       kid_subsets=_KID_SUBSETS.value, kid_subset_size=_KID_SUBSET_SIZE.value)
  for flag in (_REAL, _FAKE, _INCEPTION):
    if not flag.value:
      raise errors.ConfigError(f"--{flag.name} is required (or --workdir to evaluate a run)")
  kid_subsets = fid.KID_SUBSETS if _KID_SUBSETS.value is None else _KID_SUBSETS.value
  kid_subset_size = fid.KID_SUBSET_SIZE if _KID_SUBSET_SIZE.value is None else _KID_SUBSET_SIZE.value
  result = run(_REAL.value, _FAKE.value, _INCEPTION.value,
               batch_size=50 if _BATCH_SIZE.value is None else _BATCH_SIZE.value,
               with_kid=_KID.value is not False, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
               save_stats=_SAVE_STATS.value)
  result.update(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    result = _run_from_flags()
  except errors.UserError as e:
    print(f"facegen_jax.evaluate: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if "step" in result:
    print(f"checkpoint: step {result['step']}")
  print(f"images: real {result['real_count']}, fake {result['fake_count']}")
  print(f"FID: {result['fid']:.6f}")
  if "kid_mean" in result:
    print(f"KID: {result['kid_mean']:.6g} +- {result['kid_std']:.6g} "
          f"({result['kid_subsets']} subsets of {result['kid_subset_size']})")


if __name__ == "__main__":
  app.run(main)
