"""SPADE on face parsing maps: FaceIt-SPADE's setup of NVlabs/SPADE.

  python -m facegen_jax.main --config configs/spade.py --workdir runs/spade          # the seed's setup
  python -m facegen_jax.main --config configs/spade.py:cpu --workdir runs/spade_cpu  # minutes on a laptop CPU

FaceIt's command: train.py --batchSize 32 --dataset_mode custom --no_instance --label_nc 19
--preprocess_mode resize_and_crop --load_size 128 --crop_size 128 --aspect_ratio 1 --niter 100, on 20K
CelebAMask-HQ images; everything else at NVlabs/SPADE's defaults (ngf = ndf = 64, norm_G
spectralspadesyncbatch3x3, norm_D spectralinstance, multiscale D with 2 scales of 4 layers, hinge loss,
lambda_feat = lambda_vgg = 10, TTUR, niter_decay 0, random flips).

The default data is the embedded synthetic faces with parsing maps; for CelebAMask-HQ (build it with
`python -m input_pipeline.celebamask_hq --size 128 ...`):
  --config.input.source=tfds --config.input.tfds.name=celebamask_hq/128 --config.input.tfds.label_key=label
  --config.train_examples=<size of the train split>
The VGG loss needs converted VGG19 weights:
  python -m facegen_jax.convert vgg19 --from vgg19-dcbb9e9d.pth --out vgg19.npz; --config.vgg_weights=vgg19.npz
FID/KID while training (off, as in the original, which scores offline): generated from the test split's maps,
  --config.eval.every_steps=5000 --config.eval.inception_weights=inception.npz --config.eval.split=test
  --config.eval.num_samples=2000
"""

import ml_collections

from facegen_jax import base_config
from facegen_jax import optim

from configs import presets

_FACEIT_TRAIN_IMAGES = 20_000
_LR = 2e-4


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "spade"
  config.batch_size = 32
  config.model = ml_collections.ConfigDict(dict(
      label_nc=19, crop_size=128, aspect_ratio=1.0, ngf=64, ndf=64, num_upsampling_layers="normal",
      use_vae=False, z_dim=256,
      g_spectral_norm=True, g_param_free_norm="batch",  # norm_G 'spectralspadesyncbatch3x3'.
      d_spectral_norm=True, n_layers_D=4, num_D=2,      # norm_D 'spectralinstance', netD 'multiscale'.
      e_spectral_norm=True))                            # norm_E 'spectralinstance'.
  # Epochs as the original counts them (niter at the initial rate, then niter_decay linearly to 0), turned into
  # steps from the training set size; these are references, so overriding one of them on the command line
  # updates num_train_steps and the decay start.
  config.niter = 100
  config.niter_decay = 0
  config.train_examples = _FACEIT_TRAIN_IMAGES
  steps_per_epoch = config.get_ref("train_examples") // config.get_ref("batch_size")  # drop_last=True.
  config.num_train_steps = (config.get_ref("niter") + config.get_ref("niter_decay")) * steps_per_epoch
  decay_start = config.get_ref("niter") * steps_per_epoch
  # TTUR (the original's default): G at lr / 2, D at lr * 2, Adam betas (0, 0.9). With --no_TTUR the original
  # uses lr for both and betas (0.5, 0.999).
  config.optim.g = optim.config(name="adam", lr=_LR / 2, b1=0.0, b2=0.9,
                                                decay_start_step=decay_start)
  config.optim.d = optim.config(name="adam", lr=_LR * 2, b1=0.0, b2=0.9,
                                                decay_start_step=decay_start)
  config.gan_loss = "hinge"
  config.loss_weights = ml_collections.ConfigDict(dict(gan=1.0, feat=10.0, vgg=10.0, kld=0.05))
  config.vgg_weights = ""  # A .npz from `python -m facegen_jax.convert vgg19`; needed while loss_weights.vgg > 0.
  config.input.resolution = 128
  config.input.resize = "square"  # resize_and_crop with load_size = crop_size: a squash to 128, no crop.
  config.input.random_flip = True
  config.input.num_classes = 19
  config.input.synthetic.num_examples = _FACEIT_TRAIN_IMAGES
  config.log_every_steps = 100     # print_freq.
  config.sample_every_steps = 100  # display_freq.
  config.checkpoint_every_steps = 5000  # save_latest_freq.
  config.num_sample_images = 16

  if preset == "cpu":  # Minutes on 2 CPU cores: narrower, at 64 px, without the VGG loss (the run logs so).
    # Not 32 px: there the first block runs at 1x1 on the label map's corner (background in every face), its batch
    # variance is 0, and eval-mode generation (running statistics) amplifies that into noise.
    config.batch_size = 4
    config.model.update(crop_size=64, ngf=16, ndf=16)
    config.loss_weights.vgg = 0.0
    config.train_examples = 400
    config.niter, config.niter_decay = 2, 1  # 3 epochs of 100 steps, the last one decaying.
    config.input.resolution = 64
    config.input.synthetic.num_examples = 400
    config.log_every_steps = 25
    config.sample_every_steps = 100
    config.checkpoint_every_steps = 100
  elif preset == "tiny":  # Tests: seconds per step-compile.
    presets.tiny(config, batch_size=4, resolution=32)
    config.model.update(crop_size=32, ngf=4, ndf=4, z_dim=8)
    config.loss_weights.vgg = 0.0
    config.train_examples = 64
  elif preset == "finetune":  # A converted or trained G with a fresh D on new data: --config.init_from.workdir=DIR.
    presets.finetune(config, groups=("g",), steps=10_000)
  elif preset:
    raise presets.unknown_preset(preset, "configs/spade.py")
  return config
