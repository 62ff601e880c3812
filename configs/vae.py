"""SSuperGAN's VAE baseline on comic faces: the IntroVAE network trained on the ELBO (vae_config.yaml).

  python -m facegen_jax.main --config configs/vae.py --workdir runs/vae          # the seed's setup
  python -m facegen_jax.main --config configs/vae.py:cpu --workdir runs/vae_cpu  # minutes on 2 CPU cores

The seed's data are Golden Age comic faces (golden_faces, 64 px, in [-1, 1]); the default here is the embedded
synthetic faces in toon style. Golden faces or any face folder: --config.input.source=folder
--config.input.folder.image_dir=DIR. The panel sequences' target faces (what SSuperVAE completes) are
--config.input.record=panels (the VAE reads their "image" field).
"""

import ml_collections

from facegen_jax import base_config
from facegen_jax import optim

from configs import presets

TRAIN_FACES = 30_000  # vae_config.yaml's num_training_samples.


def ssupergan_adam(**overrides) -> ml_collections.ConfigDict:
  """The seed's optimizer: Adam 2e-4 (0.5, 0.999), torch's coupled weight decay 2.5e-5, the learning rate linear
  to 0 over the run (LambdaLR (E - epoch) / E, stepped per epoch there, per step here), gradient norm 100."""
  return optim.config(**{**dict(name="adam", lr=2e-4, b1=0.5, b2=0.999, weight_decay=2.5e-5, decay_start_step=0,
                                clip_global_norm=100.0), **overrides})


def vae_model(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(image_size=64, latent_dim=256, channels=(64, 128, 256, 512), **overrides))


def face_input(config, *, num_examples: int) -> None:
  """Synthetic toon faces at 64 px, unflipped (the seed does not augment its faces)."""
  config.input.resolution = 64
  config.input.synthetic.domain = "toon"
  config.input.synthetic.num_examples = num_examples
  config.input.random_flip = False


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "vae"
  config.batch_size = 64
  config.num_train_steps = 100 * (TRAIN_FACES // 64)  # 100 epochs.
  config.model = vae_model()
  config.optim.vae = ssupergan_adam()
  config.loss_weights = ml_collections.ConfigDict(dict(kl=1.0))
  face_input(config, num_examples=TRAIN_FACES)
  return apply_preset(config, preset, "configs/vae.py", cpu_steps=600)


def apply_preset(config, preset: str, config_file: str, *, cpu_steps: int) -> ml_collections.ConfigDict:
  """The logging cadence and the "cpu" / "tiny" presets the VAE and IntroVAE configs share."""
  config.log_every_steps = 100
  config.sample_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.num_sample_images = 16
  if preset == "cpu":  # Minutes on 2 CPU cores: the seed's network at half width, batch 16.
    config.batch_size = 16
    config.num_train_steps = cpu_steps
    config.model.update(channels=(32, 64, 128, 256), latent_dim=128)
    config.input.synthetic.num_examples = 4_000
    config.sample_every_steps = 200
    config.checkpoint_every_steps = 200
  elif preset == "tiny":  # Tests: a 32 px network at toy widths.
    presets.tiny(config, batch_size=4, resolution=32)
    config.model.update(image_size=32, channels=(8, 16, 16), latent_dim=8)
  elif preset:
    raise presets.unknown_preset(preset, config_file, ("", "cpu", "tiny"))
  return config
