"""TFill (Zheng et al. 2022) networks as lyndonzheng/TFill @ e05bc6b builds them with its CelebA-HQ / FFHQ options
(ngf 32, ndf 32, embed 512, kernel_E 1, kernel_G 3, kernel_T 1, 12 encoders, no decoders, pixel norm, LeakyReLU 0.2,
`--attn_G --add_noise` as scripts/train.sh and test.sh pass them). NHWC; masks (B, H, W, 1) with 1 = visible.

- `partial_conv`: NVIDIA's PartialConv2d (model/base_function.py) as a pure function (x, mask) -> (y, confidence):
  y = (conv(x * m) * k*k / (n + 1e-8) * clip(n, 0, 1) + b) * clip(n, 0, 1) with n = conv(m, ones(k, k)), and the
  next layer's soft mask n / (k*k). Without a mask it still renormalises the zero-padded borders (m = ones). The
  original caches n by input shape in the layer: a mask-less call reuses the ratio of the last call of that shape,
  even one computed from a real mask (stateful, and wrong across calls); here every call computes its own.
- `DiffEncoder` (E): 1x1 partial convs and 2x2 stride-2 downsamplings (each 16x16 patch encoded on its own) ->
  (tokens, soft mask). `Transformer` (T): 12 pre-norm layers on the tokens with learned row + column position
  embeddings and soft key masks (layer i weights keys by m^(0.5^i)). `DiffDecoder` (G): partial-conv ResnetBlocks,
  transformer layers at the first stage, noise only in holes (rng "noise"), ToRGB skips, tanh. `RefinedGenerator`
  (G_Ref): 3x3 partial-conv U-shape with the attention-aware layer. `StyleDiscriminator` (D, D_Ref): rosinality's
  StyleGAN2 discriminator (equalised lr, blur + stride-2 convs, minibatch stddev, fused leaky ReLU) without the
  CUDA ops: upfirdn2d and fused_leaky_relu are written out.
- Dropout is 0 in every TFill option and is left out; so are T's decoder (n_decoders 0), G's ConstantInput
  position embedding (use_pos_G off) and D's attention (attn_D off).

Initialisation as the original: E, G and G_Ref go through init_net (kaiming_normal fan_in, untruncated, on every
conv and linear weight incl. partial convs and G's attention, biases 0); T keeps its modules' own init (torch's
default for convs and to_out, xavier_uniform and zero bias for to_q/k/v, U[0, 1) position embeddings) and, as
`_get_clones` deep-copies one layer, its 12 layers start equal; D is N(0, 1) with zero biases (equalised lr).

Parameters at the real options (torch's `numel` sum): E 3,328,576; T 38,374,912; G 22,475,783; D (256)
19,048,993; G_Ref 45,268,041; D_Ref (512) 19,056,401.

Torch keys: every flax module is named as torch's attribute, with list / nn.Sequential indices as `name_<i>` and
the layers of rosinality's ConvLayer (an nn.Sequential) as `seq_<i>`, so `torch_key(path)` is a rename:
`TORCH_MODULES` ({regex: template} for `torch_map.KeyTable(modules=...)`), leaves kernel -> weight,
embedding -> weight. Examples: down_0/block_1/conv1/kernel -> down.0.block.1.conv1.weight,
encoder_trans/layers_3/attn/to_q/kernel -> encoder_trans.layers.3.attn.to_q.weight, to_token_0/alpha ->
to_token.0.alpha, up_1/attn/query_conv_2/kernel -> up.1.attn.query_conv.2.weight, convs_2/conv2/seq_1/kernel ->
convs.2.conv2.1.weight, final_linear_0/bias -> final_linear.0.bias. Layouts: conv (O, I, kh, kw) -> (kh, kw, I, O),
linear (O, I) -> (I, O); PixelwiseNorm's alpha (1, C, 1, 1) -> (C,) and D's blur buffers (`*.kernel`, fixed
[1, 3, 3, 1]) are dropped: `flax_layout_state_dict` does both.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from facegen_jax.nets import conv as conv_lib

_SQRT2 = math.sqrt(2)
_SLOPE = 0.2
# init_net's kaiming_normal_(a=0, mode='fan_in'): N(0, 2 / fan_in), not truncated.
_KAIMING = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torch's default Conv2d / Linear init: kaiming_uniform(a=sqrt(5)) = U(+-1 / sqrt(fan_in)).
_TORCH_KERNEL = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_BLUR_TAPS = np.array([1, 3, 3, 1], np.float32) / 8  # make_kernel([1, 3, 3, 1]) = outer(taps, taps).

TORCH_MODULES = {r"seq_(\d+)": r"\1", r"(.+)_(\d+)": r"\1.\2"}
_LEAVES = {"kernel": "weight", "embedding": "weight"}


def torch_key(path: Sequence[str]) -> str:
  """The original's state-dict key of a flax parameter path, e.g. ("up_0", "noise_1", "alpha") -> up.0.noise.1.alpha."""
  parts = []
  for name in path[:-1]:
    for pattern, template in TORCH_MODULES.items():
      if m := re.fullmatch(pattern, name):
        parts.append(m.expand(template))
        break
    else:
      parts.append(name)
  return ".".join(parts + [_LEAVES.get(path[-1], path[-1])])


def flax_layout_state_dict(state_dict) -> dict[str, np.ndarray]:
  """A TFill state dict with PixelwiseNorm alphas as (C,) and StyleGAN2's blur buffers (checked) left out."""
  blur = np.outer(_BLUR_TAPS, _BLUR_TAPS)
  out = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    if key.endswith(".kernel") and value.shape == (4, 4):
      if not np.allclose(value, blur):
        raise ValueError(f"{key} is not StyleGAN2's [1, 3, 3, 1] blur kernel")
      continue
    out[key] = value.reshape(-1) if key.endswith(".alpha") and value.ndim == 4 else value
  return out


def _torch_bias(fan_in: int):
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _inits(torch_init: bool, fan_in: int):
  return (_TORCH_KERNEL, _torch_bias(fan_in)) if torch_init else (_KAIMING, nn.initializers.zeros)


def _activation(name: str):
  if name == "leakyrelu":
    return lambda x: jax.nn.leaky_relu(x, _SLOPE)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  raise ValueError(f"activation must be 'leakyrelu' or 'gelu', got {name!r}")


# --- resampling ---


def _lerp_plan(n_in: int, n_out: int):
  src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
  i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
  return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """F.interpolate(x, size, mode='bilinear', align_corners=True) for NHWC x (no antialiasing, as torch)."""
  for axis, n_out in ((1, size[0]), (2, size[1])):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    i0, i1, w1 = _lerp_plan(n_in, n_out)
    w1 = jnp.asarray(w1.reshape([-1 if a == axis else 1 for a in range(x.ndim)]), x.dtype)
    x = jnp.take(x, i0, axis) * (1 - w1) + jnp.take(x, i1, axis) * w1
  return x


def upsample2(x: jax.Array) -> jax.Array:
  """Bilinear x2 with align_corners=True (UpSample, ToRGB's skip)."""
  return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))


# --- partial convolution ---


def _ones_count(n: int, k: int, s: int, pad: int) -> np.ndarray:
  taps = np.arange((n + 2 * pad - k) // s + 1)[:, None] * s - pad + np.arange(k)
  return ((taps >= 0) & (taps < n)).sum(1)


def _window_sum(mask: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
  """lax.reduce_window(mask, 0, add, (1, kh, kw, 1), stride, padding) of a constant (B, H, W, 1) mask, in numpy."""
  padded = np.pad(mask.astype(np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
  return windows.sum(axis=(-2, -1)).astype(np.float32)


def partial_conv(x, kernel, bias=None, mask=None, *, stride: int = 1, padding: int = 0, impl: str = "auto"):
  """PartialConv2d(x, mask) -> (y, n / (kh*kw)) for NHWC x, HWIO kernel, mask (B or 1, H, W, 1) or None.

  n = conv(mask, ones) counts the visible taps of each window (a constant of the shape when there is no mask:
  the border renormalisation); no gradient flows into the mask, as the original computes it under no_grad.
  """
  kh, kw = kernel.shape[:2]
  window = kh * kw
  if mask is None:
    rows = _ones_count(x.shape[1], kh, stride, padding)
    cols = _ones_count(x.shape[2], kw, stride, padding)
    count = np.outer(rows, cols)[None, :, :, None].astype(np.float32)
  elif isinstance(mask, np.ndarray):
    # A confidence that is a constant of the shapes (the border renormalisation of a mask-less call, which the
    # next layer of the block gets as its mask): counted here in numpy, as XLA would otherwise fold the window
    # sums of these constants while compiling, for minutes at TFill's sizes.
    count = _window_sum(mask, kh, kw, stride, padding)
    x = x * mask.astype(x.dtype)
  else:
    mask = lax.stop_gradient(mask)
    count = lax.reduce_window(mask, 0.0, lax.add, (1, kh, kw, 1), (1, stride, stride, 1),
                              ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    x = x * mask.astype(x.dtype)
  xp = np if isinstance(count, np.ndarray) else jnp  # constants stay numpy (see above)
  clipped = xp.clip(count, 0, 1)
  ratio = (window / (count + xp.float32(1e-8)) * clipped).astype(x.dtype)
  y = conv_lib.conv(x, kernel, stride, ((padding, padding), (padding, padding)), impl=impl)
  if bias is None:
    return y * ratio, count / window
  return (y * ratio + bias) * clipped.astype(x.dtype), count / window


class PartialConv(nn.Module):
  """PartialConv2d(in, features, kernel_size, stride, padding (default (k - 1) // 2)) with its weight and bias."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int | None = None
  torch_init: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    k = self.kernel_size
    kernel_init, bias_init = _inits(self.torch_init, x.shape[-1] * k * k)
    kernel = self.param("kernel", kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", bias_init, (self.features,))
    padding = (k - 1) // 2 if self.padding is None else self.padding
    return partial_conv(x, kernel, bias, mask, stride=self.stride, padding=padding)


class Conv1x1(nn.Module):
  """A plain nn.Conv2d(in, features, 1) (T's to_token, the attention-aware layer's query/key/weight)."""
  features: int
  torch_init: bool = False

  @nn.compact
  def __call__(self, x):
    kernel_init, bias_init = _inits(self.torch_init, x.shape[-1])
    kernel = self.param("kernel", kernel_init, (1, 1, x.shape[-1], self.features))
    return jnp.dot(x, kernel[0, 0]) + self.param("bias", bias_init, (self.features,))


class PixelwiseNorm(nn.Module):
  """alpha * x / sqrt(mean_c x^2 + 1e-8), alpha (C,) init 1 (no mean subtraction)."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],))
    return alpha * (x * lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-8))


# --- blocks ---


class ResnetBlock(nn.Module):
  """(conv2(act(norm2(conv1(act(norm1(x)), mask)))) + short(x)) / sqrt 2 -> (y, soft mask).

  conv2 gets conv1's confidence as its mask even when the block is called without one (the borders' n / k^2), as
  the original's `x, mask = self.conv1(...)` does; short is a mask-less 1x1 partial conv where widths differ.
  """
  features: int
  kernel_size: int = 3
  act: str = "leakyrelu"
  torch_init: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    act, k, ti = _activation(self.act), self.kernel_size, self.torch_init
    short = x if x.shape[-1] == self.features else PartialConv(self.features, 1, torch_init=ti, name="short")(x)[0]
    h, mask = PartialConv(self.features, k, torch_init=ti, name="conv1")(act(PixelwiseNorm(name="norm1")(x)), mask)
    h, mask = PartialConv(self.features, k, torch_init=ti, name="conv2")(act(PixelwiseNorm(name="norm2")(h)), mask)
    return (h + short) / _SQRT2, mask


class DownSample(nn.Module):
  """DownSample(with_conv): a stride-2 partial conv, padding (k - 1) // 2 -> (y, soft mask)."""
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, mask=None):
    return PartialConv(x.shape[-1], self.kernel_size, stride=2, name="conv")(x, mask)


class UpSample(nn.Module):
  """UpSample(with_conv): bilinear x2 (align_corners) of x and mask, a 3x3 partial conv -> (y, soft mask)."""

  @nn.compact
  def __call__(self, x, mask=None):
    return PartialConv(x.shape[-1], 3, name="conv")(upsample2(x), None if mask is None else upsample2(mask))


class ToRGB(nn.Module):
  """tanh(PConv3x3(act(norm([x, bilinear x2 of the previous RGB])))); the skip is left out at the first stage."""
  features: int = 3
  act: str = "leakyrelu"

  @nn.compact
  def __call__(self, x, skip=None):
    if skip is not None:
      x = jnp.concatenate([x, upsample2(skip)], -1)
    x = _activation(self.act)(PixelwiseNorm(name="conv_0")(x))
    return jnp.tanh(PartialConv(self.features, 3, name="conv_2")(x)[0])


class NoiseInjection(nn.Module):
  """x + alpha * N(0, 1) * (1 - mask resized to x), alpha (1,) init 0: noise only in the holes (rng "noise").

  The noise is sown as intermediates/noise, so a caller can replay it.
  """

  @nn.compact
  def __call__(self, x, mask=None):
    alpha = self.param("alpha", nn.initializers.zeros, (1,))
    noise = jax.random.normal(self.make_rng("noise"), x.shape[:3] + (1,), x.dtype)
    self.sow("intermediates", "noise", noise)
    if mask is not None:
      noise = noise * (1 - resize_bilinear(mask.astype(x.dtype), x.shape[1:3]))
    return x + alpha * noise


# --- transformer ---


class MultiheadAttention(nn.Module):
  """TFill's MultiheadAttention on (B, N, C) tokens; key_mask (B, N): soft weights, or bool (True = ignored).

  Soft: dots = where(dots > 0, m * dots, dots / (m + 1e-5)), shrinking positive and amplifying negative scores of
  keys with little confidence.
  """
  num_heads: int = 8
  torch_init: bool = False

  @nn.compact
  def __call__(self, q, k, v, key_mask=None):
    b, n, c = q.shape
    heads, d = self.num_heads, c // self.num_heads

    def dense(x, name, xavier):
      kernel_init, bias_init = _inits(self.torch_init, c)
      if xavier:
        kernel_init, bias_init = nn.initializers.xavier_uniform(), nn.initializers.zeros
      return nn.Dense(c, kernel_init=kernel_init, bias_init=bias_init, name=name)(x)

    q, k, v = (dense(t, name, self.torch_init).reshape(t.shape[0], -1, heads, d)
               for t, name in ((q, "to_q"), (k, "to_k"), (v, "to_v")))
    dots = jnp.einsum("bihd,bjhd->bhij", q, k) * d ** -0.5
    if key_mask is not None:
      m = key_mask[:, None, None, :]
      if m.dtype == jnp.bool_:
        dots = jnp.where(m, -jnp.inf, dots)
      else:
        m = lax.stop_gradient(m).astype(dots.dtype)
        dots = jnp.where(dots > 0, m * dots, dots / (m + 1e-5))
    out = jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(dots, -1), v).reshape(b, n, c)
    return dense(out, "to_out", False)


class TransformerLayer(nn.Module):
  """TransformerEncoderLayer: x + attn(q = k = norm1(x) + pos, v = norm1(x)); x + conv2(gelu(conv1(norm2(x)))),
  the FFN as mask-less partial convs (kernel 1: plain 1x1 convs)."""
  num_heads: int = 8
  dim_conv: int = 2048
  kernel_size: int = 1
  torch_init: bool = False

  @nn.compact
  def __call__(self, x, key_mask=None, pos=None):
    b, h, w, c = x.shape
    y = PixelwiseNorm(name="norm1")(x).reshape(b, h * w, c)
    qk = y if pos is None else y + pos
    y = MultiheadAttention(self.num_heads, self.torch_init, name="attn")(qk, qk, y, key_mask)
    x = x + y.reshape(b, h, w, c)
    y = PartialConv(self.dim_conv, self.kernel_size, torch_init=self.torch_init, name="conv1")(
        PixelwiseNorm(name="norm2")(x))[0]
    return x + PartialConv(c, 1, torch_init=self.torch_init, name="conv2")(jax.nn.gelu(y, approximate=False))[0]


class PositionEmbedding(nn.Module):
  """PositionEmbeddingLearned: pos[h, w] = col_embed[w] + row_embed[h], tables (32, C) init U[0, 1) -> (H*W, C)."""
  features: int

  @nn.compact
  def __call__(self, h: int, w: int):
    if max(h, w) > 32:
      raise ValueError(f"learned position embeddings cover at most 32x32 tokens, got {h}x{w}")
    init = nn.initializers.uniform(1.0)
    row = nn.Embed(32, self.features, embedding_init=init, name="row_embed")(jnp.arange(h))
    col = nn.Embed(32, self.features, embedding_init=init, name="col_embed")(jnp.arange(w))
    return (col[None, :, :] + row[:, None, :]).reshape(h * w, self.features)


class TransformerEncoder(nn.Module):
  """`n` TransformerLayers; layer i gets the key mask m^(0.5^i) (or m^(0.5^i) < 0.5 as ignored keys, bool_mask)."""
  n: int = 12
  num_heads: int = 8
  dim_conv: int = 2048
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x, key_mask=None, pos=None, bool_mask=False):
    layers = [TransformerLayer(self.num_heads, self.dim_conv, self.kernel_size, torch_init=True, name=f"layers_{i}")
              for i in range(self.n)]
    for i, layer in enumerate(layers):
      layer_mask = None
      if key_mask is not None:
        layer_mask = key_mask < 0.5 if bool_mask else key_mask
        key_mask = key_mask ** 0.5
      x = layer(x, layer_mask, pos)
      if i and self.is_initializing():
        # transformer_function._get_clones deep-copies one initialised layer: all start equal.
        self.put_variable("params", layer.name, layers[0].variables["params"])
    return x


class Transformer(nn.Module):
  """T: token_embed (1x1 partial conv with the mask) + learned positions -> encoder with soft key masks
  (confidence floored at 0.01) -> to_token (norm, GELU, 1x1 conv). Torch's default init throughout (not re-init)."""
  embed_dim: int = 512
  output_nc: int = 512
  dim_conv: int = 2048
  kernel_size: int = 1
  num_heads: int = 8
  n_encoders: int = 12

  @nn.compact
  def __call__(self, x, mask, bool_mask=False):
    x, mask = PartialConv(self.embed_dim, 1, torch_init=True, name="token_embed")(x, mask)
    b, h, w, _ = x.shape
    pos = PositionEmbedding(self.embed_dim, name="pos_embed")(h, w)[None]
    key_mask = jnp.maximum(mask, 1e-2).reshape(b, h * w)
    x = TransformerEncoder(self.n_encoders, self.num_heads, self.dim_conv, self.kernel_size, name="encoder_trans")(
        x, key_mask, pos, bool_mask)
    x = jax.nn.gelu(PixelwiseNorm(name="to_token_0")(x), approximate=False)
    return Conv1x1(self.output_nc, torch_init=True, name="to_token_2")(x)


# --- E, G, G_Ref ---


class _EncoderStage(nn.Module):
  """DiffEncoder.down[i]: downsample (k x k, stride 2), then ResnetBlocks to `features`, carrying the mask."""
  features: int
  kernel_size: int
  downsample_kernel: int
  num_res_blocks: int
  act: str

  @nn.compact
  def __call__(self, x, mask=None):
    x, mask = DownSample(self.downsample_kernel, name="downsample")(x, mask)
    for j in range(self.num_res_blocks):
      x, mask = ResnetBlock(self.features, self.kernel_size, self.act, name=f"block_{j}")(x, mask)
    return x, mask


class _Middle(nn.Module):
  """`mid`: block1, optional transformer layer (kernel 1, no mask), block2; the mask threaded as in E."""
  kernel_size: int
  use_attn: bool
  act: str
  num_heads: int = 8
  dim_conv: int = 2048

  @nn.compact
  def __call__(self, x, mask=None):
    c = x.shape[-1]
    x, new_mask = ResnetBlock(c, self.kernel_size, self.act, name="block1")(x, mask)
    if self.use_attn:
      x = TransformerLayer(self.num_heads, self.dim_conv, 1, name="attn")(x)
    # E threads its mask through; G calls both blocks without one (not with block1's border confidence).
    return ResnetBlock(c, self.kernel_size, self.act, name="block2")(x, None if mask is None else new_mask)


class DiffEncoder(nn.Module):
  """E: (masked image (B, H, W, 3) in [-1, 1], mask) -> (tokens (B, H/16, W/16, embed_dim), soft mask)."""
  ngf: int = 32
  kernel_size: int = 1
  embed_dim: int = 512
  down_scale: int = 4
  num_res_blocks: int = 2
  use_attn: bool = False
  act: str = "leakyrelu"

  @nn.compact
  def __call__(self, x, mask=None):
    k = self.kernel_size
    x, mask = PartialConv(self.ngf, k, name="encode")(x, mask)
    width = self.ngf
    for i in range(self.down_scale):
      width *= 2
      x, mask = _EncoderStage(width, k, 2, self.num_res_blocks, self.act, name=f"down_{i}")(x, mask)
    x, mask = _Middle(k, self.use_attn, self.act, name="mid")(x, mask)
    return ResnetBlock(self.embed_dim, k, self.act, name="conv_out")(x, mask)


class _DecoderStage(nn.Module):
  """DiffDecoder.up[i]: [noise, ResnetBlock, transformer layer] x num_res_blocks, ToRGB skip, UpSample."""
  features: int
  kernel_size: int
  num_res_blocks: int
  add_noise: bool
  use_attn: bool
  act: str
  num_heads: int
  dim_conv: int

  @nn.compact
  def __call__(self, x, skip, mask=None):
    for j in range(self.num_res_blocks):
      if self.add_noise:
        x = NoiseInjection(name=f"noise_{j}")(x, mask)
      x = ResnetBlock(self.features, self.kernel_size, self.act, name=f"block_{j}")(x)[0]
      if self.use_attn:
        x = TransformerLayer(self.num_heads, self.dim_conv, 1, name=f"attn_{j}")(x)
    skip = ToRGB(3, self.act, name="out")(x, skip)
    return UpSample(name="upsample")(x)[0], skip


class DiffDecoder(nn.Module):
  """G: tokens (B, h, w, C) and the full-size mask (for the noise) -> image (B, 16h, 16w, 3) in [-1, 1] (tanh).

  Needs the rng "noise" when add_noise. Transformer layers (8 heads, FFN 2048, GELU) only in the first stage.
  """
  output_nc: int = 3
  ngf: int = 32
  kernel_size: int = 3
  up_scale: int = 4
  num_res_blocks: int = 2
  add_noise: bool = True
  use_attn: bool = True
  act: str = "leakyrelu"
  num_heads: int = 8
  dim_conv: int = 2048

  @nn.compact
  def __call__(self, x, mask=None):
    width = self.ngf * 2 ** self.up_scale
    x = PartialConv(width, self.kernel_size, name="conv_in")(x)[0]
    x = _Middle(self.kernel_size, self.use_attn, self.act, self.num_heads, self.dim_conv, name="mid")(x)[0]
    skip = None
    for i in range(self.up_scale):
      width //= 2
      x, skip = _DecoderStage(width, self.kernel_size, self.num_res_blocks, self.add_noise, i == 0 and self.use_attn,
                              self.act, self.num_heads, self.dim_conv, name=f"up_{i}")(x, skip, mask)
    return ToRGB(self.output_nc, self.act, name="decode")(x, skip)


class AttnAware(nn.Module):
  """The attention-aware layer: 2-head attention of x on itself, split by the (resized) mask into a visible part
  reading `pre` (encoder features) and an invisible part reading x, mixed per pixel by softmax weights from each
  head's best visible / invisible score (a 1x1 conv); then ResnetBlock(2C -> C, k 1) of [out, x]."""
  act: str = "leakyrelu"
  num_heads: int = 2

  @nn.compact
  def __call__(self, x, pre=None, mask=None):
    b, h, w, c = x.shape
    heads, d = self.num_heads, c // self.num_heads
    act = _activation(self.act)
    q = Conv1x1(c, name="query_conv_2")(act(PixelwiseNorm(name="query_conv_0")(x)))
    k = Conv1x1(c, name="key_conv_2")(act(PixelwiseNorm(name="key_conv_0")(x)))
    q, k, v = (t.reshape(b, h * w, heads, d) for t in (q, k, x))
    dots = jnp.einsum("bihd,bjhd->bhij", q, k) * d ** -0.5
    if pre is None:
      out = jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(dots, -1), v)
    else:
      m = lax.stop_gradient(mask).reshape(b, 1, 1, h * w).astype(dots.dtype)
      fixed = lax.stop_gradient(dots)
      scores = jnp.concatenate([jnp.max(fixed * m, -1), jnp.max(fixed * (1 - m), -1)], 1)  # (B, 2 heads, N)
      weight = Conv1x1(2, name="weight")(scores.transpose(0, 2, 1).reshape(b, h, w, 2 * heads))
      weight = jax.nn.softmax(weight, -1)
      visible = jax.nn.softmax(jnp.where(dots > 0, dots * m, dots / (m + 1e-8)), -1)
      # The barrier keeps XLA from folding (1 - m) + 1e-8 into (1 + 1e-8) - m = 1 - m in float32: 0 at visible keys,
      # -inf scores and NaN gradients under jit (eager and torch add in order).
      hidden = lax.optimization_barrier(1 - m)
      invisible = jax.nn.softmax(jnp.where(dots > 0, dots * hidden, dots / (hidden + 1e-8)), -1)
      context = jnp.einsum("bhij,bjhd->bihd", visible, pre.reshape(b, h * w, heads, d)).reshape(b, h, w, c)
      own = jnp.einsum("bhij,bjhd->bihd", invisible, v).reshape(b, h, w, c)
      out = weight[..., :1] * context + weight[..., 1:] * own
    out = out.reshape(b, h, w, c)
    return ResnetBlock(c, 1, self.act, name="to_out")(jnp.concatenate([out, x], -1))[0]


class _RefineUpStage(nn.Module):
  features: int
  num_res_blocks: int
  attn: bool
  act: str

  @nn.compact
  def __call__(self, x, skip, pre, mask):
    for j in range(self.num_res_blocks):
      x = ResnetBlock(self.features, 3, self.act, name=f"block_{j}")(x)[0]
    if self.attn:
      m = None if mask is None else resize_bilinear(mask.astype(x.dtype), x.shape[1:3])
      x = AttnAware(self.act, name="attn")(x, pre, m)
    skip = ToRGB(3, self.act, name="out")(x, skip)
    return UpSample(name="upsample")(x)[0], skip


class _RefineDownStage(nn.Module):
  features: int
  num_res_blocks: int
  act: str

  @nn.compact
  def __call__(self, x):
    x = DownSample(3, name="downsample")(x)[0]
    pre = x
    for j in range(self.num_res_blocks):
      x = ResnetBlock(self.features, 3, self.act, name=f"block_{j}")(x)[0]
    return x, pre


class RefinedGenerator(nn.Module):
  """G_Ref: (coarse composite (B, H, W, 3), mask (B, H, W, 1)) -> image (B, H, W, 3), tanh. Partial convs without
  masks (border renormalisation only); the mask reaches only the attention-aware layer (up stage down_layers - 3,
  reading the features after the third downsampling)."""
  output_nc: int = 3
  ngf: int = 32
  embed_dim: int = 512
  down_layers: int = 4
  mid_layers: int = 6
  num_res_blocks: int = 2
  act: str = "leakyrelu"

  @nn.compact
  def __call__(self, x, mask=None):
    x = PartialConv(self.ngf, 3, name="encode")(x)[0]
    widths, width, pre = [], self.ngf, None
    for i in range(self.down_layers):
      widths.append(width)
      width = min(2 * width, self.embed_dim)
      x, stage_pre = _RefineDownStage(width, self.num_res_blocks, self.act, name=f"down_{i}")(x)
      pre = stage_pre if i == 2 else pre
    for i in range(self.mid_layers):
      x = ResnetBlock(width, 3, self.act, name=f"mid_{i}")(x)[0]
    skip = None
    for i in range(self.down_layers):
      width = max(widths[-i - 1], self.ngf)
      x, skip = _RefineUpStage(width, self.num_res_blocks, i == self.down_layers - 3, self.act, name=f"up_{i}")(
          x, skip, pre, mask)
    return ToRGB(self.output_nc, self.act, name="decode")(x, skip)


# --- StyleGAN2 discriminator (rosinality's, model/stylegan_ops) ---


def blur(x: jax.Array, pad: tuple[int, int]) -> jax.Array:
  """upfirdn2d(x, make_kernel([1, 3, 3, 1]), pad=pad) for NHWC x: zero-pad, then the separable [1, 3, 3, 1] / 8
  filter along each spatial axis (the kernel is symmetric, so upfirdn2d's flip changes nothing)."""
  x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  for axis in (1, 2):
    n = x.shape[axis] - 3
    x = sum(float(t) * lax.slice_in_dim(x, i, i + n, axis=axis) for i, t in enumerate(_BLUR_TAPS))
  return x


def fused_leaky_relu(x: jax.Array, bias: jax.Array) -> jax.Array:
  """fused_leaky_relu's native fallback: leaky_relu(x + bias, 0.2) * sqrt 2, bias on the last axis."""
  return jax.nn.leaky_relu(x + bias, _SLOPE) * _SQRT2


class EqualConv(nn.Module):
  """EqualConv2d: weight N(0, 1) used as weight / sqrt(fan_in) (equalised learning rate); bias 0."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, x.shape[-1], self.features))
    pads = ((self.padding, self.padding),) * 2
    y = conv_lib.conv(x, kernel * (1 / math.sqrt(x.shape[-1] * k * k)), self.stride, pads)
    return y + self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else y


class EqualLinear(nn.Module):
  """EqualLinear (lr_mul 1): x @ (W / sqrt(in)) + b, or fused_leaky_relu of it with activation."""
  features: int
  activation: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.dot(x, kernel * (1 / math.sqrt(x.shape[-1])))
    return fused_leaky_relu(y, bias) if self.activation else y + bias


class _Bias(nn.Module):
  """FusedLeakyReLU(channels): its bias, added before the leaky ReLU."""

  @nn.compact
  def __call__(self, x):
    return fused_leaky_relu(x, self.param("bias", nn.initializers.zeros, (x.shape[-1],)))


class ConvLayer(nn.Module):
  """rosinality's ConvLayer (an nn.Sequential, layers `seq_<i>`): [Blur] EqualConv2d [FusedLeakyReLU].

  Downsampling blurs with pad ((p + 1) // 2, p // 2), p = 2 + k - 1, then convolves with stride 2 and no padding.
  """
  features: int
  kernel_size: int
  downsample: bool = False
  use_bias: bool = True
  activate: bool = True

  @nn.compact
  def __call__(self, x):
    k, index = self.kernel_size, 0
    if self.downsample:
      p = 2 + k - 1
      x = blur(x, ((p + 1) // 2, p // 2))
      stride, padding, index = 2, 0, 1
    else:
      stride, padding = 1, k // 2
    x = EqualConv(self.features, k, stride, padding, self.use_bias and not self.activate, name=f"seq_{index}")(x)
    if not self.activate:
      return x
    return _Bias(name=f"seq_{index + 1}")(x) if self.use_bias else jax.nn.leaky_relu(x, _SLOPE) * _SQRT2


class StyleBlock(nn.Module):
  """(conv2(conv1(x)) + skip(x)) / sqrt 2, conv2 and the bias-free 1x1 skip downsampling x2."""
  features: int

  @nn.compact
  def __call__(self, x):
    out = ConvLayer(self.features, 3, downsample=True, name="conv2")(ConvLayer(x.shape[-1], 3, name="conv1")(x))
    skip = ConvLayer(self.features, 1, downsample=True, use_bias=False, activate=False, name="skip")(x)
    return (out + skip) / _SQRT2


def minibatch_stddev(x: jax.Array, group_size: int = 4) -> jax.Array:
  """x with one more channel: the mean over C, H, W of the (biased) standard deviation over groups of
  min(B, group_size) examples; example n belongs to group n mod (B / group), as torch's view(group, -1, ...)."""
  b, h, w, c = x.shape
  group = min(b, group_size)
  if b % group:
    raise ValueError(f"the minibatch stddev needs a batch divisible by {group}, got {b}")
  std = jnp.sqrt(jnp.var(x.reshape(group, b // group, h, w, c), axis=0) + 1e-8)
  std = jnp.tile(jnp.mean(std, axis=(1, 2, 3)), group)
  return jnp.concatenate([x, jnp.broadcast_to(std[:, None, None, None], (b, h, w, 1)).astype(x.dtype)], -1)


def style_channels(size: int, ndf: int = 32, max_channels: int = 512) -> int:
  """StyleDiscriminator's width at `size` px: max_channels up to 16 px, then halving, scaled by ndf / 64."""
  return max_channels if size <= 16 else int(max_channels * (ndf / 64) * 32 / size)


class StyleDiscriminator(nn.Module):
  """D / D_Ref: image (B, size, size, 3) -> logits (B, 1). `max_channels` (512 in the original) shrinks tests."""
  size: int = 256
  ndf: int = 32
  max_channels: int = 512

  @nn.compact
  def __call__(self, x):
    if x.shape[1:3] != (self.size, self.size):
      raise ValueError(f"StyleDiscriminator({self.size}) got images of {x.shape[1:3]}")
    channels = lambda s: style_channels(s, self.ndf, self.max_channels)  # noqa: E731
    x = ConvLayer(channels(self.size), 1, name="convs_0")(x)
    for index, i in enumerate(range(int(np.log2(self.size)), 2, -1)):
      x = StyleBlock(channels(2 ** (i - 1)), name=f"convs_{index + 1}")(x)
    x = ConvLayer(channels(4), 3, name="final_conv")(minibatch_stddev(x))
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's (C, H, W) flattening order.
    x = EqualLinear(channels(4), activation=True, name="final_linear_0")(x)
    return EqualLinear(1, name="final_linear_1")(x)
