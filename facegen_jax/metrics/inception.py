"""InceptionV3 for FID: pytorch-fid's network (the TF `inception-2015-12-05` graph) up to the 2048-d pool3.

Layout follows torchvision's `Inception3` with pytorch-fid's FID patches (mseitzer/pytorch-fid `inception.py`):
Mixed_5b-5d are `FIDInceptionA` and Mixed_6b-6e `FIDInceptionC` (their branch average pool ignores the
padding), Mixed_7b is `FIDInceptionE_1` (likewise) and Mixed_7c `FIDInceptionE_2` (a 3x3 max pool in the pool
branch); Mixed_6a/7a are torchvision's InceptionB/D. Every convolution is bias-free, then BatchNorm (eps 1e-3,
running statistics), then ReLU. `features` takes NHWC images in [0, 1], resizes them to 299x299 bilinearly as
`F.interpolate(mode="bilinear", align_corners=False)` does (no antialiasing, also when shrinking), maps them
to [-1, 1] by 2x - 1 and returns the global average of Mixed_7c: (N, 2048) float32.

Variables mirror pytorch-fid's state_dict key by key. A torch key `<path>.conv.weight` is
`params/<path>/conv/kernel` (OIHW -> HWIO), `<path>.bn.weight` is `params/<path>/bn/scale`, `<path>.bn.bias`
is `params/<path>/bn/bias`, `<path>.bn.running_mean` / `.running_var` are `batch_stats/<path>/bn/mean` /
`var`, with `<path>` such as `Mixed_5b.branch3x3dbl_2` -> `Mixed_5b/branch3x3dbl_2`. `fc.*` (the 1008-way
classifier) and `num_batches_tracked` are not used. The .npz `load_params` reads stores each variable under
its slash-joined path, e.g. `params/Conv2d_1a_3x3/conv/kernel`; write it with
`python -m facegen_jax.convert inception --from WEIGHTS --out inception.npz`.

Convolutions are flax's `nn.Conv` followed by `nn.BatchNorm`, as torch computes them (folding BatchNorm into
the kernels measured no faster on XLA:CPU). On CPU, compile with `compile.CPU_COMPILER_OPTIONS` (Eigen
convolutions): 2-2.5x faster than XLA's default here.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from facegen_jax import npz

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3
CONVERT_COMMAND = "python -m facegen_jax.convert inception --from WEIGHTS --out {path}"


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's 1-D linear interpolation with align_corners=False (no antialiasing)."""
  # torch's CPU kernel, in float32 as it computes it: src = (dst + 0.5) * (in / out) - 0.5, clamped at 0;
  # the upper neighbour is clamped to the last pixel.
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(np.float32), 0, 1)
  matrix = np.zeros((out_size, in_size), np.float32)
  np.add.at(matrix, (np.arange(out_size), lo), np.float32(1) - frac)
  np.add.at(matrix, (np.arange(out_size), hi), frac)
  return matrix


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """NHWC -> N,size,size,C like torch's bilinear `F.interpolate(align_corners=False)`, as two matmuls."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  rows, cols = jnp.asarray(resize_matrix(h, size)), jnp.asarray(resize_matrix(w, size))
  precision = lax.Precision.HIGHEST
  images = jnp.einsum("oh,nhwc->nowc", rows, images, precision=precision)
  return jnp.einsum("pw,nowc->nopc", cols, images, precision=precision)


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: bias-free conv, BatchNorm(eps=1e-3) with running statistics, ReLU."""

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, (self.strides, self.strides), ((ph, ph), (pw, pw)),
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # pytorch-fid's patch: TF's average pool divides by the number of unpadded inputs (count_include_pad=False).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """Mixed_5b-5d (pytorch-fid's FIDInceptionA)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    branch5x5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(dbl)
    pool = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, dbl, pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
    dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(dbl)
    return jnp.concatenate([branch3x3, dbl, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e (pytorch-fid's FIDInceptionC): factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    dbl = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    pool = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
    b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`pool="avg"`, FIDInceptionE_1) and Mixed_7c (`pool="max"`, FIDInceptionE_2)."""

  pool: str

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    b3 = [ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)]
    dbl = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = [ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
           ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)]
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    else:  # pytorch-fid's FIDInceptionE_2: the TF graph max-pools here (padding acts as -inf)
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    pool = ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, *b3, *dbl, pool], axis=-1)


class InceptionV3(nn.Module):
  """pool3 features of pytorch-fid's `InceptionV3()` (output block 3) for NHWC images in [0, 1]."""

  @nn.compact
  def __call__(self, images):
    x = resize_bilinear(images.astype(jnp.float32)) * 2.0 - 1.0
    x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1): the 8x8 map of a 299 input


@functools.cache
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{"params/Conv2d_1a_3x3/conv/kernel": (3, 3, 3, 32), ...}: every variable's path and shape."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def flatten(variables) -> dict[str, np.ndarray]:
  """{"params": {...}, "batch_stats": {...}} -> {"params/Mixed_5b/branch1x1/conv/kernel": array, ...}."""
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  variables = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = variables
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return variables


def load_params(path) -> dict:
  """The .npz of `python -m facegen_jax.convert inception` as InceptionV3 variables (float32 numpy).

  Returns {"params": ..., "batch_stats": ...}, ready for `InceptionV3().apply(variables, images)`.
  """
  path = os.fspath(path)
  fix = f"convert the FID Inception weights with `{CONVERT_COMMAND.format(path=path)}`"
  arrays = npz.read(path, "Inception weights", fix)
  return unflatten(npz.expected(arrays, expected_shapes(), path, "Inception weights", fix))
