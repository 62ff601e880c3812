"""DCGAN on face crops: SSuperGAN's `dcgan_config.yaml`.

  python -m facegen_jax.main --config configs/dcgan.py --workdir runs/dcgan          # the seed's setup
  python -m facegen_jax.main --config configs/dcgan.py:cpu --workdir runs/dcgan_cpu  # minutes on a laptop CPU

The default data is the embedded synthetic face set; for CelebA (the seed's data) point it at the aligned
images: --config.input.source=folder --config.input.folder.image_dir=/data/img_align_celeba
FID/KID while training (off by default): --config.eval.every_steps=5000 --config.eval.inception_weights=inception.npz
"""

import ml_collections

from facegen_jax import base_config
from facegen_jax import optim

from configs import presets

_CELEBA_TRAIN_IMAGES = 202_599


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "dcgan"
  config.seed = 999  # manualSeed in the original.
  config.batch_size = 128
  # 150 epochs of CelebA at batch 128.
  config.num_train_steps = 150 * (_CELEBA_TRAIN_IMAGES // 128)
  config.model = ml_collections.ConfigDict(dict(image_size=64, nz=100, ngf=64, ndf=64, channels=3))
  # D's init: "normal" is the DCGAN paper's N(0, 0.02) (BatchNorm scale N(1, 0.02)); "torch_default" is what the
  # original's code does (weights_init applied to G only, so D keeps torch's default init).
  config.model.d_init = "normal"
  config.optim.g = optim.config(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  config.optim.d = optim.config(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  config.gan_loss = "bce"
  config.input.resolution = 64
  config.input.resize = "shorter_side"  # Resize(64) + CenterCrop(64) as the original's transforms.
  config.input.random_flip = False
  config.input.synthetic.num_examples = _CELEBA_TRAIN_IMAGES
  config.log_every_steps = 100
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 2000

  if preset == "cpu":  # A few minutes on 2 CPU cores: the same model, narrower, at 32 px.
    config.batch_size = 32
    config.num_train_steps = 1500
    config.model.update(image_size=32, ngf=32, ndf=32)
    config.input.resolution = 32
    config.input.synthetic.num_examples = 20_000
    config.log_every_steps = 100
    config.sample_every_steps = 500
    config.checkpoint_every_steps = 500
    config.num_sample_images = 36
  elif preset == "tiny":  # Tests: seconds per step-compile.
    presets.tiny(config, batch_size=8, resolution=32)
    config.model.update(image_size=32, ngf=8, ndf=8, nz=16)
  elif preset == "finetune":  # A trained G and D on a small set of new faces: --config.init_from.workdir=DIR.
    presets.finetune(config, steps=2_000, lr_scale=0.5)
    config.batch_size = 32
  elif preset:
    raise presets.unknown_preset(preset, "configs/dcgan.py")
  return config
