"""MUNIT (Huang et al. 2018) networks as NVlabs/MUNIT builds them, and SATNet's variant with self-attention.

- `AdaINGen`: an auto-encoder of two encoders, a decoder and an MLP. `StyleEncoder`: 7x7 conv, 4 stride-2 4x4
  convs (widths dim, 2 dim, 4 dim, 4 dim, 4 dim), global average pool, 1x1 conv -> style code (B, style_dim).
  `ContentEncoder`: 7x7 conv and n_downsample stride-2 4x4 convs with instance norm, n_res IN ResBlocks -> content
  (B, H / 2^n, W / 2^n, dim 2^n). `Decoder`: n_res AdaIN ResBlocks, n_downsample x (nearest x2, 5x5 conv,
  MUNIT's `LayerNorm`, activation), 7x7 conv, tanh. `MLP` (style_dim -> mlp_dim -> mlp_dim -> all AdaIN
  parameters) gives every AdaIN layer its (mean, std), split in MUNIT's order by `assign_adain_params`.
  Methods: `encode(images) -> (content, style)`, `decode(content, style) -> images`, `__call__(images)` (the
  reconstruction). Every conv is padded by `pad_type` (reflect in all configs) and has a bias; ResBlocks are
  x + (conv, norm, activation, conv, norm)(x).
- `MsImageDis`: num_scales PatchGANs, each 4x4 stride-2 convs (n_layer of them, widths dim .. dim 2^(n_layer-1),
  LeakyReLU 0.2; norm 'none' or 'sn' from the second on) and a 1x1 conv to one channel; the image is average-pooled
  3/2/1 without counting padding between scales. Returns the list of patch logits, finest first. The GAN losses
  (LSGAN, hinge) are the family's.
- SATNet (`attention=True`): SAGAN `SelfAttention` after the content encoder's ResBlocks (then one more IN
  ResBlock), after the decoder's AdaIN ResBlocks (then one more AdaIN ResBlock) and, in `MsImageDis`, before each
  scale's 1x1 conv. In the generator its convs are always spectral-normed; in the discriminator when norm is 'sn'
  (SATNet's dis.norm), as networks.py builds them.

Spectral norm is the originals' own (`spectral_norm.MunitSNConv`): one power iteration at every forward, also in
eval, so u and v (collection `spectral_stats`) are state of every call: pass the collection mutable and carry it,
or the calls keep starting from the same vectors (see `MunitSNConv`). The MUNIT generator and a D with norm 'none'
have no such state.

Initialisation (`weight_init`): the originals' trainers apply `weights_init(config.init)` to everything
('kaiming' in all configs: kaiming_normal fan_in, zero bias) and then `weights_init('gaussian')` (N(0, 0.02), zero
bias) to the discriminators, so `AdaINGen.weight_init` defaults to 'kaiming' and `MsImageDis.weight_init` to
'gaussian'. Quirk copied from the originals (utils.py's `weights_init` skips modules without a `weight`, and the
SpectralNorm wrapper has deleted it): spectral-normed convs keep torch's default init (kaiming_uniform(a=sqrt(5))
weight, U(+-1/sqrt(fan_in)) bias) whatever `weight_init` says. MUNIT's LayerNorm gamma ~ U(0, 1), beta 0;
SelfAttention's gamma starts at 1e-8.

MUNIT's LayerNorm is not flax's: per-sample mean and torch's UNBIASED std over (C, H, W), (x - mean) / (std + eps).
AdaIN is instance norm (biased variance, eps 1e-5) * std + mean, as MUNIT's batch_norm over (1, B*C, H, W) is.

Parameters as torch counts them (u, v excluded; SATNet registers them as Parameters without gradient): AdaINGen
15,026,187 (MUNIT) / 17,814,157 (SATNet), MsImageDis 8,271,171 (MUNIT, 3 scales) / 9,256,134 (SATNet, norm sn,
3 scales). `facegen_jax/convert/munit.py` maps the names to torch's keys.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets.spade import avg_pool_exclude_pad, instance_norm, upsample2

_EPS = 1e-5
STYLE_DOWNSAMPLES = 4  # AdaINGen builds StyleEncoder(4, ...) whatever n_downsample is.
MLP_BLOCKS = 3  # AdaINGen's MLP(..., n_blk=3).
ACTIVATIONS = {"relu": nn.relu, "lrelu": lambda x: nn.leaky_relu(x, 0.2), "selu": nn.selu, "tanh": jnp.tanh,
               "none": lambda x: x}
PAD_MODES = {"reflect": "reflect", "replicate": "edge", "zero": "constant"}
INITS = ("kaiming", "gaussian", "xavier", "orthogonal", "default")
# torch's default Conv2d/Linear weight init, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def kernel_init(init: str):
  """The weight init of MUNIT's `weights_init(init)` (utils.py), or torch's default for 'default'."""
  if init not in INITS:
    raise ValueError(f"init must be one of {INITS}, got {init!r}")
  return {"kaiming": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
          "gaussian": nn.initializers.normal(0.02),
          "xavier": nn.initializers.variance_scaling(2.0, "fan_avg", "normal"),  # gain sqrt(2)
          "orthogonal": nn.initializers.orthogonal(np.sqrt(2)),
          "default": _TORCH_KERNEL_INIT}[init]


def bias_init(init: str, fan_in: int):
  """`weights_init` zeroes biases; torch's default draws U(+-1/sqrt(fan_in))."""
  if init != "default":
    return nn.initializers.zeros_init()
  bound = 1 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def pad(x: jax.Array, amount: int, pad_type: str) -> jax.Array:
  """`nn.ReflectionPad2d` / `ReplicationPad2d` / `ZeroPad2d(amount)` for NHWC x."""
  if not amount:
    return x
  if pad_type == "reflect" and amount >= min(x.shape[1:3]):
    raise ValueError(f"reflection padding {amount} needs a map larger than {amount} pixels, got {x.shape[1:3]}: "
                     "the input is too small for this network")
  return jnp.pad(x, ((0, 0), (amount, amount), (amount, amount), (0, 0)), mode=PAD_MODES[pad_type])


def conv(x, features, kernel_size, *, name, stride=1, padding=0, pad_type="reflect", spectral=False,
         weight_init="kaiming"):
  """Pad + Conv2d(kernel_size, stride, bias) as MUNIT's Conv2dBlock does, optionally MUNIT's spectral norm.

  A padded stride-1 convolution with padding k // 2 is a "same" one: on maps of `conv.XLA_MIN_SIZE` and up it
  takes XLA's convolution (conv.py cannot see the padding; see `nets/ugatit.py`'s `_conv` for the figures). The
  rest take `conv.conv`'s choice (im2col for the reflect-padded stride-2 convs).
  """
  same = stride == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2
  impl = "xla" if same and min(x.shape[1:3]) >= conv_lib.XLA_MIN_SIZE else "auto"
  x = pad(x, padding, pad_type)
  fan_in = x.shape[-1] * kernel_size ** 2
  if spectral:  # The originals' weights_init skips these (see the module docstring): torch's default init.
    return sn_lib.MunitSNConv(features, (kernel_size, kernel_size), strides=stride, padding="VALID",
                              kernel_init=kernel_init("default"), bias_init=bias_init("default", fan_in),
                              impl=impl, name=name)(x)
  return conv_lib.Conv(features, (kernel_size, kernel_size), strides=stride, padding="VALID",
                       kernel_init=kernel_init(weight_init), bias_init=bias_init(weight_init, fan_in), impl=impl,
                       name=name)(x)


def _phase_taps(kernel_size: int, padding: int) -> tuple[int, np.ndarray]:
  """For a conv of the x2 nearest-upsampled map: (lo, C) with C (2, taps, kernel_size), C[r, i, t] = 1 when tap t
  of an output of phase r reads low-res offset lo + i. Output 2q + r reads upsampled 2q + r + t - padding, i.e.
  low-res q + (r + t - padding) // 2."""
  offsets = [[(r + t - padding) // 2 for t in range(kernel_size)] for r in range(2)]
  lo, hi = min(map(min, offsets)), max(map(max, offsets))
  taps = np.zeros((2, hi - lo + 1, kernel_size), np.float32)
  for r in range(2):
    for t, offset in enumerate(offsets[r]):
      taps[r, offset - lo, t] = 1
  return lo, taps


def _pad_low_res(x, lo: int, hi: int, pad_type: str):
  """Low-res padding equal to padding the upsampled map, up to reflect's outer ring (see `UpsampleConv`)."""
  mode = "constant" if pad_type == "zero" else "edge"
  return jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode=mode)


class UpsampleConv(nn.Module):
  """conv(pad(upsample2(x))): nearest x2 upsampling, `pad_type` padding, a stride-1 conv with bias; the parameters of
  that conv (kernel (k, k, C_in, features), bias), computed without forming the upsampled map.

  Each output phase (r_h, r_w) of the upsampled conv is a conv of x itself whose kernel sums the taps that read the
  same low-res pixel, so all four are one conv of x with 4 x features outputs and a (3, 3) kernel for MUNIT's 5x5
  (2.8x fewer multiply-adds: the decoder's two 5x5 layers were more than half of its time), then depth-to-space.
  Zero and replicate padding of the upsampled map are padding of x; reflect padding differs from x's replicate
  padding in the outer padding - 1 rows, which only the outer padding - 1 output rows and columns read: those
  strips are computed directly from their own upsampled, reflect-padded input. Same function as the direct way,
  summed in another order.

  impl: 'phase' (the above), 'direct' (upsample, pad, conv) or 'auto': phase on maps of `conv.XLA_MIN_SIZE` and up.
  Below that the layer is cheap either way and the phase path's extra convolutions only cost compile time (XLA:CPU
  compiles each convolution's gradient for ~0.5-1 s: the layer's gradient compiles in ~3.8 s instead of ~1.0).
  Measured at batch 1, 7 interleaved runs on the 2 shared cores at load ~10 (median, phase vs direct): 256->128 at
  32x32 fwd 105 vs 218 ms, fwd+bwd 284 vs 393; 128->64 at 64x64 fwd 89 vs 223, fwd+bwd 191 vs 460. MUNIT's decoder
  at 128 px (separate runs, load ~5): fwd 365 vs 504 ms, fwd+bwd 786 vs 1775.
  """

  features: int
  kernel_size: int = 5
  padding: int = 2
  pad_type: str = "reflect"
  weight_init: str = "kaiming"
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, p = self.kernel_size, self.padding
    fan_in = x.shape[-1] * k * k
    kernel = self.param("kernel", kernel_init(self.weight_init), (k, k, x.shape[-1], self.features))
    bias = self.param("bias", bias_init(self.weight_init, fan_in), (self.features,))
    kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
    border = max(p - 1, 0) if self.pad_type == "reflect" else 0
    if self.impl not in ("auto", "phase", "direct"):
      raise ValueError(f"impl must be 'auto', 'phase' or 'direct', got {self.impl!r}")
    small = min(x.shape[1:3]) < conv_lib.XLA_MIN_SIZE
    if self.impl == "direct" or (self.impl == "auto" and small) or min(x.shape[1:3]) <= p + 1:
      return self._direct(upsample2(x), kernel, bias)  # (p + 1 rows or fewer: too small for the strips)
    lo, taps = _phase_taps(k, p)
    n_taps = taps.shape[1]
    # (i, j, C_in, r_h, r_w, C_out): phase (r_h, r_w)'s kernel over low-res offsets (lo + i, lo + j).
    taps = jnp.asarray(taps, kernel.dtype)
    phases = jnp.einsum("ait,bju,tuco->ijcabo", taps, taps, kernel).reshape(n_taps, n_taps, x.shape[-1], -1)
    padded = _pad_low_res(x, -lo, n_taps - 1 + lo, self.pad_type)
    impl = "xla" if min(x.shape[1:3]) >= conv_lib.XLA_MIN_SIZE else "auto"
    y = conv_lib.conv(padded, phases, 1, "VALID", impl=impl)
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1) + bias
    if border:
      y = self._reflect_borders(x, y, kernel, bias, border)
    return y

  def _direct(self, upsampled, kernel, bias):
    same = self.kernel_size % 2 == 1 and self.padding == self.kernel_size // 2
    impl = "xla" if same and min(upsampled.shape[1:3]) >= conv_lib.XLA_MIN_SIZE else "auto"  # as `conv`
    return conv_lib.conv(pad(upsampled, self.padding, self.pad_type), kernel, 1, "VALID", impl=impl) + bias

  def _reflect_borders(self, x, y, kernel, bias, border):
    """y with its outer `border` rows and columns computed directly, each strip from just the padded rows (or
    columns) it reads: p + 1 low-res rows, upsampled and reflect-padded like the whole map, cover them. Both strips
    of an axis go through one convolution (stacked on the batch axis): XLA:CPU compiles each convolution's
    gradient for about a second."""
    rows, window, b = self.padding + 1, border + self.kernel_size - 1, x.shape[0]

    def strips(first, last, axis):
      ends = [pad(upsample2(part), self.padding, self.pad_type) for part in (first, last)]
      ends = [jax.lax.slice_in_dim(ends[0], 0, window, axis=axis),
              jax.lax.slice_in_dim(ends[1], ends[1].shape[axis] - window, ends[1].shape[axis], axis=axis)]
      out = conv_lib.conv(jnp.concatenate(ends, axis=0), kernel, 1, "VALID", impl="xla") + bias
      return out[:b], out[b:]

    top, bottom = strips(x[:, :rows], x[:, -rows:], 1)
    y = jnp.concatenate([top, y[:, border:-border], bottom], axis=1)
    left, right = strips(x[:, :, :rows], x[:, :, -rows:], 2)
    return jnp.concatenate([left, y[:, :, border:-border], right], axis=2)


class LayerNorm(nn.Module):
  """MUNIT's LayerNorm: per example over (H, W, C), (x - mean) / (unbiased std + eps) * gamma + beta."""

  eps: float = _EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.uniform(1.0), (channels,))  # torch's Tensor.uniform_(): U(0, 1)
    beta = self.param("beta", nn.initializers.zeros_init(), (channels,))
    xf = x.astype(jnp.float32)  # Statistics in float32 also under bfloat16 compute.
    n = np.prod(x.shape[1:])
    mean = xf.mean(axis=(1, 2, 3), keepdims=True)
    std = jnp.sqrt(jnp.square(xf - mean).sum(axis=(1, 2, 3), keepdims=True) / max(n - 1, 1))
    return ((xf - mean) / (std + self.eps) * gamma + beta).astype(x.dtype)


def adain(x: jax.Array, mean: jax.Array, std: jax.Array, eps: float = _EPS) -> jax.Array:
  """MUNIT's AdaptiveInstanceNorm2d: instance norm (biased variance) * std + mean; mean and std are (B, C)."""
  return (instance_norm(x, eps) * std[:, None, None, :].astype(x.dtype)
          + mean[:, None, None, :].astype(x.dtype))


def assign_adain_params(adain_params: jax.Array, num_features: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
  """(mean, std) of each AdaIN layer (in the decoder's order) from the MLP's (B, sum 2C) output.

  MUNIT's `assign_adain_params`: each layer takes the next C values as its mean (AdaIN's bias) and the C after
  them as its std (its weight).
  """
  if adain_params.shape[-1] != 2 * sum(num_features):
    raise ValueError(f"{adain_params.shape[-1]} AdaIN parameters for layers of {list(num_features)} features, "
                     f"which need {2 * sum(num_features)}")
  out, start = [], 0
  for c in num_features:
    out.append((adain_params[:, start:start + c], adain_params[:, start + c:start + 2 * c]))
    start += 2 * c
  return out


class ConvBlock(nn.Module):
  """MUNIT's Conv2dBlock: pad, conv (child "conv"), norm, activation.

  norm: 'none', 'in', 'adain' (call with adain=(mean, std)), 'ln' (MUNIT's LayerNorm, child "norm") or 'sn' (the
  conv spectral-normed, no norm).
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  norm: str = "none"
  activation: str = "relu"
  pad_type: str = "reflect"
  weight_init: str = "kaiming"
  upsample: bool = False  # nearest x2 before the padding (the decoder's nn.Upsample + Conv2dBlock), by UpsampleConv

  @nn.compact
  def __call__(self, x: jax.Array, adain_params: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    if self.upsample:
      if self.stride != 1 or self.norm == "sn":
        raise ValueError("upsample=True takes a stride-1 conv without spectral norm")
      x = UpsampleConv(self.features, self.kernel_size, self.padding, self.pad_type, self.weight_init, name="conv")(x)
    else:
      x = conv(x, self.features, self.kernel_size, stride=self.stride, padding=self.padding, pad_type=self.pad_type,
               spectral=self.norm == "sn", weight_init=self.weight_init, name="conv")
    if self.norm == "in":
      x = instance_norm(x)
    elif self.norm == "adain":
      x = adain(x, *adain_params)
    elif self.norm == "ln":
      x = LayerNorm(name="norm")(x)
    elif self.norm not in ("none", "sn"):
      raise ValueError(f"unsupported norm {self.norm!r}")
    return ACTIVATIONS[self.activation](x)


class ResBlock(nn.Module):
  """x + (3x3 conv, norm, activation, 3x3 conv, norm)(x); children "block_0", "block_1"."""

  norm: str = "in"
  activation: str = "relu"
  pad_type: str = "reflect"
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array, adain_params: Sequence[tuple[jax.Array, jax.Array]] = (None, None)) -> jax.Array:
    block = lambda activation, i: ConvBlock(x.shape[-1], 3, padding=1, norm=self.norm, activation=activation,
                                            pad_type=self.pad_type, weight_init=self.weight_init, name=f"block_{i}")
    y = block(self.activation, 0)(x, adain_params[0])
    return x + block("none", 1)(y, adain_params[1])


class SelfAttention(nn.Module):
  """SATNet's SAGAN self-attention (networks.py `SelfAttention`) on NHWC x.

  f, g: 1x1 convs C -> C / 8, k: 1x1 C -> C (all with bias, spectral-normed if `spectral`); attention[i, j] =
  softmax_j(f_i . g_j) over the H*W positions (no 1/sqrt(d)); out_i = sum_j attention[i, j] k_j;
  y = gamma * out + x, gamma a (1,) parameter starting at 1e-8.
  """

  spectral: bool = True
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    project = lambda features, name: conv(x, features, 1, spectral=self.spectral, weight_init=self.weight_init,
                                          name=name).reshape(b, h * w, features)
    f, g, k = project(c // 8, "f_conv"), project(c // 8, "g_conv"), project(c, "k_conv")
    gamma = self.param("gamma", nn.initializers.constant(1e-8), (1,))
    energy = jnp.einsum("bic,bjc->bij", f, g, preferred_element_type=jnp.float32)
    attention = jax.nn.softmax(energy, axis=-1).astype(x.dtype)
    out = jnp.einsum("bij,bjc->bic", attention, k).reshape(b, h, w, c)
    return gamma.astype(x.dtype) * out + x


class StyleEncoder(nn.Module):
  """Children "conv_in", "down_0".., "conv_out"; returns the style code (B, style_dim)."""

  dim: int = 64
  style_dim: int = 8
  n_downsample: int = STYLE_DOWNSAMPLES
  activ: str = "relu"
  pad_type: str = "reflect"
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = lambda features, kernel, stride, padding, name: ConvBlock(
        features, kernel, stride, padding, activation=self.activ, pad_type=self.pad_type,
        weight_init=self.weight_init, name=name)
    x = block(self.dim, 7, 1, 3, "conv_in")(x)
    for i in range(self.n_downsample):
      x = block(x.shape[-1] * (2 if i < 2 else 1), 4, 2, 1, f"down_{i}")(x)
    x = x.mean(axis=(1, 2), keepdims=True)
    return conv(x, self.style_dim, 1, weight_init=self.weight_init, name="conv_out").reshape(x.shape[0], self.style_dim)


class ContentEncoder(nn.Module):
  """Children "conv_in", "down_i", "res_i" and, with attention, "attention" and "post_attention_res"."""

  dim: int = 64
  n_downsample: int = 2
  n_res: int = 4
  activ: str = "relu"
  pad_type: str = "reflect"
  attention: bool = False
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = lambda features, kernel, stride, padding, name: ConvBlock(
        features, kernel, stride, padding, norm="in", activation=self.activ, pad_type=self.pad_type,
        weight_init=self.weight_init, name=name)
    x = block(self.dim, 7, 1, 3, "conv_in")(x)
    for i in range(self.n_downsample):
      x = block(2 * x.shape[-1], 4, 2, 1, f"down_{i}")(x)
    res = lambda name: ResBlock("in", self.activ, self.pad_type, self.weight_init, name=name)
    for i in range(self.n_res):
      x = res(f"res_{i}")(x)
    if self.attention:
      x = res("post_attention_res")(SelfAttention(spectral=True, weight_init=self.weight_init, name="attention")(x))
    return x


def num_adain_layers(n_res: int, attention: bool) -> int:
  return 2 * n_res + (2 if attention else 0)


class Decoder(nn.Module):
  """Children "res_i" (AdaIN), with attention "attention" and "post_attention_res", "up_i", "conv_out".

  `adain_params`: the MLP's (B, 2 C x num_adain_layers) output.
  """

  n_upsample: int = 2
  n_res: int = 4
  output_dim: int = 3
  activ: str = "relu"
  pad_type: str = "reflect"
  attention: bool = False
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array, adain_params: jax.Array) -> jax.Array:
    layers = num_adain_layers(self.n_res, self.attention)
    norms = assign_adain_params(adain_params, [x.shape[-1]] * layers)
    res = lambda name: ResBlock("adain", self.activ, self.pad_type, self.weight_init, name=name)
    for i in range(self.n_res):
      x = res(f"res_{i}")(x, norms[2 * i:2 * i + 2])
    if self.attention:
      x = SelfAttention(spectral=True, weight_init=self.weight_init, name="attention")(x)
      x = res("post_attention_res")(x, norms[-2:])
    for i in range(self.n_upsample):
      x = ConvBlock(x.shape[-1] // 2, 5, 1, 2, norm="ln", activation=self.activ, pad_type=self.pad_type,
                    weight_init=self.weight_init, upsample=True, name=f"up_{i}")(x)
    return ConvBlock(self.output_dim, 7, 1, 3, activation="tanh", pad_type=self.pad_type, weight_init=self.weight_init,
                     name="conv_out")(x)


class MLP(nn.Module):
  """Dense layers "fc_0".. with the activation between them, none after the last."""

  features: int
  dim: int = 256
  n_blk: int = MLP_BLOCKS
  activ: str = "relu"
  weight_init: str = "kaiming"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i in range(self.n_blk):
      last = i == self.n_blk - 1
      x = nn.Dense(self.features if last else self.dim, kernel_init=kernel_init(self.weight_init),
                   bias_init=bias_init(self.weight_init, x.shape[-1]), name=f"fc_{i}")(x)
      if not last:
        x = ACTIVATIONS[self.activ](x)
    return x


class AdaINGen(nn.Module):
  """MUNIT's AdaINGen(input_dim, gen config); SATNet's with `attention=True`. Images NHWC in [-1, 1].

  Children "enc_style", "enc_content", "dec", "mlp". `apply(v, x, method="encode")` etc.; with attention the
  `spectral_stats` collection is state of every call (see the module docstring).
  """

  dim: int = 64
  style_dim: int = 8
  mlp_dim: int = 256
  n_downsample: int = 2
  n_res: int = 4
  activ: str = "relu"
  pad_type: str = "reflect"
  input_dim: int = 3
  attention: bool = False
  weight_init: str = "kaiming"

  def setup(self):
    common = dict(activ=self.activ, weight_init=self.weight_init)
    self.enc_style = StyleEncoder(self.dim, self.style_dim, pad_type=self.pad_type, **common)
    self.enc_content = ContentEncoder(self.dim, self.n_downsample, self.n_res, pad_type=self.pad_type,
                                      attention=self.attention, **common)
    self.dec = Decoder(self.n_downsample, self.n_res, self.input_dim, pad_type=self.pad_type,
                       attention=self.attention, **common)
    self.mlp = MLP(self.num_adain_params, self.mlp_dim, **common)

  @property
  def num_adain_params(self) -> int:
    """MUNIT's get_num_adain_params(dec): 2 x the content width per AdaIN layer."""
    return 2 * self.dim * 2 ** self.n_downsample * num_adain_layers(self.n_res, self.attention)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(content (B, H/2^n, W/2^n, dim 2^n), style (B, style_dim))."""
    return self.enc_content(images), self.enc_style(images)

  def decode(self, content: jax.Array, style: jax.Array) -> jax.Array:
    return self.dec(content, self.mlp(style))

  def __call__(self, images: jax.Array) -> jax.Array:
    """The reconstruction decode(*encode(images)), as AdaINGen.forward."""
    content, style = self.encode(images)
    return self.decode(content, style)


class PatchDiscriminator(nn.Module):
  """One scale of MsImageDis: children "conv_0".., "attention" (if any) and "conv_out"."""

  dim: int = 64
  n_layer: int = 4
  norm: str = "none"
  activ: str = "lrelu"
  pad_type: str = "reflect"
  attention: bool = False
  weight_init: str = "gaussian"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.n_layer):
      x = ConvBlock(self.dim * 2 ** i, 4, 2, 1, norm="none" if i == 0 else self.norm, activation=self.activ,
                    pad_type=self.pad_type, weight_init=self.weight_init, name=f"conv_{i}")(x)
    if self.attention:
      x = SelfAttention(spectral=self.norm == "sn", weight_init=self.weight_init, name="attention")(x)
    return conv(x, 1, 1, weight_init=self.weight_init, name="conv_out")


class MsImageDis(nn.Module):
  """MUNIT's MsImageDis(input_dim, dis config); SATNet's with `attention=True`, norm 'sn'. Children "cnn_i".

  Returns [(B, H/2^n_layer, W/2^n_layer, 1), ... one per scale]; with norm 'sn' or attention `spectral_stats` is
  state of every call.
  """

  dim: int = 64
  n_layer: int = 4
  num_scales: int = 3
  norm: str = "none"
  activ: str = "lrelu"
  pad_type: str = "reflect"
  attention: bool = False
  weight_init: str = "gaussian"

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    if self.norm not in ("none", "sn"):
      raise ValueError(f"MsImageDis supports norm 'none' or 'sn', got {self.norm!r}")
    outputs = []
    for i in range(self.num_scales):
      outputs.append(PatchDiscriminator(self.dim, self.n_layer, self.norm, self.activ, self.pad_type,
                                        self.attention, self.weight_init, name=f"cnn_{i}")(x))
      if i + 1 < self.num_scales:
        x = avg_pool_exclude_pad(x)
    return outputs
