"""sphere20a checkpoint (clcarwin/sphereface_pytorch, SATNet's fine-tune) -> the .npz `nets.sphereface` loads.

  python -m facegen_jax.convert sphereface --checkpoint sphere20a_20171020.pth --out sphere20a.npz

The file is `torch.save(net.state_dict())` of net_sphere.py's sphere20a (clcarwin's train.py and SATNet's
codes/sphereface/transfer_learning.py both write that; DataParallel's `module.` prefix is dropped), read by
`torch_reader` (torch is not needed). Keys: conv{s}_{i}.weight/.bias, relu{s}_{i}.weight (the PReLU slopes),
fc5.weight/.bias, fc6.weight (AngleLinear, (512, classes), kept as it is). The stage widths, the embedding size
and the class count come from the shapes (a file without fc6 converts without it); every key must be used and
every parameter filled, or a one-line error names the keys. fc5's weight is only transposed: the network
flattens its last map in torch's (C, H, W) order.
"""

from __future__ import annotations

from flax import traverse_util
import jax
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import sphereface

_HINT = ("Was it saved by clcarwin/sphereface_pytorch's or SATNet's sphere20a (torch.save(net.state_dict()), "
         "e.g. sphere20a_20171020.pth or SATNet's 00011000.pth)?")
KEYS = torch_map.KeyTable()  # flax names are torch's: conv1_1/kernel -> conv1_1.weight, relu1_1/weight -> itself


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", required=True,
                      help="sphere20a's state_dict, e.g. sphere20a_20171020.pth or SATNet's sphereface 00011000.pth")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. sphere20a.npz")


def run(args) -> None:
  model = convert(args.checkpoint, args.out)
  classes = f"fc6 with {model.num_classes} classes" if model.num_classes else "no fc6"
  print(f"wrote {args.out}: sphere20a (widths {', '.join(map(str, model.widths))}, embedding "
        f"{model.embedding_dim}, {classes}); for SATNet's identity loss: --config.identity.weights={args.out}")


def detect(state_dict, source) -> sphereface.Sphere20a:
  """The Sphere20a the state_dict's shapes describe, or a UserError if it is not a sphere20a's."""
  firsts = [state_dict.get(f"conv{stage}_1.weight") for stage in range(1, len(sphereface.UNITS) + 1)]
  fc5 = state_dict.get("fc5.weight")
  if any(w is None or w.ndim != 4 for w in firsts) or fc5 is None or fc5.ndim != 2:
    found = ", ".join(sorted(state_dict)[:6]) + (", ..." if len(state_dict) > 6 else "")
    raise UserError(f"{source} is not a sphere20a state_dict (no conv1_1..conv4_1 and fc5; it holds {found}). "
                    f"{_HINT}")
  fc6 = state_dict.get("fc6.weight")
  num_classes = int(fc6.shape[-1]) if fc6 is not None and fc6.ndim == 2 else 0
  return sphereface.Sphere20a(num_classes, tuple(int(w.shape[0]) for w in firsts), int(fc5.shape[0]))


def convert_state_dict(state_dict, source="the state_dict") -> dict[str, np.ndarray]:
  """{"conv1_1/kernel": HWIO float32, ..., "fc5/kernel": (21504, 512), "fc6/weight": (512, classes)}."""
  model = detect(state_dict, source)
  dummy = jax.ShapeDtypeStruct((1,) + sphereface.INPUT_HW + (3,), np.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), dummy)
  variables = torch_map.load_variables(state_dict, {"params": abstract["params"]}, KEYS, source, _HINT)
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  return {name: np.asarray(value, np.float32) for name, value in flat.items()}


def convert(checkpoint, out) -> sphereface.Sphere20a:
  """Writes the .npz `out`; returns the model it holds."""
  state_dict = torch_map.read_state_dict(checkpoint, "sphere20a state_dict")
  arrays = convert_state_dict(state_dict, checkpoint)
  npz.write(out, arrays)
  return detect(state_dict, checkpoint)
