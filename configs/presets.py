"""What the presets of every configs/<family>.py share: `tiny` for tests, and the error for an unknown preset.

  if preset == "tiny":
    presets.tiny(config, batch_size=8, resolution=32)
    config.model.update(...)  # then the family's own narrowing
  elif preset:
    raise presets.unknown_preset(preset, "configs/<family>.py")
"""

import ml_collections

PRESETS = ("", "cpu", "tiny", "finetune")


def tiny(config: ml_collections.ConfigDict, *, batch_size: int, resolution) -> ml_collections.ConfigDict:
  """Seconds per step-compile: 4 steps on 64 synthetic examples, logging, sampling and checkpointing within them."""
  config.batch_size = batch_size
  config.num_train_steps = 4
  config.input.resolution = resolution
  config.input.synthetic.num_examples = 64
  config.log_every_steps = 2
  config.sample_every_steps = 4
  config.checkpoint_every_steps = 2
  config.num_sample_images = 4
  return config


def unknown_preset(preset: str, config_file: str, valid=PRESETS) -> ValueError:
  """The error a config raises for a preset it does not have, naming the ones it has."""
  names = [repr(name) for name in valid]
  choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
  return ValueError(f"unknown preset {preset!r} for {config_file}: use {choices}")


def finetune(config: ml_collections.ConfigDict, *, groups=(), steps: int, lr_scale: float = 1.0,
             ) -> ml_collections.ConfigDict:
  """Fine-tuning from another run (`--config.init_from.workdir=DIR`, which then is required): `groups` from it
  (empty: all), the rest fresh, `steps` steps, every optimizer's learning rate times `lr_scale`. Point the data
  at the new images (a few hundred personal photos are enough) with --config.input.source=folder
  --config.input.folder.image_dir=DIR."""
  config.init_from.groups = tuple(groups)
  config.init_from.required = True
  config.num_train_steps = steps
  for group in config.optim:
    config.optim[group].lr *= lr_scale
  return config
