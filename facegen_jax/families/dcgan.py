"""DCGAN (Radford et al. 2016) as SSuperGAN's `networks/dcgan.py` trains it on face crops.

Generator: a 1x1 latent -> 4x4 by a 4x4 transposed conv, then stride-2 4x4 transposed convs (torch padding 1)
halving the channels each time (ngf*8 ... ngf at 64 px) with BatchNorm + ReLU, and a last one to RGB + tanh.
Discriminator: the mirror image, 4x4 stride-2 convs with BatchNorm (not after the first) + LeakyReLU(0.2), and a
4x4 valid conv to one logit. No biases; weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), the DCGAN paper's
init and the original's `weights_init`, which the original applies to G only (its comment says all weights), so
its D keeps torch's default init: `model.d_init="torch_default"`. The loss is BCE: D on real (label 1) and a
detached fake (label 0), then G against the updated D with the non-saturating loss, each D call on its own batch
so BatchNorm sees real and fake separately, as the PyTorch loop does (here one D call on the two interleaved,
normalised apart: `_BatchNormGroups`).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import losses
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.nets import conv as conv_lib

_BatchNorm = functools.partial(
    nn.BatchNorm, momentum=0.9, epsilon=1e-5,  # torch's momentum 0.1 is flax's 0.9.
    scale_init=common.normal_init(0.02, mean=1.0))
_INIT = common.normal_init(0.02)


class _BatchNormGroups(nn.Module):
  """flax's nn.BatchNorm as _BatchNorm configures it (same variables, statistics and running-average update), over
  `groups` batches interleaved along axis 0 (row i * groups + g is example i of batch g): each batch normalised by
  its own statistics and the running averages moved once per batch in order, as that many calls one after another.
  Hand-written because flax's layer normalises one batch per call, and D's two calls (real, fake) made XLA reduce
  D's weight gradient across devices once per call in some compiles (benchmarks/collectives.py)."""
  scale_init: nn.initializers.Initializer = _BatchNorm.keywords["scale_init"]

  @nn.compact
  def __call__(self, x, *, use_running_average: bool, groups: int = 1):
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    momentum, epsilon = _BatchNorm.keywords["momentum"], _BatchNorm.keywords["epsilon"]
    dtype, x = x.dtype, x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if use_running_average:
      return ((x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + epsilon) * scale) + bias).astype(dtype)
    grouped = x.reshape(x.shape[0] // groups, groups, *x.shape[1:])
    axes = (0, *range(2, grouped.ndim - 1))
    mean = grouped.mean(axes, keepdims=True)  # (1, groups, 1, ..., C), as flax: E[x^2] - E[x]^2, clipped at 0.
    var = jnp.maximum(0.0, jnp.square(grouped).mean(axes, keepdims=True) - jnp.square(mean))
    if not self.is_initializing():
      for g in range(groups):
        ra_mean.value = momentum * ra_mean.value + (1 - momentum) * mean[0, g].reshape(-1)
        ra_var.value = momentum * ra_var.value + (1 - momentum) * var[0, g].reshape(-1)
    y = (grouped - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
    return y.reshape(x.shape).astype(dtype)
D_INITS = ("normal", "torch_default")
# torch's default Conv2d init, kaiming_uniform_(a=sqrt(5)): U(+-1 / sqrt(fan_in)); BatchNorm2d's scale is 1.
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_TORCH_PAD_0 = conv_lib.torch_transpose_padding(4, 0)
_TORCH_PAD_1 = conv_lib.torch_transpose_padding(4, 1)


def _num_resamples(image_size: int) -> int:
  return int(math.log2(image_size)) - 2  # 4x4 <-> image_size by factors of 2.


class Generator(nn.Module):
  image_size: int = 64
  ngf: int = 64
  channels: int = 3

  @nn.compact
  def __call__(self, z, *, train: bool = True):
    n = _num_resamples(self.image_size)
    x = z.reshape(z.shape[0], 1, 1, -1)
    x = conv_lib.ConvTranspose(self.ngf * 2 ** (n - 1), (4, 4), strides=(1, 1), padding=_TORCH_PAD_0,
                               use_bias=False, kernel_init=_INIT)(x)
    x = nn.relu(_BatchNorm(use_running_average=not train)(x))
    for i in reversed(range(n - 1)):
      x = conv_lib.ConvTranspose(self.ngf * 2 ** i, (4, 4), strides=(2, 2), padding=_TORCH_PAD_1,
                                 use_bias=False, kernel_init=_INIT)(x)
      x = nn.relu(_BatchNorm(use_running_average=not train)(x))
    x = conv_lib.ConvTranspose(self.channels, (4, 4), strides=(2, 2), padding=_TORCH_PAD_1, use_bias=False,
                               kernel_init=_INIT)(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  ndf: int = 64
  init_scheme: str = "normal"  # One of D_INITS (config.model.d_init).

  @nn.compact
  def __call__(self, x, *, train: bool = True, groups: int = 1):
    """Logits (N,); `groups` > 1: x holds that many batches interleaved, each batch-normalised on its own."""
    torch_default = self.init_scheme == "torch_default"
    kernel_init = _TORCH_KERNEL_INIT if torch_default else _INIT
    scale_init = nn.initializers.ones if torch_default else _BatchNorm.keywords["scale_init"]
    n = _num_resamples(x.shape[1])
    for i in range(n):
      x = conv_lib.Conv(self.ndf * 2 ** i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                        kernel_init=kernel_init)(x)
      if i > 0:
        x = _BatchNormGroups(scale_init, name=f"BatchNorm_{i - 1}")(x, use_running_average=not train, groups=groups)
      x = nn.leaky_relu(x, 0.2)
    x = conv_lib.Conv(1, (4, 4), padding="VALID", use_bias=False, kernel_init=kernel_init)(x)
    return x.reshape(x.shape[0])  # Logits; the original's Sigmoid lives inside the BCE loss.


def validate(config: ml_collections.ConfigDict) -> None:
  d_init = config.model.get("d_init", "normal")
  if d_init not in D_INITS:
    raise errors.ConfigError(f"config.model.d_init must be one of {', '.join(D_INITS)}, got {d_init!r}: 'normal' "
                             "is the DCGAN paper's N(0, 0.02), 'torch_default' the original code's D")
  size = config.model.image_size
  if size < 16 or size & (size - 1):
    raise errors.ConfigError(
        f"config.model.image_size must be a power of two >= 16 for DCGAN, got {size}: "
        "set --config.model.image_size=64")
  if config.input.resolution != size:
    raise errors.ConfigError(
        f"config.input.resolution ({config.input.resolution}) differs from config.model.image_size ({size}): "
        "set both to the same value")


def _models(config):
  return (Generator(config.model.image_size, config.model.ngf, config.model.channels),
          Discriminator(config.model.ndf, config.model.get("d_init", "normal")))


CONTRACT = families.Contract(
    optimizer_groups=("g", "d"), ema_groups=("g",), task="sample",
    eval_outputs={"generated": families.EvalOutput(inputs=(), reference="image")})


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  generator, discriminator = _models(config)
  g_rng, d_rng = jax.random.split(rng)
  size = config.model.image_size
  g_vars = generator.init(g_rng, jnp.zeros((1, config.model.nz)))
  d_vars = discriminator.init(d_rng, jnp.zeros((1, size, size, config.model.channels)))
  return {"params": {"g": g_vars["params"], "d": d_vars["params"]},
          "collections": {"g": {"batch_stats": g_vars["batch_stats"]}, "d": {"batch_stats": d_vars["batch_stats"]}}}


def collections_to_legacy(collections) -> dict:
  """Run directories saved before the one train state kept a "batch_stats" field {"g": ..., "d": ...}."""
  return {"batch_stats": {group: c["batch_stats"] for group, c in collections.items()}}


def collections_from_legacy(fields) -> dict:
  return {group: {"batch_stats": stats} for group, stats in fields["batch_stats"].items()}


def networks(config: ml_collections.ConfigDict) -> dict:
  generator, discriminator = _models(config)
  size = config.model.image_size
  return {"generator": (generator, (jnp.zeros((1, config.model.nz)),)),
          "discriminator": (discriminator, (jnp.zeros((1, size, size, config.model.channels)),))}


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  generator, discriminator = _models(config)
  txs = optim.create_all(config, CONTRACT.optimizer_groups)
  real = batch["image"]
  z = common.shard_over_batch(jax.random.normal(common.step_rngs(rng, "z")["z"], (real.shape[0], config.model.nz)))

  to_compute = functools.partial(common.to_compute, config)  # Identity unless config.compute_dtype="bfloat16".

  def g_forward(g_params):
    fake, upd = generator.apply({"params": to_compute(g_params), **state.collections["g"]},
                                to_compute(z), mutable=["batch_stats"])
    return common.to_float32(fake), upd["batch_stats"]

  def d_forward(d_params, d_stats, x, groups=1):
    logits, upd = discriminator.apply({"params": to_compute(d_params), "batch_stats": d_stats}, to_compute(x),
                                      groups=groups, mutable=["batch_stats"])
    return common.to_float32(logits), upd

  # One G forward serves both updates, as in the PyTorch loop: D sees it detached, G's gradient is pulled back
  # through it after the D update.
  fake, g_vjp, g_stats = jax.vjp(g_forward, state.params["g"], has_aux=True)

  def d_loss_fn(d_params):
    # One D call on real and fake interleaved, normalised apart (the original's two calls' statistics): with the
    # batch split over devices the pairs stay on their devices and D's weight gradient is one sum to reduce.
    pairs = jnp.stack([real, fake], axis=1).reshape(2 * real.shape[0], *real.shape[1:])
    logits, upd = d_forward(d_params, state.collections["d"]["batch_stats"], pairs, groups=2)
    real_logits, fake_logits = logits[0::2], logits[1::2]
    loss = losses.discriminator_loss(config.gan_loss, real_logits=real_logits, fake_logits=fake_logits)
    return loss, (upd["batch_stats"], real_logits, fake_logits)

  (d_loss, (d_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
      state.params["d"])
  state = state.update("d", txs["d"], d_grads)
  d_params = state.params["d"]

  def g_adversarial_loss(fake):
    logits, d_upd = d_forward(d_params, d_stats, fake)
    loss = losses.generator_loss(config.gan_loss, fake_logits=logits)
    return loss, (d_upd["batch_stats"], logits)

  (g_loss, (d_stats, g_logits)), fake_grad = jax.value_and_grad(g_adversarial_loss, has_aux=True)(fake)
  (g_grads,) = g_vjp(fake_grad)
  state = state.update("g", txs["g"], g_grads)

  new_state = state.replace(step=state.step + 1, collections={"g": {"batch_stats": g_stats},
                                                              "d": {"batch_stats": d_stats}})
  metrics = {
      "d/loss": d_loss, "g/loss": g_loss,
      "d/real_prob": jax.nn.sigmoid(real_logits).mean(),
      "d/fake_prob": jax.nn.sigmoid(fake_logits).mean(),
      "g/fake_prob_after_d_step": jax.nn.sigmoid(g_logits).mean(),
  }
  return new_state, metrics


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  """A fixed latent batch, drawn once, so the sample grids show the same z over training."""
  del batch
  return {"z": jax.random.normal(rng, (config.num_sample_images, config.model.nz))}


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """Generated images in [-1, 1]; BatchNorm uses the batch's statistics, as the original's samples do."""
  generator, _ = _models(config)
  fake, _ = generator.apply({"params": state.params["g"], **state.collections["g"]}, inputs["z"],
                            mutable=["batch_stats"])
  return {"generated": fake}


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  """`size` latents from N(0, 1) for `generate`, as the samples of an evaluation."""
  del data
  return {"z": jax.random.normal(rng, (size, config.model.nz))}


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """G in eval mode (BatchNorm with its running statistics) on inputs["z"] (B, nz)."""
  del rng
  generator, _ = _models(config)
  return {"generated": generator.apply({"params": state.params["g"], **state.collections["g"]}, inputs["z"],
                                       train=False)}
