"""TFill inpainting (lyndonzheng/TFill's CelebA-HQ / FFHQ options) and Triple-Dots' personal fine-tuning.

  python -m facegen_jax.main --config configs/tfill.py --workdir runs/tfill                 # coarse stage, 512 data
  python -m facegen_jax.main --config configs/tfill.py:refine --workdir runs/tfill_ref \\
      --config.init_from.workdir=runs/tfill                                                   # 512 px refinement
  python -m facegen_jax.main --config configs/tfill.py:personal --workdir runs/me \\
      --config.init_from.workdir=runs/tfill --config.input.folder.image_dir=me \\
      --config.eval.inception_weights=inception.npz                                        # one person's photos
  python -m facegen_jax.main --config configs/tfill.py:cpu --workdir runs/tfill_cpu          # minutes on 2 cores

Presets:
  ""        TC coarse (`families.tfill`): ngf 32, ndf 32, embed 512, 12 encoders, fixed 256 inside 512 px data,
            batch 24 (train.sh on 3 GPUs), Adam (0.5, 0.9) G 1e-4 / D 4e-4 at a constant rate, lambda_g 1,
            lambda_rec 10 (holes x3), lambda_lp 10, no gradient penalty; holes from TFill's training mix (centre
            box / rectangles / strokes: config.input.masks.kind=random); --config.input.masks.kind=mask draws
            MaskTheFace's medical masks instead (Triple-Dots' data; synthetic faces carry their landmarks).
            TFill loads 542 px and crops 512 at random: with photos, --config.input.load_size=542
            --config.input.random_crop=True (the synthetic faces are drawn at most at 512).
  refine    `families.tfill_refine`: G_Ref and D_Ref at fine_size on the frozen E, T, G of a coarse run
            (--config.init_from.workdir, required).
  personal  fine-tunes every group of a base run (init_from, required; a refine run with
            --config.family=tfill_refine) on 100-200 photos of one person (--config.input.folder.image_dir,
            required) and keeps DIR/best_checkpoint by FID of the composites on held-out photos of that person
            (--config.eval.inception_weights): by default 10 % of the folder, picked by a hash of each file's
            relative path, so adding photos moves no other file (--config.input.folder.heldout: a fraction, or a
            count), which training never reads; or another folder with --config.eval.image_dir=DIR
            --config.input.folder.heldout=0. At most eval.num_samples (20) held-out photos are scored. 20-30 %
            holes from TFill's mix (for medical masks write them with `python -m facegen_jax.masks --images DIR
            --out M` and set --config.input.folder.mask_dir=M/masks --config.input.masks.kind=none).
  cpu       the same model cut to minutes on 2 cores: ngf 8 (embed 128), 2 transformer layers with FFN 256,
            4 heads, D widths capped at 64, fixed 32 inside 64 px data, batch 8, 300 steps, LPIPS kept.
  tiny      tests: ngf 2, one transformer layer, one ResnetBlock per stage, 16 inside 32 px, random LPIPS weights.
"""

import ml_collections

from configs import presets
from facegen_jax import base_config
from facegen_jax import optim
from facegen_jax.families import tfill

PRESETS = ("", "refine", "personal", "cpu", "tiny")
_LR = 1e-4


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "tfill"
  config.batch_size = 24
  config.num_train_steps = 2_000_000  # Triple-Dots: the paper's models ran ~2M iterations (n_iter 2e7: constant lr)
  config.model = tfill.model_config()
  config.optim.g = optim.config(name="adam", lr=_LR, b1=0.5, b2=0.9)
  config.optim.d = optim.config(name="adam", lr=_LR * 4, b1=0.5, b2=0.9)
  config.loss_weights = ml_collections.ConfigDict(dict(gan=1.0, l1=10.0, lpips=10.0, gp=0.0, r1=0.0))
  config.l1_hole_weight = 3.0
  config.lpips = tfill.lpips_config()
  config.heldout_required = False
  config.input.resolution = config.model.get_ref("fine_size")
  config.input.random_flip = True
  config.input.masks.kind = "random"
  config.input.synthetic.num_examples = 30_000
  config.log_every_steps = 1000        # print_freq
  config.sample_every_steps = 1000     # display_freq
  config.checkpoint_every_steps = 1000  # save_latest_freq
  config.num_sample_images = 8
  if preset == "refine":
    refine(config)
  elif preset == "personal":
    personal(config)
  elif preset == "cpu":
    cpu(config)
  elif preset == "tiny":
    tiny(config)
  elif preset:
    raise presets.unknown_preset(preset, "configs/tfill.py", PRESETS)
  return config


def refine(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The refinement stage on a coarse run's frozen E, T, G (groups ("g",) of --config.init_from.workdir)."""
  config.family = "tfill_refine"
  config.optim = ml_collections.ConfigDict()
  config.optim.g_ref = optim.config(name="adam", lr=_LR, b1=0.5, b2=0.9)
  config.optim.d_ref = optim.config(name="adam", lr=_LR * 4, b1=0.5, b2=0.9)
  config.init_from.groups = ("g",)
  config.init_from.required = True
  return config


def personal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Triple-Dots' personal models: 40-50k iterations on 115-133 photos of one person, from the base model."""
  presets.finetune(config, groups=(), steps=40_000)
  config.batch_size = 8
  config.input.source = "folder"
  config.input.folder.heldout = 0.1  # Triple-Dots held out 16 of 149 and 14 of 129 photos
  config.input.masks.band = (0.2, 0.3)  # Triple-Dots' personal sets
  config.heldout_required = True
  config.eval.every_steps = 2000
  config.eval.num_samples = 20   # capped at a held-out part's size; raise it to score more held-out photos
  config.eval.batch_size = 4
  config.eval.best_metric = "fid"
  config.eval.kid = False
  config.log_every_steps = 100
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 2000
  return config


def cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.batch_size = 8
  config.num_train_steps = 300
  config.model.update(ngf=8, embed_dim=128, fixed_size=32, fine_size=64, n_encoders=2, num_heads=4,
                      dim_conv=256, max_channels=64)
  config.input.synthetic.num_examples = 2000
  config.log_every_steps = 25
  config.sample_every_steps = 100
  config.checkpoint_every_steps = 100
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  presets.tiny(config, batch_size=4, resolution=config.model.get_ref("fine_size"))
  config.model.update(ngf=2, embed_dim=32, fixed_size=16, fine_size=32, n_encoders=1, num_heads=2,
                      dim_conv=16, down_layers=4, mid_layers=1, num_res_blocks=1, max_channels=8)
  config.lpips.random_init = True
  return config
