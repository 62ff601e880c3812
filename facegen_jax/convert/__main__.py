"""`python -m facegen_jax.convert SUBCOMMAND ...`: PyTorch checkpoints -> files facegen_jax loads, without torch.

  python -m facegen_jax.convert vgg19 --from vgg19-dcbb9e9d.pth --out vgg19.npz
  python -m facegen_jax.convert vgg16 --from models/vgg16.weight --out vgg16.npz   (or vgg16-397923af.pth)
  python -m facegen_jax.convert lpips --vgg vgg16-397923af.pth --heads lpips/weights/v0.1/vgg.pth --out lpips.npz
  python -m facegen_jax.convert inception --from pt_inception-2015-12-05-6726825d.pth --out inception.npz
  python -m facegen_jax.convert spade --checkpoint latest_net_G.pth --out runs/faceit [--encoder latest_net_E.pth]
  python -m facegen_jax.convert efficientnet --checkpoint efficientnet-b5-b6417697.pth --out efficientnet-b5.npz
  python -m facegen_jax.convert ssupergan --model vae|intro_vae|plain_ssupervae|ssuper_dcgan --checkpoint FILE \
      --out DIR [--backbone efficientnet-bN] [--panel_size N]
  python -m facegen_jax.convert tfill --checkpoint_dir checkpoints/celeba --out runs/tfill [--which_iter N] \
      [--fixed_size 256] [--fine_size 512]
"""

from __future__ import annotations

import argparse
import sys

from facegen_jax import errors
from facegen_jax.convert import efficientnet
from facegen_jax.convert import inception
from facegen_jax.convert import lpips
from facegen_jax.convert import munit
from facegen_jax.convert import satnet
from facegen_jax.convert import spade
from facegen_jax.convert import sphereface
from facegen_jax.convert import ssupergan
from facegen_jax.convert import tfill
from facegen_jax.convert import ugatit
from facegen_jax.convert import vgg16
from facegen_jax.convert import vgg19

# Subcommand -> module with `add_arguments(parser)` and `run(args)`; a new converter is an import and an entry.
SUBCOMMANDS = {
  "vgg19": vgg19,
  "vgg16": vgg16,
  "lpips": lpips,
  "spade": spade,
  "inception": inception,
  "ugatit": ugatit,
  "munit": munit,
  "satnet": satnet,
  "sphereface": sphereface,
  "efficientnet": efficientnet,
  "ssupergan": ssupergan,
  "tfill": tfill,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m facegen_jax.convert", description="Converts PyTorch checkpoints to files facegen_jax loads.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
  for name, module in SUBCOMMANDS.items():
    summary = module.__doc__.splitlines()[0]
    module.add_arguments(commands.add_parser(name, help=summary, description=summary))
  args = parser.parse_args(argv)
  return errors.run_command("facegen_jax.convert", lambda: SUBCOMMANDS[args.command].run(args))


if __name__ == "__main__":
  sys.exit(main())
