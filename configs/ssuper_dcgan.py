"""SSuper-DCGAN: panel-sequence encoder + DCGAN generator + local D (ssuper_dcgan_config.yaml; families/ssuper_dcgan.py).

  python -m facegen_jax.main --config configs/ssuper_dcgan.py --workdir runs/ssuper_dcgan          # the seed's setup
  python -m facegen_jax.main --config configs/ssuper_dcgan.py:cpu --workdir runs/ssuper_dcgan_cpu  # minutes on 2 cores

EfficientNet-b5 per 300 px panel (embed 1024), a bidirectional LSTM (2 x 512), latent 512, the DCGAN generator
(ngf 64) and local D (ndf 64) on the 64 px face; batch 24, 200 epochs. Separate D and G updates by default;
--config.gan.original_single_backward=True restores the seed's one backward of ELBO + errD + errG. The backbone's
ImageNet weights and the data as configs/ssupervae.py.
"""

import ml_collections

from configs import presets
from configs import ssupervae as ssupervae_config
from facegen_jax import base_config
from facegen_jax import optim
from facegen_jax.families import ssupergan


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "ssuper_dcgan"
  config.batch_size = 24
  config.num_train_steps = 200 * (ssupervae_config.GOLDEN_TRAIN_SEQUENCES // 24)  # 200 epochs.
  config.model = ssupergan.seq_config_dict(
      backbone="efficientnet-b5", embed_dim=1024, latent_dim=512, use_lstm=True, lstm_hidden=1024,
      bidirectional=True, ngf=64, ndf=64)
  # The seed: Adam(seq_encoder, 2e-4) with torch's default betas; Adam(G), Adam(D) at (0.5, 0.999); no weight decay
  # (the config's weight_decay is unused), no schedule; clip_grad_norm_ 100 on each network.
  config.optim.encoder = optim.config(name="adam", lr=2e-4, b1=0.9, b2=0.999, clip_global_norm=100.0)
  config.optim.g = optim.config(name="adam", lr=2e-4, b1=0.5, b2=0.999, clip_global_norm=100.0)
  config.optim.d = optim.config(name="adam", lr=2e-4, b1=0.5, b2=0.999, clip_global_norm=100.0)
  config.loss_weights = ml_collections.ConfigDict(dict(kl=1.0))
  # True: the seed's single backward of errE + errD + errG (D's gradient also holds errG's); False: D step, then
  # the G and encoder step against the updated D.
  config.gan = ml_collections.ConfigDict(dict(original_single_backward=False))
  ssupervae_config.panel_input(config, panel_size=300, face_size=64, num_examples=100_000)
  config.log_every_steps = 100
  config.sample_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.num_sample_images = 8

  if preset == "cpu":  # Minutes on 2 CPU cores: b0 on 96 px panels, batch 4, narrower LSTM and G/D.
    ssupervae_config.cpu_backbone(config)
    config.batch_size = 4
    config.num_train_steps = 600
    config.model.update(embed_dim=256, lstm_hidden=256, latent_dim=128, ngf=32, ndf=32)
    config.input.synthetic.num_examples = 2_000
    config.sample_every_steps = 200
    config.checkpoint_every_steps = 200
  elif preset == "tiny":  # Tests: the toy backbone on 32 px panels, 64 px faces (the DCGAN's size), toy widths.
    presets.tiny(config, batch_size=2, resolution=64)
    config.model.update(backbone="toy", embed_dim=8, lstm_hidden=8, latent_dim=8, ngf=4, ndf=4)
    config.input.panels.panel_size = 32
    config.input.synthetic.num_examples = 16
  elif preset:
    raise presets.unknown_preset(preset, "configs/ssuper_dcgan.py", ("", "cpu", "tiny"))
  return config
