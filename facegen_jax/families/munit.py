"""MUNIT (Huang et al. 2018) trained as NVlabs/MUNIT's `MUNIT_Trainer`, and SATNet as its configuration.

Networks (`facegen_jax.nets.munit`): an auto-encoder `AdaINGen` per domain, params["g"]["a"] and ["b"], and a
multiscale `MsImageDis` per domain, params["d"]["a"] (judges domain a: real a and b -> a) and ["b"]. SATNet
(`configs/satnet.py`) is `config.model.attention=True` (SAGAN self-attention in both networks, spectral-normed),
`config.model.dis.norm="sn"`, hinge loss, TTUR and the SphereFace identity loss: one step function, one state
layout, so one family.

One step is the original's iteration, `dis_update` then `gen_update` (MUNIT trainer.py, SATNet trainer.py):

1. D step: random styles s_a, s_b ~ N(0, 1); contents c_a, c_b of the real images; x_ba = dec_a(c_b, s_a),
   x_ab = dec_b(c_a, s_b), detached; each D on its fake, then on its real image (the original's two calls);
   D loss = gan x (D_a's + D_b's), each the sum over scales of lsgan mean(D(fake)^2) + mean((D(real) - 1)^2),
   hinge mean(relu(1 + D(fake))) + mean(relu(1 - D(real))) or nsgan's cross-entropies.
2. G step against the updated Ds, with fresh styles: (c_a, s_a') = enc_a(x_a), (c_b, s_b') = enc_b(x_b); the
   reconstructions dec_a(c_a, s_a'), dec_b(c_b, s_b'); x_ba = dec_a(c_b, s_a), x_ab = dec_b(c_a, s_b);
   (c_b'', s_a'') = enc_a(x_ba), (c_a'', s_b'') = enc_b(x_ab); with `cycle` > 0, x_aba = dec_a(c_a'', s_a') and
   x_bab = dec_b(c_b'', s_b'). Terms (each the sum of its a and b parts, L1 means): recon_x |x_recon - x|,
   recon_s |s'' - s|, recon_c |c'' - c| (c not detached, as the original), cycle |x_aba - x_a|, gan (lsgan
   mean((D(fake) - 1)^2), hinge -mean(D(fake)), summed over scales) and SATNet's identity:
   relu(threshold - cos(f(x_ab), f(x_a))) + relu(threshold - cos(f(x_ba), f(x_b))), f sphere20a's fc5 (frozen),
   the cosine over the whole batch as SATNet computes it (`nets.sphereface.identity_loss`), and MUNIT's vgg:
   compute_vgg_loss(x_ba, x_b) + compute_vgg_loss(x_ab, x_a), each the mean squared difference of the
   instance-normed relu5_3 features of MUNIT's frozen VGG16 (`nets.vgg.munit_loss`; 0 in MUNIT's shipped configs).

Spectral norm (SATNet): the originals' SpectralNorm runs one power iteration at EVERY forward, training and eval
alike. `_Networks` applies the networks in the order the original calls them, each call one iteration, and
carries u and v (collections {"g"|"d": {"spectral_stats": {"a", "b"}}}) into the next call and the next step; the
D step's generator forwards iterate the generators' vectors too, as the original's do. `sample` and `generate`
iterate copies and return no state. Without spectral norm (MUNIT) the calls of one network that the original
makes one after another on independent inputs are one batched call: every norm is per image, so the function
is the same.

The identity network: sphere20a (`nets.sphereface`) is the parameter group "identity" with no optimizer, so it
is frozen (its gradient is never taken) and passed into the step as an argument like the other parameters, not
closed over (a closed-over fc5 of 21504 x 512 is a constant XLA folds for minutes). `init` reads
`config.identity.weights` (`python -m facegen_jax.convert sphereface`) through a host callback, so the file's
values are not constants of the init program either; with `config.identity.random_init` and no file it is a
random-init sphere20a of `config.identity.widths` (the cpu preset's stand-in, said so in the log). The group
exists when `loss_weights.identity` > 0 or `config.identity.weights` is given; with it, evaluation also logs
eval/identity_cos_a2b and _b2a (`eval_scores`). Images whose size is neither 224x192 nor 112x96 are resized
(bilinear) to sphere20a's 112x96 first (our extension for smaller presets; SATNet trains at 224x192).

The VGG16 (`loss_weights.vgg` > 0) is the optimizer-less group "vgg", read in `init` from `config.vgg.weights`
(`python -m facegen_jax.convert vgg16`, from MUNIT's models/vgg16.weight or torchvision's vgg16-397923af.pth)
through a host callback like sphere20a, so its 14.7M weights are operands of the step, not constants.

Learning rates: the originals step their schedulers before each iteration, so their lr changes one iteration
earlier than optax's count (iteration 99,999 of MUNIT's is already halved); not reproduced.
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
from facegen_jax.nets import munit as nets
from facegen_jax.nets import sphereface
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets import vgg
from input_pipeline import pipeline

DOMAINS = ("a", "b")
DIRECTIONS = (("a", "b", "a2b"), ("b", "a", "b2a"))  # (source, target, name)
GAN_TYPES = {"lsgan": "lsgan", "hinge": "hinge", "nsgan": "bce"}  # MUNIT's names -> facegen_jax.losses'
LOSS_TERMS = ("gan", "recon_x", "recon_s", "recon_c", "cycle", "vgg", "identity")
IDENTITY = "identity"  # The frozen parameter group holding sphere20a.
VGG = "vgg"  # The frozen parameter group holding MUNIT's VGG16 (loss_weights.vgg > 0).
NUM_SAMPLE_STYLES = 3
_SPECTRAL = sn_lib.SPECTRAL_STATS

CONTRACT = families.Contract(
    optimizer_groups=("g", "d"), ema_groups=("g",), task="translate",
    eval_outputs={"a2b": families.EvalOutput(inputs=("a/image",), reference="b/image"),
                  "b2a": families.EvalOutput(inputs=("b/image",), reference="a/image")})


def identity_config() -> ml_collections.ConfigDict:
  """config.identity: SATNet's sphere20a (the `identity` loss weight is config.loss_weights.identity)."""
  return ml_collections.ConfigDict(dict(
      weights="",                # .npz of `python -m facegen_jax.convert sphereface` (needed when the weight > 0)
      threshold=sphereface.THRESHOLD,  # SATNet's sph.thd
      random_init=False,         # without weights: a random-init sphere20a (a stand-in for CPU runs, not a face net)
      widths=sphereface.WIDTHS, embedding_dim=sphereface.EMBEDDING_DIM))  # of the random-init network


def vgg_config() -> ml_collections.ConfigDict:
  """config.vgg: MUNIT's VGG16 for the perceptual loss (its weight is config.loss_weights.vgg)."""
  return ml_collections.ConfigDict(dict(
      weights=""))  # .npz of `python -m facegen_jax.convert vgg16` (needed when the weight > 0)


# --- config ---


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if m.dis.gan_type not in GAN_TYPES:
    raise errors.ConfigError(f"config.model.dis.gan_type {m.dis.gan_type!r}: set one of {', '.join(GAN_TYPES)}")
  if m.dis.norm not in ("none", "sn"):
    raise errors.ConfigError(f"config.model.dis.norm {m.dis.norm!r}: set 'none' (MUNIT) or 'sn' (SATNet)")
  for key, value in [*((f"gen.{k}", m.gen[k]) for k in ("dim", "style_dim", "mlp_dim", "n_res")),
                     *((f"dis.{k}", m.dis[k]) for k in ("dim", "n_layer", "num_scales"))]:
    if value < 1:
      raise errors.ConfigError(f"config.model.{key} is {value}: set a positive value")
  if m.attention and min(m.gen.dim * 2 ** m.gen.n_downsample, m.dis.dim * 2 ** (m.dis.n_layer - 1)) < 8:
    raise errors.ConfigError("config.model.attention: self-attention's f and g have C / 8 channels, so the "
                             "content and the last D layer need 8 or more: raise config.model.gen.dim / dis.dim")
  _validate_sizes(config)
  if set(config.loss_weights) != set(LOSS_TERMS):
    raise errors.ConfigError(f"config.loss_weights must have exactly the keys {LOSS_TERMS}")
  for name, weight in config.loss_weights.items():
    if weight < 0:
      raise errors.ConfigError(f"config.loss_weights.{name} is {weight}: set a value >= 0 (0 = off)")
  _validate_vgg(config)
  _validate_identity(config)


def _validate_sizes(config) -> None:
  m = config.model
  height, width = _size(config)
  factor = 2 ** m.gen.n_downsample
  if height % factor or width % factor:
    raise errors.ConfigError(
        f"config.input.resolution {(height, width)} must be divisible by 2^n_downsample = {factor} in both sides "
        f"(the decoder upsamples the content back): set --config.input.resolution to a multiple of {factor}")
  if min(height, width) < 2 ** nets.STYLE_DOWNSAMPLES:
    raise errors.ConfigError(f"config.input.resolution {(height, width)}: the style encoder's "
                             f"{nets.STYLE_DOWNSAMPLES} stride-2 convs need at least {2 ** nets.STYLE_DOWNSAMPLES} px")
  smallest = min(height, width)
  for _ in range(m.dis.num_scales - 1):
    smallest = -(-smallest // 2)  # avg-pool 3/2/1
  if smallest < 2 ** m.dis.n_layer:
    raise errors.ConfigError(
        f"config.input.resolution {(height, width)}: the D's last scale ({m.dis.num_scales} scales) sees "
        f"{smallest} px, and its n_layer={m.dis.n_layer} reflect-padded stride-2 convs need {2 ** m.dis.n_layer}: "
        "lower --config.model.dis.num_scales or --config.model.dis.n_layer, or raise the resolution")


def _validate_vgg(config) -> None:
  if not config.loss_weights.vgg:
    return
  howto = (f"convert MUNIT's models/vgg16.weight (or torchvision's vgg16-397923af.pth) with "
           f"`{vgg.VGG16_CONVERT_COMMAND.format(path='vgg16.npz')}` and set --config.vgg.weights=vgg16.npz, or set "
           "--config.loss_weights.vgg=0")
  weights = config.get("vgg", {}).get("weights", "")
  if not weights:
    raise errors.ConfigError(f"config.loss_weights.vgg > 0 needs VGG16's weights (config.vgg.weights is empty): "
                             f"{howto}")
  if not epath.Path(weights).exists():
    raise errors.ConfigError(f"config.vgg.weights {weights!r} does not exist: {howto}")
  # The style encoder's 16 px minimum (_validate_sizes) leaves relu5_3 (1/8) at least 2x2 for the instance norm.


def _validate_identity(config) -> None:
  c = config.identity
  if not (config.loss_weights.identity or c.weights):
    return
  howto = (f"convert SATNet's fine-tuned sphere20a with `{sphereface.CONVERT_COMMAND.format(path='sphere20a.npz')}` "
           "and set --config.identity.weights=sphere20a.npz, or set --config.loss_weights.identity=0")
  if c.weights:
    if not epath.Path(c.weights).exists():
      raise errors.ConfigError(f"config.identity.weights {c.weights!r} does not exist: {howto}")
  elif not config.loss_weights.identity:
    return
  elif not c.random_init:
    raise errors.ConfigError(f"config.loss_weights.identity > 0 needs sphere20a's weights "
                             f"(config.identity.weights is empty): {howto}")
  else:
    logging.warning("The identity loss uses a RANDOM-INIT sphere20a (widths %s; config.identity.random_init, no "
                    "config.identity.weights): a stand-in that is not a face recognizer", tuple(c.widths))


def _size(config) -> tuple[int, int]:
  return pipeline.resolution_hw(config.input)


# --- networks ---


def _generator(config) -> nets.AdaINGen:
  g = config.model.gen
  return nets.AdaINGen(dim=g.dim, style_dim=g.style_dim, mlp_dim=g.mlp_dim, n_downsample=g.n_downsample,
                       n_res=g.n_res, activ=g.activ, pad_type=g.pad_type, attention=config.model.attention)


def _discriminator(config) -> nets.MsImageDis:
  d = config.model.dis
  return nets.MsImageDis(dim=d.dim, n_layer=d.n_layer, num_scales=d.num_scales, norm=d.norm, activ=d.activ,
                         pad_type=d.pad_type, attention=config.model.attention)


def _example_image(config):
  return jnp.zeros((1, *_size(config), 3))


@functools.lru_cache(maxsize=2)
def _identity_file(path: str) -> dict:
  """sphere20a's parameters from `path` without fc6 (the loss uses fc5's embedding), float32 numpy; cached."""
  params = sphereface.load_params(path)
  params.pop("fc6", None)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def _identity_params(config, rng) -> dict:
  c = config.identity
  if not c.weights:
    return sphereface.Sphere20a(0, tuple(c.widths), c.embedding_dim).init(
        rng, jnp.zeros((1, *sphereface.INPUT_HW, 3)))["params"]
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _identity_file(c.weights))
  # Read on the host when the init program runs: as an operand, not a constant of the program.
  return jax.pure_callback(lambda: _identity_file(c.weights), shapes)


@functools.lru_cache(maxsize=2)
def _vgg_file(path: str) -> dict:
  """MUNIT's VGG16 parameters (with their `input` preprocessing) from `path`, float32 numpy; cached."""
  return vgg.load_vgg16_params(path)


def _vgg_params(config) -> dict:
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _vgg_file(config.vgg.weights))
  # Read on the host when the init program runs: as an operand, not a constant of the program.
  return jax.pure_callback(lambda: _vgg_file(config.vgg.weights), shapes)


def _has_identity(config) -> bool:
  """sphere20a is in the state for the identity loss, and whenever its weights are given (for the eval figure)."""
  return bool(config.loss_weights.identity or config.identity.weights)


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """params {"g": {"a", "b"}, "d": {"a", "b"}[, "identity": sphere20a][, "vgg": VGG16]}; collections {"g":
  {spectral_stats: {"a", "b"}}, "d": {...}} for the networks with spectral norm (SATNet), else {"g": {}, "d": {}}."""
  keys = jax.random.split(rng, 5)
  image = _example_image(config)
  variables = {"g": {d: _generator(config).init(k, image) for d, k in zip(DOMAINS, keys[:2])},
               "d": {d: _discriminator(config).init(k, image) for d, k in zip(DOMAINS, keys[2:4])}}
  params = {group: {d: v["params"] for d, v in nets_.items()} for group, nets_ in variables.items()}
  if _has_identity(config):
    params[IDENTITY] = _identity_params(config, keys[4])
  if config.loss_weights.vgg:
    params[VGG] = _vgg_params(config)
  collections_ = {group: ({_SPECTRAL: {d: v[_SPECTRAL] for d, v in nets_.items()}} if _SPECTRAL in nets_["a"]
                          else {}) for group, nets_ in variables.items()}
  return {"params": params, "collections": collections_}


def networks(config: ml_collections.ConfigDict) -> dict:
  image = _example_image(config)
  out = {f"generator_{d}": (_generator(config), (image,), {}) for d in DOMAINS}
  out.update({f"discriminator_{d}": (_discriminator(config), (image,), {}) for d in DOMAINS})
  if config.loss_weights.identity and not config.identity.weights:
    c = config.identity
    out["identity_sphere20a"] = (sphereface.Sphere20a(0, tuple(c.widths), c.embedding_dim),
                                 (jnp.zeros((1, *sphereface.INPUT_HW, 3)),), {"embedding_only": True})
  return out


def _stats(state: state_lib.TrainState) -> dict:
  """{"g"|"d": {domain: u/v tree}} (empty dicts without spectral norm)."""
  return {group: state.collections[group].get(_SPECTRAL, {}) for group in ("g", "d")}


class _Networks:
  """The four networks applied call by call as the original calls them; each call of a network with spectral
  norm is one power iteration, whose u and v the next call of that network starts from (`stats`)."""

  def __init__(self, config, params: dict, stats: dict):
    self.config, self.params, self.stats = config, params, stats
    self.modules = {"g": _generator(config), "d": _discriminator(config)}

  def _apply(self, group, domain, method, *args):
    variables = {"params": common.to_compute(self.config, self.params[group][domain])}
    own = self.stats[group].get(domain)
    if own:
      variables[_SPECTRAL] = own
    out, updated = self.modules[group].apply(variables, *common.to_compute(self.config, args), method=method,
                                             mutable=[_SPECTRAL])
    if own:
      self.stats = {**self.stats, group: {**self.stats[group], domain: updated[_SPECTRAL]}}
    return common.to_float32(out)

  def each(self, group, domain, method, calls: list[tuple]) -> list:
    """[method(*args) for args in calls] in order; one batched call when the network has no spectral state."""
    if self.stats[group].get(domain) or len(calls) == 1:
      return [self._apply(group, domain, method, *args) for args in calls]
    sizes = np.cumsum([args[0].shape[0] for args in calls])[:-1]
    joined = self._apply(group, domain, method, *(jnp.concatenate(parts) for parts in zip(*calls)))
    return [jax.tree.map(lambda y, i=i: jnp.split(y, sizes)[i], joined) for i in range(len(calls))]

  def encode(self, domain, x):
    return self._apply("g", domain, "encode", x)

  def content(self, domain, x):
    return self._apply("g", domain, lambda m, x: m.enc_content(x), x)

  def style(self, domain, x):
    return self._apply("g", domain, lambda m, x: m.enc_style(x), x)

  def decode(self, domain, content, style):
    return self._apply("g", domain, "decode", content, style)

  def discriminate(self, domain, x):
    return self._apply("d", domain, None, x)


# --- losses ---


def _gan_scale(config) -> float:
  """facegen_jax.losses averages over scales and halves LSGAN; MUNIT's calc_*_loss sum over scales, unhalved."""
  d = config.model.dis
  return d.num_scales * (2.0 if d.gan_type == "lsgan" else 1.0)


def discriminator_gan_loss(config, *, real_logits, fake_logits):
  kind = GAN_TYPES[config.model.dis.gan_type]
  return _gan_scale(config) * losses.discriminator_loss(kind, real_logits=real_logits, fake_logits=fake_logits)


def generator_gan_loss(config, *, fake_logits):
  kind = GAN_TYPES[config.model.dis.gan_type]
  return _gan_scale(config) * losses.generator_loss(kind, fake_logits=fake_logits)


def _l1(x, y):
  return jnp.mean(jnp.abs(x - y))


def _batch_cosine(f, g):
  """SATNet's compute_idt_loss cosine: over the whole (B, 512) batch at once (as `sphereface.identity_loss`)."""
  return jnp.sum(f * g) / (jnp.linalg.norm(f) * jnp.linalg.norm(g) + 1e-8)


def identity_terms(config, params, pairs: list[tuple]) -> list[jax.Array]:
  """cos(f(translated), f(source)) per (translated, source) pair, all images through sphere20a in one call."""
  images = [sphereface.resize_input(x) for pair in pairs for x in pair]
  features = sphereface.embedding(common.to_compute(config, params),
                                  common.to_compute(config, sphereface.preprocess(jnp.concatenate(images))))
  features = jnp.split(common.to_float32(features), len(images))
  return [_batch_cosine(features[2 * i], features[2 * i + 1]) for i in range(len(pairs))]


def vgg_terms(config, params, pairs: list[tuple]) -> list[jax.Array]:
  """MUNIT's compute_vgg_loss(img, target) per (img, target) pair, all images through VGG16 in one call."""
  images = [x for pair in pairs for x in pair]
  features = vgg.munit_features(params, jnp.concatenate(images), functools.partial(common.to_compute, config))
  features = jnp.split(features, len(images))
  return [jnp.mean(jnp.square(features[2 * i] - features[2 * i + 1])) for i in range(len(pairs))]


def _random_styles(config, rng, batch_size: int):
  keys = jax.random.split(rng, len(DOMAINS))
  return {d: common.shard_over_batch(jax.random.normal(k, (batch_size, config.model.gen.style_dim)))
          for d, k in zip(DOMAINS, keys)}


def _discriminator_loss(config, d_params, params, stats, reals, fakes):
  """reals/fakes: {domain: images} (fakes["a"] is x_ba). D(fake), then D(real), as calc_dis_loss."""
  calls = _Networks(config, {**params, "d": d_params}, stats)
  terms = {}
  for d in DOMAINS:
    fake_logits, real_logits = calls.each("d", d, None, [(fakes[d],), (reals[d],)])
    terms[f"d/{d}"] = discriminator_gan_loss(config, real_logits=real_logits, fake_logits=fake_logits)
  return config.loss_weights.gan * sum(terms.values()), (calls.stats, terms)


def _generator_loss(config, g_params, params, stats, reals, styles):
  w = config.loss_weights
  calls = _Networks(config, {**params, "g": g_params}, stats)
  x_a, x_b = reals["a"], reals["b"]
  (c_a, s_a_prime), (c_b, s_b_prime) = calls.encode("a", x_a), calls.encode("b", x_b)
  recon_a, x_ba = calls.each("g", "a", "decode", [(c_a, s_a_prime), (c_b, styles["a"])])
  recon_b, x_ab = calls.each("g", "b", "decode", [(c_b, s_b_prime), (c_a, styles["b"])])
  c_b_recon, s_a_recon = calls.encode("a", x_ba)
  c_a_recon, s_b_recon = calls.encode("b", x_ab)
  terms = {"g/recon_x": _l1(recon_a, x_a) + _l1(recon_b, x_b),
           "g/recon_s": _l1(s_a_recon, styles["a"]) + _l1(s_b_recon, styles["b"]),
           "g/recon_c": _l1(c_b_recon, c_b) + _l1(c_a_recon, c_a)}
  if w.cycle:
    terms["g/cycle"] = (_l1(calls.decode("a", c_a_recon, s_a_prime), x_a)
                        + _l1(calls.decode("b", c_b_recon, s_b_prime), x_b))
  terms["g/gan"] = (generator_gan_loss(config, fake_logits=calls.discriminate("a", x_ba))
                    + generator_gan_loss(config, fake_logits=calls.discriminate("b", x_ab)))
  if w.vgg:
    terms["g/vgg"] = sum(vgg_terms(config, params[VGG], [(x_ba, x_b), (x_ab, x_a)]))
  metrics = {}
  if w.identity:
    cos_ab, cos_ba = identity_terms(config, params[IDENTITY], [(x_ab, x_a), (x_ba, x_b)])
    threshold = config.identity.threshold
    terms["g/identity"] = jax.nn.relu(threshold - cos_ab) + jax.nn.relu(threshold - cos_ba)
    metrics = {"g/identity_cos_a2b": cos_ab, "g/identity_cos_b2a": cos_ba}
  total = sum(w[name.split("/")[1]] * value for name, value in terms.items())
  return total, (calls.stats, {**terms, **metrics})


# --- step ---


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  """dis_update, then gen_update against the updated Ds (see the module docstring)."""
  txs = optim.create_all(config, CONTRACT.optimizer_groups)
  reals = {d: batch[f"{d}/image"] for d in DOMAINS}
  batch_size = reals["a"].shape[0]
  rngs = common.step_rngs(rng, "d_styles", "g_styles")
  stats = _stats(state)

  calls = _Networks(config, state.params, stats)
  styles = _random_styles(config, rngs["d_styles"], batch_size)
  c_a, c_b = calls.content("a", reals["a"]), calls.content("b", reals["b"])
  fakes = jax.lax.stop_gradient({"a": calls.decode("a", c_b, styles["a"]),
                                 "b": calls.decode("b", c_a, styles["b"])})
  (d_loss, (stats, d_terms)), d_grads = jax.value_and_grad(
      functools.partial(_discriminator_loss, config), has_aux=True)(
          state.params["d"], state.params, calls.stats, reals, fakes)
  state = state.update("d", txs["d"], d_grads)

  styles = _random_styles(config, rngs["g_styles"], batch_size)
  (g_loss, (stats, g_terms)), g_grads = jax.value_and_grad(
      functools.partial(_generator_loss, config), has_aux=True)(
          state.params["g"], state.params, stats, reals, styles)
  state = state.update("g", txs["g"], g_grads)
  state = state.replace(step=state.step + 1, collections={
      group: ({_SPECTRAL: stats[group]} if stats[group] else {}) for group in ("g", "d")})
  return state, {**d_terms, "d/loss": d_loss, **g_terms, "g/loss": g_loss}


# --- samples and inference ---


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  """The first images of each domain and NUM_SAMPLE_STYLES fixed random styles per direction."""
  n = config.num_sample_images
  keys = jax.random.split(rng, len(DIRECTIONS))
  out = {f"{d}/image": jnp.asarray(batch[f"{d}/image"][:n]) for d in DOMAINS}
  for (_, _, name), key in zip(DIRECTIONS, keys):
    out[f"{name}/styles"] = jax.random.normal(key, (NUM_SAMPLE_STYLES, n, config.model.gen.style_dim))
  return out


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """a | a->b with 3 random styles | a->b->a (a's own style), then b likewise; spectral norms iterate on copies."""
  calls = _Networks(config, state.params, _stats(state))
  out = collections.OrderedDict()
  for src, dst, name in DIRECTIONS:
    x = inputs[f"{src}/image"]
    content, style = calls.encode(src, x)
    out[src] = x
    styles = inputs[f"{name}/styles"]
    fakes = calls.each("g", dst, "decode", [(content, styles[k]) for k in range(styles.shape[0])])
    for k, fake in enumerate(fakes):
      out[f"{name}_style{k}"] = fake
    out[f"{name}_{dst}2{src}"] = calls.decode(src, calls.content(dst, fakes[0]), style)
  return out


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  """`data` plus "<direction>/style_code" ~ N(0, 1) per record for the directions whose images are given, unless a
  "style" image (translate --style) gives the style."""
  out = dict(data)
  if "style" in data:
    return out
  for i, (src, _, name) in enumerate(DIRECTIONS):
    if f"{src}/image" in data:
      out[f"{name}/style_code"] = jax.random.normal(jax.random.fold_in(rng, i), (size, config.model.gen.style_dim))
  return out


def eval_scores(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict, generated: dict,
                output: str) -> dict:
  """{"identity_cos_<output>": (B,)}: per record, the SphereFace cosine between the translation and its source
  (SATNet's identity-preservation figure; `sphereface.identity_cosine`), when the state holds sphere20a (the
  identity loss on, or config.identity.weights given); {} otherwise. The evaluator logs the mean as
  eval/identity_cos_a2b and eval/identity_cos_b2a."""
  del config
  if IDENTITY not in state.params or output not in generated:
    return {}
  source = inputs[f"{output[0]}/image"]
  cosine = sphereface.identity_cosine(state.params[IDENTITY], sphereface.resize_input(generated[output]),
                                      sphereface.resize_input(source))
  return {f"identity_cos_{output}": cosine.astype(jnp.float32)}


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"a2b", "b2a"} for the source images given: the target decoder on the source's content with the style of
  inputs["style"] (an image of the target domain, through the target's style encoder, as MUNIT's test.py
  --style), else "<direction>/style_code", else N(0, 1) from `rng`. Spectral norms iterate on copies."""
  calls = _Networks(config, state.params, _stats(state))
  out = {}
  for i, (src, dst, name) in enumerate(DIRECTIONS):
    if f"{src}/image" not in inputs:
      continue
    x = inputs[f"{src}/image"]
    content = calls.content(src, x)
    if "style" in inputs:
      style = calls.style(dst, inputs["style"])
    elif f"{name}/style_code" in inputs:
      style = inputs[f"{name}/style_code"]
    else:
      style = jax.random.normal(jax.random.fold_in(rng, i), (x.shape[0], config.model.gen.style_dim))
    out[name] = calls.decode(dst, content, style)
  return out
