"""TFill's refinement stage: TC with `--coarse_or_refine refine` (model/tc_model.py). E, T and G of a coarse run
(`families.tfill`) are the frozen group "g" (no optimizer; `config.init_from` with groups ("g",) loads them), and
G_Ref (`nets.tfill.RefinedGenerator`) with D_Ref (StyleGAN2's discriminator at fine_size) are trained:

  composite = the coarse stage's (TC.forward, `tfill.coarse`), no gradient
  img_ref   = G_Ref(composite, m)                          m = 1 - mask, 1 = visible, full size
  refined   = m * image + (1 - m) * img_ref

with the coarse stage's losses on img_ref against the full-size image and mask (backward_D / backward_G's refine
branch): D_Ref softplus(-D_Ref(image)) + softplus(D_Ref(img_ref)); G_Ref gan 1 x softplus(-D_Ref(img_ref)) +
l1 10 x (3 x L1 in holes + L1 visible) + lpips 10 x LPIPS(image, img_ref). Adam (0.5, 0.9), G_Ref 1e-4, D_Ref 4e-4.
"""

from __future__ import annotations

import collections

import jax
import ml_collections

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.families import tfill

CONTRACT = families.Contract(
    optimizer_groups=("g_ref", "d_ref"), ema_groups=("g_ref",), task="inpaint",
    eval_outputs={"inpainted": families.EvalOutput(inputs=("image", "mask"), reference="image")})

LPIPS = tfill.LPIPS


def validate(config: ml_collections.ConfigDict) -> None:
  tfill.validate(config)
  m = config.model
  if m.down_layers < 3 or m.mid_layers < 0:
    raise errors.ConfigError(f"config.model.down_layers {m.down_layers} must be >= 3 (G_Ref's attention-aware "
                             "layer reads the features after the third downsampling) and mid_layers >= 0")
  if m.fine_size % 2 ** m.down_layers:
    raise errors.ConfigError(f"config.model.fine_size {m.fine_size} must be divisible by 2^down_layers")
  groups = config.init_from.get("groups")
  if groups and not hasattr(groups, "items") and "g" not in tuple(groups):
    raise errors.ConfigError(f"config.init_from.groups {tuple(groups)}: the refinement needs the coarse run's "
                             "'g' (E, T, G, frozen here): set --config.init_from.groups='(\"g\",)'")


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """params {"g": {"E", "T", "G"} (frozen), "g_ref": G_Ref, "d_ref": D_Ref[, "lpips"]}; no collections."""
  net_rng, lpips_rng = jax.random.split(rng)
  nets_ = tfill.init_networks(config, net_rng, ("E", "T", "G", "G_Ref", "D_Ref"))
  params = {"g": {k: nets_[k] for k in ("E", "T", "G")}, "g_ref": nets_["G_Ref"], "d_ref": nets_["D_Ref"]}
  if config.loss_weights.lpips:
    params[LPIPS] = tfill.lpips_params(config, lpips_rng)
  return {"params": params}


def networks(config: ml_collections.ConfigDict) -> dict:
  table, inputs = tfill.config_modules(config), tfill.config_inputs(config)
  return {name: (table[name], inputs[name], {}) for name in ("E", "T", "G", "G_Ref", "D_Ref")}


def refine(config, g_ref_params, composite, visible):
  """G_Ref(composite, m) -> img_ref (fine_size, tanh)."""
  module = tfill.config_modules(config)["G_Ref"]
  x, m = common.to_compute(config, (composite, visible))
  return common.to_float32(module.apply({"params": common.to_compute(config, g_ref_params)}, x, m))


def _forward(config, params, image, hole, rng) -> dict:
  out = tfill.coarse(config, params["g"], image, hole, rng)
  out = jax.tree.map(jax.lax.stop_gradient, out)
  img_ref = refine(config, params["g_ref"], out["composite"], out["visible"])
  out.update(img_ref=img_ref, refined=out["visible"] * image + (1 - out["visible"]) * img_ref)
  return out


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  rngs = common.step_rngs(rng, "noise", "lpips", "gp")
  image, hole = batch["image"], batch["mask"]
  coarse = jax.lax.stop_gradient(tfill.coarse(config, state.params["g"], image, hole, rngs["noise"]))

  def forward(g_ref_params):
    return refine(config, g_ref_params, coarse["composite"], coarse["visible"]), {}

  state, metrics, _ = tfill.adversarial_step(
      config, state, group_g="g_ref", group_d="d_ref", d_module=tfill.config_modules(config)["D_Ref"],
      forward=forward, real=image, visible=coarse["visible"], rngs=rngs)
  return state, metrics


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  return tfill.sample_inputs(config, rng, batch)


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """masked input | coarse | coarse composite | refined composite | original."""
  out = _forward(config, state.params, inputs["image"], inputs["mask"], jax.random.key(tfill.SAMPLE_NOISE_SEED))
  return collections.OrderedDict([
      ("1_masked", out["visible"] * inputs["image"]), ("2_coarse", out["upsampled"]),
      ("3_coarse_inpainted", out["composite"]), ("4_inpainted", out["refined"]), ("5_original", inputs["image"])])


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  return tfill.eval_inputs(config, rng, size, data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"inpainted": the refined composite, "coarse_inpainted": the coarse stage's, "refined_raw": G_Ref's output}."""
  out = _forward(config, state.params, inputs["image"], inputs["mask"], rng)
  return {"inpainted": out["refined"], "coarse_inpainted": out["composite"], "refined_raw": out["img_ref"]}


def eval_scores(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict, generated: dict,
                output: str) -> dict:
  return tfill.eval_scores(config, state, inputs, generated, output)
