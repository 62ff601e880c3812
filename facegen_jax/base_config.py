"""The settings every family's config shares: the loop, checkpoints, logging and input.

Config files in configs/ start from `base_config()` and add their model and optimizer settings.
"""

import ml_collections
from ml_collections import config_dict

from facegen_jax.metrics import evaluator
from input_pipeline import pipeline


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = ""
  config.seed = 0
  config.batch_size = 64             # Global batch, split over all devices of all processes.
  config.num_train_steps = 1000
  config.log_every_steps = 50        # Scalars to TensorBoard, progress and ETA to the log.
  config.sample_every_steps = 500    # Image grids to TensorBoard and workdir/samples/.
  config.num_sample_images = 64
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  # What a non-finite loss does: "error" stops with the step and metric named; "skip" drops that update.
  config.nonfinite = "error"
  # Exponential moving average of the generator's parameters, updated after every step and used for samples,
  # evaluation and generation; 0 keeps none (the originals keep none; e.g. 0.999 as StyleGAN-style setups).
  config.ema_decay = 0.0
  # "bfloat16": mixed precision (the TPU default): convolutions and matmuls in bfloat16; parameters, optimizer
  # state, normalisation statistics and losses in float32. "float32" everywhere otherwise.
  config.compute_dtype = "float32"
  # A jax.profiler trace of `num_steps` steps from `first_step` into tensorboard/plugins/profile (TensorBoard's
  # profile tab); 0 steps: none.
  config.profile = ml_collections.ConfigDict(dict(num_steps=0, first_step=10))
  # One optimizer per parameter group the family trains: config.optim.<group> (keys in facegen_jax/optim.py).
  config.optim = ml_collections.ConfigDict()
  # Start some parameter groups (parameters, statistics, EMA) from another run directory or a converter's output
  # when this workdir has no checkpoint yet: fine-tuning, or a second stage on a frozen first one. groups=()
  # takes every group both have; ("g",) only G (a fresh D); {"coarse": "g"} G of that run as our "coarse".
  # Optimizers start fresh and the data from the beginning.
  config.init_from = ml_collections.ConfigDict(dict(
      workdir=config_dict.placeholder(str), step=config_dict.placeholder(int), best=False,
      groups=config_dict.placeholder(object),
      required=False))  # True in the `finetune` presets: training from scratch would be a mistake there.
  config.input = pipeline.default_input_config()
  config.eval = evaluator.default_config()  # FID/KID during training (off by default; see configs/).
  return config
