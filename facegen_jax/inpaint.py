r"""Fills the holes of faces (families whose task is "inpaint").

  python -m facegen_jax.inpaint --workdir runs/tfill --images faces/ --masks masks/ --out out/

--images is an image or a directory; --masks one mask PNG for all of them, or a directory with a mask per image
(same stem). Masks are white where the face is to be filled (a hole), black where it is kept. The model runs at
its resolution (the image resized bicubic, the mask nearest); out/<stem>.png is at the image's own size: its own
pixels outside the hole, and inside it the model's composite resized back (bicubic, PIL's) to that size. A mask
of another size than its image is resized to it (nearest) first. Common flags: --step N | --best, --seed,
--batch_size, --save_raw (out/<stem>.npy, the written image in [-1, 1] before rounding).
"""

from __future__ import annotations

import argparse
import sys

from etils import epath
import numpy as np
from PIL import Image

from facegen_jax import errors
from facegen_jax import infer
from input_pipeline import sources


def run(workdir: str, out: str, *, images: str, masks: str, step: int | None = None, best: bool = False,
        seed: int = 0, batch_size: int = 8, save_raw: bool = False):
  config, family, state, step = infer.load_run(workdir, "inpaint", step=step, best=best)
  size = infer.resolution(config)
  image_paths = infer.files(images, "--images")
  mask_paths = infer.files(masks, "--masks", (".png",))
  if not epath.Path(masks).is_dir():  # One mask for every image.
    mask_paths = mask_paths * len(image_paths)
  else:
    by_stem = {p.stem: p for p in mask_paths}
    missing = [p.name for p in image_paths if p.stem not in by_stem]
    if missing:
      raise errors.UserError(f"--masks {masks} has no mask for {len(missing)} image(s), e.g. {missing[0]}: name "
                             "each mask after its image (same stem, .png), or give one mask for all")
    mask_paths = [by_stem[p.stem] for p in image_paths]
  output = next(iter(family.CONTRACT.eval_outputs))
  [field] = [f for f in family.CONTRACT.eval_outputs[output].inputs if f.endswith("image")]
  originals = [_own_size(p, m) for p, m in zip(image_paths, mask_paths)]
  data = {field: np.stack([infer.read_image(p, size, "--images") for p in image_paths]),
          "mask": np.stack([infer.read_mask(p, size) for p in mask_paths])}

  def finish(row: int, generated: np.ndarray) -> np.ndarray:
    image, hole = originals[row]
    return composite_at_size(image, hole, generated)

  return infer.run(config, family, state, output=output, names=[p.stem for p in image_paths], data=data, out=out,
                   seed=seed, batch_size=batch_size, save_raw=save_raw, finish=finish)


def _own_size(image_path, mask_path) -> tuple[np.ndarray, np.ndarray]:
  """(image (H, W, 3) in [-1, 1], hole (H, W, 1) in {0, 1}) at the image's own size."""
  try:
    image = sources.read_image(str(image_path), "RGB")
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.UserError(f"cannot read --images image {image_path} ({e}): is it an image file?") from e
  hole = infer.read_mask(mask_path, image.shape[:2])
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0), hole


def resize_float(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(h, w, C) floats -> (H, W, C) by PIL's bicubic, channel by channel in float32 (no rounding to uint8)."""
  if image.shape[:2] == tuple(size):
    return np.asarray(image, np.float32)
  return np.stack([np.asarray(Image.fromarray(np.asarray(image[..., c], np.float32), "F").resize(
      (size[1], size[0]), Image.Resampling.BICUBIC)) for c in range(image.shape[-1])], -1)


def composite_at_size(image: np.ndarray, hole: np.ndarray, generated: np.ndarray) -> np.ndarray:
  """The input's own pixels outside the hole, the generated image resized to the input's size inside it."""
  filled = np.clip(resize_float(generated, image.shape[:2]), -1.0, 1.0)
  return np.where(hole > 0.5, filled, image).astype(np.float32)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.inpaint", description=__doc__.splitlines()[0])
  infer.add_run_arguments(p)
  p.add_argument("--images", required=True, help="an image or a directory of images")
  p.add_argument("--masks", required=True, help="one mask PNG for all images, or a directory (same stems)")
  return p


def main(argv=None) -> int:
  return infer.main("inpaint", parser(), lambda a: run(
      a.workdir, a.out, images=a.images, masks=a.masks, step=a.step, best=a.best, seed=a.seed,
      batch_size=a.batch_size, save_raw=a.save_raw), argv)


if __name__ == "__main__":
  sys.exit(main())
