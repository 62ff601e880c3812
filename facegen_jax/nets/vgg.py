"""VGG19 features up to relu5_1 and SPADE's perceptual loss (NVlabs/SPADE `VGG19` and `VGGLoss`); VGG16 to
relu5_3 and MUNIT's domain-invariant perceptual loss (NVlabs/MUNIT `Vgg16` and `compute_vgg_loss`).

SPADE takes torchvision's ImageNet-pretrained `vgg19().features` and cuts it into five slices ending at relu1_1,
relu2_1, relu3_1, relu4_1 and relu5_1 (indices 1, 6, 11, 20 and 29); `VGGLoss(x, y)` is
sum_i w_i * L1(f_i(x), f_i(y).detach()) with w = (1/32, 1/16, 1/8, 1/4, 1), each L1 a mean over all elements.

Input scaling: SPADE feeds the generator's tanh output and the real image, both in [-1, 1] (its datasets use
`Normalize((0.5,) * 3, (0.5,) * 3)`), straight into VGG, without the ImageNet mean/std normalisation the
weights were trained with. `perceptual_loss` does the same, so its values and gradients match the original's.

Layout NHWC. Parameters are named after the layers: `conv{block}_{i}` holding `kernel` (3, 3, in, out) and
`bias`; `TORCHVISION_INDICES` maps each to its index in torchvision's `features` (`conv1_1` <- `features.0`).
Weights come from `python -m facegen_jax.convert vgg19 --from vgg19-dcbb9e9d.pth --out vgg19.npz`, whose .npz
keys are `conv1_1/kernel`, `conv1_1/bias`, ...

MUNIT's VGG16 (networks.py `Vgg16`, from fast-neural-style): the 13 convolutions of VGG16 with a max-pool after
blocks 1-3 only (none between conv4_3 and conv5_1, unlike torchvision's and Caffe's VGG16), returning relu5_3
at 1/8 of the input size. `munit_loss(params, img, target)` is the trainer's compute_vgg_loss:
mean((IN(f(P(img))) - IN(f(P(target))))^2), IN an InstanceNorm2d(512, affine=False) (eps 1e-5, biased variance)
and P `vgg_preprocess` (RGB -> BGR, [-1, 1] -> [0, 255], minus the BGR means 103.939, 116.779, 123.680).
`python -m facegen_jax.convert vgg16` writes the convolutions and P's per-channel `input/mean` and `input/scale`
(BGR order; scale 1 for MUNIT's `models/vgg16.weight`); for torchvision's `vgg16-397923af.pth` they are the
ImageNet mean and std of the [0, 1] RGB input that file was trained on, with conv1_1's input channels reversed,
so that either file sees the input it was trained with.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import npz


def _layer_names(blocks) -> tuple[str, ...]:
  return tuple(f"conv{b}_{i}" for b, (_, n) in enumerate(blocks, start=1) for i in range(1, n + 1))


def _torchvision_indices(blocks) -> dict[str, int]:
  """{conv{b}_{i}: its index in torchvision's `features`}: a Conv2d and a ReLU per conv, a MaxPool per block."""
  indices, index = {}, 0
  for block, (_, convs) in enumerate(blocks, start=1):
    for i in range(1, convs + 1):
      indices[f"conv{block}_{i}"] = index
      index += 2
    index += 1
  return indices


# (channels, convolutions) per block, as far as relu5_1: torchvision's configuration "E" without the last
# three convolutions and the last pool, which SPADE's slices never reach.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 1))
LAYER_NAMES = _layer_names(BLOCKS)
TORCHVISION_INDICES = _torchvision_indices(BLOCKS)  # conv1_1 0, conv1_2 2, conv2_1 5, ..., conv5_1 28
FEATURE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LOSS_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
CONVERT_COMMAND = "python -m facegen_jax.convert vgg19 --from vgg19-dcbb9e9d.pth --out {path}"

# MUNIT networks.py Vgg16: torchvision's configuration "D" (all 13 convolutions), pooled before blocks 2-4
# only (its quirk, copied: no pool before conv5_1).
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_POOLED = (2, 3, 4)
VGG16_LAYER_NAMES = _layer_names(VGG16_BLOCKS)
VGG16_TORCHVISION_INDICES = _torchvision_indices(VGG16_BLOCKS)  # conv4_1 17, conv5_1 24, conv5_3 28
MUNIT_BGR_MEAN = (103.939, 116.779, 123.680)  # MUNIT utils.py vgg_preprocess
VGG16_CONVERT_COMMAND = "python -m facegen_jax.convert vgg16 --from vgg16.weight --out {path}"
INPUT = "input"  # the VGG16 parameters' preprocessing entry: {"mean": (3,), "scale": (3,)}, BGR order


def _conv_blocks(x: jax.Array, blocks, pooled, tap) -> list[jax.Array]:
  """The conv + ReLU stack of `blocks` (a 2x2 max-pool before each block in `pooled`); the activations after the
  convs for which tap(block, i) holds, shallowest first. Called inside a compact module: the convs are its own."""
  features = []
  for block, (channels, convs) in enumerate(blocks, start=1):
    if block in pooled:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))  # MaxPool2d(2, 2): floors odd sizes, as 'VALID' does
    for i in range(1, convs + 1):
      x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{block}_{i}")(x)
      x = nn.relu(x)
      if tap(block, i):
        features.append(x)
  return features


class VGG19Features(nn.Module):
  """torchvision's `vgg19().features[:30]`: the five relu{b}_1 activations, as a list, shallowest first."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    return _conv_blocks(x, BLOCKS, range(2, len(BLOCKS) + 1), lambda block, i: i == 1)


class VGG16Features(nn.Module):
  """MUNIT's `Vgg16`: relu5_3 of an NHWC input already preprocessed (`munit_preprocess`), at 1/8 of its size."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last = (len(VGG16_BLOCKS), VGG16_BLOCKS[-1][1])
    [relu5_3] = _conv_blocks(x, VGG16_BLOCKS, VGG16_POOLED, lambda block, i: (block, i) == last)
    return relu5_3


def expected_shapes(blocks=BLOCKS) -> dict[str, dict[str, tuple[int, ...]]]:
  """{layer: {"kernel": (3, 3, in, out), "bias": (out,)}} for every layer of `blocks` (default VGG19's to
  conv5_1)."""
  shapes, channels_in = {}, 3
  for block, (channels, convs) in enumerate(blocks, start=1):
    for i in range(1, convs + 1):
      shapes[f"conv{block}_{i}"] = {"kernel": (3, 3, channels_in, channels), "bias": (channels,)}
      channels_in = channels
  return shapes


def vgg16_expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """The VGG16 parameters `load_vgg16_params` returns: the 13 convolutions and the `input` preprocessing."""
  return {**expected_shapes(VGG16_BLOCKS), INPUT: {"mean": (3,), "scale": (3,)}}


def perceptual_loss(params, x: jax.Array, y: jax.Array) -> jax.Array:
  """SPADE's VGGLoss: sum_i w_i * mean|f_i(x) - f_i(y)|, no gradient through y's features.

  Args:
    params: VGG19Features parameters, as `load_params` returns them (a {"params": ...} wrapper also works).
    x, y: NHWC images in [-1, 1] (fed to VGG as they are, as SPADE does), typically fake and real.
  """
  params = params.get("params", params)
  # One VGG call on x and y stacked: the layers act per example, and it halves the dispatches.
  features = VGG19Features().apply({"params": params}, jnp.concatenate([x, y], axis=0))
  loss = 0.0
  for weight, f in zip(LOSS_WEIGHTS, features):
    fx, fy = jnp.split(f, 2, axis=0)
    loss += weight * jnp.mean(jnp.abs(fx - jax.lax.stop_gradient(fy)))
  return loss


def munit_preprocess(x: jax.Array, input_params) -> jax.Array:
  """MUNIT's vgg_preprocess: NHWC RGB in [-1, 1] -> BGR in [0, 255] minus `mean`, times `scale` (both BGR)."""
  bgr = (x[..., ::-1] + 1) * 127.5
  return (bgr - input_params["mean"]) * input_params["scale"]


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """torch's InstanceNorm2d(affine=False) on NHWC: per image and channel over H, W, biased variance."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def munit_features(params, x: jax.Array, compute=lambda tree: tree) -> jax.Array:
  """IN(relu5_3(vgg_preprocess(x))) for NHWC RGB images in [-1, 1]; params as `load_vgg16_params` returns them.

  `compute` casts the convolutions' parameters and input (a family's mixed precision); the preprocessing (means
  near 100, which bfloat16 would round by ~0.5) and the instance norm stay in float32 or wider.
  """
  params = dict(params.get("params", params))
  input_params = params.pop(INPUT)
  features = VGG16Features().apply({"params": compute(params)}, compute(munit_preprocess(x, input_params)))
  return instance_norm(features.astype(jnp.promote_types(features.dtype, jnp.float32)))


def munit_loss(params, img: jax.Array, target: jax.Array) -> jax.Array:
  """MUNIT's compute_vgg_loss(vgg, img, target): mean squared difference of the instance-normed relu5_3 features.

  The target's features are not detached, as in the original (its targets are real images).
  """
  # One VGG call on both: every layer and the instance norm act per image.
  features = munit_features(params, jnp.concatenate([img, target], axis=0))
  f_img, f_target = jnp.split(features, 2, axis=0)
  return jnp.mean(jnp.square(f_img - f_target))


def _load(path, what: str, fix: str, expected) -> dict[str, dict[str, np.ndarray]]:
  shapes = {f"{layer}/{kind}": shape for layer, kinds in expected.items() for kind, shape in kinds.items()}
  flat = npz.expected(npz.read(path, what, fix), shapes, path, what, fix)
  params = {}
  for name, value in flat.items():
    layer, kind = name.split("/")
    params.setdefault(layer, {})[kind] = value
  return params


def load_params(path) -> dict[str, dict[str, np.ndarray]]:
  """The .npz written by `python -m facegen_jax.convert vgg19` as VGG19Features parameters (float32 numpy)."""
  path = os.fspath(path)
  fix = f"convert torchvision's VGG19 weights with `{CONVERT_COMMAND.format(path=path)}`"
  return _load(path, "VGG19 weights", fix, expected_shapes())


def load_vgg16_params(path) -> dict[str, dict[str, np.ndarray]]:
  """The .npz written by `python -m facegen_jax.convert vgg16`: VGG16Features parameters plus `input`."""
  path = os.fspath(path)
  fix = (f"convert MUNIT's models/vgg16.weight (or torchvision's vgg16-397923af.pth) with "
         f"`{VGG16_CONVERT_COMMAND.format(path=path)}`")
  return _load(path, "VGG16 weights", fix, vgg16_expected_shapes())
