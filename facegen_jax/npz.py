"""The .npz files facegen_jax reads and writes (converted weights, FID statistics): checked reads, atomic writes.

A user's file is read with `read` (missing or unreadable: one DataError naming the file and the fix) and, for
weights, narrowed to the arrays a network needs with `expected` (each present with its shape, as float32).
`write` goes to a temporary file beside the target and renames it, so an interrupted write never leaves a
truncated file that a later run would take for a complete one.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from typing import Mapping

from etils import epath
import numpy as np

from facegen_jax.errors import DataError


def read(path, what: str, fix: str = "") -> dict[str, np.ndarray]:
  """Every array in the .npz at `path`; `what` names the file in errors ("VGG19 weights"), `fix` ends them."""
  path = os.fspath(path)
  suffix = f": {fix}" if fix else ""
  remote = "://" in path  # gs:// and other etils/epath filesystems, as Orbax and TFDS read them
  if not (epath.Path(path).is_file() if remote else os.path.isfile(path)):
    raise DataError(f"{what} {path} not found{suffix}")
  try:
    with np.load(io.BytesIO(epath.Path(path).read_bytes()) if remote else path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{what} {path} is not a readable .npz ({e}){suffix}") from e


def expected(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], path, what: str,
             fix: str = "") -> dict[str, np.ndarray]:
  """{name: arrays[name] as float32} for every name in `shapes`, each checked to have its shape."""
  suffix = f": {fix}" if fix else ""
  out = {}
  for name, shape in shapes.items():
    value = arrays.get(name)
    if value is None or value.shape != tuple(shape):
      found = "missing" if value is None else f"of shape {value.shape}"
      raise DataError(f"{what} {os.fspath(path)}: {name} is {found}, expected shape {tuple(shape)}{suffix}")
    out[name] = value.astype(np.float32)
  return out


def write(path, arrays: Mapping[str, np.ndarray]) -> None:
  """np.savez(path, **arrays), complete or not at all."""
  path = os.fspath(path)
  if "://" in path:  # An object store writes an object whole or not at all.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    epath.Path(path).write_bytes(buffer.getvalue())
    return
  fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
