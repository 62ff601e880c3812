"""What the inference commands (`generate`, `translate`, `inpaint`) share: flags, restore, input files, batching,
writing, and one error wrapper.

Each command reads files into batch fields named as the family's eval outputs name them ("label", "a/image",
"mask", and "style"), turns them into the generator's inputs with the family's `eval_inputs` (the same function
evaluation uses), runs `family.generate` in eval mode on fixed-size batches (so it compiles once) with the EMA
parameters where the run keeps them, and writes `out/<name>.png` (and `<name>.npy`, floats in [-1, 1], with
--save_raw). A `UserError` is printed as one line, `facegen_jax.<command>: error: ...`, and exits with 2.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax import families
from facegen_jax import images as images_lib
from facegen_jax import rundir
from facegen_jax import state as state_lib
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import transforms

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The command that serves each task.
COMMANDS = {"sample": "generate", "translate": "translate", "inpaint": "inpaint", "complete": "generate"}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags every inference command takes."""
  parser.add_argument("--workdir", required=True, help="a training run or a converter's output directory")
  parser.add_argument("--out", required=True, help="directory for the output PNGs (created)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--best", action="store_true",
                      help="the best checkpoint of a run that evaluated (DIR/best_checkpoint)")
  parser.add_argument("--seed", type=int, default=0, help="seed for the generator's noise")
  parser.add_argument("--batch_size", type=int, default=8, help="images per generator call")
  parser.add_argument("--save_raw", action="store_true", help="also write the outputs in [-1, 1] as .npy files")


def main(command: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
         argv: Sequence[str] | None = None) -> int:
  """Parses argv and runs; a UserError becomes one line on stderr and exit code 2."""
  args = parser.parse_args(argv)
  return errors.run_command(f"facegen_jax.{command}", lambda: run(args))


def load_run(workdir: str, task: str | tuple[str, ...] | None, *, step: int | None, best: bool):
  """(config, family, inference state, step) of a run whose family serves `task` (or one of several; None: any)."""
  config = rundir.load_config(workdir)
  family = families.get_family(config.family)
  tasks = families.TASKS if task is None else (task,) if isinstance(task, str) else tuple(task)
  if family.CONTRACT.task not in tasks:
    task = " or ".join(repr(t) for t in tasks)
    command = COMMANDS.get(family.CONTRACT.task)
    use = f"use `python -m facegen_jax.{command}`" if command else "it has no inference command yet"
    raise errors.UserError(f"{workdir} holds a {config.family} model, whose task is "
                           f"{family.CONTRACT.task!r}, not {task}: {use}")
  state, step = rundir.restore_state(workdir, config, step=step, best=best)
  return config, family, state_lib.inference_state(state), step


def resolution(config) -> tuple[int, int]:
  return pipeline.resolution_hw(config.input)


def files(path: str, flag: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[epath.Path]:
  """`path` itself, or the files directly in the directory `path` with one of `extensions`, sorted."""
  path = epath.Path(path)
  if not path.exists():
    raise errors.UserError(f"{flag} {path} does not exist: give a file or a directory of them")
  if not path.is_dir():
    return [path]
  found = sorted(p for p in path.iterdir() if p.suffix.lower() in extensions)
  if not found:
    raise errors.UserError(f"{flag} {path} has no files with extensions {' '.join(extensions)}")
  return found


def read_image(path, size: tuple[int, int], flag: str) -> np.ndarray:
  """(H, W, 3) float32 in [-1, 1], resized (bicubic) to `size` as the training data was."""
  try:
    image = sources.read_image(str(path), "RGB")
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.UserError(f"cannot read {flag} image {path} ({e}): is it an image file?") from e
  return transforms.to_float(transforms.resize({"image": image}, size))["image"]


def read_label(path, size: tuple[int, int], num_classes: int) -> np.ndarray:
  """(H, W) int32 class indices, resized (nearest) to `size`."""
  try:
    label = sources.read_label(str(path))
  except OSError as e:
    raise errors.UserError(f"cannot read label map {path} ({e}): is it a PNG?") from e
  label = sources.map_and_check_label(label, num_classes=num_classes, label_mapping=None,
                                      where=f"label map '{path}'", fix="a relabelled PNG")
  blank = np.zeros(label.shape + (3,), np.uint8)
  return transforms.resize({"image": blank, "label": label}, size)["label"].astype(np.int32)


def read_mask(path, size: tuple[int, int]) -> np.ndarray:
  """(H, W, 1) float32, 1 where the mask is white (a hole to fill), resized (nearest) to `size`."""
  try:
    mask = sources.read_image(str(path), "L")
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.UserError(f"cannot read mask {path} ({e}): masks are PNGs, white = hole") from e
  blank = np.zeros(mask.shape + (3,), np.uint8)
  mask = transforms.resize({"image": blank, "label": mask}, size)["label"]
  return (mask >= 128).astype(np.float32)[..., None]


def _batches(data: dict, count: int, batch_size: int):
  """Fixed-size batches (the last one padded by repeating its final row), so the generator compiles once."""
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    pad = batch_size - (stop - start)
    yield start, stop, {k: np.concatenate([v[start:stop]] + [v[stop - 1:stop]] * pad) for k, v in data.items()}


def generator(config, family, output: str) -> Callable:
  """`family.generate`'s `output` jitted, (state, inputs, key) -> images. Keep it: each new one compiles again
  (jax.jit caches the compiled program per input shape on the function object)."""
  return compile_lib.jit(lambda state, batch, key: family.generate(config, state, batch, key)[output])


def generate_batches(config, family, state, generate: Callable, data: dict, count: int, *, seed: int = 0,
                     batch_size: int = 8):
  """Yields (start, stop, images (stop - start, H, W, 3) in [-1, 1]) for the `count` rows of `data`.

  The generator's inputs come from `family.eval_inputs` on all rows at once with key(seed) (so DCGAN's z for
  `--num N --seed S` is N(0, 1) of that key); each batch's generator key is fold_in(key(seed), first row).
  """
  if batch_size <= 0:
    raise errors.UserError(f"--batch_size must be positive, got {batch_size}")
  inputs = jax.device_get(family.eval_inputs(config, jax.random.key(seed), count, data))
  inputs = {k: np.asarray(v) for k, v in inputs.items()}
  for start, stop, batch in _batches(inputs, count, batch_size):
    key = jax.random.fold_in(jax.random.key(seed), start)
    yield start, stop, np.asarray(jax.device_get(generate(state, batch, key)))[:stop - start]


def run(config, family, state, *, output: str, names: list[str], data: dict, out: str, seed: int = 0,
        batch_size: int = 8, save_raw: bool = False,
        finish: Callable[[int, np.ndarray], np.ndarray] | None = None) -> list[epath.Path]:
  """Generates `output` for each of `names` (rows of the fields in `data`) and writes out/<name>.png (inputs and
  keys as `generate_batches`); `finish(row, image)`, if given, makes each generated image the one written
  (inpaint's composite at the input's own size)."""
  if batch_size <= 0:
    raise errors.UserError(f"--batch_size must be positive, got {batch_size}")
  generate = generator(config, family, output)
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for start, stop, images in generate_batches(config, family, state, generate, data, len(names), seed=seed,
                                              batch_size=batch_size):
    for row, (name, image) in enumerate(zip(names[start:stop], images), start):
      if finish is not None:
        image = finish(row, image)
      images_lib.save_png(images_lib.to_uint8(image), out_dir / f"{name}.png")
      written.append(out_dir / f"{name}.png")
      if save_raw:
        with (out_dir / f"{name}.npy").open("wb") as f:
          np.save(f, image.astype(np.float32))
  message = f"Wrote {len(written)} image(s) to {out_dir}"
  logging.info(message)
  print(message, flush=True)
  return written
