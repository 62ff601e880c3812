r"""Translates faces between a model's two domains (families whose task is "translate").

  python -m facegen_jax.translate --workdir runs/ugatit --images face.png|DIR --direction a2b --out out/
  python -m facegen_jax.translate --workdir runs/munit --images DIR --direction b2a --style ref.png --out out/
  python -m facegen_jax.translate --workdir runs/munit --images DIR --direction a2b --num_styles 4 --seed 1 --out out/

Each input image (resized, bicubic, to the model's resolution) gives out/<stem>.png; with --num_styles K,
out/<stem>_style<k>.png for K random styles (multimodal models; the seed fixes them). --style takes the style of
one image of the target domain. --heatmap (U-GAT-IT) also writes out/<stem>_heatmap.png: the generator's CAM
heatmap, jet-coloured, over the input. Common flags: --step N | --best, --seed, --batch_size, --save_raw.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from facegen_jax import errors
from facegen_jax import infer


def run(workdir: str, out: str, *, images: str, direction: str, style: str | None = None, num_styles: int = 1,
        heatmap: bool = False, step: int | None = None, best: bool = False, seed: int = 0, batch_size: int = 8,
        save_raw: bool = False):
  config, family, state, step = infer.load_run(workdir, "translate", step=step, best=best)
  outputs = family.CONTRACT.eval_outputs
  if direction not in outputs:
    raise errors.UserError(f"--direction {direction!r}: {config.family} translates {', '.join(outputs)}")
  if style and num_styles != 1:
    raise errors.UserError("give --style (one reference image) or --num_styles (random styles), not both")
  if heatmap and not getattr(family, "HEATMAPS", False):
    raise errors.UserError(f"--heatmap: {config.family} has no attention heatmaps (U-GAT-IT has)")
  if num_styles < 1:
    raise errors.UserError(f"--num_styles must be positive, got {num_styles}")
  size = infer.resolution(config)
  paths = infer.files(images, "--images")
  [field] = [f for f in outputs[direction].inputs if f.endswith("image")]
  rows = np.stack([infer.read_image(p, size, "--images") for p in paths])
  names = [p.stem for p in paths]
  if num_styles > 1:
    rows = np.repeat(rows, num_styles, axis=0)
    names = [f"{name}_style{k}" for name in names for k in range(num_styles)]
  data = {field: rows}
  if style:
    [path] = infer.files(style, "--style")
    data["style"] = np.repeat(infer.read_image(path, size, "--style")[None], len(names), axis=0)
  written = infer.run(config, family, state, output=direction, names=names, data=data, out=out, seed=seed,
                      batch_size=batch_size, save_raw=save_raw)
  if heatmap:
    written += infer.run(config, family, state, output=f"{direction}_heatmap",
                         names=[f"{name}_heatmap" for name in names], data=data, out=out, seed=seed,
                         batch_size=batch_size)
  return written


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.translate", description=__doc__.splitlines()[0])
  infer.add_run_arguments(p)
  p.add_argument("--images", required=True, help="an image or a directory of images of the source domain")
  p.add_argument("--direction", required=True, help="a2b or b2a")
  p.add_argument("--style", help="an image of the target domain whose style the outputs take")
  p.add_argument("--num_styles", type=int, default=1, help="random styles per input (multimodal models)")
  p.add_argument("--heatmap", action="store_true", help="also write the CAM heatmaps over the inputs (U-GAT-IT)")
  return p


def main(argv=None) -> int:
  return infer.main("translate", parser(), lambda a: run(
      a.workdir, a.out, images=a.images, direction=a.direction, style=a.style, num_styles=a.num_styles,
      heatmap=a.heatmap, step=a.step, best=a.best, seed=a.seed, batch_size=a.batch_size, save_raw=a.save_raw), argv)


if __name__ == "__main__":
  sys.exit(main())
