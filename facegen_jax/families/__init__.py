"""The registry of model families: an explicit dict, one module per family.

A family module provides:
  validate(config)                          raise errors.ConfigError for values it cannot train with
  init_state(config, rng) -> state          pure; a flax.struct dataclass with a `step` field
  train_step(config, state, batch, rng)     pure; -> (state, metrics dict of scalars, "g/..", "d/..")
  sample_inputs(config, rng, batch) -> dict fixed inputs for the sample grids, drawn once
  sample(config, state, inputs) -> dict     name -> images in [-1, 1], (B, H, W, 3); shown side by side
  generate(config, state, inputs, rng)      inference (eval mode) for `python -m facegen_jax.generate`;
                                            -> {"generated": images in [-1, 1]}
  EVAL_DATA_KEYS                            fields of the reference records evaluation generates from
                                            (("label",) for SPADE, () for unconditional models)
  eval_inputs(config, rng, size, data)      `generate`'s inputs for `size` images of an FID/KID evaluation;
                                            data holds the EVAL_DATA_KEYS of the batch's reference records
"""

import types

import jax
import jax.numpy as jnp
import ml_collections

from facegen_jax import errors
from facegen_jax.families import dcgan
from facegen_jax.families import spade

FAMILIES: dict[str, types.ModuleType] = {
    "dcgan": dcgan,
    "spade": spade,
}


def get_family(name: str) -> types.ModuleType:
  if name not in FAMILIES:
    raise errors.ConfigError(
        f"unknown family {name!r}: set --config.family to one of {', '.join(sorted(FAMILIES))}")
  return FAMILIES[name]


def init_state(config: ml_collections.ConfigDict, rng: jax.Array):
  """The family's initial state, with the EMA generator (a copy of G's parameters) when config.ema_decay > 0.

  Training, restoring and converting all build states through this, so a checkpoint's structure is one thing.
  """
  state = get_family(config.family).init_state(config, rng)
  if config.get("ema_decay", 0.0):
    state = state.replace(ema_params=jax.tree.map(jnp.copy, state.g_params))
  return state
