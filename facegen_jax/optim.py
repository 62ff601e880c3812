"""Optimizers built from a config dict, so every family reads `config.g_opt` / `config.d_opt` the same way."""

import ml_collections
import optax

from facegen_jax import errors

OPTIMIZERS = ("adam", "adamw")


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Constant, or constant then linear decay to 0 from `decay_start_step` (SPADE's `niter` / `niter_decay`)."""
  decay_start = opt_config.get("decay_start_step")
  if decay_start is None or decay_start >= num_train_steps:
    return optax.constant_schedule(opt_config.lr)
  return optax.join_schedules(
      [optax.constant_schedule(opt_config.lr),
       optax.linear_schedule(opt_config.lr, 0.0, num_train_steps - decay_start)],
      boundaries=[decay_start])


def create_optimizer(opt_config: ml_collections.ConfigDict, num_train_steps: int,
                     *, name: str = "opt") -> optax.GradientTransformation:
  """Adam(W) with PyTorch's defaults where the config is silent (eps 1e-8; weight decay 0)."""
  if opt_config.name not in OPTIMIZERS:
    raise errors.ConfigError(
        f"unknown optimizer {opt_config.name!r} in config.{name}: set --config.{name}.name to one of "
        f"{', '.join(OPTIMIZERS)}")
  if opt_config.lr <= 0:
    raise errors.ConfigError(
        f"config.{name}.lr must be > 0, got {opt_config.lr}: set --config.{name}.lr to e.g. 2e-4")
  lr = learning_rate_schedule(opt_config, num_train_steps)
  b1, b2 = opt_config.get("b1", 0.9), opt_config.get("b2", 0.999)
  eps, weight_decay = opt_config.get("eps", 1e-8), opt_config.get("weight_decay", 0.0)
  if opt_config.name == "adamw":
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  if weight_decay:  # torch.optim.Adam's L2 penalty is added to the gradient before the moments.
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx
