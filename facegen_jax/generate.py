r"""Generates images with a trained or converted model (families whose task is "sample": DCGAN, SPADE).

  python -m facegen_jax.generate --workdir runs/dcgan_cpu --num 64 [--seed 0] --out out/
  python -m facegen_jax.generate --workdir runs/spade --labels MAPS_DIR_OR_PNG --out out/ [--style face.jpg]

Common flags: --step N | --best, --seed, --batch_size, --save_raw (see `facegen_jax.infer`). The generator runs
in eval mode, as the originals' test scripts run it, with its EMA weights where the run keeps them.
Unconditional models: --num images from N(0, 1) noise seeded by --seed -> out/000000.png, ...
Label-conditional models (SPADE): --labels is one parsing-map PNG (single channel of class indices, as
CelebAMask-HQ's) or a directory of them; each is resized (nearest) to the model's resolution and gives
out/<stem>.png. --style encodes a face for models trained with use_vae.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from facegen_jax import errors
from facegen_jax import infer


def _data(config, family, *, labels=None, style=None, num=16) -> tuple[list[str], dict]:
  """(output names, {field: one row per output}) from the flags the family's eval output needs."""
  fields = next(iter(family.CONTRACT.eval_outputs.values())).inputs
  size = infer.resolution(config)
  data = {}
  if "label" in fields:
    if not labels:
      raise errors.UserError(f"{config.family} generates from parsing maps: give --labels PNG_OR_DIR")
    paths = infer.files(labels, "--labels", (".png",))
    data["label"] = np.stack([infer.read_label(p, size, config.input.num_classes) for p in paths])
    names = [p.stem for p in paths]
  else:
    if num <= 0:
      raise errors.UserError(f"--num must be positive, got {num}")
    names = [f"{i:06d}" for i in range(num)]
  if style:
    [path] = infer.files(style, "--style")
    data["style"] = np.repeat(infer.read_image(path, size, "--style")[None], len(names), axis=0)
  return names, data


def run(workdir: str, out: str, *, step: int | None = None, best: bool = False, seed: int = 0,
        batch_size: int = 8, save_raw: bool = False, labels: str | None = None, style: str | None = None,
        num: int = 16):
  """Writes out/<name>.png (and .npy with save_raw) for each input; returns the PNG paths."""
  config, family, state, step = infer.load_run(workdir, "sample", step=step, best=best)
  names, data = _data(config, family, labels=labels, style=style, num=num)
  output = next(iter(family.CONTRACT.eval_outputs))
  return infer.run(config, family, state, output=output, names=names, data=data, out=out, seed=seed,
                   batch_size=batch_size, save_raw=save_raw)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.generate", description=__doc__.splitlines()[0])
  infer.add_run_arguments(p)
  p.add_argument("--num", type=int, default=16, help="unconditional models: how many images")
  p.add_argument("--labels", help="label-conditional models: a parsing-map PNG or a directory of them")
  p.add_argument("--style", help="SPADE with use_vae: an image whose style the outputs take")
  return p


def main(argv=None) -> int:
  return infer.main("generate", parser(), lambda a: run(
      a.workdir, a.out, step=a.step, best=a.best, seed=a.seed, batch_size=a.batch_size, save_raw=a.save_raw,
      labels=a.labels, style=a.style, num=a.num), argv)


if __name__ == "__main__":
  sys.exit(main())
