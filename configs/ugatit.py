"""U-GAT-IT (Kim et al. 2020) as znxlwm/UGATIT-pytorch trains it, and Face2webtoon as its configuration.

  python -m facegen_jax.main --config configs/ugatit.py --workdir runs/ugatit                 # selfie2anime-like
  python -m facegen_jax.main --config configs/ugatit.py:light --workdir runs/ugatit_light
  python -m facegen_jax.main --config configs/ugatit.py:face2webtoon --workdir runs/f2w       # the seed's run
  python -m facegen_jax.main --config configs/ugatit.py:cpu --workdir runs/ugatit_cpu         # minutes on 2 cores

Domain a is the face photo, b the webtoon / anime face; the default data are the embedded synthetic photo and toon
faces. For image folders in the original's layout (dataset/<name>/trainA, trainB):
  --config.input.a.source=folder --config.input.a.folder.image_dir=dataset/NAME/trainA
  --config.input.b.source=folder --config.input.b.folder.image_dir=dataset/NAME/trainB
Face2webtoon's groups are subfolders trainA/<g>/, trainB/<g>/: add --config.input.a.folder.groups=True (and b);
`--config.groups=0,1,3` leaves group 2 out (4 classes always).

Presets:
  ""                   UGATIT-pytorch's defaults: full generator at 256, ngf 64, 4 res blocks, global D 7 layers,
                       local D 5, LSGAN x1, cycle x10, identity x10, CAM x1000, Adam 1e-4 (0.5, 0.999) with
                       weight decay 1e-4, linear decay to 0 over the second half of 1M iterations, batch 1,
                       resize to 286 + random crop 256 + flip.
  light                the same with the light generator (gamma/beta MLP after global average pooling).
  face2webtoon         Face2webtoon's main.py defaults: full at 256, groups 0-3 round-robin, the group loss
                       (weight 1), selective backprop of the bottleneck on group-0 steps, ADA without colour ops,
                       resize only (no flip / crop).
  face2webtoon_light   the same with the light generator.
  face2webtoon_base    the seed's baseline 2, stage 1: face2webtoon on group 0 only.
  face2webtoon_fewshot stage 2: all groups, every network started from a face2webtoon_base run
                       (--config.init_from.workdir=DIR, required).
  cpu                  minutes on 2 CPU cores: light, ngf 16, 2 res blocks, 64 px, the global D with 6 layers
                       (7 needs 96 px or more), 1500 steps, batch 1.
  tiny                 tests.
"""

import ml_collections

from configs import presets
from facegen_jax import augment
from facegen_jax import base_config
from facegen_jax import optim
from input_pipeline import pipeline

PRESETS = ("", "light", "face2webtoon", "face2webtoon_light", "face2webtoon_base", "face2webtoon_fewshot", "cpu",
           "tiny")
_ITERATIONS = 1_000_000
_FACE2WEBTOON_GROUPS = (0, 1, 2, 3)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "ugatit"
  config.batch_size = 1
  config.num_train_steps = _ITERATIONS
  config.model = ml_collections.ConfigDict(dict(
      ngf=64, n_res=4, light=False, n_layers_global=7, n_layers_local=5,
      num_groups=0))  # 4: Face2webtoon's group classifier head on every D.
  config.loss_weights = ml_collections.ConfigDict(dict(
      adv=1.0, cycle=10.0, identity=10.0, cam=1000.0,
      group=0.0))  # Face2webtoon's group_weight (G); D's group term is weighted by adv, as in the original.
  # The generator's encoder ResnetBlocks (Face2webtoon's "bottleneck"): "train" (U-GAT-IT), "selective" (the
  # seed's README: updated on group-0 steps only) or "frozen" (the published code, which never updates them).
  config.bottleneck = "train"
  # Face2webtoon's --group: the groups every step draws both domains from, round-robin; () = no groups.
  config.groups = ml_collections.FieldReference((), field_type=object)
  config.augment = augment.default_config()
  # One G optimizer for both generators and one D optimizer for the four discriminators, as the original.
  decay_start = config.get_ref("num_train_steps") // 2
  for group in ("g", "d"):
    config.optim[group] = optim.config(name="adam", lr=1e-4, b1=0.5, b2=0.999, weight_decay=1e-4,
                                       decay_start_step=decay_start)
  _input(config, resolution=256, crop=True)
  config.input.groups = config.get_ref("groups")
  config.log_every_steps = 100
  config.sample_every_steps = 1000   # print_freq.
  config.checkpoint_every_steps = 5000
  config.num_sample_images = 5       # The original's 5 train samples per grid.
  config.eval.kid_subset_size = None

  light = preset.endswith("light")
  if light:
    config.model.light = True
  if preset.startswith("face2webtoon"):
    _face2webtoon(config, preset)
  elif preset == "cpu":
    # Minutes on 2 cores. The global D at 64 px gets 6 layers: with 7 its last conv would see a 1x1 map.
    config.model.update(light=True, ngf=16, n_res=2, n_layers_global=6, n_layers_local=5)
    _input(config, resolution=64, crop=True)
    config.num_train_steps = 1500
    config.log_every_steps = 50
    config.sample_every_steps = 250
    config.checkpoint_every_steps = 250
    config.num_sample_images = 4
    config.input.a.synthetic.num_examples = 200
    config.input.b.synthetic.num_examples = 200
  elif preset == "tiny":
    # Face2webtoon's shape at toy size, so the contract test and tests/test_ugatit.py share one compiled step:
    # group heads and loss, selective bottleneck on groups 0 and 1, ADA adjusting p every 2 steps by 0.4.
    presets.tiny(config, batch_size=2, resolution=32)
    config.model.update(light=True, ngf=4, n_res=1, n_layers_global=5, n_layers_local=4, num_groups=4)
    _input(config, resolution=32, crop=False)
    config.input.a.synthetic.num_examples = 16
    config.input.b.synthetic.num_examples = 16
    config.loss_weights.group = 1.0
    config.bottleneck = "selective"
    config.groups = (0, 1)
    config.augment.update(kind="ada", interval=2, kimg=0.01, initial_p=0.5)
  elif preset not in ("", "light"):
    raise presets.unknown_preset(preset, "configs/ugatit.py", PRESETS)
  return config


def _input(config, *, resolution: int, crop: bool) -> None:
  """Two synthetic domains, photo (a) and toon (b). U-GAT-IT's train transform: flip, resize to size + 30, random
  crop of size (crop=True); Face2webtoon's: resize only."""
  config.input.domains = ("a", "b")
  config.input.a = pipeline.domain_config(synthetic=dict(domain="photo", seed=0))
  config.input.b = pipeline.domain_config(synthetic=dict(domain="toon", seed=1))
  config.input.resolution = resolution
  config.input.resize = "square"
  config.input.load_size = resolution + 30 if crop else None
  config.input.random_crop = crop
  config.input.random_flip = crop


def _face2webtoon(config, preset: str) -> None:
  config.model.num_groups = 4
  config.loss_weights.group = 1.0
  config.bottleneck = "selective"
  config.groups = _FACE2WEBTOON_GROUPS
  config.augment.kind = "ada"
  config.augment.color = False  # Face2webtoon's ADA has pixel blitting and geometric ops only.
  _input(config, resolution=256, crop=False)
  # The seed's webtoon group sizes (woman, man, man + glasses, woman + glasses), for a like-for-like imbalance.
  config.input.b.synthetic.group_counts = (1050, 249, 49, 38)
  config.checkpoint_every_steps = 2500  # results/<ds>_params_latest.pt every 2500 iterations.
  base = preset.removesuffix("_light")
  if base == "face2webtoon_base":
    config.groups = (0,)
  elif base == "face2webtoon_fewshot":
    presets.finetune(config, groups=(), steps=_ITERATIONS)
  elif base != "face2webtoon":
    raise presets.unknown_preset(preset, "configs/ugatit.py", PRESETS)
