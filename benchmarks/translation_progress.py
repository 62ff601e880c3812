r"""Does a photo -> toon translator trained on the synthetic default get better with training? Scores every
checkpoint of a run on held-out synthetic faces that have a ground truth.

  python benchmarks/translation_progress.py --workdir runs/ugatit_cpu --inception inception.npz [--num 200]
                                           [--first_index 100000] [--out DIR] [--json]

The synthetic renderer draws the same identity, pose and view as a photo and as a toon
(`input_pipeline/synthetic.render(seed, index, size, domain)`), so an a2b (photo -> toon) translation of a
held-out photo (indices from --first_index on, never in training's first num_examples) has a target: the toon
of the same index. Per checkpoint step, from `translate --step S --save_raw` outputs:
  paired_l1   mean |translated - the same face's toon| over pixels, in [-1, 1] units (lower is better);
  kid_x1000   KID x 1000 of the translations against as many real toons of domain b (Face2webtoon's figure;
              with --inception, pytorch-fid's Inception as `evaluate` uses it);
and the same for the untranslated photos (row "photos"): the distance a translator has to close.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

_BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(_BENCHMARKS),) if p not in sys.path]

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

from facegen_jax import evaluate  # pylint: disable=g-import-not-at-top
from facegen_jax import rundir  # pylint: disable=g-import-not-at-top
from facegen_jax import translate  # pylint: disable=g-import-not-at-top
from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top


def _write(folder: str, images) -> None:
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))


def _steps(workdir: str) -> list[int]:
  directory = rundir.checkpoint_dir(workdir)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _to_unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1.0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--inception", help="Inception weights (`python -m facegen_jax.convert inception`): adds KID")
  p.add_argument("--num", type=int, default=200, help="held-out faces")
  p.add_argument("--first_index", type=int, default=100_000, help="first held-out synthetic index")
  p.add_argument("--out", help="keep the images here (default: a temporary directory)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)

  config = rundir.load_config(args.workdir)
  a, b = config.input.a, config.input.b
  if a.source != "synthetic" or b.source != "synthetic" or (a.synthetic.domain, b.synthetic.domain) != (
      "photo", "toon"):
    raise SystemExit(f"{args.workdir}: needs a run trained photo -> toon on the synthetic default")
  size = config.input.resolution
  first = max(args.first_index, a.synthetic.num_examples, b.synthetic.num_examples)
  out = args.out or tempfile.mkdtemp(prefix="translation_progress_")
  indices = range(first, first + args.num)
  render = lambda seed, i, domain: synthetic.render(seed, i, size, domain)["image"]
  photos = np.stack([render(a.synthetic.seed, i, "photo") for i in indices])
  _write(f"{out}/photos", photos)
  paired = _to_unit(np.stack([render(a.synthetic.seed, i, "toon") for i in indices]))  # The same faces as toons.
  _write(f"{out}/toons", [render(b.synthetic.seed, i, "toon") for i in indices])

  def score(name: str, folder: str, translated: np.ndarray) -> None:
    row = {"step": name, "paired_l1": float(np.abs(translated - paired).mean())}
    if args.inception:
      result = evaluate.run(f"{out}/toons", folder, args.inception)
      row["kid_x1000"] = 1000 * result["kid_mean"]
      row["fid"] = result["fid"]
    print(json.dumps(row) if args.json else "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), flush=True)

  score("photos", f"{out}/photos", _to_unit(photos))
  for step in _steps(args.workdir):
    folder = f"{out}/step{step}"
    translate.run(args.workdir, folder, images=f"{out}/photos", direction="a2b", step=step, save_raw=True)
    translated = np.stack([np.load(f"{folder}/{i:05d}.npy") for i in range(args.num)])
    score(str(step), folder, translated)
  return 0


if __name__ == "__main__":
  sys.exit(main())
