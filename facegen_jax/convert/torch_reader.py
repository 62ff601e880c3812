"""Reads PyTorch checkpoint files into numpy arrays without torch and without running code from the file.

A checkpoint is a pickle, and unpickling calls whatever functions the file names, so `torch.load` on an untrusted
file can run arbitrary code. Here the pickle is read by a `pickle.Unpickler` whose `find_class` hands out only a
fixed list of harmless objects (containers, numbers, torch's tensor-rebuilding functions replaced by numpy ones,
storage types and dtypes as plain markers, and for TorchScript a record-only stand-in for `__torch__.*`
classes); any other global refuses the whole file with `UnsafeCheckpointError`, before anything is called.
Each lookup returns a fresh object or an immutable one, so a pickle's BUILD opcodes cannot alter the reader's
state for later files either.

Formats:
  * `torch.save` zip archives (the default since torch 1.6): `<archive>/data.pkl` plus raw storages in
    `<archive>/data/<key>`, byte order from `<archive>/byteorder` (little if absent);
  * legacy `torch.save` files (torch < 1.6, e.g. torchvision's `vgg19-dcbb9e9d.pth`): small pickles of a
    magic number, a protocol version and sys_info, the object's pickle, the list of storage keys, then each
    storage as an int64 element count and its bytes;
  * TorchScript archives (`torch.jit.save`): the same zip layout plus `code/`, the module tree in data.pkl;
  * refused with the fix in the message: torch's pre-0.4 tar format, anything else.

Tensors come back as C-contiguous numpy copies honouring the storage offset, sizes and strides (views of one
storage, transposes, 0-d tensors), in the saved dtype: float16/32/64, bfloat16 and float8 (as `ml_dtypes`
types), (u)int8-64, bool, complex64/128. Quantized, sparse and nested tensors are refused.
"""

from __future__ import annotations

import ast
import collections
import functools
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

from facegen_jax.errors import DataError

# Keys under which training scripts commonly nest a state_dict, tried in this order by `load_state_dict`.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net_G", "netG", "generator", "g_ema")

_RESAVE = "load it with torch and re-save it with a current torch: `sd = torch.load(path); torch.save(sd, path)`"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
  "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
  "UntypedStorage": np.uint8,  # torch >= 2 writes this, with the dtype in `_rebuild_tensor_v3`
}
_TORCH_DTYPES = {
  "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
  "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
  "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
  "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
  "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
  "short": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
  "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}


class UnsafeCheckpointError(DataError):
  """The checkpoint's pickle names a function or class that is not on the whitelist."""


# --- what the pickle builds: markers and deferred tensors, turned into arrays once the storages are located. ---


class _StorageType:
  """Stands for `torch.FloatStorage` etc. in a storage's persistent id."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A saved storage (or, in legacy files, a view of one): which record holds it and which bytes of it."""

  def __init__(self, key: str, dtype: np.dtype, byte_offset: int = 0, nbytes: int | None = None):
    self.key, self.dtype, self.byte_offset, self.nbytes = key, dtype, byte_offset, nbytes


class _TensorRef:
  """A tensor as `_rebuild_tensor*` describes it; the data is read after unpickling (legacy files store it last)."""

  def __init__(self, storage, offset, size, stride, dtype=None, metadata=None):
    if not isinstance(storage, _Storage):
      raise TypeError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    self.storage, self.dtype = storage, np.dtype(storage.dtype if dtype is None else dtype)
    self.offset, self.size, self.stride = int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride)
    self.metadata = dict(metadata or {})
    if len(self.size) != len(self.stride) or self.offset < 0 or min(self.size + self.stride, default=0) < 0:
      raise ValueError(f"invalid tensor geometry: offset {offset}, size {size}, stride {stride}")

  def to_numpy(self, read_storage: Callable[[str], np.ndarray], big_endian: bool = False) -> np.ndarray:
    storage = self.storage
    raw = read_storage(storage.key)
    if storage.nbytes is not None:  # a legacy storage view
      raw = raw[storage.byte_offset : storage.byte_offset + storage.nbytes]
    itemsize = self.dtype.itemsize
    if raw.size % itemsize:
      raise ValueError(f"storage {storage.key!r} has {raw.size} bytes, not a multiple of {self.dtype}'s size")
    if big_endian and itemsize > 1:
      unit = itemsize // 2 if self.dtype.kind == "c" else itemsize  # complex: two floats, swapped apart
      raw = raw.view(f"u{unit}").byteswap().view(np.uint8)
    flat = raw.view(self.dtype)
    if 0 in self.size:
      return np.zeros(self.size, self.dtype)
    # as_strided does no bounds checking: without this a crafted file could read arbitrary process memory.
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if last >= flat.size:
      raise ValueError(f"tensor of size {self.size} reads past the end of storage {storage.key!r}")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.size, tuple(s * itemsize for s in self.stride), writeable=False)
    array = np.array(view, order="C", copy=True)
    if self.metadata.get("conj"):
      array = np.conj(array)
    if self.metadata.get("neg"):
      array = -array
    return array


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
  del requires_grad, backward_hooks
  return _TensorRef(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  del requires_grad, backward_hooks
  return _TensorRef(storage, storage_offset, size, stride, dtype=dtype, metadata=metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state
  return data


_REBUILD_FUNCTIONS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)
_TENSOR_CLASS = object()  # torch.Tensor and nn.Parameter, as the `new_type` of `_rebuild_from_type_v2`


def _rebuild_from_type_v2(func, new_type, args, state):
  """torch's wrapper for tensors carrying Python attributes; only plain tensors and parameters pass."""
  del state
  if not (isinstance(func, _Global) and func.fn in _REBUILD_FUNCTIONS) or new_type is not _TENSOR_CLASS:
    raise TypeError("_rebuild_from_type_v2 of a tensor subclass")
  return func(*args)


class _Global:
  """A whitelisted function as one pickle sees it: a fresh wrapper per lookup, so that a BUILD opcode aimed
  at it (which may set attributes such as `__defaults__`) changes nothing outside the file being read."""

  __slots__ = ("fn",)

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


def _encode_bytes(text, encoding="latin1"):
  # Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`; no other codec is needed or allowed.
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TypeError("_codecs.encode is allowed only as protocol 2's encoding of bytes")
  return text.encode("latin1")


class ScriptObject:
  """A TorchScript object (a `__torch__.*` class) as plain data: its class name and the state pickled for it."""

  qualname = ""
  state: Any = None

  def __init__(self, *args):
    self.args = args

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"ScriptObject({self.qualname})"


def _safe_globals() -> dict[tuple[str, str], Any]:
  """(module, name) -> a function, a builtin type, an immutable marker or a `_StorageType` name (made per use)."""
  table = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_CLASS,
    ("torch.nn.parameter", "Parameter"): _TENSOR_CLASS,
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda *args: ":".join(str(a) for a in args),
    ("_codecs", "encode"): _encode_bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    # TorchScript's typed containers: the data is the list itself.
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, type_str: value,
  }
  for name in _STORAGE_DTYPES:
    table[("torch", name)] = _StorageType
  table[("torch.storage", "UntypedStorage")] = _StorageType
  for name, dtype in _TORCH_DTYPES.items():
    table[("torch", name)] = np.dtype(dtype)
  return table


_SAFE_GLOBALS = _safe_globals()


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only whitelisted globals; storages become `_Storage` records (see `_storage_from_id`)."""

  def __init__(self, file, path, *, script: bool = False, on_storage=None):
    super().__init__(file, encoding="utf-8")
    self._path, self._script, self._on_storage = path, script, on_storage
    self._script_classes = {}

  def find_class(self, module, name):
    module = "builtins" if module == "__builtin__" else module
    value = _SAFE_GLOBALS.get((module, name))
    if value is _StorageType:
      return _StorageType(name)
    if isinstance(value, type) or isinstance(value, np.dtype) or value is _TENSOR_CLASS:
      return value  # builtin types, dtypes and the marker take no attributes
    if value is not None:
      return _Global(value)
    if self._script and (module == "__torch__" or module.startswith("__torch__.")):
      qualname = f"{module}.{name}"
      if qualname not in self._script_classes:
        self._script_classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
      return self._script_classes[qualname]
    raise UnsafeCheckpointError(
        f"{self._path}: refusing to unpickle {module}.{name} (only tensors, containers and numbers are read, and "
        "nothing in a checkpoint is run); if you trust the file, load it with torch and save just its tensors: "
        "`torch.save(model.state_dict(), path)`")

  def persistent_load(self, pid):
    if self._on_storage is None:
      raise pickle.UnpicklingError("unexpected persistent id")
    return self._on_storage(pid)


def _storage_from_id(pid) -> _Storage:
  """('storage', type, key, location, numel[, view_metadata]); the view field exists only in legacy files."""
  if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
          and isinstance(pid[1], _StorageType)):
    raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.100}")
  storage_type, key = pid[1], str(pid[2])
  view = pid[5] if len(pid) == 6 else None
  if view is None:
    return _Storage(key, storage_type.dtype)
  _, offset, numel = view
  itemsize = storage_type.dtype.itemsize
  return _Storage(key, storage_type.dtype, int(offset) * itemsize, int(numel) * itemsize)


def _materialize(obj, read_storage: Callable[[str], np.ndarray], big_endian: bool):
  """`obj` with every `_TensorRef` inside dicts, lists, tuples and ScriptObject states replaced by its array.

  Dicts, lists and ScriptObjects are updated in place, so objects the pickle shares stay shared.
  """
  read_storage = functools.lru_cache(maxsize=None)(read_storage)  # one read per storage, however many views
  seen = set()

  def visit(x):
    if isinstance(x, _TensorRef):
      return x.to_numpy(read_storage, big_endian)
    if isinstance(x, tuple):
      return tuple(visit(v) for v in x)
    if id(x) in seen:
      return x
    if isinstance(x, dict):
      seen.add(id(x))
      for key, value in x.items():
        x[key] = visit(value)
    elif isinstance(x, list):
      seen.add(id(x))
      x[:] = [visit(v) for v in x]
    elif isinstance(x, ScriptObject):
      seen.add(id(x))
      x.state = visit(x.state)
    return x

  return visit(obj)


# --- files ---


def _mapped_bytes(path, offset: int, nbytes: int) -> np.ndarray:
  if nbytes == 0:
    return np.zeros(0, np.uint8)
  if offset + nbytes > os.path.getsize(path):
    raise ValueError(f"a storage of {nbytes} bytes at byte {offset} runs past the end of the file (truncated?)")
  # A memory map: only the bytes of tensors actually read are paged in, and nothing is copied twice.
  return np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,)))


class _ZipCheckpoint:
  """A torch.save or torch.jit.save zip archive."""

  def __init__(self, path, zf: zipfile.ZipFile):
    self.path, self.zf = path, zf
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise DataError(f"{path} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl in it)")
    self.prefix = pickles[0][: -len("data.pkl")]
    names = set(zf.namelist())
    self.is_script = f"{self.prefix}constants.pkl" in names or any(n.startswith(f"{self.prefix}code/") for n in names)
    byteorder = f"{self.prefix}byteorder"
    self.big_endian = byteorder in names and zf.read(byteorder).strip() == b"big"

  def load(self, *, script: bool = False):
    with self.zf.open(f"{self.prefix}data.pkl") as f:
      obj = _RestrictedUnpickler(io.BytesIO(f.read()), self.path, script=script, on_storage=_storage_from_id).load()
    return _materialize(obj, self._read_storage, self.big_endian)

  def _read_storage(self, key: str) -> np.ndarray:
    try:
      info = self.zf.getinfo(f"{self.prefix}data/{key}")
    except KeyError:
      raise ValueError(f"storage record data/{key} is missing") from None
    if info.compress_type == zipfile.ZIP_STORED:  # torch always stores uncompressed
      with open(self.path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
      if header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad zip entry header for data/{key}")
      name_len, extra_len = struct.unpack("<HH", header[26:30])
      return _mapped_bytes(self.path, info.header_offset + 30 + name_len + extra_len, info.file_size)
    return np.frombuffer(self.zf.read(info), np.uint8)


def _load_legacy(path, f) -> Any:
  """torch < 1.6's format: magic, protocol version, sys_info, the object, the storage keys, then the storages."""
  def small_pickle():
    return _RestrictedUnpickler(f, path).load()

  if small_pickle() != _LEGACY_MAGIC or small_pickle() != 1001:
    raise DataError(f"{path} is a pickle but not a torch.save checkpoint (no torch magic number): check the path")
  sys_info = small_pickle()
  big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
  storage_dtypes = {}

  def on_storage(pid):
    storage = _storage_from_id(pid)
    storage_dtypes.setdefault(storage.key, storage.dtype)
    return storage

  obj = _RestrictedUnpickler(f, path, on_storage=on_storage).load()
  keys = small_pickle()
  if not isinstance(keys, list):
    raise ValueError("the legacy storage key list is not a list")
  # Each storage: an int64 element count, then its bytes, in the order of `keys`.
  locations, offset = {}, f.tell()
  for key in keys:
    f.seek(offset)
    count = struct.unpack(">q" if big_endian else "<q", f.read(8))[0]
    nbytes = count * storage_dtypes[str(key)].itemsize
    locations[str(key)] = (offset + 8, nbytes)
    offset += 8 + nbytes

  def read_storage(key):
    if key not in locations:
      raise ValueError(f"storage {key!r} is not in the file")
    return _mapped_bytes(path, *locations[key])

  return _materialize(obj, read_storage, big_endian)


def _load(path, *, script: bool) -> Any:
  """The unpickled object with arrays for tensors; `script` says whether a TorchScript archive is expected."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"checkpoint {path} does not exist (or is not a file): check the path")
  try:
    with open(path, "rb") as f:
      head = f.read(4)
    # Dispatch on the first bytes: torch's zip writer starts with a local file header; legacy files with a
    # pickle's PROTO opcode. (`zipfile.is_zipfile` looks at the end, which raw tensor bytes could fake.)
    if head == b"PK\x03\x04":
      with zipfile.ZipFile(path) as zf:
        checkpoint = _ZipCheckpoint(path, zf)
        if checkpoint.is_script != script:
          raise DataError(f"{path} is a TorchScript archive (torch.jit.save): read it with load_torchscript_params"
                          if checkpoint.is_script else
                          f"{path} is not a TorchScript archive (torch.jit.save): read it with load_state_dict")
        return checkpoint.load(script=script)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
      if script:
        raise DataError(f"{path} is not a TorchScript archive (torch.jit.save): read it with load_state_dict")
      with open(path, "rb") as f:
        return _load_legacy(path, f)
    if tarfile.is_tarfile(path):
      raise DataError(f"{path} is in torch's pre-0.4 tar checkpoint format, which is not read here: {_RESAVE}")
  except DataError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError, KeyError,
          IndexError, AttributeError, struct.error, RecursionError, MemoryError) as e:
    raise DataError(f"{path} is not a readable PyTorch checkpoint (corrupt or unsupported: {e}); "
                    "check the file, or " + _RESAVE) from e
  raise DataError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy "
                  "pickle format): check the path")


def load_checkpoint(path) -> Any:
  """Everything a `torch.save` file holds, with numpy arrays in place of tensors (dicts, lists, numbers...)."""
  return _load(path, script=False)


def _flat_state_dict(obj, prefix="") -> dict[str, np.ndarray] | None:
  """The arrays of a (possibly nested) mapping under dotted names, or None if it holds anything else."""
  if not isinstance(obj, Mapping) or not obj:
    return None
  flat = {}
  for key, value in obj.items():
    name = f"{prefix}{key}"
    if isinstance(value, np.ndarray):
      flat[name] = value
    else:
      nested = _flat_state_dict(value, f"{name}.")
      if nested is None:
        return None
      flat.update(nested)
  return flat


def load_state_dict(path, key: str | None = None) -> dict[str, np.ndarray]:
  """A `torch.save`d state_dict as {name: array}, read without torch.

  The state_dict is the file's top-level object if that is a mapping of tensors (nested mappings of tensors
  are flattened to dotted names: {"a": {"b": t}} -> "a.b"), else the value under `key`, else under the first of
  `STATE_DICT_KEYS` ("state_dict", "model", "net_G", ...) that holds one (so {"state_dict": sd, "epoch": 3}
  works). Raises DataError if the file is missing, unreadable or holds no state_dict, UnsafeCheckpointError
  (a DataError) if its pickle names anything but tensors and containers.
  """
  obj = _load(path, script=False)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      top = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise DataError(f"{path} has no key {key!r} (its top level: {top}); pass one of those")
    obj = obj[key]
  flat = _flat_state_dict(obj)
  if flat is None and key is None and isinstance(obj, Mapping):
    for candidate in STATE_DICT_KEYS:
      flat = _flat_state_dict(obj.get(candidate))
      if flat is not None:
        break
  if flat is None:
    top = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
    raise DataError(f"{path} holds no state_dict of tensors (its top level: {top}); pass key= naming the one to read")
  return flat


# --- TorchScript ---


_CLASS_RE = re.compile(r"^class (\w+)(?:\((\w+)\))?:", re.M)
_MEMBERS_RE = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$", re.M)


def _script_classes(zf: zipfile.ZipFile, prefix: str, module: str) -> dict[str, tuple[bool, list, list]]:
  """{class name: (is a Module, parameter names, buffer names)} from the archive's code for `module`.

  Only the class headers and the `__parameters__ = [...]` / `__buffers__ = [...]` lines are parsed (as
  literals); the code itself is never executed.
  """
  try:
    text = zf.read(f"{prefix}code/{module.replace('.', '/')}.py").decode("utf-8")
  except (KeyError, UnicodeDecodeError):
    return {}
  classes = {}
  heads = list(_CLASS_RE.finditer(text))
  for i, head in enumerate(heads):
    body = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
    try:
      members = {m.group(1): ast.literal_eval(m.group(2)) for m in _MEMBERS_RE.finditer(body)}
    except (ValueError, SyntaxError, RecursionError) as e:
      raise DataError(f"unreadable TorchScript code for {module}.{head.group(1)} ({e}): re-save the module") from e
    classes[head.group(1)] = (head.group(2) == "Module", members.get("__parameters__", []),
                              members.get("__buffers__", []))
  return classes


def load_torchscript_params(path) -> dict[str, np.ndarray]:
  """A `torch.jit.save`d module's parameters and buffers under the names `torch.jit.load(path).state_dict()` gives.

  Which attributes are parameters and buffers is read from each class's `__parameters__`/`__buffers__` lines in
  the archive's code/ (an unknown class contributes all its tensor attributes). As torch.jit's state_dict does,
  buffers registered with persistent=False are included and None parameters skipped.
  """
  path = os.fspath(path)
  root = _load(path, script=True)
  if not isinstance(root, ScriptObject):
    raise DataError(f"{path} holds a {type(root).__name__}, not a TorchScript module: check the file")
  with zipfile.ZipFile(path) as zf:
    prefix = _ZipCheckpoint(path, zf).prefix
    classes = functools.cache(lambda module: _script_classes(zf, prefix, module))
    params = {}
    _collect_script_params(root, "", classes, params, ())
  return params


def _collect_script_params(obj: ScriptObject, prefix: str, classes, out: dict, ancestors: tuple) -> None:
  # A module shared by two parents appears under both names, as in torch; only a cycle (a crafted file) stops.
  if obj in ancestors or not isinstance(obj.state, dict):
    return
  ancestors += (obj,)
  module, _, name = obj.qualname.rpartition(".")
  info = classes(module).get(name)
  state = obj.state
  if info is None:
    tensor_names = [k for k, v in state.items() if isinstance(v, np.ndarray)]
  else:
    # nn.Module.state_dict order: own parameters, own buffers, then children, each in attribute order.
    tensor_names = [k for k in state if k in info[1]] + [k for k in state if k in info[2]]
  for key in tensor_names:
    if isinstance(state[key], np.ndarray):
      out[f"{prefix}{key}"] = state[key]
  for key, value in state.items():
    if isinstance(value, ScriptObject):
      module, _, name = value.qualname.rpartition(".")
      child = classes(module).get(name)
      if child is None or child[0]:
        _collect_script_params(value, f"{prefix}{key}.", classes, out, ancestors)
