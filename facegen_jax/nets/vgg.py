"""VGG19 features up to relu5_1 and SPADE's perceptual loss (NVlabs/SPADE `VGG19` and `VGGLoss`).

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
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import npz

# (channels, convolutions) per block, as far as relu5_1: torchvision's configuration "E" without the last
# three convolutions and the last pool, which SPADE's slices never reach.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 1))
LAYER_NAMES = tuple(f"conv{b}_{i}" for b, (_, n) in enumerate(BLOCKS, start=1) for i in range(1, n + 1))
TORCHVISION_INDICES = dict(zip(LAYER_NAMES, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)))
FEATURE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LOSS_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
CONVERT_COMMAND = "python -m facegen_jax.convert vgg19 --from vgg19-dcbb9e9d.pth --out {path}"


class VGG19Features(nn.Module):
  """torchvision's `vgg19().features[:30]`: the five relu{b}_1 activations, as a list, shallowest first."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = []
    for block, (channels, convs) in enumerate(BLOCKS, start=1):
      if block > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # MaxPool2d(2, 2): floors odd sizes, as 'VALID' does
      for i in range(1, convs + 1):
        x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{block}_{i}")(x)
        x = nn.relu(x)
        if i == 1:
          features.append(x)
    return features


def expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """{layer: {"kernel": (3, 3, in, out), "bias": (out,)}} for every layer up to conv5_1."""
  shapes, channels_in = {}, 3
  for block, (channels, convs) in enumerate(BLOCKS, start=1):
    for i in range(1, convs + 1):
      shapes[f"conv{block}_{i}"] = {"kernel": (3, 3, channels_in, channels), "bias": (channels,)}
      channels_in = channels
  return shapes


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


def load_params(path) -> dict[str, dict[str, np.ndarray]]:
  """The .npz written by `python -m facegen_jax.convert vgg19` as VGG19Features parameters (float32 numpy)."""
  path = os.fspath(path)
  fix = f"convert torchvision's VGG19 weights with `{CONVERT_COMMAND.format(path=path)}`"
  shapes = {f"{layer}/{kind}": shape for layer, kinds in expected_shapes().items() for kind, shape in kinds.items()}
  flat = npz.expected(npz.read(path, "VGG19 weights", fix), shapes, path, "VGG19 weights", fix)
  params = {}
  for name, value in flat.items():
    layer, kind = name.split("/")
    params.setdefault(layer, {})[kind] = value
  return params
