"""The registry of model families (an explicit dict, one module per family) and the contract each one keeps.

A family module provides:

  CONTRACT: Contract      what the loop, the evaluator and the inference commands may rely on:
    optimizer_groups        the parameter groups it trains, each with an optimizer from config.optim.<group>
                            ({"g", "d"}; {"vae"}; {"encoder", "decoder"}); params may hold further groups that no
                            optimizer touches (a frozen identity network, a frozen first stage)
    ema_groups              the groups whose moving average config.ema_decay keeps (used for inference)
    task                    "sample" (`generate`), "translate" (`translate`), "inpaint" (`inpaint`) or
                            "complete" (panel sequences); which inference command serves it
    eval_outputs            {output name: EvalOutput(inputs=batch fields it is generated from, reference=the
                            field of real images it is compared with)}; FID/KID are computed per output

  validate(config)                          raise errors.ConfigError for values it cannot train with
  init(config, rng) -> dict                 pure; {"params": {group: ...}, "collections": {group: ...}} and
                                            optionally "extra": {name: array}; `init_state` adds optimizers, EMA
  train_step(config, state, batch, rng)     pure; -> (state, metrics dict of scalars "g/..", "d/..", ...)
  sample_inputs(config, rng, batch) -> dict fixed inputs for the sample grids, drawn once from a batch
  sample(config, state, inputs) -> dict     name -> images in [-1, 1], (B, H, W, 3), shown side by side
  eval_inputs(config, rng, size, data)      `generate`'s inputs from `data`: the eval output's input fields for
                                            `size` records (from files in the inference commands)
  generate(config, state, inputs, rng)      inference (eval mode) -> {output name: images in [-1, 1]}
  networks(config) -> dict                  {name: (flax module, example inputs[, call kwargs])} for `main
                                            --describe` (kwargs default {"train": False})

and optionally:

  eval_scores(config, state, inputs, generated, output) -> {name: (B,)}
                                            per-record figures of one eval output beside FID/KID, logged as
                                            eval/<name> (their mean over the eval samples); MUNIT/SATNet's
                                            identity cosine

Every entry is checked by tests/contract.py, from the family's own test file, with its tiny preset: two jitted
steps, step == 2, finite metrics, every trained group's parameters move and every frozen one does not, sample and
generate shapes, and a run-directory round trip.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

import jax
import ml_collections

from facegen_jax import errors
from facegen_jax import optim
from facegen_jax import state as state_lib

TASKS = ("sample", "translate", "inpaint", "complete")


@dataclasses.dataclass(frozen=True)
class EvalOutput:
  """An output evaluation scores: generated from the records' `inputs` fields, compared with `reference`."""
  inputs: tuple[str, ...] = ()
  reference: str = "image"


@dataclasses.dataclass(frozen=True)
class Contract:
  optimizer_groups: tuple[str, ...]
  ema_groups: tuple[str, ...]
  task: str
  eval_outputs: Mapping[str, EvalOutput]

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"task {self.task!r} is not one of {TASKS}")
    if not set(self.ema_groups) <= set(self.optimizer_groups):
      raise ValueError(f"ema_groups {self.ema_groups} must be optimizer groups {self.optimizer_groups}")


# Imported after the contract's types, which the family modules use.
from facegen_jax.families import dcgan  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import intro_vae  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import munit  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import spade  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import ssuper_dcgan  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import ssupervae  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import tfill  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import tfill_refine  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import ugatit  # pylint: disable=g-import-not-at-top,wrong-import-position
from facegen_jax.families import vae  # pylint: disable=g-import-not-at-top,wrong-import-position

FAMILIES: dict[str, types.ModuleType] = {
    "dcgan": dcgan,
    "intro_vae": intro_vae,  # SSuperGAN's families: the VAE, IntroVAE, PlainSSuperVAE and SSuper-DCGAN
    "munit": munit,  # SATNet is its configuration (configs/satnet.py)
    "spade": spade,
    "ssuper_dcgan": ssuper_dcgan,
    "ssupervae": ssupervae,  # PlainSSuperVAE (configs/ssupervae.py:lstm its LSTM encoder)
    "tfill": tfill,  # TFill's coarse stage (configs/tfill.py)
    "tfill_refine": tfill_refine,  # TFill's 512 px refinement on a frozen coarse stage (configs/tfill.py:refine)
    "ugatit": ugatit,
    "vae": vae,
}


def get_family(name: str) -> types.ModuleType:
  if name not in FAMILIES:
    raise errors.ConfigError(
        f"unknown family {name!r}: set --config.family to one of {', '.join(sorted(FAMILIES))}")
  return FAMILIES[name]


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> state_lib.TrainState:
  """The family's step-0 state: its variables, an optimizer state per optimizer group, the EMA of its EMA groups
  when config.ema_decay > 0. Training, restoring and converting all build states through this, so a checkpoint's
  structure is one thing."""
  family = get_family(config.family)
  contract = family.CONTRACT
  variables = family.init(config, rng)
  params = variables["params"]
  for group in contract.optimizer_groups:
    optim.check_frozen(config, group, params[group])
  return state_lib.create(
      params, variables.get("collections", {}), optim.create_all(config, contract.optimizer_groups),
      ema_groups=contract.ema_groups if config.get("ema_decay", 0.0) else (), extra=variables.get("extra"))
