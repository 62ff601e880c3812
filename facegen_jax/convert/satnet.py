"""SATNet generator checkpoint (gen_XXXXXXXX.pt, MUNIT's format with self-attention) -> facegen_jax variables.

  python -m facegen_jax.convert satnet --checkpoint outputs/sphereface/checkpoints/gen_00450000.pt --out runs/satnet \
      [--config configs/sphereface.yaml] [--dis outputs/sphereface/checkpoints/dis_00450000.pt]

yujiachen-y/experiments_on_face_photo2drawing's codes/SATNet trainer saves {'a': gen_a, 'b': gen_b} (domain a the
caricatures, b the photos) as MUNIT's does; its networks add SAGAN self-attention, whose convs (and the
discriminators' convs 2-4 with dis.norm 'sn') are wrapped in the originals' SpectralNorm (`weight_bar`,
`weight_u`, `weight_v`). Everything else, flags included, is `convert munit`'s (facegen_jax/convert/munit.py).
Checkpoints of SATNet's runs without self-attention (its sphere_without_sa.yaml) convert too.
"""

from __future__ import annotations

from facegen_jax.convert import munit


def add_arguments(parser) -> None:
  munit.add_arguments(parser)


def run(args) -> None:
  munit.run(args, variant="satnet")
