"""VGG16 weights (MUNIT's `models/vgg16.weight` or torchvision's) -> the .npz `nets.vgg.load_vgg16_params` reads.

  python -m facegen_jax.convert vgg16 --from models/vgg16.weight --out vgg16.npz
  python -m facegen_jax.convert vgg16 --from vgg16-397923af.pth --out vgg16.npz

Two layouts, told apart by their keys and read with `torch_reader` (torch is not needed):

  * MUNIT's: `torch.save(Vgg16().state_dict())` as utils.py `load_vgg16` writes it (fast-neural-style's Caffe
    VGG16, converted from its vgg16.t7): keys conv1_1.weight ... conv5_3.bias, all 26 used. The network was
    trained on BGR in [0, 255] minus the BGR means, which is what MUNIT's vgg_preprocess feeds it: the file's
    `input/mean` are those means and `input/scale` is 1.
  * torchvision's `vgg16` state_dict (`features.{index}.*`; the classifier ignored) or `vgg16().features`' alone
    (`{index}.*`). Its weights are torchvision's own (not the ones MUNIT used) and were trained on RGB in [0, 1]
    normalised by the ImageNet mean and std: conv1_1's input channels are reversed so that it reads BGR, and
    `input/mean` = 255 x mean, `input/scale` = 1 / (255 x std) (BGR order) make MUNIT's [0, 255] BGR input
    exactly that normalised input.

Conv weights go from torch's OIHW to flax's HWIO (`torch_map`, strict: every key used, every shape checked, so
vgg16_bn's or vgg19's files are refused by name).
"""

from __future__ import annotations

import jax
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import vgg

TORCHVISION_RGB_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation of [0, 1] RGB
TORCHVISION_RGB_STD = (0.229, 0.224, 0.225)
_HINT = ("Expected MUNIT's models/vgg16.weight (keys conv1_1.weight ... conv5_3.bias) or torchvision's vgg16 "
         "state_dict, e.g. vgg16-397923af.pth (not vgg16_bn or vgg19, whose layers differ).")


def add_arguments(parser) -> None:
  parser.add_argument("--from", dest="source", required=True,
                      help="MUNIT's models/vgg16.weight or torchvision's vgg16-397923af.pth")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. vgg16.npz")


def run(args) -> None:
  layout = convert(args.source, args.out)
  print(f"wrote {args.out}: VGG16 to relu5_3 ({len(vgg.VGG16_LAYER_NAMES)} convolutions, {layout} layout); for "
        f"MUNIT's perceptual loss: --config.vgg.weights={args.out} --config.loss_weights.vgg=1")


def _abstract() -> dict:
  return {"params": {layer: {kind: jax.ShapeDtypeStruct(shape, np.float32) for kind, shape in kinds.items()}
                     for layer, kinds in vgg.expected_shapes(vgg.VGG16_BLOCKS).items()}}


def layout_of(state_dict, source) -> str:
  """"munit" or "torchvision", from the keys; a UserError for anything else."""
  if "conv1_1.weight" in state_dict:
    return "munit"
  if "features.0.weight" in state_dict or "0.weight" in state_dict:
    return "torchvision"
  found = ", ".join(sorted(state_dict)[:6]) + (", ..." if len(state_dict) > 6 else "")
  raise UserError(f"{source} is not a VGG16 state_dict (no conv1_1.weight or features.0.weight; it holds "
                  f"{found}). {_HINT}")


def convert_state_dict(state_dict, source="the state_dict") -> tuple[dict[str, np.ndarray], str]:
  """({"conv1_1/kernel": HWIO float32, ..., "input/mean": (3,), "input/scale": (3,)}, layout)."""
  layout = layout_of(state_dict, source)
  if layout == "munit":
    table = torch_map.KeyTable()  # MUNIT's Vgg16 names its convs as we do
    mean, scale = np.array(vgg.MUNIT_BGR_MEAN), np.ones(3)
  else:
    prefix = "features." if "features.0.weight" in state_dict else ""
    state_dict = {k: v for k, v in state_dict.items() if not (prefix and k.startswith("classifier."))}
    table = torch_map.KeyTable(modules={layer: f"{prefix}{index}"
                                        for layer, index in vgg.VGG16_TORCHVISION_INDICES.items()})
    mean = 255.0 * np.array(TORCHVISION_RGB_MEAN[::-1])
    scale = 1.0 / (255.0 * np.array(TORCHVISION_RGB_STD[::-1]))
  params = torch_map.load_variables(state_dict, _abstract(), table, source, _HINT)["params"]
  if layout == "torchvision":
    params["conv1_1"]["kernel"] = params["conv1_1"]["kernel"][:, :, ::-1, :]  # RGB -> BGR input channels
  arrays = {f"{layer}/{kind}": np.ascontiguousarray(params[layer][kind], np.float32)
            for layer in vgg.VGG16_LAYER_NAMES for kind in ("kernel", "bias")}
  arrays.update({f"{vgg.INPUT}/mean": mean.astype(np.float32), f"{vgg.INPUT}/scale": scale.astype(np.float32)})
  return arrays, layout


def convert(source, out) -> str:
  """Writes the .npz `out`; returns the layout read ("munit" or "torchvision")."""
  arrays, layout = convert_state_dict(torch_map.read_state_dict(source, "VGG16 state_dict"), source)
  npz.write(out, arrays)
  return layout
