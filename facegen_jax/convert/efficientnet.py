"""efficientnet_pytorch's EfficientNet weights (efficientnet-bN-XXXX.pth) -> the .npz `nets.efficientnet` loads.

  python -m facegen_jax.convert efficientnet --checkpoint efficientnet-b5-b6417697.pth --out efficientnet-b5.npz

The file is an `EfficientNet` state_dict (`_conv_stem.weight`, `_bn0.*`, `_blocks.N._expand_conv.weight`,
`._bn0`, `._depthwise_conv`, `._bn1`, `._se_reduce`, `._se_expand` (with biases), `._project_conv`, `._bn2`,
`_conv_head.weight`, `_bn1.*`, `_fc.*`), read by `torch_reader` (torch is not needed). The variant is the one
whose stem width, head width and block count the shapes show (or `--variant`, checked against them); the class
count is `_fc`'s. Every key must be used and every variable filled, or a one-line error names the keys. The
.npz holds `params/...` and `batch_stats/...` arrays (flax's names: torch's without the underscore, BatchNorm's
weight/running_mean/running_var as scale/mean/var) and the variant's name under `variant`.

`variables_from_state_dict` is the conversion alone, for checkpoints holding an EfficientNet under a prefix
(SSuperGAN's `embedder.model.`).
"""

from __future__ import annotations

import re

from flax import traverse_util
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import efficientnet

_HINT = ("Was it saved from efficientnet_pytorch's EfficientNet (lukemelas/EfficientNet-PyTorch 0.7.1, "
         "e.g. efficientnet-b5-b6417697.pth)?")
# blocks_12/depthwise_conv/kernel -> _blocks.12._depthwise_conv.weight; conv_stem/kernel -> _conv_stem.weight.
KEYS = torch_map.KeyTable(modules={r"blocks_(\d+)": r"_blocks.\1", r"(.+)": r"_\1"})
_BLOCK = re.compile(r"_blocks\.(\d+)\.")


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", required=True,
                      help="an efficientnet_pytorch state_dict, e.g. efficientnet-b5-b6417697.pth")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. efficientnet-b5.npz")
  parser.add_argument("--variant", choices=list(efficientnet.VARIANTS), default=None,
                      help="the file's variant (default: read from its shapes)")


def run(args) -> None:
  variant, num_classes = convert(args.checkpoint, args.out, args.variant)
  print(f"wrote {args.out}: {variant} ({num_classes} classes)")


def _shape(state_dict, key):
  value = state_dict.get(key)
  return None if value is None else tuple(value.shape)


def describe(state_dict) -> tuple[int | None, int | None, int]:
  """(stem width, head width, number of blocks) of an unprefixed EfficientNet state_dict."""
  stem, head = _shape(state_dict, "_conv_stem.weight"), _shape(state_dict, "_conv_head.weight")
  blocks = {int(match.group(1)) for key in state_dict if (match := _BLOCK.match(key))}
  return (stem[0] if stem else None), (head[0] if head else None), len(blocks)


def _signature(variant: str) -> tuple[int, int, int]:
  stem = efficientnet.round_filters(32, efficientnet.VARIANTS[variant].width)
  return stem, efficientnet.head_filters(variant), len(efficientnet.block_specs(variant))


def detect_variant(state_dict, variant: str | None = None, source="the state_dict") -> str:
  """The variant the (unprefixed) state_dict's shapes describe, checked against `variant` if given."""
  found = describe(state_dict)
  matches = [name for name in efficientnet.VARIANTS if _signature(name) == found]
  stem, head, blocks = found
  shows = f"stem {stem}, head {head}, {blocks} blocks"
  if variant is not None:
    if variant not in efficientnet.VARIANTS:
      raise UserError(f"unknown EfficientNet variant {variant!r}; one of {', '.join(efficientnet.VARIANTS)}")
    if variant not in matches:
      other = f"{matches[0]}'s" if matches else "no EfficientNet variant's"
      want = "stem {}, head {}, {} blocks".format(*_signature(variant))
      raise UserError(f"{source} holds {other} shapes ({shows}), not {variant}'s ({want}). {_HINT}")
    return variant
  if not matches:
    raise UserError(f"{source} is not an EfficientNet B0-B7 state_dict ({shows}). {_HINT}")
  return matches[0]


def variables_from_state_dict(state_dict, variant: str | None = None, *, prefix: str = "",
                              source="the state_dict") -> dict:
  """{"params", "batch_stats"} (numpy float32) from the keys of `state_dict` under `prefix` (e.g.
  "embedder.model."); keys outside the prefix are ignored. `variant` None: read from the shapes."""
  inner = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
  where = f"{source} (under {prefix!r})" if prefix else source
  if not inner:
    raise UserError(f"{where} holds no EfficientNet keys. {_HINT}")
  variant = detect_variant(inner, variant, where)
  fc = _shape(inner, "_fc.weight")
  if fc is None or len(fc) != 2:
    raise UserError(f"{where} has no _fc.weight (the final Linear); {_HINT}")
  abstract = efficientnet.abstract_variables(variant, fc[0])
  variables = torch_map.load_variables(inner, abstract, KEYS, where, _HINT)
  return variables


def to_arrays(variables: dict, variant: str) -> dict[str, np.ndarray]:
  """The flat arrays of the .npz: `collection/module/.../leaf` -> float32, and the variant's name."""
  flat = traverse_util.flatten_dict(variables, sep="/")
  return {"variant": np.array(variant), **{name: np.asarray(value, np.float32) for name, value in flat.items()}}


def convert(checkpoint, out, variant: str | None = None) -> tuple[str, int]:
  """Writes the .npz `out`; returns (variant, number of classes)."""
  state_dict = torch_map.read_state_dict(checkpoint, "efficientnet_pytorch state_dict")
  variant = detect_variant(state_dict, variant, checkpoint)
  variables = variables_from_state_dict(state_dict, variant, source=checkpoint)
  npz.write(out, to_arrays(variables, variant))
  return variant, int(variables["params"]["fc"]["kernel"].shape[1])
