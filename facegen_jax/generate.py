r"""Generates images with a trained or converted model (task "sample": DCGAN, SPADE, VAE, IntroVAE; "complete":
SSuperVAE, SSuper-DCGAN).

  python -m facegen_jax.generate --workdir runs/dcgan_cpu --num 64 [--seed 0] --out out/
  python -m facegen_jax.generate --workdir runs/spade --labels MAPS_DIR_OR_PNG --out out/ [--style face.jpg]
  python -m facegen_jax.generate --workdir runs/vae_cpu --images FACES_DIR --out out/   # reconstructions
  python -m facegen_jax.generate --workdir runs/ssupervae_cpu --panels SEQ_DIR --out out/ [--paste SEQ_DIR/boxes.json]

Common flags: --step N | --best, --seed, --batch_size, --save_raw (see `facegen_jax.infer`). The generator runs
in eval mode, as the originals' test scripts run it, with its EMA weights where the run keeps them.
Unconditional models: --num images from N(0, 1) noise seeded by --seed -> out/000000.png, ...
Label-conditional models (SPADE): --labels is one parsing-map PNG (single channel of class indices, as
CelebAMask-HQ's) or a directory of them; each is resized (nearest) to the model's resolution and gives
out/<stem>.png. --style encodes a face for models trained with use_vae.
VAE / IntroVAE: --num prior samples as above; --images FILE_OR_DIR reconstructs each face (resized to the model's
size, decoded from mu) -> out/<stem>.png.
Panel completion (SSuperVAE, SSuper-DCGAN): --panels SEQ_DIR holds one folder per sequence, SEQ_DIR/<id>/ with
its panels in name order, the last with the face painted white (input_pipeline/panels.py's layout; a
SEQ_DIR/boxes.json there is painted again). Each gives out/<id>.png, the face decoded from mu; with --paste
BOXES.json ({"<id>": [x1, y1, x2, y2]} in the last panel's own pixels) also out/<id>_panel.png, the last panel at
its own size with the face resized into its box.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from facegen_jax import errors
from facegen_jax import images as images_lib
from facegen_jax import infer
from input_pipeline import panels as panels_lib
from input_pipeline import sources
from input_pipeline import transforms


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


def _panel_records(config, seq_dir: str) -> tuple[list[str], dict]:
  """(sequence ids, {"panels": (N, S, P, P, 3) in [-1, 1]}) of SEQ_DIR at the model's panel settings."""
  if not os.path.isdir(seq_dir):
    raise errors.UserError(f"--panels {seq_dir} is not a directory: give a folder of sequences <id>/ (see "
                           "input_pipeline/panels.py)")
  p = config.input.panels
  source = panels_lib.FolderPanels(seq_dir, num_panels=p.num_panels, panel_size=p.panel_size, face_size=p.face_size,
                                   torchvision_resize=bool(p.torchvision_resize), faces=False)
  records = [source[i] for i in range(len(source))]
  unreadable = [name for name, record in zip(source.ids, records) if record is None]
  if unreadable:
    raise errors.UserError(f"--panels: sequence(s) {', '.join(unreadable)} under {seq_dir} cannot be read (see the "
                           "log): fix or remove them")
  return list(source.ids), {"panels": np.stack([transforms.to_float({"panels": r["panels"]})["panels"]
                                                for r in records])}


def paste_faces(seq_dir: str, boxes_path: str, faces: dict[str, str], out: str) -> list[str]:
  """out/<id>_panel.png: the last panel of SEQ_DIR/<id>/ at its own size with the face PNG faces[id] resized
  (bilinear, antialiased) into its box from `boxes_path`."""
  boxes = panels_lib.read_boxes(boxes_path)
  written = []
  for name, face_path in faces.items():
    if name not in boxes:
      raise errors.UserError(f"--paste {boxes_path} has no box for sequence {name!r}: add \"{name}\": [x1, y1, x2, y2]")
    # The sequence's panels in the order FolderPanels reads them (the last is the target).
    panel_files = panels_lib._sequence_files(os.path.join(seq_dir, name))[0]  # pylint: disable=protected-access
    panel = sources.read_image(panel_files[-1], "RGB").copy()
    x1, y1, x2, y2 = panels_lib.check_box(boxes[name], panel.shape[1], panel.shape[0], f"--paste {boxes_path} ({name})")
    face = sources.read_image(face_path, "RGB")
    panel[y1:y2, x1:x2] = np.clip(np.round(panels_lib.resize_bilinear(face, (y2 - y1, x2 - x1))), 0, 255)
    path = os.path.join(out, f"{name}_panel.png")
    images_lib.save_png(panel.astype(np.uint8), path)
    written.append(path)
  return written


def run(workdir: str, out: str, *, step: int | None = None, best: bool = False, seed: int = 0,
        batch_size: int = 8, save_raw: bool = False, labels: str | None = None, style: str | None = None,
        num: int = 16, images: str | None = None, panels: str | None = None, paste: str | None = None):
  """Writes out/<name>.png (and .npy with save_raw) for each input; returns the PNG paths."""
  config, family, state, step = infer.load_run(workdir, ("sample", "complete"), step=step, best=best)
  output = next(iter(family.CONTRACT.eval_outputs))
  common = dict(out=out, seed=seed, batch_size=batch_size, save_raw=save_raw)
  if family.CONTRACT.task == "complete":
    if not panels:
      raise errors.UserError(f"{workdir} holds a {config.family} model, which completes panel sequences: give "
                             "--panels SEQ_DIR")
    names, data = _panel_records(config, panels)
    written = infer.run(config, family, state, output=output, names=names, data=data, **common)
    if paste:
      written += paste_faces(panels, paste, {name: str(path) for name, path in zip(names, written)}, out)
    return written
  if panels or paste:
    raise errors.UserError(f"--panels and --paste are for models that complete panel sequences (ssupervae, "
                           f"ssuper_dcgan); {workdir} holds a {config.family} model")
  if images:
    reconstruction = getattr(family, "RECONSTRUCTION", None)
    if reconstruction is None:
      raise errors.UserError(f"{config.family} does not reconstruct images: --images is for the vae and intro_vae "
                             "families")
    paths = infer.files(images, "--images")
    size = infer.resolution(config)
    data = {"image": np.stack([infer.read_image(path, size, "--images") for path in paths])}
    return infer.run(config, family, state, output=reconstruction, names=[p.stem for p in paths], data=data,
                     **common)
  names, data = _data(config, family, labels=labels, style=style, num=num)
  return infer.run(config, family, state, output=output, names=names, data=data, **common)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.generate", description=__doc__.splitlines()[0])
  infer.add_run_arguments(p)
  p.add_argument("--num", type=int, default=16, help="unconditional models: how many images")
  p.add_argument("--labels", help="label-conditional models: a parsing-map PNG or a directory of them")
  p.add_argument("--style", help="SPADE with use_vae: an image whose style the outputs take")
  p.add_argument("--images", help="VAE / IntroVAE: a face image or a directory of them to reconstruct (from mu)")
  p.add_argument("--panels", help="SSuperVAE / SSuper-DCGAN: a directory of sequences <id>/ (panels in name order, "
                 "the last with its face painted white) whose faces to complete")
  p.add_argument("--paste", help="with --panels: a boxes JSON {\"<id>\": [x1, y1, x2, y2]}; also writes "
                 "<id>_panel.png, the last panel with the face pasted into its box")
  return p


def main(argv=None) -> int:
  return infer.main("generate", parser(), lambda a: run(
      a.workdir, a.out, step=a.step, best=a.best, seed=a.seed, batch_size=a.batch_size, save_raw=a.save_raw,
      labels=a.labels, style=a.style, num=a.num, images=a.images, panels=a.panels, paste=a.paste), argv)


if __name__ == "__main__":
  sys.exit(main())
