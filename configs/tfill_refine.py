"""TFill's refinement stage (`families.tfill_refine`): configs/tfill.py's presets with the refine stage on top.

  python -m facegen_jax.main --config configs/tfill_refine.py --workdir runs/tfill_ref \\
      --config.init_from.workdir=runs/tfill     # = configs/tfill.py:refine
Presets: "" (refine), personal (fine-tunes a refine run's groups on one person's photos), cpu, tiny (tests: the
frozen coarse stage is random-initialised, no init_from, no LPIPS term).
"""

import ml_collections

from configs import presets
from configs import tfill

PRESETS = ("", "personal", "cpu", "tiny")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise presets.unknown_preset(preset, "configs/tfill_refine.py", PRESETS)
  config = tfill.get_config("cpu" if preset == "cpu" else "tiny" if preset == "tiny" else "")
  tfill.refine(config)
  if preset == "personal":
    tfill.personal(config)
  elif preset == "tiny":
    config.init_from.required = False
    config.loss_weights.lpips = 0.0  # the LPIPS term is the coarse stage's code, covered by configs/tfill.py:tiny
  return config
