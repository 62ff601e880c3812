r"""Fills the holes of faces (families whose task is "inpaint").

  python -m facegen_jax.inpaint --workdir runs/tfill --images faces/ --masks masks/ --out out/

--images is an image or a directory; --masks one mask PNG for all of them, or a directory with a mask per image
(same stem). Masks are white where the face is to be filled (a hole), black where it is kept; both are resized
to the model's resolution (bicubic for images, nearest for masks). Each image gives out/<stem>.png: the
model's composite (kept pixels from the input, holes from the generator). Common flags: --step N | --best,
--seed, --batch_size, --save_raw.
"""

from __future__ import annotations

import argparse
import sys

from etils import epath
import numpy as np

from facegen_jax import errors
from facegen_jax import infer


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
  data = {field: np.stack([infer.read_image(p, size, "--images") for p in image_paths]),
          "mask": np.stack([infer.read_mask(p, size) for p in mask_paths])}
  return infer.run(config, family, state, output=output, names=[p.stem for p in image_paths], data=data, out=out,
                   seed=seed, batch_size=batch_size, save_raw=save_raw)


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
