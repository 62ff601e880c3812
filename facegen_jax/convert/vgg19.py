"""torchvision VGG19 weights (`vgg19-dcbb9e9d.pth`) -> the .npz `facegen_jax.nets.vgg.load_params` reads.

Reads torchvision's `vgg19` state_dict (`features.{index}.weight` / `.bias`; the classifier is ignored, as are
convolutions past conv5_1, which SPADE's VGG loss never reaches) with `torch_reader`, so torch is not needed.
Conv weights go from torch's OIHW to flax's HWIO; every array is stored as float32 under `conv{b}_{i}/kernel`
and `conv{b}_{i}/bias`. The file torchvision downloads is in torch's legacy (pre-1.6) format, which
`torch_reader` reads too. A state_dict of `vgg19().features` alone (keys `0.weight`, ...) is accepted as well.
"""

from __future__ import annotations


import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_reader
from facegen_jax.errors import DataError
from facegen_jax.nets import vgg


def add_arguments(parser) -> None:
  parser.add_argument("--from", dest="source", required=True,
                      help="torchvision's VGG19 state_dict, e.g. vgg19-dcbb9e9d.pth")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. vgg19.npz")


def run(args) -> None:
  convert(args.source, args.out)
  print(f"wrote {args.out}: VGG19 features up to conv5_1 ({len(vgg.LAYER_NAMES)} convolutions)")


def convert_state_dict(state_dict, source="the state_dict") -> dict[str, np.ndarray]:
  """{"conv1_1/kernel": HWIO float32, "conv1_1/bias": ..., ...} from torchvision's `features.N.*` entries."""
  prefix = "features." if "features.0.weight" in state_dict else ""
  arrays = {}
  for layer, shapes in vgg.expected_shapes().items():
    index = vgg.TORCHVISION_INDICES[layer]
    weight = state_dict.get(f"{prefix}{index}.weight")
    bias = state_dict.get(f"{prefix}{index}.bias")
    kh, kw, cin, cout = shapes["kernel"]
    if weight is None or bias is None or weight.shape != (cout, cin, kh, kw) or bias.shape != (cout,):
      raise DataError(
          f"{source}: features.{index} ({layer}) is missing or not a {cin}->{cout} 3x3 convolution; expected "
          "torchvision's vgg19 state_dict (not vgg19_bn, whose indices differ), e.g. vgg19-dcbb9e9d.pth")
    arrays[f"{layer}/kernel"] = np.asarray(weight, np.float32).transpose(2, 3, 1, 0)
    arrays[f"{layer}/bias"] = np.asarray(bias, np.float32)
  return arrays


def convert(source, out) -> None:
  arrays = convert_state_dict(torch_reader.load_state_dict(source), source)
  npz.write(out, arrays)
