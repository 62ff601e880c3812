r"""Generates images with a trained or converted model.

  python -m facegen_jax.generate --workdir runs/spade --labels maps/ --out out/ [--style face.jpg] [--save_raw]
  python -m facegen_jax.generate --workdir runs/dcgan_cpu --num 64 --out out/

--workdir is a training run or a `python -m facegen_jax.convert` output; its latest checkpoint is used (or
--step, or with --best the lowest-FID checkpoint of a run that evaluated). The generator runs in eval mode, as
the originals' test scripts run it, with its EMA weights where the family keeps them. For SPADE, --labels is
one parsing-map PNG (single channel of class indices, as CelebAMask-HQ's) or a directory of them; each is
resized (nearest) to the model's crop size and gives out/<stem>.png. --style encodes a face for models trained with
use_vae. For DCGAN, --num images from N(0, 1) noise (seeded by --seed) give out/000000.png, ...
--save_raw also writes the float outputs in [-1, 1] as <name>.npy beside the PNGs.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import images as images_lib
from facegen_jax import rundir
from facegen_jax.families import common
from input_pipeline import sources
from input_pipeline import transforms


_LABEL_EXTENSIONS = (".png",)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _label_files(path: str) -> list[epath.Path]:
  path = epath.Path(path)
  if not path.exists():
    raise errors.UserError(f"--labels {path} does not exist: give a parsing-map PNG or a directory of them")
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _LABEL_EXTENSIONS)
    if not files:
      raise errors.UserError(f"--labels {path} has no .png files: parsing maps are single-channel PNGs")
    return files
  return [path]


def _label(path: epath.Path, config) -> np.ndarray:
  try:
    label = sources.read_label(str(path))
  except OSError as e:
    raise errors.UserError(f"cannot read label map {path} ({e}): is it a PNG?") from e
  label = sources.map_and_check_label(label, num_classes=config.model.label_nc, label_mapping=None,
                                      where=f"label map '{path}'", fix="a relabelled PNG")
  size = config.model.crop_size
  return transforms.resize({"image": np.zeros(label.shape + (3,), np.uint8), "label": label}, size)["label"]


def _style(path: str, config) -> np.ndarray:
  if not config.model.use_vae:
    raise errors.UserError("--style needs a model trained with use_vae (its config.model.use_vae is False)")
  if not epath.Path(path).exists():
    raise errors.UserError(f"--style {path} does not exist")
  try:
    image = sources.read_image(path, "RGB")
  except OSError as e:
    raise errors.UserError(f"cannot read --style image {path} ({e})") from e
  size = config.model.crop_size
  return transforms.to_float(transforms.resize({"image": image}, size))["image"]


def _spade_inputs(config, options: dict) -> tuple[list[str], dict]:
  if not options.get("labels"):
    raise errors.UserError("SPADE generates from parsing maps: give --labels PNG_OR_DIR")
  files = _label_files(options["labels"])
  inputs = {"label": np.stack([_label(f, config) for f in files]).astype(np.int32)}
  if options.get("style"):
    style = _style(options["style"], config)
    inputs["style"] = np.repeat(style[None], len(files), axis=0)
  return [f.stem for f in files], inputs


def _dcgan_inputs(config, options: dict) -> tuple[list[str], dict]:
  num = options.get("num", 16)
  if num <= 0:
    raise errors.UserError(f"--num must be positive, got {num}")
  z = jax.random.normal(jax.random.key(options.get("seed", 0)), (num, config.model.nz))
  return [f"{i:06d}" for i in range(num)], {"z": np.asarray(z)}


# Family -> reader of its command-line inputs (the `run` options): (output names, {input: one row per output}).
INPUT_READERS = {
    "spade": _spade_inputs,
    "dcgan": _dcgan_inputs,
}


def _batches(inputs: dict, count: int, batch_size: int):
  """Fixed-size batches (the last one padded by repeating its final row), so the generator compiles once."""
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    pad = batch_size - (stop - start)
    yield start, stop, {k: np.concatenate([v[start:stop]] + [v[stop - 1:stop]] * pad) for k, v in inputs.items()}


def run(workdir: str, out: str, *, step: int | None = None, best: bool = False, seed: int = 0,
        batch_size: int = 8, save_raw: bool = False, **options) -> list[epath.Path]:
  """Writes out/<name>.png (and .npy with save_raw) for each input; options are the family's (labels, style,
  num). Returns the PNG paths."""
  config = rundir.load_config(workdir)
  family = families.get_family(config.family)
  if config.family not in INPUT_READERS or not hasattr(family, "generate"):
    raise errors.UserError(f"generate does not support family {config.family!r} yet; it supports "
                           f"{', '.join(sorted(INPUT_READERS))}")
  if batch_size <= 0:
    raise errors.UserError(f"--batch_size must be positive, got {batch_size}")
  names, inputs = INPUT_READERS[config.family](config, dict(options, seed=seed))
  state, step = rundir.restore_state(workdir, config, step=step, best=best)
  state = common.inference_state(state)
  logging.info("Generating %d image(s) with %s at step %d from %s", len(names), config.family, step, workdir)
  generate = jax.jit(lambda state, batch, key: family.generate(config, state, batch, key))
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for start, stop, batch in _batches(inputs, len(names), batch_size):
    key = jax.random.fold_in(jax.random.key(seed), start)
    images = np.asarray(jax.device_get(generate(state, batch, key)["generated"]))[:stop - start]
    for name, image in zip(names[start:stop], images):
      images_lib.save_png(images_lib.to_uint8(image), out_dir / f"{name}.png")
      written.append(out_dir / f"{name}.png")
      if save_raw:
        with (out_dir / f"{name}.npy").open("wb") as f:
          np.save(f, image.astype(np.float32))
  message = f"Wrote {len(written)} image(s) to {out_dir}"
  logging.info(message)
  print(message, flush=True)
  return written


def _define_flags() -> None:
  """Defined only when run as a program, so importing this module beside other commands (tests, evaluate) does
  not clash over absl's global flag names."""
  flags.DEFINE_string("workdir", None, "A training run or a converter's output directory.")
  flags.DEFINE_string("out", None, "Directory for the generated PNGs (created).")
  flags.DEFINE_string("labels", None, "SPADE: a parsing-map PNG or a directory of them.")
  flags.DEFINE_string("style", None, "SPADE with use_vae: an image whose style the outputs take.")
  flags.DEFINE_integer("num", 16, "DCGAN: how many images.")
  flags.DEFINE_integer("seed", 0, "Seed for noise (DCGAN's z, SPADE's VAE noise).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_bool("best", False, "The lowest-FID checkpoint of a run that evaluated (DIR/best_checkpoint).")
  flags.DEFINE_integer("batch_size", 8, "Images per generator call.")
  flags.DEFINE_bool("save_raw", False, "Also write the float outputs in [-1, 1] as .npy files.")
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    f = flags.FLAGS
    run(f.workdir, f.out, step=f.step, best=f.best, seed=f.seed, batch_size=f.batch_size, save_raw=f.save_raw,
        labels=f.labels, style=f.style, num=f.num)
  except errors.UserError as e:
    print(f"facegen_jax.generate: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
