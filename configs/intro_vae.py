"""IntroVAE on comic faces, as SSuperGAN trains it (intro_vae_config.yaml; families/intro_vae.py).

  python -m facegen_jax.main --config configs/intro_vae.py --workdir runs/intro_vae          # the seed's setup
  python -m facegen_jax.main --config configs/intro_vae.py:cpu --workdir runs/intro_vae_cpu  # minutes on 2 cores

alpha 0.25, beta 5, margin 110, batch 32, 200 epochs (of 30,000 faces: the seed's example config lists 100
training samples, a debugging value; the VAE's 30,000 here). The x_p hinge follows the paper (margin);
--config.intro.original_xp_hinge=True restores the seed's relu(alpha - KL) there. Data as configs/vae.py.
"""

import ml_collections

from configs import vae as vae_config
from facegen_jax import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "intro_vae"
  config.batch_size = 32
  config.num_train_steps = 200 * (vae_config.TRAIN_FACES // 32)  # 200 epochs.
  config.model = vae_config.vae_model()
  config.optim.encoder = vae_config.ssupergan_adam()
  config.optim.decoder = vae_config.ssupergan_adam()
  config.intro = ml_collections.ConfigDict(dict(
      alpha=0.25, beta=5.0, margin=110.0,
      # True: the seed's encoder hinge on prior samples, relu(alpha - KL(enc(x_p))) (intro_vae_trainer.py uses
      # adversarial_alpha where the paper has the margin); False: the paper's relu(margin - KL).
      original_xp_hinge=False))
  config.loss_weights = ml_collections.ConfigDict(dict(kl=1.0))  # Only the VAE families' ELBO reads it.
  vae_config.face_input(config, num_examples=vae_config.TRAIN_FACES)
  vae_config.apply_preset(config, preset, "configs/intro_vae.py", cpu_steps=400)
  if preset == "tiny":
    config.intro.margin = 2.0  # Above the toy KLs, so both hinges have a gradient.
  return config
