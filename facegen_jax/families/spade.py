"""SPADE / GauGAN (Park et al. 2019) trained as NVlabs/SPADE's pix2pix trainer does, with FaceIt-SPADE's options.

The networks are `facegen_jax.nets.spade`. One step follows the original's `train.py` loop, which calls
`run_generator_one_step` and then `run_discriminator_one_step` on the same batch (D_steps_per_G 1):

1. G step: fake = G(label) in training mode; D sees fake and real in one batch (the original's `discriminate`,
   one D call on concat(fake, real); here interleaved, see `_discriminate`); loss = hinge G loss + feature
   matching + VGG (+ KL with `use_vae`); Adam on G (and the encoder's parameters, which the original puts in
   optimizer_G).
2. D step: a fresh fake from the *updated* G (the original's `generate_fake` under no_grad), D on
   fake and real again, hinge D loss, Adam on D.

So per step G runs forward twice and D twice, all in training mode, and every spectral norm runs one power
iteration per forward (two per step, for G, D and the encoder alike), and the sync-BN running statistics are
updated twice (momentum 0.1 each time), exactly as the PyTorch modules do. The running statistics are never read
in training; they matter for eval-mode inference and converted checkpoints.

Losses, as the original's `Pix2PixModel` and `GANLoss` compute them, each term scaled by `config.loss_weights`:
  gan   the G hinge loss -mean(D(fake)), on the last output of each scale, averaged over scales;
  feat  sum over each scale's intermediate D features (all but the last) of L1(fake, detached real), averaged
        over scales (lambda_feat 10);
  vgg   SPADE's VGGLoss through `facegen_jax.nets.vgg` (lambda_vgg 10);
  kld   -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) over batch and z (a sum, not a mean), with `use_vae`
        (lambda_kld 0.05).
D's loss is hinge real + hinge fake, each averaged over scales on the last outputs. A weight of 0 switches a term
off: it is not computed and not reported. Metrics report each term unweighted and `g/loss` weighted.
"""

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
from facegen_jax import losses
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.nets import spade as spade_nets
from facegen_jax.nets import spectral_norm as sn_lib

_TRAIN_COLLECTIONS = ["batch_stats", sn_lib.SPECTRAL_STATS]
LOSS_TERMS = ("gan", "feat", "vgg", "kld")
_VGG_HOWTO = ("get VGG19 weights and convert them with `python -m facegen_jax.convert vgg19 --from "
              "vgg19-dcbb9e9d.pth --out vgg19.npz`, then set --config.vgg_weights=vgg19.npz, "
              "or set --config.loss_weights.vgg=0")
# Logits at which one side of a discriminator loss is (numerically) zero, to report D's real and fake parts
# with the shared loss functions: the losses are sums of a real and a fake part.
_NEUTRAL_LOGITS = {"hinge": (1.0, -1.0), "lsgan": (1.0, 0.0), "bce": (50.0, -50.0)}


CONTRACT = families.Contract(
    optimizer_groups=("g", "d"), ema_groups=("g",), task="sample",
    eval_outputs={"generated": families.EvalOutput(inputs=("label",), reference="image")})


def validate(config: ml_collections.ConfigDict) -> None:
  _validate_model_and_data(config)
  _validate_losses(config)
  if config.train_examples < config.batch_size:
    raise errors.ConfigError(
        f"config.train_examples ({config.train_examples}) is below one batch ({config.batch_size}): set it to "
        "the size of the training set (it converts niter / niter_decay epochs to steps)")


def _validate_model_and_data(config) -> None:
  m = config.model
  if m.num_upsampling_layers not in spade_nets.NUM_UPSAMPLING_LAYERS:
    raise errors.ConfigError(f"config.model.num_upsampling_layers {m.num_upsampling_layers!r}: set it to one of "
                             f"{', '.join(spade_nets.NUM_UPSAMPLING_LAYERS)}")
  if m.g_param_free_norm not in spade_nets.PARAM_FREE_NORMS:
    raise errors.ConfigError(f"config.model.g_param_free_norm {m.g_param_free_norm!r}: set it to one of "
                             f"{', '.join(spade_nets.PARAM_FREE_NORMS)}")
  scale = 2 ** spade_nets.NUM_UPSAMPLING_LAYERS[m.num_upsampling_layers]
  if m.crop_size % scale:
    raise errors.ConfigError(
        f"config.model.crop_size {m.crop_size} must be a multiple of {scale} (num_upsampling_layers "
        f"{m.num_upsampling_layers!r}): set --config.model.crop_size to e.g. 128")
  if config.input.resolution != m.crop_size or m.aspect_ratio != 1.0:
    raise errors.ConfigError(
        f"config.input.resolution ({config.input.resolution}) must equal config.model.crop_size ({m.crop_size}) "
        "with aspect_ratio 1 (the pipeline makes square crops): set both to the same value")
  if config.input.num_classes != m.label_nc:
    raise errors.ConfigError(
        f"config.input.num_classes ({config.input.num_classes}) differs from config.model.label_nc "
        f"({m.label_nc}): set both to the number of parsing classes (19 for CelebAMask-HQ)")
  if config.input.source == "tfds" and not config.input.tfds.label_key:
    raise errors.ConfigError("SPADE needs parsing maps: set --config.input.tfds.label_key=label")
  if config.input.source == "folder" and not config.input.folder.label_dir:
    raise errors.ConfigError("SPADE needs parsing maps: set --config.input.folder.label_dir")


def _validate_losses(config) -> None:
  weights = config.loss_weights
  if set(weights) != set(LOSS_TERMS):
    raise errors.ConfigError(f"config.loss_weights must have exactly the keys {LOSS_TERMS}")
  for name, weight in weights.items():
    if weight < 0:
      raise errors.ConfigError(f"config.loss_weights.{name} is {weight}: set it to a value >= 0 (0 = off)")
  if config.gan_loss not in _NEUTRAL_LOGITS:
    raise errors.ConfigError(f"unknown GAN loss {config.gan_loss!r}: set --config.gan_loss to one of "
                             f"{', '.join(_NEUTRAL_LOGITS)} (the original's default is hinge)")
  if weights.vgg == 0:
    logging.info("The VGG loss is off (config.loss_weights.vgg=0, as in the cpu and tiny presets); to turn it "
                 "on, set --config.loss_weights.vgg=10 --config.vgg_weights=vgg19.npz")
  elif not config.vgg_weights:
    raise errors.ConfigError(f"the VGG loss needs VGG19 weights (config.vgg_weights is empty): {_VGG_HOWTO}")
  elif not epath.Path(config.vgg_weights).exists():
    raise errors.ConfigError(f"config.vgg_weights {config.vgg_weights!r} does not exist: {_VGG_HOWTO}")


def _models(config):
  m = config.model
  generator = spade_nets.SPADEGenerator(
      label_nc=m.label_nc, ngf=m.ngf, crop_size=m.crop_size, aspect_ratio=m.aspect_ratio,
      num_upsampling_layers=m.num_upsampling_layers, use_vae=m.use_vae, z_dim=m.z_dim,
      spectral_norm=m.g_spectral_norm, param_free_norm=m.g_param_free_norm)
  discriminator = spade_nets.MultiscaleDiscriminator(
      ndf=m.ndf, n_layers_D=m.n_layers_D, num_D=m.num_D, spectral_norm=m.d_spectral_norm)
  encoder = spade_nets.ConvEncoder(ngf=m.ngf, z_dim=m.z_dim, spectral_norm=m.e_spectral_norm)
  return generator, discriminator, encoder


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """params {"g": G (+ "encoder" with use_vae), "d": D}; collections {"g": G's sync-BN running statistics and
  spectral u/v (the encoder's under "encoder"), "d": D's spectral u/v}."""
  generator, discriminator, encoder = _models(config)
  g_rng, d_rng, e_rng = jax.random.split(rng, 3)
  segmap, image, z = _example_inputs(config)
  g_vars = generator.init(g_rng, segmap, z, train=False)
  d_vars = discriminator.init(d_rng, segmap, image, train=False)
  g_params = dict(g_vars["params"])
  spectral = {"g": g_vars.get(sn_lib.SPECTRAL_STATS, {}), "d": d_vars.get(sn_lib.SPECTRAL_STATS, {})}
  if config.model.use_vae:
    e_vars = encoder.init(e_rng, image, train=False)
    g_params["encoder"] = e_vars["params"]
    spectral["e"] = e_vars.get(sn_lib.SPECTRAL_STATS, {})
  stats = {"batch": {"g": g_vars.get("batch_stats", {})}, "spectral": spectral}
  return {"params": {"g": g_params, "d": d_vars["params"]}, "collections": _collections(stats)}


def _example_inputs(config):
  size = config.model.crop_size
  z = jnp.zeros((1, config.model.z_dim)) if config.model.use_vae else None
  return jnp.zeros((1, size, size, config.model.label_nc)), jnp.zeros((1, size, size, 3)), z


def networks(config: ml_collections.ConfigDict) -> dict:
  generator, discriminator, encoder = _models(config)
  segmap, image, z = _example_inputs(config)
  nets = {"generator": (generator, (segmap, z)), "discriminator": (discriminator, (segmap, image))}
  if config.model.use_vae:
    nets["encoder"] = (encoder, (image,))
  return nets


def _stats(collections) -> dict:
  """The step's view of the collections: {"batch": {"g": ...}, "spectral": {"g": ..., "d": ...[, "e": ...]}}."""
  g_spectral = dict(collections["g"].get(sn_lib.SPECTRAL_STATS, {}))
  spectral = {"g": g_spectral, "d": collections["d"].get(sn_lib.SPECTRAL_STATS, {})}
  if "encoder" in g_spectral:
    spectral["e"] = g_spectral.pop("encoder")
  return {"batch": {"g": collections["g"].get("batch_stats", {})}, "spectral": spectral}


def _collections(stats) -> dict:
  """The inverse of `_stats`: the state's collections by group, the encoder's inside G's group."""
  g_spectral = dict(stats["spectral"]["g"])
  if "e" in stats["spectral"]:
    g_spectral["encoder"] = stats["spectral"]["e"]
  return {"g": {"batch_stats": stats["batch"]["g"], sn_lib.SPECTRAL_STATS: g_spectral},
          "d": {sn_lib.SPECTRAL_STATS: stats["spectral"]["d"]}}


def collections_to_legacy(collections) -> dict:
  """Run directories saved before the one train state kept "batch_stats" and "spectral_stats" fields."""
  stats = _stats(collections)
  return {"batch_stats": stats["batch"], "spectral_stats": stats["spectral"]}


def collections_from_legacy(fields) -> dict:
  return _collections({"batch": fields["batch_stats"], "spectral": fields["spectral_stats"]})


def _labels(batch):
  if "label" not in batch:
    raise errors.ConfigError("SPADE needs parsing maps in the batch (batch['label']): use the synthetic source, "
                             "--config.input.tfds.label_key=label or --config.input.folder.label_dir")
  return batch["label"]


def _one_hot(config, label):
  return jax.nn.one_hot(label, config.model.label_nc, dtype=jnp.float32)


def _generate(config, g_params, stats, segmap, real, noise):
  """G (and with use_vae the encoder) in training mode -> (fake, mu, logvar, updated stats)."""
  generator, _, encoder = _models(config)
  # Mixed precision (config.compute_dtype): parameters and inputs cast here, outputs back to float32.
  g_params, segmap, real_in = common.to_compute(config, (dict(g_params), segmap, real))
  new_stats = dict(stats)
  z = mu = logvar = None
  if config.model.use_vae:
    (mu, logvar), e_upd = encoder.apply(
        {"params": g_params.pop("encoder"), sn_lib.SPECTRAL_STATS: stats["spectral"]["e"]}, real_in, train=True,
        mutable=[sn_lib.SPECTRAL_STATS])
    mu, logvar = common.to_float32((mu, logvar))
    z = common.to_compute(config, mu + jnp.exp(0.5 * logvar) * noise)  # The original's reparameterize.
    new_stats["spectral"] = dict(stats["spectral"], e=e_upd.get(sn_lib.SPECTRAL_STATS, {}))
  fake, g_upd = generator.apply(
      {"params": g_params, "batch_stats": stats["batch"]["g"], sn_lib.SPECTRAL_STATS: stats["spectral"]["g"]},
      segmap, z, train=True, mutable=_TRAIN_COLLECTIONS)
  new_stats["batch"] = {"g": g_upd.get("batch_stats", {})}
  new_stats["spectral"] = dict(new_stats["spectral"], g=g_upd.get(sn_lib.SPECTRAL_STATS, {}))
  return common.to_float32(fake), mu, logvar, new_stats


def _discriminate(config, d_params, d_spectral, segmap, fake, real):
  """One D call on fake and real together -> (fake outputs, real outputs, updated spectral stats), per scale.

  The original concatenates them (fake then real) along the batch. D is per example (instance norm, no batch
  statistics), so the order within its batch changes nothing but where examples live: here each fake sits beside
  its real (fake_0, real_0, fake_1, ...), so when the batch is split over devices every device keeps its own
  pairs; concatenated, the fakes land on the first half of the devices and the reals on the second, and D's
  input and every intermediate output (for feature matching) move between devices (benchmarks/collectives.py).
  """
  _, discriminator, _ = _models(config)
  pair = lambda a, b: jnp.stack([a, b], axis=1).reshape(2 * a.shape[0], *a.shape[1:])
  d_params, segmaps, images = common.to_compute(config, (d_params, pair(segmap, segmap), pair(fake, real)))
  outputs, upd = discriminator.apply({"params": d_params, sn_lib.SPECTRAL_STATS: d_spectral}, segmaps, images,
                                     train=True, mutable=[sn_lib.SPECTRAL_STATS])
  outputs = common.to_float32(outputs)
  unpair = lambda f, i: f.reshape(f.shape[0] // 2, 2, *f.shape[1:])[:, i]
  pred_fake = [[unpair(f, 0) for f in scale] for scale in outputs]
  pred_real = [[unpair(f, 1) for f in scale] for scale in outputs]
  return pred_fake, pred_real, upd.get(sn_lib.SPECTRAL_STATS, {})


def feature_matching_loss(pred_fake, pred_real) -> jax.Array:
  """Sum over each scale's intermediate features of L1(fake, detached real), averaged over scales."""
  per_scale = [sum(jnp.abs(f - jax.lax.stop_gradient(r)).mean() for f, r in zip(fake[:-1], real[:-1]))
               for fake, real in zip(pred_fake, pred_real)]
  return sum(per_scale) / len(per_scale)


def kld_loss(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  return -0.5 * jnp.sum(1 + logvar - jnp.square(mu) - jnp.exp(logvar))


@functools.lru_cache(maxsize=2)
def _vgg_params(path: str):
  """Loaded once per process on the host. Closed over by the jitted step as constants, not carried in the
  state: they are never trained, so they stay out of the checkpoints (which then restore whether or not the VGG
  loss is on) and out of the optimizer."""
  from facegen_jax.nets import vgg  # pylint: disable=g-import-not-at-top
  logging.info("Loading VGG19 weights for the perceptual loss from %s", path)
  return jax.tree.map(np.asarray, vgg.load_params(path))


def _last(outputs):
  return [scale[-1] for scale in outputs]


def _generator_loss(config, g_params, d_params, stats, segmap, real, noise):
  weights = config.loss_weights
  fake, mu, logvar, stats = _generate(config, g_params, stats, segmap, real, noise)
  pred_fake, pred_real, d_spectral = _discriminate(config, d_params, stats["spectral"]["d"], segmap, fake, real)
  stats["spectral"] = dict(stats["spectral"], d=d_spectral)
  terms = {}
  if weights.gan:
    terms["gan"] = losses.generator_loss(config.gan_loss, fake_logits=_last(pred_fake))
  if weights.feat:
    terms["feat"] = feature_matching_loss(pred_fake, pred_real)
  if weights.vgg:
    from facegen_jax.nets import vgg  # pylint: disable=g-import-not-at-top
    terms["vgg"] = vgg.perceptual_loss(_vgg_params(config.vgg_weights), fake, jax.lax.stop_gradient(real))
  if weights.kld and config.model.use_vae:
    terms["kld"] = kld_loss(mu, logvar)
  total = sum(weights[name] * value for name, value in terms.items())
  return total, (stats, {f"g/{name}": value for name, value in terms.items()})


def _discriminator_loss(config, d_params, d_spectral, segmap, fake, real):
  pred_fake, pred_real, d_spectral = _discriminate(config, d_params, d_spectral, segmap, fake, real)
  fake_logits, real_logits = _last(pred_fake), _last(pred_real)
  neutral_real, neutral_fake = _NEUTRAL_LOGITS[config.gan_loss]
  loss = functools.partial(losses.discriminator_loss, config.gan_loss)
  d_fake = loss(real_logits=[jnp.full_like(x, neutral_real) for x in real_logits], fake_logits=fake_logits)
  d_real = loss(real_logits=real_logits, fake_logits=[jnp.full_like(x, neutral_fake) for x in fake_logits])
  total = loss(real_logits=real_logits, fake_logits=fake_logits)
  return total, (d_spectral, {"d/fake": d_fake, "d/real": d_real})


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  """G step then D step, as the original (see the module docstring)."""
  txs = optim.create_all(config, CONTRACT.optimizer_groups)
  segmap, real = _one_hot(config, _labels(batch)), batch["image"]
  noise_shape = (real.shape[0], config.model.z_dim)
  rngs = common.step_rngs(rng, "g_step", "d_step")  # The encoder's reparameterization noise in each step.
  g_noise, d_noise = (jax.random.normal(rngs[name], noise_shape) for name in ("g_step", "d_step"))
  stats = _stats(state.collections)

  (g_loss, (stats, g_metrics)), g_grads = jax.value_and_grad(
      functools.partial(_generator_loss, config), has_aux=True)(
          state.params["g"], state.params["d"], stats, segmap, real, g_noise)
  state = state.update("g", txs["g"], g_grads)

  # The D step's fake comes from the updated G, as the original's generate_fake after optimizer_G.step().
  fake, _, _, stats = _generate(config, state.params["g"], stats, segmap, real, d_noise)
  (d_loss, (d_spectral, d_metrics)), d_grads = jax.value_and_grad(
      functools.partial(_discriminator_loss, config), has_aux=True)(
          state.params["d"], stats["spectral"]["d"], segmap, jax.lax.stop_gradient(fake), real)
  state = state.update("d", txs["d"], d_grads)

  stats["spectral"] = dict(stats["spectral"], d=d_spectral)
  new_state = state.replace(step=state.step + 1, collections=_collections(stats))
  return new_state, {**g_metrics, "g/loss": g_loss, **d_metrics, "d/loss": d_loss}


def label_palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) uint8: the PASCAL VOC colour map (class bits spread over the high bits of R, G, B), the
  map SPADE's visualizer uses for label maps other than Cityscapes'."""
  ids = np.arange(num_classes)
  palette = np.zeros((num_classes, 3), np.int64)
  for shift in range(8):
    for channel in range(3):
      palette[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
  return palette.astype(np.uint8)


def colorize(label: jax.Array, num_classes: int) -> jax.Array:
  """int (B, H, W) -> (B, H, W, 3) in [-1, 1]."""
  return jnp.asarray(label_palette(num_classes), jnp.float32)[label] / 127.5 - 1.0


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  """The first num_sample_images label maps and images of `batch`, and the encoder's noise (use_vae)."""
  label = jnp.asarray(_labels(batch)[:config.num_sample_images], jnp.int32)
  return {"label": label, "image": jnp.asarray(batch["image"][:config.num_sample_images]),
          "noise": jax.random.normal(rng, (label.shape[0], config.model.z_dim))}


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """label | generated | real, in [-1, 1].

  The original shows the fakes of its G step, i.e. G in training mode. Here G also runs in training mode (sync
  BN normalises with the sample batch's statistics, each spectral norm runs its power iteration) but on copies
  of the statistics: the updated collections are discarded, so drawing samples never changes the state.
  """
  segmap = _one_hot(config, inputs["label"])
  fake, _, _, _ = _generate(config, state.params["g"], _stats(state.collections), segmap, inputs["image"],
                            inputs["noise"])
  # An OrderedDict keeps this order through jit (a dict comes back with sorted keys), and the loop shows the
  # images side by side in the dict's order.
  return collections.OrderedDict(
      label=colorize(inputs["label"], config.model.label_nc), generated=fake, real=inputs["image"])


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  """The label maps of `data` for `generate`, and its "style" images (use_vae; z from N(0, 1) without them, drawn
  in `generate` from its key)."""
  del rng, size
  inputs = {"label": data["label"]}
  if "style" in data:
    if not config.model.use_vae:
      raise errors.UserError("--style needs a model trained with use_vae (its config.model.use_vae is False)")
    inputs["style"] = data["style"]
  return inputs


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """Inference as the original's test.py runs it: G (and the encoder) in eval mode, i.e. sync BN with its
  running statistics and every spectral norm from its stored u and v, nothing updated.

  inputs: "label" int (B, H, W) at crop_size; with use_vae optionally "style" (B, H, W, 3) in [-1, 1], whose
  encoding gives z = mu + std * noise (the original's reparameterize, also at test time); without a style image z
  is drawn from N(0, 1).
  """
  generator, _, encoder = _models(config)
  g_params = dict(state.params["g"])
  e_params = g_params.pop("encoder", None)
  stats = _stats(state.collections)
  segmap = _one_hot(config, inputs["label"])
  z = None
  if config.model.use_vae:
    noise = jax.random.normal(rng, (segmap.shape[0], config.model.z_dim))
    z = noise
    if inputs.get("style") is not None:
      mu, logvar = encoder.apply({"params": e_params, sn_lib.SPECTRAL_STATS: stats["spectral"]["e"]},
                                 inputs["style"], train=False)
      z = mu + jnp.exp(0.5 * logvar) * noise
  fake = generator.apply({"params": g_params, "batch_stats": stats["batch"]["g"],
                          sn_lib.SPECTRAL_STATS: stats["spectral"]["g"]}, segmap, z, train=False)
  return {"generated": fake}
