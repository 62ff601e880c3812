"""PlainSSuperVAE: the masked face of a comic panel from its sequence (ssupervae_config.yaml; families/ssupervae.py).

  python -m facegen_jax.main --config configs/ssupervae.py --workdir runs/ssupervae            # the seed's setup
  python -m facegen_jax.main --config configs/ssupervae.py:lstm --workdir runs/ssupervae_lstm  # use_lstm: True
  python -m facegen_jax.main --config configs/ssupervae.py:cpu --workdir runs/ssupervae_cpu    # minutes on 2 cores

EfficientNet-b5 per 300 px panel (a fresh fc to embed 256), 3 panels, latent 256, the IntroVAE decoder at 64 px;
batch 4, 100 epochs. The original starts the backbone from ImageNet: convert efficientnet_pytorch's weights with
`python -m facegen_jax.convert efficientnet --checkpoint efficientnet-b5-b6417697.pth --out efficientnet-b5.npz`
and add --config.model.backbone_weights=efficientnet-b5.npz (without it the backbone is random, said in the log).
The default data are synthetic panel sequences; the seed's Golden Age panels: build the TFDS dataset
(input_pipeline/golden_panels.py) and set --config.input.source=tfds --config.input.tfds.name=golden_panels.
"""

import ml_collections

from configs import presets
from configs import vae as vae_config
from facegen_jax import base_config
from facegen_jax.families import ssupergan

# About 95% of the ~300k sequences in the seed's panel_face_areas.json (train_test_ratio 0.95); approximate: set
# num_train_steps for your JSON.
GOLDEN_TRAIN_SEQUENCES = 285_000
PRESETS = ("", "lstm", "cpu", "cpu_lstm", "tiny")


def panel_input(config, *, panel_size: int, face_size: int, num_examples: int) -> None:
  """Synthetic panel sequences of 3 panels (the seed's seq_size), the target face at face_size."""
  config.input.record = "panels"
  config.input.panels.num_panels = 3
  config.input.panels.panel_size = panel_size
  config.input.resolution = face_size  # = input.panels.face_size
  config.input.synthetic.num_examples = num_examples
  config.input.random_flip = False


def cpu_backbone(config) -> None:
  """The cpu presets' backbone: EfficientNet-b0 (5.3M parameters instead of b5's 30M) on 96 px panels."""
  config.model.backbone = "efficientnet-b0"
  config.input.panels.panel_size = 96


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "ssupervae"
  config.batch_size = 4
  config.num_train_steps = 100 * (GOLDEN_TRAIN_SEQUENCES // 4)  # 100 epochs.
  config.model = ssupergan.seq_config_dict(
      backbone="efficientnet-b5", embed_dim=256, latent_dim=256, use_lstm=False, lstm_hidden=256,
      channels=(64, 128, 256, 512), image_size=64)
  config.optim.vae = vae_config.ssupergan_adam()  # Over everything, backbone included.
  config.loss_weights = ml_collections.ConfigDict(dict(kl=1.0))
  panel_input(config, panel_size=300, face_size=64, num_examples=100_000)
  config.log_every_steps = 100
  config.sample_every_steps = 5000
  config.checkpoint_every_steps = 5000
  config.num_sample_images = 8

  base = preset.removeprefix("cpu").removeprefix("_") if preset.startswith("cpu") else preset
  if base == "lstm":  # use_lstm: an LSTM (256, one direction, one layer) over the panels, masked panel first.
    config.model.use_lstm = True
  elif base not in ("", "tiny"):
    raise presets.unknown_preset(preset, "configs/ssupervae.py", PRESETS)
  if preset.startswith("cpu"):  # Minutes on 2 CPU cores: b0 on 96 px panels, batch 4, a half-width decoder.
    cpu_backbone(config)
    config.num_train_steps = 600
    config.model.update(channels=(32, 64, 128, 256), latent_dim=128, embed_dim=128)
    config.input.synthetic.num_examples = 2_000
    config.sample_every_steps = 200
    config.checkpoint_every_steps = 200
  elif preset == "tiny":  # Tests: the toy backbone (families/ssupergan.py) on 32 px panels, a toy decoder.
    presets.tiny(config, batch_size=2, resolution=32)
    config.model.update(backbone="toy", embed_dim=8, latent_dim=8, channels=(8, 16, 16), image_size=32)
    config.input.panels.panel_size = 32
    config.input.synthetic.num_examples = 16
  return config
