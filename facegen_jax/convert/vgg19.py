"""torchvision VGG19 weights (`vgg19-dcbb9e9d.pth`) -> the .npz `facegen_jax.nets.vgg.load_params` reads.

Reads torchvision's `vgg19` state_dict (`features.{index}.weight` / `.bias`; the classifier is ignored, as are
convolutions past conv5_1, which SPADE's VGG loss never reaches) with `torch_reader`, so torch is not needed.
Conv weights go from torch's OIHW to flax's HWIO (`torch_map`, with `conv{b}_{i}` named `features.{index}`);
every array is stored as float32 under `conv{b}_{i}/kernel` and `conv{b}_{i}/bias`. The file torchvision
downloads is in torch's legacy (pre-1.6) format, which `torch_reader` reads too. A state_dict of
`vgg19().features` alone (keys `0.weight`, ...) is accepted as well.
"""

from __future__ import annotations

import jax
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
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
  table = torch_map.KeyTable(modules={layer: f"{prefix}{index}" for layer, index in vgg.TORCHVISION_INDICES.items()})
  abstract = {"params": {layer: {kind: jax.ShapeDtypeStruct(shape, np.float32) for kind, shape in kinds.items()}
                         for layer, kinds in vgg.expected_shapes().items()}}
  expected = torch_map.expected_keys(abstract, table)
  mismatch = torch_map.compare(state_dict, expected)  # Not strict: the classifier and conv5_2 on are not used.
  bad = {expected[key].path[0] for key in mismatch.missing + [key for key, _, _ in mismatch.wrong]}
  if bad:
    layer = next(layer for layer in vgg.LAYER_NAMES if layer in bad)
    kh, kw, cin, cout = vgg.expected_shapes()[layer]["kernel"]
    raise DataError(
        f"{source}: features.{vgg.TORCHVISION_INDICES[layer]} ({layer}) is missing or not a {cin}->{cout} 3x3 "
        "convolution; expected torchvision's vgg19 state_dict (not vgg19_bn, whose indices differ), e.g. "
        "vgg19-dcbb9e9d.pth")
  params = torch_map.convert_variables(state_dict, expected, abstract)["params"]
  return {f"{layer}/{kind}": params[layer][kind] for layer in vgg.LAYER_NAMES for kind in ("kernel", "bias")}


def convert(source, out) -> None:
  arrays = convert_state_dict(torch_reader.load_state_dict(source), source)
  npz.write(out, arrays)
