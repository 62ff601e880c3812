"""EfficientNet B0-B7 (Tan & Le 2019) as lukemelas/EfficientNet-PyTorch 0.7.1 (`efficientnet_pytorch`) builds it.

SSuperGAN embeds comic panels with `EfficientNet.from_pretrained("efficientnet-b5", num_classes=embed)`; this
module is that network, layer for layer, so its ImageNet weights convert one to one (`convert/efficientnet.py`):

- stem: 3x3 stride-2 conv (no bias), BatchNorm, Swish;
- MBConv blocks from the seven base stages scaled by the variant's width (`round_filters`: multiple of 8, never
  below 90% of the scaled width) and depth (`round_repeats`: ceil): 1x1 expansion conv + BN + Swish (expand
  ratio 6; absent for ratio 1), depthwise kxk conv + BN + Swish, squeeze-excitation (spatial mean, 1x1 convs
  with bias to max(1, int(input_filters / 4)) channels and back, Swish between, sigmoid gate), 1x1 projection +
  BN; the residual add where a block keeps its stride 1 and width, with drop-connect (stochastic depth) of rate
  `drop_connect_rate * index / num_blocks` in training (per example: survive with 1 - rate, scaled by
  1 / (1 - rate); rng "dropout");
- head: 1x1 conv to round_filters(1280) + BN + Swish, spatial mean, dropout (the variant's rate), Linear.

BatchNorm as torch's BatchNorm2d(eps 1e-3, momentum 0.01): batch statistics in training with the biased
variance, the running variance updated with the unbiased one (flax's `nn.BatchNorm` keeps the biased one,
which a converted checkpoint's `running_var` is not), running statistics in the "batch_stats" collection.

Padding is the original's `Conv2dStaticSamePadding`: TF-"SAME" padding, but computed once, when the model is
built, for the variant's default image size (b5: 456), and applied unchanged to any input. Stride-1 convs pad
(k - 1) / 2 on every side whatever the size; the stride-2 ones pad what SAME would at 456 px, so on SSuperGAN's
300 px panels b5's third reduction is 37x37 where SAME would give 38x38. `static_pad_size` is the image size the
padding is computed for (default: the variant's own, as `from_name`/`from_pretrained` build it).

Initialisation is torch's default (kaiming_uniform(a=sqrt(5)) kernels, uniform(+-1/sqrt(fan_in)) biases, BN
scale 1 and bias 0), which is what a fresh head (`from_pretrained(..., num_classes != 1000)`) gets.
Inputs are NHWC; normalise them as the caller's original does (SSuperGAN feeds panels in [-1, 1] straight in).
Variable names are torch's without the underscore (`conv_stem`, `blocks_12/depthwise_conv`, `fc`, ...).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import npz
from facegen_jax.errors import DataError
from facegen_jax.nets import batch_norm

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.01  # torch's convention: new = (1 - m) * running + m * batch (TF's 0.99).
DROP_CONNECT_RATE = 0.2  # The same for every variant in efficientnet_pytorch.
DEPTH_DIVISOR = 8
SE_RATIO = 0.25


class Variant(NamedTuple):
  """Compound-scaling coefficients (`efficientnet_params`)."""
  width: float
  depth: float
  image_size: int  # The default resolution, which the static padding is computed for.
  dropout: float  # Dropout before the final Linear.


VARIANTS = {
    "efficientnet-b0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet-b1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet-b2": Variant(1.1, 1.2, 260, 0.3),
    "efficientnet-b3": Variant(1.2, 1.4, 300, 0.3),
    "efficientnet-b4": Variant(1.4, 1.8, 380, 0.4),
    "efficientnet-b5": Variant(1.6, 2.2, 456, 0.4),
    "efficientnet-b6": Variant(1.8, 2.6, 528, 0.5),
    "efficientnet-b7": Variant(2.0, 3.1, 600, 0.5),
}


class Stage(NamedTuple):
  repeats: int
  kernel: int
  stride: int
  expand: int
  in_filters: int
  out_filters: int


# B0's stages (efficientnet_pytorch's block strings 'r1_k3_s11_e1_i32_o16_se0.25', ...); every stage has SE 0.25.
BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class BlockSpec(NamedTuple):
  """One MBConv block of a built network, with the padding its depthwise conv was given."""
  kernel: int
  stride: int
  in_filters: int
  hidden: int  # in_filters * the expand ratio
  expand: bool  # an expansion conv (ratio != 1)
  se_filters: int
  out_filters: int
  pad: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right)) of the depthwise conv
  skip: bool  # residual add (and drop-connect)


def variant_coefficients(variant: str) -> Variant:
  if variant not in VARIANTS:
    raise ValueError(f"unknown EfficientNet variant {variant!r}; one of {', '.join(VARIANTS)}")
  return VARIANTS[variant]


def round_filters(filters: int, width: float) -> int:
  """`utils.round_filters`: width-scaled channels, a multiple of 8, rounded up if rounding lost over 10%."""
  scaled = filters * width
  rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
  if rounded < 0.9 * scaled:
    rounded += DEPTH_DIVISOR
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


def _pair(size) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def same_padding(size: tuple[int, int], kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """`Conv2dStaticSamePadding`'s padding for an input of `size` (H, W): SAME's, the odd pixel after."""
  pads = []
  for length in size:
    total = max((math.ceil(length / stride) - 1) * stride + kernel - length, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def _reduced(size: tuple[int, int], stride: int) -> tuple[int, int]:
  """`calculate_output_image_size`: the size the next layers' padding is computed for."""
  return tuple(math.ceil(length / stride) for length in size)


def block_specs(variant: str, static_pad_size=None) -> list[BlockSpec]:
  """The blocks `EfficientNet(variant)` builds, their depthwise padding computed for `static_pad_size`."""
  coefficients = variant_coefficients(variant)
  size = _reduced(_pair(static_pad_size or coefficients.image_size), 2)  # after the stem
  specs = []
  for stage in BASE_STAGES:
    in_filters = round_filters(stage.in_filters, coefficients.width)
    out_filters = round_filters(stage.out_filters, coefficients.width)
    for repeat in range(round_repeats(stage.repeats, coefficients.depth)):
      stride = stage.stride if repeat == 0 else 1
      hidden = in_filters * stage.expand
      # The original compares its stride, a one-element list for a stage's first block, with 1: that block
      # never skips, but it changes the width anyway, so `stride == 1 and same width` is the same rule.
      specs.append(BlockSpec(
          kernel=stage.kernel, stride=stride, in_filters=in_filters, hidden=hidden, expand=stage.expand != 1,
          se_filters=max(1, int(in_filters * SE_RATIO)), out_filters=out_filters,
          pad=same_padding(size, stage.kernel, stride), skip=stride == 1 and in_filters == out_filters))
      size = _reduced(size, stride)
      in_filters = out_filters
  return specs


def head_filters(variant: str) -> int:
  return round_filters(1280, variant_coefficients(variant).width)


# torch's kaiming_uniform_(w, a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
  bound = 1 / np.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)


DEPTHWISE_IMPLS = ("auto", "taps", "xla")


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, pad, impl: str = "auto") -> jax.Array:
  """Depthwise conv of NHWC x with a (k, k, 1, C) kernel, explicit padding ((top, bottom), (left, right)).

  "xla": one `feature_group_count=C` convolution. "taps": the k*k strided slices of the padded input, each
  times its tap, summed (one fused loop), with a custom gradient that keeps only x (`_depthwise_taps_bwd`). XLA:CPU runs grouped
  convolutions through a slow generic path: at batch 12, 150x150x240, k3 s2, fwd+bwd took 17 s of CPU time
  grouped, 1.3 s as taps; "auto" is taps on CPU, XLA's elsewhere. A whole b5 train-mode fwd+bwd at 300 px
  (load ~12 on 2 cores): batch 3 in 8.6-8.8 s (6.0 s CPU) with taps, batch 2 in 55-59 s grouped (load ~15).
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
  if impl == "xla" or (impl == "auto" and jax.default_backend() != "cpu"):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  return _depthwise_taps(x, kernel, stride, tuple(map(tuple, pad)))


def _taps_forward(x, kernel, stride, pad):
  k = kernel.shape[0]
  padded = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  out_h, out_w = ((padded.shape[1] - k) // stride + 1, (padded.shape[2] - k) // stride + 1)
  out = None
  for i in range(k):
    for j in range(k):
      window = jax.lax.slice(padded, (0, i, j, 0),
                             (x.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, x.shape[3]),
                             (1, stride, stride, 1))
      out = window * kernel[i, j, 0] if out is None else out + window * kernel[i, j, 0]
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_taps(x: jax.Array, kernel: jax.Array, stride: int, pad) -> jax.Array:
  """`depthwise_conv`'s taps: the k*k strided windows of the padded input, each times its tap, summed."""
  return _taps_forward(x, kernel, stride, pad)


def _depthwise_taps_fwd(x, kernel, stride, pad):
  return _taps_forward(x, kernel, stride, pad), (x, kernel)


def _depthwise_taps_bwd(stride, pad, residuals, g):
  """The same sums as autodiff's, arranged so that only x is kept from the forward pass.

  Autodiff's kernel gradient reduces each window times g; XLA:CPU's reductions (YNNPACK) do not fuse the window's
  slice, so every window, the size of the output, was written out and, computed from x alone, scheduled in the
  forward pass: k*k such buffers per block lived until the backward pass (b5 at 300 px, batch 12: about half of
  the step's 17 GiB). Here g is placed at each tap's offset in the padded frame instead (zeros around and, for
  stride 2, between its pixels: a pad of g, which only exists once g does) and reduced against the padded x.
  """
  x, kernel = residuals
  k = kernel.shape[0]
  (top, _), (left, _) = pad
  padded = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  out_h, out_w = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  taps, dpadded = [], None
  for i in range(k):
    for j in range(k):
      # g at the positions window (i, j) reads: rows i, i + stride, ..., i + (out_h - 1) * stride of the frame.
      placed = jax.lax.pad(g, zero, ((0, 0, 0), (i, padded.shape[1] - i - (out_h - 1) * stride - 1, stride - 1),
                                     (j, padded.shape[2] - j - (out_w - 1) * stride - 1, stride - 1), (0, 0, 0)))
      taps.append(jnp.sum(placed * padded, axis=(0, 1, 2)))
      if stride > 1:
        term = placed * kernel[i, j, 0]
        dpadded = term if dpadded is None else dpadded + term
  dkernel = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  if stride > 1:  # the placed copies of g times their taps, summed (a materialised spread of g was slower here)
    dx = jax.lax.slice(dpadded, (0, top, left, 0), (x.shape[0], top + x.shape[1], left + x.shape[2], x.shape[3]))
    return dx, dkernel
  # Stride 1: dx is g correlated with the flipped kernel, i.e. the forward's taps over one padded copy of g,
  # materialised once so the reads are plain slices (at 12x75x75x240, k5, fwd+bwd: 505 ms against 2819 ms for
  # summing the k*k placed copies, whose padding the loop computes per element).
  (_, bottom), (_, right) = pad
  g_padded = jax.lax.optimization_barrier(
      jnp.pad(g, ((0, 0), (k - 1 - top, k - 1 - bottom), (k - 1 - left, k - 1 - right), (0, 0))))
  return _taps_forward(g_padded, jnp.flip(kernel, (0, 1)), 1, ((0, 0), (0, 0))), dkernel


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


class Conv(nn.Module):
  """Conv2d with explicit (static) padding, torch's init: 1x1 (a dot), the stem's, or depthwise (`depthwise`)."""

  features: int
  kernel: int = 1
  stride: int = 1
  pad: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  depthwise: bool = False
  use_bias: bool = False
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_per_group = 1 if self.depthwise else x.shape[-1]
    kernel = self.param("kernel", _TORCH_KERNEL_INIT, (self.kernel, self.kernel, in_per_group, self.features))
    kernel = kernel.astype(x.dtype)
    if self.depthwise:
      y = depthwise_conv(x, kernel, self.stride, self.pad, self.depthwise_impl)
    elif self.kernel == 1 and self.stride == 1:
      y = jnp.dot(x, kernel[0, 0])
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), self.pad,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", _torch_bias_init(self.kernel * self.kernel * in_per_group), (self.features,))
    return y


# torch's BatchNorm2d(eps 1e-3, momentum 0.01): running variance updated with the unbiased batch variance.
BatchNorm = functools.partial(batch_norm.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def drop_connect(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """`utils.drop_connect`: each example's residual branch kept with probability 1 - rate, scaled up by 1/(1 - rate)."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MBConvBlock(nn.Module):
  """`model.MBConvBlock`: expansion, depthwise conv, squeeze-excitation, projection, residual with drop-connect."""

  spec: BlockSpec
  drop_connect_rate: float = 0.0
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
    spec = self.spec
    x = inputs
    if spec.expand:
      x = swish(BatchNorm(name="bn0")(Conv(spec.hidden, name="expand_conv")(x), train=train))
    x = Conv(spec.hidden, spec.kernel, spec.stride, spec.pad, depthwise=True, depthwise_impl=self.depthwise_impl,
             name="depthwise_conv")(x)
    x = swish(BatchNorm(name="bn1")(x, train=train))
    squeezed = x.mean(axis=(1, 2), keepdims=True)
    squeezed = swish(Conv(spec.se_filters, use_bias=True, name="se_reduce")(squeezed))
    x = jax.nn.sigmoid(Conv(spec.hidden, use_bias=True, name="se_expand")(squeezed)) * x
    x = BatchNorm(name="bn2")(Conv(spec.out_filters, name="project_conv")(x), train=train)
    if spec.skip:
      if train and self.drop_connect_rate:
        x = drop_connect(x, self.drop_connect_rate, self.make_rng("dropout"))
      x = x + inputs
    return x


class EfficientNet(nn.Module):
  """`EfficientNet.from_name(variant, num_classes=num_classes)`: (B, H, W, 3) -> (B, num_classes).

  `features_only` returns the pooled head features (B, head_filters(variant)) instead (before dropout and fc;
  `features` is the same as a method). The input of each stride-2 block and the last blocks' and head's
  outputs are sown as `intermediates/reduction_{1..6}` (the original's `extract_endpoints`).
  """

  variant: str = "efficientnet-b5"
  num_classes: int = 1000
  static_pad_size: int | Sequence[int] | None = None  # default: the variant's image size
  dropout_rate: float | None = None  # default: the variant's
  drop_connect_rate: float = DROP_CONNECT_RATE
  depthwise_impl: str = "auto"  # see `depthwise_conv`
  # Recompute each block's activations in the backward pass (config.model.remat). Not on XLA:CPU: it removes
  # jax.checkpoint's optimization barriers before scheduling and runs the recomputation in the forward pass, so
  # four b5 blocks at 75 px, batch 12, kept 3852 MiB of temporaries with and without it (memory_analysis).
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, features_only: bool = False) -> jax.Array:
    coefficients = variant_coefficients(self.variant)
    pad_size = _pair(self.static_pad_size or coefficients.image_size)
    specs = block_specs(self.variant, pad_size)
    stem = round_filters(32, coefficients.width)
    x = Conv(stem, 3, 2, same_padding(pad_size, 3, 2), name="conv_stem")(x)
    x = swish(BatchNorm(name="bn0")(x, train=train))
    reductions = 0
    block_cls = nn.remat(MBConvBlock, static_argnums=(2,)) if self.remat else MBConvBlock
    for index, spec in enumerate(specs):
      if spec.stride > 1:  # the original's test is on the map size, which a stride-2 block always reduces
        reductions += 1
        self.sow("intermediates", f"reduction_{reductions}", x)
      rate = self.drop_connect_rate * index / len(specs)
      x = block_cls(spec, rate, self.depthwise_impl, name=f"blocks_{index}")(x, train)
    self.sow("intermediates", f"reduction_{reductions + 1}", x)
    x = Conv(head_filters(self.variant), name="conv_head")(x)
    x = swish(BatchNorm(name="bn1")(x, train=train))
    self.sow("intermediates", f"reduction_{reductions + 2}", x)
    x = x.mean(axis=(1, 2))
    if features_only:
      return x
    rate = coefficients.dropout if self.dropout_rate is None else self.dropout_rate
    x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(x.shape[-1]),
                    name="fc")(x)

  def features(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The pooled head features (B, head_filters(variant)), as `extract_features` + `_avg_pooling`."""
    return self(x, train=train, features_only=True)


def abstract_variables(variant: str, num_classes: int) -> dict:
  """{"params", "batch_stats"} as ShapeDtypeStructs (the padding does not change any shape)."""
  module = EfficientNet(variant, num_classes)
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), image)


def load_variables(path, variant: str | None = None) -> dict:
  """{"params", "batch_stats"} from the .npz `python -m facegen_jax.convert efficientnet` writes (numpy).

  `variant` (default: the one the file records) must match the file's; the head's size comes from the file.
  A missing file, another variant's file or a wrong array raises one DataError naming the fix.
  """
  fix = ("convert efficientnet_pytorch's weights with `python -m facegen_jax.convert efficientnet "
         f"--checkpoint {variant or 'efficientnet-bN'}-XXXX.pth --out {path}`")
  arrays = npz.read(path, "EfficientNet weights", fix)
  stored = str(arrays.pop("variant", np.array(""))) or None
  if stored not in VARIANTS:
    raise DataError(f"EfficientNet weights {path} record no known variant ({stored!r}): {fix}")
  if variant is not None and variant != stored:
    raise DataError(f"EfficientNet weights {path} are {stored}'s, not {variant}'s: {fix.replace(str(path), 'FILE')}")
  fc = arrays.get("params/fc/kernel")
  if fc is None or fc.ndim != 2:
    raise DataError(f"EfficientNet weights {path}: params/fc/kernel is missing: {fix}")
  abstract = abstract_variables(stored, int(fc.shape[1]))
  shapes = {"/".join(map(str, (collection,) + tuple(k.key for k in keys))): leaf.shape
            for collection, tree in abstract.items()
            for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  flat = npz.expected(arrays, shapes, path, "EfficientNet weights", fix)
  out: dict = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return out


def with_fresh_head(variables: dict, num_classes: int, key: jax.Array) -> dict:
  """`variables` with `fc` replaced by a torch-default-initialised Linear to `num_classes`.

  What `EfficientNet.from_pretrained(variant, num_classes=n)` does for n != 1000: ImageNet weights but a fresh fc.
  """
  in_features = variables["params"]["fc"]["kernel"].shape[0]
  dense = nn.Dense(num_classes, kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(in_features))
  fc = dense.init(key, jnp.zeros((1, in_features)))["params"]
  return {**variables, "params": {**variables["params"], "fc": fc}}
