"""U-GAT-IT (Kim et al. 2020) networks as znxlwm/UGATIT-pytorch builds them, with Face2webtoon's group head.

- `ResnetGenerator`: reflect-padded 7x7 conv, two stride-2 3x3 convs and `n_blocks` residual blocks, all with
  parameter-free instance norm (the encoder); class activation map (CAM): global average- and max-pooled
  features give two logits through `gap_fc`/`gmp_fc`, whose weights also scale the features, a 1x1 conv fuses
  the two scaled copies, the heatmap is its channel sum; an MLP on the fused features (full: all of them
  flattened, light: their spatial mean) predicts the gamma and beta that every AdaILN of the `n_blocks`
  decoder residual blocks shares; two nearest x2 upsamplings with ILN; a 7x7 conv and tanh.
  Returns `GeneratorOutput(image, cam_logit (B, 2), heatmap (B, H/4, W/4, 1))`.
- `Discriminator`: reflect-padded spectral-norm 4x4 convs (n_layers - 2 of stride 2, one of stride 1) with
  LeakyReLU 0.2, the same CAM (spectral-norm gap/gmp linears, LeakyReLU after the 1x1 conv), a reflect-padded
  spectral-norm 4x4 conv to one channel. With `num_groups` > 0, Face2webtoon's group classifier: a
  spectral-norm linear (with bias) on the spatial mean of the CAM features. Returns `DiscriminatorOutput`.
  U-GAT-IT uses n_layers 7 (global) and 5 (local); the global one needs inputs of at least 96 px (the original
  is run at 128 and up).

(Ada)ILN normalise with torch's unbiased variance (`torch.var`), the encoder's instance norm with the biased one
(`nn.InstanceNorm2d`), both with eps 1e-5, as the original does. Initialisation is torch's default
(kaiming_uniform(a=sqrt(5)) weights, uniform(+-1/sqrt(fan_in)) biases), as the original adds no init of its own.

Parameters as torch counts them (spectral norm's u and v are `spectral_stats`, not parameters): G light
10,589,888, G full at 256 px 278,959,808 (its first FC alone 268,435,456); D global 53,130,176, D local
3,290,560; with 4 groups 53,138,372 and 3,292,612. `facegen_jax/convert/ugatit.py` maps the names to torch's keys.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets.spade import instance_norm, upsample2

_EPS = 1e-5
_LEAKY_SLOPE = 0.2
# torch's kaiming_uniform_(w, a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

# The encoder's residual blocks (Face2webtoon's "bottleneck", torch's DownBlock.12..), as a path pattern of the
# generator's parameters (`optim.path_name`), with or without a prefix such as "a2b/".
BOTTLENECK_PATTERN = r"(?:[^/]+/)*ResnetBlock_\d+/.+"


class GeneratorOutput(NamedTuple):
  image: jax.Array  # (B, H, W, output_nc), tanh
  cam_logit: jax.Array  # (B, 2): [gap, gmp]
  heatmap: jax.Array  # (B, H/4, W/4, 1)


class DiscriminatorOutput(NamedTuple):
  out: jax.Array  # (B, h, w, 1) patch logits
  cam_logit: jax.Array  # (B, 2)
  heatmap: jax.Array  # (B, h + 1, w + 1, 1)
  group_logit: jax.Array | None  # (B, num_groups), None without the group head


def _torch_bias_init(fan_in: int):
  bound = 1 / np.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """`nn.ReflectionPad2d(pad)` for NHWC x."""
  if pad >= min(x.shape[1:3]):
    raise ValueError(f"reflection padding {pad} needs a map larger than {pad} pixels, got {x.shape[1:3]}")
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def _conv(x, features, kernel_size, *, name, pad=0, stride=1, use_bias=False):
  """ReflectionPad2d(pad) + Conv2d(kernel_size, stride, padding=0), torch's init.

  A reflect-padded stride-1 convolution is a "same" one, so it takes XLA's convolution on maps of
  `conv.XLA_MIN_SIZE` and up as `conv.conv` does for zero padding (conv.py cannot see the padding). Measured
  fwd+bwd at batch 1 on 2 loaded cores, XLA's vs im2col: 3x3 128->64 at 128x128 278 vs 541 ms, 256->128 at 64x64
  176 vs 293, 256->256 at 32x32 92 vs 105; the last 7x7 64->3 at 128x128 79 vs 505. The stride-2 convs stay on
  `conv`'s choice (im2col: 65 vs 78 ms for 128->256 at 64x64; the phase path with a zero-extended kernel 141).
  """
  fan_in = x.shape[-1] * kernel_size ** 2
  same = stride == 1 and pad == kernel_size // 2 and min(x.shape[1:3]) >= conv_lib.XLA_MIN_SIZE
  return conv_lib.Conv(features, (kernel_size, kernel_size), strides=stride, padding="VALID", use_bias=use_bias,
                       kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(fan_in),
                       impl="xla" if same else "auto", name=name)(reflect_pad(x, pad) if pad else x)


def _sn_conv(x, features, *, name, stride, use_bias, update_stats, num_calls):
  """ReflectionPad2d(1) + spectral_norm(Conv2d(kernel 4, stride, padding=0))."""
  fan_in = x.shape[-1] * 16
  return SNConv(features, stride, use_bias=use_bias, kernel_init=_TORCH_KERNEL_INIT,
                bias_init=_torch_bias_init(fan_in), name=name)(reflect_pad(x, 1), update_stats=update_stats,
                                                              num_calls=num_calls)


def _matvec(kernel_hwio, v):
  """W v for torch's (out, in*kh*kw) matrix W of an HWIO kernel: a vector-matrix dot with the kernel read in place
  as (kh*kw*in, out), v reordered from torch's (in, kh, kw) to (kh, kw, in). (spectral_norm._matvec's product
  and reduction over the leading axes made XLA:CPU write v broadcast to the kernel's shape first.)"""
  kh, kw, c_in, c_out = kernel_hwio.shape
  return jnp.dot(v.reshape(c_in, kh, kw).transpose(1, 2, 0).reshape(-1), kernel_hwio.reshape(-1, c_out))


def _rmatvec(kernel_hwio, u):
  """W^T u in torch's (in, kh, kw) order, as a reduction over the kernel's minor axis (as a dot, XLA:CPU first
  copied the kernel into the transposed layout)."""
  return jnp.sum(kernel_hwio * u, axis=-1).transpose(2, 0, 1).reshape(-1)


def _call_sigmas(module, kernel, matvec, rmatvec, *, update_stats, num_calls):
  """Spectral norm's sigma for each of `num_calls` consecutive training-mode calls, (num_calls,): call i runs one
  power iteration (`spectral_norm.power_iteration`) from call i-1's u and uses sigma = u . (W v), the gradient
  through the kernel only; u and v are stored after the last. In eval every call uses the stored vectors.
  `module`'s `u` (out,) and `v` (in,) are created here, after its kernel, as `spectral_norm`'s modules do.
  """
  u = _unit_vector(module, "u", kernel.shape[-1])
  v = _unit_vector(module, "v", kernel.size // kernel.shape[-1])
  vectors = [(u.value, v.value)] * num_calls
  if update_stats and not module.is_initializing():
    fixed, vectors = jax.lax.stop_gradient(kernel), []
    for _ in range(num_calls):
      new_v = sn_lib.normalize(rmatvec(fixed, vectors[-1][0] if vectors else u.value))
      vectors.append((sn_lib.normalize(matvec(fixed, new_v)), new_v))
    u.value, v.value = vectors[-1]
  sg = jax.lax.stop_gradient
  return jnp.stack([jnp.dot(sg(a), matvec(kernel, sg(b))) for a, b in vectors])


def _unit_vector(module, name: str, size: int):
  return module.variable(sn_lib.SPECTRAL_STATS, name,
                         lambda: sn_lib.normalize(jax.random.normal(module.make_rng("params"), (size,))))


def _per_call(y, scale):
  """y (num_calls * B, ...) with each call's rows divided by its entry of scale (num_calls,)."""
  return (y.reshape(scale.shape[0], -1) / scale[:, None].astype(y.dtype)).reshape(y.shape)


class SNConv(nn.Module):
  """`spectral_norm.SNConv` with a 4x4 kernel and no padding (same variables and init: `kernel`, `bias`; `u`, `v`
  in SPECTRAL_STATS) for `num_calls` calls' inputs stacked on the batch axis, each normalised by its own sigma
  (`_call_sigmas`) as separate calls would be, in one convolution. The output is divided by sigma instead of the
  kernel: conv(x, W) / sigma = conv(x, W / sigma), so the gradient needs no normalised copy of the kernel and
  no kernel-sized reduction for sigma (its term is -sum(dy * y) / sigma over the output). The global D's
  1024->2048 layer (134 MB of kernel) is memory-bound: each pass over its kernel counts, and the real and fake
  images of a D step share one.
  """

  features: int
  strides: int
  use_bias: bool
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool, num_calls: int = 1) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features))
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))  # sigma in float32, as SNConv.
    sigmas = _call_sigmas(self, kernel, _matvec, _rmatvec, update_stats=update_stats, num_calls=num_calls)
    y = _per_call(conv_lib.conv(x, kernel.astype(x.dtype), self.strides, "VALID"), sigmas)
    if self.use_bias:
      y += self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
    return y


class SNDense(nn.Module):
  """`spectral_norm.SNDense` (same variables and init) for `num_calls` calls stacked on the batch axis, as
  `SNConv`."""

  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool, num_calls: int = 1) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    # torch's W is the (out, in) transpose of the kernel: W v = v @ kernel, W^T u = kernel @ u.
    sigmas = _call_sigmas(self, kernel, lambda k, v: v @ k, lambda k, u: k @ u, update_stats=update_stats,
                          num_calls=num_calls)
    y = _per_call(x @ kernel.astype(x.dtype), sigmas)
    if self.use_bias:
      y += self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
    return y


def _dense(features, fan_in, *, name, use_bias=False):
  return nn.Dense(features, use_bias=use_bias, kernel_init=_TORCH_KERNEL_INIT,
                  bias_init=_torch_bias_init(fan_in), name=name)


def _unbiased_moments(x, axes):
  n = np.prod([x.shape[a] for a in axes])
  mean = x.mean(axis=axes, keepdims=True)
  var = jnp.square(x - mean).sum(axis=axes, keepdims=True) / max(n - 1, 1)
  return mean, var


def layer_instance_norm(x: jax.Array, rho: jax.Array, gamma: jax.Array, beta: jax.Array,
                        eps: float = _EPS) -> jax.Array:
  """rho * IN(x) + (1 - rho) * LN(x), then * gamma + beta: the original's adaILN/ILN for NHWC x.

  Both statistics use the unbiased variance, as `torch.var` does; rho is (C,), gamma and beta (C,) or (B, C).
  """
  xf = x.astype(jnp.float32)  # Statistics in float32 also under bfloat16 compute.
  in_mean, in_var = _unbiased_moments(xf, (1, 2))
  ln_mean, ln_var = _unbiased_moments(xf, (1, 2, 3))
  out_in = (xf - in_mean) * jax.lax.rsqrt(in_var + eps)
  out_ln = (xf - ln_mean) * jax.lax.rsqrt(ln_var + eps)
  rho = rho.astype(jnp.float32)
  out = rho * out_in + (1 - rho) * out_ln
  per_example = lambda t: (t[:, None, None, :] if t.ndim == 2 else t).astype(jnp.float32)
  return (out * per_example(gamma) + per_example(beta)).astype(x.dtype)


class ILN(nn.Module):
  """The original's ILN: learned rho (init 0), gamma (1) and beta (0) per channel."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    rho = self.param("rho", nn.initializers.zeros_init(), (channels,))
    gamma = self.param("gamma", nn.initializers.ones_init(), (channels,))
    beta = self.param("beta", nn.initializers.zeros_init(), (channels,))
    return layer_instance_norm(x, rho, gamma, beta)


class AdaILN(nn.Module):
  """The original's adaILN: learned rho (init 0.9) per channel, gamma and beta (B, C) from the generator's MLP."""

  @nn.compact
  def __call__(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    rho = self.param("rho", nn.initializers.constant(0.9), (x.shape[-1],))
    return layer_instance_norm(x, rho, gamma, beta)


class ResnetBlock(nn.Module):
  """x + (pad, 3x3 conv, IN, ReLU, pad, 3x3 conv, IN)(x); no biases."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    y = nn.relu(instance_norm(_conv(x, channels, 3, pad=1, name="conv_0")))
    return x + instance_norm(_conv(y, channels, 3, pad=1, name="conv_1"))


class ResnetAdaILNBlock(nn.Module):
  """The decoder's residual block: as `ResnetBlock` with AdaILN(gamma, beta) in place of IN."""

  @nn.compact
  def __call__(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    y = nn.relu(AdaILN(name="norm_0")(_conv(x, channels, 3, pad=1, name="conv_0"), gamma, beta))
    return x + AdaILN(name="norm_1")(_conv(y, channels, 3, pad=1, name="conv_1"), gamma, beta)


def _size(img_size) -> tuple[int, int]:
  return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


class ResnetGenerator(nn.Module):
  """The original's ResnetGenerator(input_nc=3, output_nc, ngf, n_blocks, img_size, light); x NHWC in [-1, 1].

  img_size matters for the full model only: its first FC takes the (H/4, W/4, 4 ngf) features flattened in
  torch's (C, H, W) order, so inputs must have that size.
  """

  ngf: int = 64
  n_blocks: int = 4
  img_size: int | tuple[int, int] = 256
  light: bool = False
  output_nc: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> GeneratorOutput:
    if not self.light and tuple(x.shape[1:3]) != _size(self.img_size):
      raise ValueError(f"the full U-GAT-IT generator was built for {_size(self.img_size)} images (its FC reads "
                       f"the whole feature map), got {tuple(x.shape[1:3])}: resize them or set img_size")
    ngf = self.ngf
    x = nn.relu(instance_norm(_conv(x, ngf, 7, pad=3, name="conv_in")))
    for i in range(2):
      x = nn.relu(instance_norm(_conv(x, ngf * 2 ** (i + 1), 3, pad=1, stride=2, name=f"down_{i}")))
    for i in range(self.n_blocks):
      x = ResnetBlock(name=f"ResnetBlock_{i}")(x)

    channels = x.shape[-1]
    x, cam_logit = _cam(x, _dense(1, channels, name="gap_fc"), _dense(1, channels, name="gmp_fc"))
    x = nn.relu(_conv(x, channels, 1, use_bias=True, name="conv1x1"))
    heatmap = x.sum(axis=-1, keepdims=True)

    if self.light:
      features = x.mean(axis=(1, 2))
    else:  # torch's x.view(B, -1) of an NCHW map.
      features = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    features = nn.relu(_dense(channels, features.shape[-1], name="FC_0")(features))
    features = nn.relu(_dense(channels, channels, name="FC_1")(features))
    gamma = _dense(channels, channels, name="gamma")(features)
    beta = _dense(channels, channels, name="beta")(features)

    for i in range(self.n_blocks):
      x = ResnetAdaILNBlock(name=f"ResnetAdaILNBlock_{i}")(x, gamma, beta)
    for i in range(2):
      x = _conv(upsample2(x), x.shape[-1] // 2, 3, pad=1, name=f"up_{i}")
      x = nn.relu(ILN(name=f"up_norm_{i}")(x))
    image = jnp.tanh(_conv(x, self.output_nc, 7, pad=3, name="conv_out"))
    return GeneratorOutput(image, cam_logit, heatmap)


def _cam(x, gap_fc, gmp_fc, **kwargs):
  """Both pooled logits, and x scaled by each layer's raw kernel, concatenated: (features (B, H, W, 2C), (B, 2)).

  The scales are the layers' parameters as stored (for spectral-norm layers `weight_orig`, not the normalised
  weight the logits use): UGATIT-pytorch's networks.py reads them as `list(fc.parameters())[0]`. kwargs go to
  both layers (the discriminator's update_stats, num_calls).
  """
  gap_logit = gap_fc(x.mean(axis=(1, 2)), **kwargs)
  gmp_logit = gmp_fc(x.max(axis=(1, 2)), **kwargs)
  gap_weight = gap_fc.variables["params"]["kernel"][:, 0].astype(x.dtype)
  gmp_weight = gmp_fc.variables["params"]["kernel"][:, 0].astype(x.dtype)
  features = jnp.concatenate([x * gap_weight, x * gmp_weight], axis=-1)
  return features, jnp.concatenate([gap_logit, gmp_logit], axis=-1)


class Discriminator(nn.Module):
  """The original's Discriminator(input_nc=3, ndf, n_layers), plus Face2webtoon's group head if num_groups > 0.

  `update_stats=True` (training) runs one power iteration of every spectral norm (`spectral_stats` mutable);
  False (eval) uses the stored vectors, as torch's train/eval modes do. `num_calls` > 1: x is that many calls'
  batches stacked (equal sizes, in call order), judged as by separate calls (in training each runs its own
  power iteration, from the previous call's vectors) in one pass over the weights: the D step's real and fake.
  """

  ndf: int = 64
  n_layers: int = 5
  num_groups: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool, num_calls: int = 1) -> DiscriminatorOutput:
    strided = self.n_layers - 2
    if min(x.shape[1:3]) // 2 ** strided < 3:
      raise ValueError(f"a U-GAT-IT discriminator with n_layers {self.n_layers} needs images of at least "
                       f"{3 * 2 ** strided} px (its last 4x4 conv would have no output), got "
                       f"{tuple(x.shape[1:3])}")
    if x.shape[0] % num_calls:
      raise ValueError(f"a batch of {x.shape[0]} does not split into {num_calls} calls")
    sn = dict(update_stats=update_stats, num_calls=num_calls)
    leaky = lambda y: nn.leaky_relu(y, _LEAKY_SLOPE)
    for i in range(strided):
      x = leaky(_sn_conv(x, self.ndf * 2 ** i, stride=2, use_bias=True, name=f"conv_{i}", **sn))
    x = leaky(_sn_conv(x, self.ndf * 2 ** strided, stride=1, use_bias=True, name=f"conv_{strided}", **sn))

    channels = x.shape[-1]
    sn_dense = lambda name: SNDense(1, use_bias=False, kernel_init=_TORCH_KERNEL_INIT, name=name)
    x, cam_logit = _cam(x, sn_dense("gap_fc"), sn_dense("gmp_fc"), **sn)
    x = leaky(_conv(x, channels, 1, use_bias=True, name="conv1x1"))
    heatmap = x.sum(axis=-1, keepdims=True)
    group_logit = None
    if self.num_groups:
      group_logit = SNDense(self.num_groups, kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(channels),
                            name="group_classifier")(x.mean(axis=(1, 2)), **sn)
    out = _sn_conv(x, 1, stride=1, use_bias=False, name="conv_out", **sn)
    return DiscriminatorOutput(out, cam_logit, heatmap, group_logit)


def clip_rho(params):
  """Every `rho` leaf clipped to [0, 1]: the original's RhoClipper, applied after each generator update."""
  def clip(path, leaf):
    return jnp.clip(leaf, 0.0, 1.0) if getattr(path[-1], "key", None) == "rho" else leaf
  return jax.tree_util.tree_map_with_path(clip, params)
