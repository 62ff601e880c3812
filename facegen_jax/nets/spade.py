"""SPADE / GauGAN (Park et al. 2019) networks as NVlabs/SPADE builds them, with FaceIt-SPADE's options.

FaceIt trains with label_nc 19 (one-hot face parsing, no instance map, no don't-care label), crop 128, ngf = ndf = 64,
norm_G 'spectralspadesyncbatch3x3', norm_D = norm_E = 'spectralinstance', n_layers_D 4, num_D 2. Here those strings
are attributes: `spectral_norm` (the 'spectral' prefix) and `param_free_norm` ('batch' or 'instance').

- `SPADE`: parameter-free batch norm, then a 3x3 conv MLP on the label map (nearest-resized to x) predicts a
  per-pixel gamma and beta: out = normalized * (1 + gamma) + beta. Its convs have no spectral norm, as in the
  original. The batch mean runs over the whole batch: under `jax.jit` with a batch sharded over devices it is the
  global mean, i.e. the original's SyncBatchNorm.
- `SPADEResnetBlock`: pre-activation block, SPADE -> LeakyReLU(0.2) -> 3x3 conv twice; a learned 1x1 shortcut
  (with its own SPADE) iff the channel count changes.
- `SPADEGenerator`: the label map (or, with `use_vae`, a latent z) at crop / 2**5 -> seven SPADE blocks with
  nearest x2 upsampling between them -> LeakyReLU -> 3x3 conv -> tanh.
- `MultiscaleDiscriminator`: `num_D` PatchGAN `NLayerDiscriminator`s on concat(label map, image), each scale
  average-pooled from the previous one; every layer's output is returned for the feature-matching loss.
- `ConvEncoder`: the `use_vae` image encoder, returning (mu, logvar).

Weights are initialised as the original's `init_weights('xavier', 0.02)`: Xavier-normal with gain 0.02, zero biases.

Variable names follow the original's module names, so a torch `state_dict` converts key by key:
  * module path: the torch key's dotted module path, with `nn.Sequential` indices dropped
    (`head_0.norm_0.mlp_shared.0` -> `head_0/norm_0/mlp_shared`, `discriminator_1.model2.0.0` ->
    `discriminator_1/model2`, `layer3.0` -> `layer3`);
  * `weight` or `weight_orig` -> params `kernel`: conv weights OIHW -> HWIO by `w.transpose(2, 3, 1, 0)`, Linear
    weights by `w.T` (the VAE `fc` and the encoder's `fc_mu`/`fc_var` keep torch's NCHW flattening order, so a
    transpose is all they need); `bias` -> params `bias`;
  * `weight_u`, `weight_v` -> `spectral_stats` `u`, `v`, unchanged (see `spectral_norm.py`);
  * `param_free_norm.running_mean` / `running_var` -> `batch_stats` `.../param_free_norm/running_mean` /
    `running_var`; `num_batches_tracked` is dropped (torch ignores it when a momentum is set).

Training-mode calls (`train=True`) update `batch_stats` and `spectral_stats`: pass both as mutable.

One deliberate difference: the original's encoder resizes every image to 256x256 but builds its sixth stride-2
layer only when crop_size >= 256, so at FaceIt's crop 128 its `fc_mu` receives an 8x8 map where it expects 4x4
and `--use_vae` fails with a shape error. `ConvEncoder` always has the sixth layer: it is the original's encoder
for crop >= 256, the only sizes at which the original runs.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets import spectral_norm as sn_lib

# init_type 'xavier' with init_variance 0.02: xavier_normal_(w, gain=0.02), std = gain * sqrt(2 / (fan_in + fan_out)).
_INIT = nn.initializers.variance_scaling(0.02 ** 2, "fan_avg", "normal")
_LEAKY_SLOPE = 0.2
NUM_UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
PARAM_FREE_NORMS = ("batch", "instance")
ENCODER_INPUT_SIZE = 256


def _leaky_relu(x):
  return nn.leaky_relu(x, _LEAKY_SLOPE)


def _torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  # torch's 'nearest' (not 'nearest-exact'): src = min(floor(dst * (in / out)), in - 1), in float32.
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.interpolate(x, size, mode='nearest')` for NHWC x (jax.image.resize samples pixel centres instead)."""
  rows = _torch_nearest_indices(x.shape[1], size[0])
  cols = _torch_nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


@jax.custom_vjp
def upsample2(x: jax.Array) -> jax.Array:
  """`nn.Upsample(scale_factor=2)` (nearest) of NHWC x: each pixel broadcast to a 2x2 block.

  Its gradient, the sum of each 2x2 block of dy, is written as the four strided slices of dy added (one
  elementwise loop): autodiff's reduction over the block axes goes to YNNPACK on XLA:CPU, which ran it ~6x slower
  (SSuperGAN's decoder, its four upsamples fwd+bwd at batch 64: 27 vs 172 ms median, vs 244 ms for two
  jnp.repeat; quiet machine). The same sums in another order (float64: within 5e-16).
  """
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def _upsample2_fwd(x):
  return upsample2(x), None


def _upsample2_bwd(_, g):
  return (g[:, 0::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 0::2] + g[:, 1::2, 1::2],)


upsample2.defvjp(_upsample2_fwd, _upsample2_bwd)


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """`nn.InstanceNorm2d(affine=False)`: per example and channel over H, W, biased variance, no running stats."""
  xf = x.astype(jnp.float32)  # Statistics in float32 also under bfloat16 compute.
  mean = xf.mean(axis=(1, 2), keepdims=True)
  var = jnp.square(xf - mean).mean(axis=(1, 2), keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  """The multiscale D's downsampling: `F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)`."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False)


def _conv(x, features, kernel_size, *, name, spectral, train, strides=1, padding=None, use_bias=True):
  """A torch-style Conv2d (padding defaults to kernel_size // 2), spectral-normalised if `spectral`."""
  pad = kernel_size // 2 if padding is None else padding
  kwargs = dict(strides=strides, padding=((pad, pad), (pad, pad)), use_bias=use_bias, kernel_init=_INIT, name=name)
  if spectral:
    return sn_lib.SNConv(features, (kernel_size, kernel_size), **kwargs)(x, update_stats=train)
  return conv_lib.Conv(features, (kernel_size, kernel_size), **kwargs)(x)


class ParamFreeBatchNorm(nn.Module):
  """BatchNorm2d(affine=False) with torch's running statistics (momentum 0.1, unbiased running variance).

  flax's `nn.BatchNorm` keeps the biased variance as its running estimate; torch keeps the unbiased one, which
  is what eval mode and a converted checkpoint's `running_var` need.
  """

  momentum: float = 0.1
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    x, dtype = x.astype(jnp.float32), x.dtype  # Statistics in float32 also under bfloat16 compute.
    running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "running_var", jnp.ones, (channels,), jnp.float32)
    if not train:
      mean, var = running_mean.value, running_var.value
    else:
      mean = x.mean(axis=(0, 1, 2))
      var = jnp.square(x - mean).mean(axis=(0, 1, 2))
      if not self.is_initializing():
        count = x.size // channels
        unbiased_var = var * (count / max(count - 1, 1))
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased_var
    return ((x - mean) * jax.lax.rsqrt(var + self.eps)).astype(dtype)


class SPADE(nn.Module):
  """Spatially-adaptive normalisation: param-free norm of x, modulated by convs of the label map."""

  param_free_norm: str = "batch"
  kernel_size: int = 3
  hidden_features: int = 128  # The original's hard-coded `nhidden`.

  @nn.compact
  def __call__(self, x: jax.Array, segmap: jax.Array, *, train: bool) -> jax.Array:
    if self.param_free_norm == "batch":
      normalized = ParamFreeBatchNorm(name="param_free_norm")(x, train=train)
    elif self.param_free_norm == "instance":
      normalized = instance_norm(x)
    else:
      raise ValueError(f"param_free_norm must be one of {PARAM_FREE_NORMS}, got {self.param_free_norm!r}")
    segmap = nearest_resize(segmap, x.shape[1:3])
    conv = functools.partial(_conv, kernel_size=self.kernel_size, spectral=False, train=train)
    hidden = nn.relu(conv(segmap, self.hidden_features, name="mlp_shared"))
    gamma = conv(hidden, x.shape[-1], name="mlp_gamma")
    beta = conv(hidden, x.shape[-1], name="mlp_beta")
    return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
  """Pre-activation residual block with SPADE norms; `features` is fout, fin is read from x."""

  features: int
  spectral_norm: bool = True
  param_free_norm: str = "batch"

  @nn.compact
  def __call__(self, x: jax.Array, segmap: jax.Array, *, train: bool) -> jax.Array:
    fin, fout = x.shape[-1], self.features
    fmiddle = min(fin, fout)
    spade = functools.partial(SPADE, self.param_free_norm)
    conv = functools.partial(_conv, spectral=self.spectral_norm, train=train)
    if fin != fout:
      shortcut = conv(spade(name="norm_s")(x, segmap, train=train), fout, 1, name="conv_s", use_bias=False)
    else:
      shortcut = x
    dx = conv(_leaky_relu(spade(name="norm_0")(x, segmap, train=train)), fmiddle, 3, name="conv_0")
    dx = conv(_leaky_relu(spade(name="norm_1")(dx, segmap, train=train)), fout, 3, name="conv_1")
    return shortcut + dx


class SPADEGenerator(nn.Module):
  """Label map (B, H, W, label_nc) one-hot -> image (B, H, W, 3) in [-1, 1]; H = crop / aspect, W = crop."""

  label_nc: int = 19
  ngf: int = 64
  crop_size: int = 128
  aspect_ratio: float = 1.0
  num_upsampling_layers: str = "normal"
  use_vae: bool = False
  z_dim: int = 256
  spectral_norm: bool = True
  param_free_norm: str = "batch"

  def latent_size(self) -> tuple[int, int]:
    """(sh, sw): the spatial size the first block works at."""
    if self.num_upsampling_layers not in NUM_UPSAMPLING_LAYERS:
      raise ValueError(f"num_upsampling_layers must be one of {tuple(NUM_UPSAMPLING_LAYERS)}, "
                       f"got {self.num_upsampling_layers!r}")
    sw = self.crop_size // 2 ** NUM_UPSAMPLING_LAYERS[self.num_upsampling_layers]
    return round(sw / self.aspect_ratio), sw

  @nn.compact
  def __call__(self, segmap: jax.Array, z: jax.Array | None = None, *, train: bool) -> jax.Array:
    if segmap.shape[-1] != self.label_nc:
      raise ValueError(f"segmap has {segmap.shape[-1]} channels, expected label_nc={self.label_nc}")
    nf = self.ngf
    sh, sw = self.latent_size()
    if self.use_vae:
      if z is None:
        raise ValueError("use_vae=True: pass z (e.g. jax.random.normal(rng, (B, z_dim)) or the encoder's sample)")
      x = nn.Dense(16 * nf * sh * sw, kernel_init=_INIT, name="fc")(z)
      # torch views fc's output as (B, C, sh, sw): keep that order so fc's weight converts by a transpose.
      x = x.reshape(-1, 16 * nf, sh, sw).transpose(0, 2, 3, 1)
    else:
      x = _conv(nearest_resize(segmap, (sh, sw)), 16 * nf, 3, name="fc", spectral=False, train=train)
    block = functools.partial(SPADEResnetBlock, spectral_norm=self.spectral_norm,
                              param_free_norm=self.param_free_norm)
    x = block(16 * nf, name="head_0")(x, segmap, train=train)
    x = block(16 * nf, name="G_middle_0")(upsample2(x), segmap, train=train)
    if self.num_upsampling_layers in ("more", "most"):
      x = upsample2(x)
    x = block(16 * nf, name="G_middle_1")(x, segmap, train=train)
    for i, mult in enumerate((8, 4, 2, 1)):
      x = block(mult * nf, name=f"up_{i}")(upsample2(x), segmap, train=train)
    if self.num_upsampling_layers == "most":
      x = block(nf // 2, name="up_4")(upsample2(x), segmap, train=train)
    x = _conv(_leaky_relu(x), 3, 3, name="conv_img", spectral=False, train=train)
    return jnp.tanh(x)


class NLayerDiscriminator(nn.Module):
  """PatchGAN: returns the outputs of model0 ... model{n_layers_D}, the last one the (B, h, w, 1) logits map."""

  ndf: int = 64
  n_layers_D: int = 4
  spectral_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    conv = functools.partial(_conv, kernel_size=4, padding=2, train=train)  # padding ceil((4 - 1) / 2).
    x = _leaky_relu(conv(x, self.ndf, strides=2, name="model0", spectral=False))
    features = [x]
    nf = self.ndf
    for n in range(1, self.n_layers_D):
      nf = min(nf * 2, 512)
      strides = 1 if n == self.n_layers_D - 1 else 2
      # get_nonspade_norm_layer drops the conv's bias: the instance norm after it would cancel it.
      x = conv(x, nf, strides=strides, use_bias=False, name=f"model{n}", spectral=self.spectral_norm)
      x = _leaky_relu(instance_norm(x))
      features.append(x)
    features.append(conv(x, 1, name=f"model{self.n_layers_D}", spectral=False))
    return features


class MultiscaleDiscriminator(nn.Module):
  """`num_D` NLayerDiscriminators on concat(segmap, image) at successively halved scales.

  Returns a list over scales (full size first) of each discriminator's list of features; the last feature of
  each is its logits map.
  """

  ndf: int = 64
  n_layers_D: int = 4
  num_D: int = 2
  spectral_norm: bool = True

  @nn.compact
  def __call__(self, segmap: jax.Array, image: jax.Array, *, train: bool) -> list[list[jax.Array]]:
    x = jnp.concatenate([segmap, image], axis=-1)  # The original's channel order: label map first.
    outputs = []
    for i in range(self.num_D):
      if i:
        x = avg_pool_exclude_pad(x)
      outputs.append(NLayerDiscriminator(self.ndf, self.n_layers_D, self.spectral_norm,
                                         name=f"discriminator_{i}")(x, train=train))
    return outputs


class ConvEncoder(nn.Module):
  """The `use_vae` image encoder: image (B, H, W, 3) -> (mu, logvar), each (B, z_dim).

  Every image is first resized (bilinear) to 256x256, as in the original; see the module docstring for the sixth
  layer. The original names its width `ndf` but sets it from `opt.ngf`.
  """

  ngf: int = 64
  z_dim: int = 256
  spectral_norm: bool = True

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    size = ENCODER_INPUT_SIZE
    if image.shape[1:3] != (size, size):
      # torch's bilinear with align_corners=False and no antialiasing.
      image = jax.image.resize(image, (image.shape[0], size, size, image.shape[3]), "bilinear", antialias=False)
    x = image
    for i, mult in enumerate((1, 2, 4, 8, 8, 8)):
      if i:
        x = _leaky_relu(x)
      x = _conv(x, mult * self.ngf, 3, strides=2, padding=1, use_bias=False, name=f"layer{i + 1}",
                spectral=self.spectral_norm, train=train)
      x = instance_norm(x)
    x = _leaky_relu(x)
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's NCHW flattening, for fc_mu's weight.
    mu = nn.Dense(self.z_dim, kernel_init=_INIT, name="fc_mu")(x)
    logvar = nn.Dense(self.z_dim, kernel_init=_INIT, name="fc_var")(x)
    return mu, logvar


# Tiny variants for tests and CPU smoke runs (crop 32 starts the generator at 1x1).
TinySPADEGenerator = functools.partial(SPADEGenerator, ngf=4, crop_size=32)
TinyMultiscaleDiscriminator = functools.partial(MultiscaleDiscriminator, ndf=4)
TinyConvEncoder = functools.partial(ConvEncoder, ngf=4, z_dim=8)
