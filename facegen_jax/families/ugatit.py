"""U-GAT-IT (Kim et al. 2020) trained as znxlwm/UGATIT-pytorch's `UGATIT.train`, with Face2webtoon's additions.

Networks (`facegen_jax.nets.ugatit`): generators a2b (face -> webtoon) and b2a in optimizer group "g"; global
(n_layers 7) and local (n_layers 5) discriminators per domain, "ga", "la" (judge domain a) and "gb", "lb", in "d".
One step is the original's iteration:

1. D step: fakes from both generators (training mode; no state), every D on its domain's real and fake image, each
   call one spectral-norm power iteration (two per D, as the original's separate real and fake calls; the two
   calls run as one batched pass, each image normalised by its own call's sigma); LSGAN
   (mean squared error to 1 / 0) on the patch and CAM logits of all four; with Face2webtoon's group head
   (`model.num_groups` 4, `loss_weights.group` > 0) plus the cross-entropy of gb's and lb's group logits on the
   real webtoons against their group, weighted like the adversarial terms (the original's adv_weight).
2. G step against the updated Ds, on fresh forwards: LSGAN to 1 on the translated images (adv), L1 of the cycle
   a -> b -> a and b -> a -> b (cycle x10) and of the identity mappings a -> a through b2a, b -> b through a2b
   (identity x10), and the CAM loss (x1000): BCE of the translated image's generator CAM logit to 1 and of the
   identity mapping's to 0. Face2webtoon adds `loss_weights.group` x the cross-entropy of gb's and lb's group
   logits on the translated face against the face's group. Then every (Ada)ILN rho is clipped to [0, 1].

Face2webtoon's "selective backprop" (`config.bottleneck`): "selective" updates the generators' encoder ResnetBlocks
only on steps whose group is 0 (a mask inside the one compiled step: on other steps those parameters and their
Adam moments keep their values); "frozen" never updates them (what the published code does: its per-step unfreeze
is commented out); "train" is plain U-GAT-IT.

ADA / DiffAugment (`config.augment`, `facegen_jax.augment`): every image a D sees is augmented (real and fake, in
both steps; a domain's global and local D see the same augmented image), differentiably, so G's gradient passes.
ADA's p is adjusted from the signs of the global Ds' real outputs about the LSGAN decision boundary 0.5 (each
image's mean patch output), the paper's r_t = E[sign(D(real))], and lives in the state's `extra`.
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from facegen_jax import augment
from facegen_jax import errors
from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets import ugatit as nets
from input_pipeline import pipeline

GENERATORS = ("a2b", "b2a")
DISCRIMINATORS = ("ga", "la", "gb", "lb")  # The domain a Ds judge b2a's outputs, the b Ds a2b's.
BOTTLENECK_MODES = ("train", "selective", "frozen")
LOSS_TERMS = ("adv", "cycle", "identity", "cam", "group")
GROUP_HEAD = "group_classifier"  # Face2webtoon's group head in each D (nets.ugatit.Discriminator).
HEATMAPS = True  # generate() also returns "<direction>_heatmap" (translate --heatmap).

CONTRACT = families.Contract(
    optimizer_groups=("g", "d"), ema_groups=("g",), task="translate",
    eval_outputs={"a2b": families.EvalOutput(inputs=("a/image",), reference="b/image"),
                  "b2a": families.EvalOutput(inputs=("b/image",), reference="a/image")})


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  height, width = _size(config)
  if height != width:
    raise errors.ConfigError(f"config.input.resolution {config.input.resolution}: U-GAT-IT is square; set an int")
  if height % 4:
    raise errors.ConfigError(f"config.input.resolution {height} must be a multiple of 4 (two stride-2 convs)")
  for key in ("ngf", "n_res", "n_layers_global", "n_layers_local"):
    if m[key] < 1:
      raise errors.ConfigError(f"config.model.{key} is {m[key]}: set a positive value")
  for key in ("n_layers_global", "n_layers_local"):
    need = min_discriminator_size(m[key])
    if height < need:
      raise errors.ConfigError(
          f"config.model.{key}={m[key]} needs images of at least {need} px, the resolution is {height}: lower "
          f"--config.model.{key} or raise --config.input.resolution")
  if set(config.loss_weights) != set(LOSS_TERMS):
    raise errors.ConfigError(f"config.loss_weights must have exactly the keys {LOSS_TERMS}")
  for name, weight in config.loss_weights.items():
    if weight < 0:
      raise errors.ConfigError(f"config.loss_weights.{name} is {weight}: set a value >= 0 (0 = off)")
  if config.loss_weights.group and m.num_groups < 1:
    raise errors.ConfigError("config.loss_weights.group > 0 needs the group head: set --config.model.num_groups=4")
  if config.bottleneck not in BOTTLENECK_MODES:
    raise errors.ConfigError(f"config.bottleneck {config.bottleneck!r}: set one of {', '.join(BOTTLENECK_MODES)}")
  groups = pipeline.group_ids(config.input)
  if config.bottleneck == "selective" and not groups:
    raise errors.ConfigError("config.bottleneck='selective' updates the bottleneck on group-0 steps, so it needs "
                             "grouped data: set --config.groups=0,1,2,3 (or --config.bottleneck=train)")
  if m.num_groups and any(g >= m.num_groups for g in groups):
    raise errors.ConfigError(f"config.groups {groups} has ids beyond the head's {m.num_groups} classes")
  augment.validate(config.augment)


def min_discriminator_size(n_layers: int) -> int:
  """The smallest square input the U-GAT-IT D with `n_layers` accepts: n_layers - 2 reflect-padded 4x4 stride-2
  convs, then two stride-1 ones (the last layer and the output conv), each of which needs at least 1 px out."""
  def output(size):
    for _ in range(n_layers - 2):
      size = (size + 2 - 4) // 2 + 1
      if size < 1:
        return 0
    return size - 2
  size = 4
  while output(size) < 1:
    size += 1
  return size


def _size(config) -> tuple[int, int]:
  return pipeline.resolution_hw(config.input)


def _generator(config) -> nets.ResnetGenerator:
  m = config.model
  return nets.ResnetGenerator(ngf=m.ngf, n_blocks=m.n_res, img_size=_size(config)[0], light=m.light)


def _discriminator(config, name: str) -> nets.Discriminator:
  m = config.model
  n_layers = m.n_layers_global if name[0] == "g" else m.n_layers_local
  return nets.Discriminator(ndf=m.ngf, n_layers=n_layers, num_groups=m.num_groups)


def _example_image(config):
  return jnp.zeros((1, *_size(config), 3))


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """params {"g": {"a2b", "b2a"}, "d": {"ga", "la", "gb", "lb"}}; collections {"d": {spectral_stats: {...}}};
  extra: the augmentation's step-owned values (ADA's p)."""
  keys = dict(zip(GENERATORS + DISCRIMINATORS, jax.random.split(rng, 6)))
  image = _example_image(config)
  g = {name: _generator(config).init(keys[name], image)["params"] for name in GENERATORS}
  d_vars = {name: _discriminator(config, name).init(keys[name], image, update_stats=False)
            for name in DISCRIMINATORS}
  return {"params": {"g": g, "d": {name: v["params"] for name, v in d_vars.items()}},
          "collections": {"g": {}, "d": {sn_lib.SPECTRAL_STATS: {name: v[sn_lib.SPECTRAL_STATS]
                                                                 for name, v in d_vars.items()}}},
          "extra": augment.init_extra(config.augment)}


def networks(config: ml_collections.ConfigDict) -> dict:
  image = _example_image(config)
  eval_mode = {"update_stats": False}
  return {**{f"generator_{name}": (_generator(config), (image,), {}) for name in GENERATORS},
          **{f"discriminator_{name}": (_discriminator(config, name), (image,), eval_mode) for name in DISCRIMINATORS}}


def _translate(config, g_params, x):
  """(image, CAM logits, heatmap) of one generator (no state: instance norms only)."""
  image, cam, heatmap = _generator(config).apply({"params": common.to_compute(config, g_params)},
                                                  common.to_compute(config, x))
  return common.to_float32((image, cam, heatmap))


def _discriminate(config, name, d_params, spectral, *images):
  """Training-mode D calls on `images` in order, each its own power iteration as the original's separate calls,
  run as one batched pass (`nets.Discriminator`'s num_calls) -> ([outputs dict per image], updated spectral
  stats of that D)."""
  out, upd = _discriminator(config, name).apply(
      {"params": common.to_compute(config, d_params[name]), sn_lib.SPECTRAL_STATS: spectral[name]},
      common.to_compute(config, jnp.concatenate(images)), update_stats=True, num_calls=len(images),
      mutable=[sn_lib.SPECTRAL_STATS])
  patch, cam, _, group = common.to_float32(out)
  split = lambda x: [None] * len(images) if x is None else jnp.split(x, len(images))
  outs = [{"patch": p, "cam": c, "group": g} for p, c, g in zip(split(patch), split(cam), split(group))]
  return outs, {**spectral, name: upd[sn_lib.SPECTRAL_STATS]}


def _mse(x, target: float):
  return jnp.mean(jnp.square(x - target))


def _bce(logits, target: float):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def _cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _augmented(config, images: list, rng, extra) -> list:
  """The images of every array in `images`, augmented in one call (each image its own draw)."""
  sizes = [x.shape[0] for x in images]
  out = augment.augment(config.augment, jnp.concatenate(images), rng, extra)
  return jnp.split(out, np.cumsum(sizes)[:-1])


def _discriminator_loss(config, d_params, spectral, reals, fakes, groups_b, rng, extra):
  """reals/fakes: {domain: images} (fakes of that domain, i.e. b2a for "a"). Each D calls real, then fake, as
  the original's separate calls (so each spectral norm iterates twice), in one pass over its weights."""
  w = config.loss_weights
  terms, signs = {}, []
  augmented = _augmented(config, [reals["a"], fakes["a"], reals["b"], fakes["b"]], rng, extra)
  for domain, (real, fake) in zip("ab", (augmented[:2], augmented[2:])):
    for scale in "gl":
      name = scale + domain
      (out_real, out_fake), spectral = _discriminate(config, name, d_params, spectral, real, fake)
      terms[f"d/{name}_adv"] = _mse(out_real["patch"], 1.0) + _mse(out_fake["patch"], 0.0)
      terms[f"d/{name}_cam"] = _mse(out_real["cam"], 1.0) + _mse(out_fake["cam"], 0.0)
      if scale == "g":  # ADA's overfitting heuristic: each real image's mean patch output about the boundary 0.5.
        signs.append(jnp.sign(jnp.mean(out_real["patch"], axis=(1, 2, 3)) - 0.5))
      if w.group and domain == "b":
        terms[f"d/{name}_group"] = _cross_entropy(out_real["group"], groups_b)
  total = w.adv * sum(terms.values())
  return total, (spectral, terms, jnp.concatenate(signs))


def _generator_loss(config, g_params, d_params, spectral, real_a, real_b, groups_a, rng, extra):
  w = config.loss_weights
  a2b = functools.partial(_translate, config, g_params["a2b"])
  b2a = functools.partial(_translate, config, g_params["b2a"])
  n = real_a.shape[0]
  fake_ab, cam_ab, _ = a2b(real_a)
  fake_ba, cam_ba, _ = b2a(real_b)
  # The cycle and the identity mapping through the same generator in one call (instance norms are per image).
  back_a, cam_back_a, _ = b2a(jnp.concatenate([fake_ab, real_a]))
  back_b, cam_back_b, _ = a2b(jnp.concatenate([fake_ba, real_b]))
  fake_aba, fake_aa, cam_aa = back_a[:n], back_a[n:], cam_back_a[n:]
  fake_bab, fake_bb, cam_bb = back_b[:n], back_b[n:], cam_back_b[n:]
  terms = {"g/adv": 0.0}
  for domain, fake in zip("ab", _augmented(config, [fake_ba, fake_ab], rng, extra)):
    for scale in "gl":
      name = scale + domain
      (out,), spectral = _discriminate(config, name, d_params, spectral, fake)
      terms["g/adv"] += _mse(out["patch"], 1.0) + _mse(out["cam"], 1.0)
      if w.group and domain == "b":
        terms["g/group"] = terms.get("g/group", 0.0) + _cross_entropy(out["group"], groups_a)
  terms["g/cycle"] = jnp.mean(jnp.abs(fake_aba - real_a)) + jnp.mean(jnp.abs(fake_bab - real_b))
  terms["g/identity"] = jnp.mean(jnp.abs(fake_aa - real_a)) + jnp.mean(jnp.abs(fake_bb - real_b))
  terms["g/cam"] = _bce(cam_ba, 1.0) + _bce(cam_aa, 0.0) + _bce(cam_ab, 1.0) + _bce(cam_bb, 0.0)
  total = sum(w[name.split("/")[1]] * value for name, value in terms.items())
  return total, (spectral, terms)


def _hold(new, old, pattern: str, keep_old=True):
  """`new` with the leaves whose key path ends in a match of `pattern` (a path below a network of the group)
  taken from `old` where keep_old: for the parameters and for the optimizer state's moments of those parameters
  alike (their key paths end in the same names)."""
  compiled = re.compile(rf"(^|/)({pattern})$")
  def pick(path, n, o):
    return jnp.where(keep_old, o, n) if compiled.search(optim.path_name(path)) else n
  return jax.tree_util.tree_map_with_path(pick, new, old)


def _held_update(state, group: str, tx, grads, pattern: str, keep_old=True):
  """`state.update(group, ...)` except for the leaves `pattern` names where keep_old: those keep their values and
  their optimizer moments, as torch's Adam leaves a parameter without a gradient (weight decay included)."""
  new = state.update(group, tx, grads)
  return new.replace(params={**new.params, group: _hold(new.params[group], state.params[group], pattern, keep_old)},
                     opt_state={**new.opt_state, group: _hold(new.opt_state[group], state.opt_state[group], pattern,
                                                              keep_old)})


def _bottleneck_update(config, state, tx, grads, groups_a):
  """The G update with the bottleneck held per config.bottleneck (on every step when "frozen", on steps of
  groups other than 0 when "selective")."""
  if config.bottleneck == "train":
    return state.update("g", tx, grads)
  keep_old = True if config.bottleneck == "frozen" else groups_a[0] != 0
  return _held_update(state, "g", tx, grads, rf"({'|'.join(GENERATORS)})/({nets.BOTTLENECK_PATTERN})", keep_old)


def _discriminator_update(config, state, tx, grads):
  """The D update; the face-side Ds' group heads are in no loss (as in the original) and stay as they are."""
  if not config.model.num_groups:
    return state.update("d", tx, grads)
  return _held_update(state, "d", tx, grads, rf"(ga|la)/{GROUP_HEAD}/[^/]+")


def _groups(batch, domain):
  key = f"{domain}/group"
  if key in batch:
    return jnp.asarray(batch[key], jnp.int32)
  return jnp.zeros(batch[f"{domain}/image"].shape[:1], jnp.int32)


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  """D step, then G step against the updated Ds (see the module docstring)."""
  txs = optim.create_all(config, CONTRACT.optimizer_groups)
  real_a, real_b = batch["a/image"], batch["b/image"]
  groups_a, groups_b = _groups(batch, "a"), _groups(batch, "b")
  rngs = common.step_rngs(rng, "d_augment", "g_augment")
  spectral = state.collections["d"][sn_lib.SPECTRAL_STATS]
  g = state.params["g"]

  fakes = {"b": _translate(config, g["a2b"], real_a)[0], "a": _translate(config, g["b2a"], real_b)[0]}
  fakes = jax.lax.stop_gradient(fakes)
  (d_loss, (spectral, d_terms, signs)), d_grads = jax.value_and_grad(
      functools.partial(_discriminator_loss, config), has_aux=True)(
          state.params["d"], spectral, {"a": real_a, "b": real_b}, fakes, groups_b, rngs["d_augment"],
          state.extra)
  state = _discriminator_update(config, state, txs["d"], d_grads)

  (g_loss, (spectral, g_terms)), g_grads = jax.value_and_grad(
      functools.partial(_generator_loss, config), has_aux=True)(
          state.params["g"], state.params["d"], spectral, real_a, real_b, groups_a, rngs["g_augment"],
          state.extra)
  state = _bottleneck_update(config, state, txs["g"], g_grads, groups_a)
  state = state.replace(params={**state.params, "g": nets.clip_rho(state.params["g"])})

  extra, aug_metrics = augment.update(config.augment, state.extra, signs, real_a.shape[0])
  state = state.replace(step=state.step + 1, extra=extra,
                        collections={**state.collections, "d": {sn_lib.SPECTRAL_STATS: spectral}})
  return state, {**d_terms, "d/loss": d_loss, **g_terms, "g/loss": g_loss, **aug_metrics}


_JET_KNOTS = (1.0, 2.0, 3.0)  # Where blue, green and red peak on 4 * value (OpenCV's COLORMAP_JET shape).


def heatmap_image(heatmap, size) -> jax.Array:
  """(B, h, w, 1) CAM heatmap -> (B, H, W, 3) in [-1, 1]: min-max normalised per image, bilinear to `size`,
  jet-coloured, as UGATIT-pytorch's `cam` shows it."""
  h = heatmap - heatmap.min(axis=(1, 2, 3), keepdims=True)
  h = h / jnp.maximum(h.max(axis=(1, 2, 3), keepdims=True), 1e-12)
  h = jax.image.resize(h, (h.shape[0], *size, 1), "bilinear")
  # red, green, blue = clip(1.5 - |4h - k|) with k = 3, 2, 1.
  rgb = jnp.concatenate([jnp.clip(1.5 - jnp.abs(4 * h - k), 0, 1) for k in reversed(_JET_KNOTS)], axis=-1)
  return rgb * 2 - 1


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  del rng
  n = config.num_sample_images
  return {"a/image": jnp.asarray(batch["a/image"][:n]), "b/image": jnp.asarray(batch["b/image"][:n])}


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """real A | A->B | heatmap | A->B->A | real B | B->A | heatmap | B->A->B (the original's print_freq grid, with
  its heatmaps of the translation)."""
  g = state.params["g"]
  size = _size(config)
  out = collections.OrderedDict()
  for src, fwd, back in (("a", "a2b", "b2a"), ("b", "b2a", "a2b")):
    real = inputs[f"{src}/image"]
    fake, _, heatmap = _translate(config, g[fwd], real)
    out[f"real_{src}"] = real
    out[fwd] = fake
    out[f"{fwd}_heatmap"] = heatmap_image(heatmap, size)
    out[f"{fwd}_{back}"] = _translate(config, g[back], fake)[0]
  return out


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  del config, rng, size
  return dict(data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"a2b", "b2a"} for the inputs given ("a/image", "b/image"), and "<direction>_heatmap": the CAM heatmap over
  the input, half and half (translate --heatmap)."""
  del rng
  out = {}
  for src, direction in (("a", "a2b"), ("b", "b2a")):
    if f"{src}/image" in inputs:
      real = inputs[f"{src}/image"]
      fake, _, heatmap = _translate(config, state.params["g"][direction], real)
      out[direction] = fake
      out[f"{direction}_heatmap"] = 0.5 * (real + heatmap_image(heatmap, real.shape[1:3]))
  return out
