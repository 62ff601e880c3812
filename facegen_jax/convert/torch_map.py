"""Torch state_dicts -> flax variables: what every converter shares, so a family's converter is a key table.

A converter builds its model's variables abstractly (`jax.eval_shape` of the init), describes how their names
become torch keys in a `KeyTable`, and calls `load_variables` (or its three steps: `expected_keys`,
`check_keys`, `convert_variables`). The walk turns a flax variable `collection/module/path/leaf` into the torch
key `module.path.leaf`:

  * module path: each component renamed by the table's `modules` {regex: template} (first full match; the
    template may use the match's groups), which also inserts the index of an nn.Sequential holding the layer
    (`{"mlp_shared": "mlp_shared.0"}`); or the whole path by `module_name(path)`;
  * leaf: `LEAF_NAMES` (flax's `kernel`/`scale` -> `weight`, BatchNorm's `mean`/`var` -> `running_mean`/
    `running_var`, spectral norm's `u`/`v` -> `weight_u`/`weight_v`), overridden by the table's `leaves`, where
    None marks a variable the file does not hold (the converter fills it); other names stay as they are;
  * a module with `spectral_stats` is a torch spectral-norm layer: its kernel is `weight_orig`.

Layouts (`to_flax`): a 2-D `kernel` is a Linear weight, torch (O, I) -> flax (I, O); one of more dimensions a
convolution's, torch (O, I, *k) -> flax (*k, I, O), or, for modules matching the table's `conv_transpose`, a
ConvTranspose weight (I, O, *k) -> our `nets/conv.py` kernel (*k, I, O) flipped in space (that module's
`transpose_kernel=False` convention; pass torch's padding through `conv.torch_transpose_padding`). Everything
else (biases, norms' affine and running statistics, spectral vectors, embeddings) is copied as it is. Values
become float32.

The check is strict because a silently unused tensor is a silently wrong model: every torch key must be used
(`num_batches_tracked` beside an expected `running_mean` excepted: torch ignores it when a momentum is set),
every variable filled, every shape equal; the error names the keys and the converter's hint. Spectral-norm
layers saved by torch < 1.0 hold the normalised `weight` instead of `weight_v`: v is solved as torch's load
pre-hook does (`solve_spectral_v`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, NamedTuple, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.convert import torch_reader
from facegen_jax.errors import UserError
from facegen_jax.nets import spectral_norm as sn_lib

CONV, CONV_TRANSPOSE, LINEAR, AS_IS = "conv", "conv_transpose", "linear", "as_is"
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var", "u": "weight_u", "v": "weight_v"}
_SHOW = 8  # Key names listed in an error message.


# --- layouts ---


def _permutation(layout: str, ndim: int) -> tuple[int, ...]:
  """The axes of torch's array in the order flax's holds them."""
  if layout == LINEAR:
    return (1, 0)
  spatial = tuple(range(2, ndim))
  return spatial + ((1, 0) if layout == CONV else (0, 1))


def to_flax(layout: str, value) -> np.ndarray:
  """A torch tensor (numpy) in flax's layout, float32."""
  value = np.asarray(value, np.float32)
  if layout == AS_IS:
    return value
  value = value.transpose(_permutation(layout, value.ndim))
  if layout == CONV_TRANSPOSE:  # torch's transposed convolution correlates with the flipped kernel.
    value = value[(slice(None, None, -1),) * (value.ndim - 2)]
  return np.ascontiguousarray(value)


def torch_shape(layout: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The shape torch stores a flax variable of this shape in."""
  shape = tuple(shape)
  if layout == AS_IS:
    return shape
  torch = [0] * len(shape)
  for size, axis in zip(shape, _permutation(layout, len(shape))):
    torch[axis] = size
  return tuple(torch)


def flax_shape(layout: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The shape `to_flax` gives a torch tensor of this shape (as it is if it has too few axes for the layout)."""
  shape = tuple(shape)
  if layout == AS_IS or len(shape) < 2:
    return shape
  return tuple(shape[axis] for axis in _permutation(layout, len(shape)))


# --- the key table ---


@dataclasses.dataclass(frozen=True)
class KeyTable:
  """How one network's flax variable names become its torch state_dict keys (see the module docstring).

  modules: {regex: template} for one module-path component (fully matched; groups usable as in re.sub).
  module_name: the torch prefix of a whole flax module path, instead of `modules` (e.g. TF-style names).
  leaves: {flax leaf: torch name or None}, over `LEAF_NAMES`.
  conv_transpose: regexes fully matching the "/"-joined paths of ConvTranspose modules.
  """

  modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
  module_name: Callable[[tuple[str, ...]], str] | None = None
  leaves: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
  conv_transpose: Sequence[str] = ()

  def prefix(self, module: tuple[str, ...]) -> str:
    if self.module_name is not None:
      return self.module_name(module)
    parts = []
    for name in module:
      for pattern, template in self.modules.items():
        if match := re.fullmatch(pattern, name):
          parts.append(match.expand(template))
          break
      else:
        parts.append(name)
    return ".".join(parts)

  def leaf(self, name: str) -> str | None:
    return self.leaves[name] if name in self.leaves else LEAF_NAMES.get(name, name)

  def layout(self, module: tuple[str, ...], name: str, ndim: int) -> str:
    if name != "kernel" or ndim < 2:
      return AS_IS
    if ndim == 2:
      return LINEAR
    return CONV_TRANSPOSE if any(re.fullmatch(p, "/".join(module)) for p in self.conv_transpose) else CONV


class Entry(NamedTuple):
  """Where a torch key goes: the flax collection and path, its shape as torch stores it, its layout."""
  collection: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  layout: str


def expected_keys(variables: dict, table: KeyTable = KeyTable()) -> dict[str, Entry]:
  """{torch key: Entry} for flax variables {collection: tree of leaves with `.shape`}, e.g. from eval_shape."""
  flat = {(collection,) + path: leaf for collection, tree in variables.items()
          for path, leaf in traverse_util.flatten_dict(tree).items()}
  spectral = {path[1:-1] for path in flat if path[0] == sn_lib.SPECTRAL_STATS}
  keys = {}
  for (collection, *path), leaf in flat.items():
    module, name = tuple(path[:-1]), path[-1]
    torch_name = table.leaf(name)
    if torch_name is None:
      continue
    layout = table.layout(module, name, len(leaf.shape))
    if name == "kernel" and module in spectral:
      torch_name += "_orig"
    prefix = table.prefix(module)
    key = f"{prefix}.{torch_name}" if prefix else torch_name
    if key in keys:
      raise ValueError(f"{'/'.join(path)} and {'/'.join(keys[key].path)} both map to the torch key {key}")
    keys[key] = Entry(collection, tuple(path), torch_shape(layout, leaf.shape), layout)
  return keys


# --- the strict check ---


def _old_spectral_weight(key: str, state_dict) -> str | None:
  """For a missing `X.weight_v`: the key `X.weight` of a pre-1.0 spectral-norm layer, if that is the case."""
  base = key[:-len("_v")]
  if key.endswith(".weight_v") and all(base + s in state_dict for s in ("", "_orig", "_u")):
    return base
  return None


@dataclasses.dataclass
class Mismatch:
  """What keeps a state_dict from filling the expected variables: key lists, in the table's order."""
  missing: list[str]
  unexpected: list[str]
  wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, its shape, the expected shape)

  def __bool__(self) -> bool:
    return bool(self.missing or self.unexpected or self.wrong)


def compare(state_dict, expected: dict[str, Entry]) -> Mismatch:
  """The missing, unexpected and wrongly shaped keys of a state_dict (values need only `.shape`)."""
  used, missing, wrong = set(), [], []
  for key, entry in expected.items():
    old = _old_spectral_weight(key, state_dict) if key not in state_dict else None
    if old is not None:
      used.add(old)
      if tuple(state_dict[old].shape) != tuple(state_dict[old + "_orig"].shape):
        wrong.append((old, tuple(state_dict[old].shape), tuple(state_dict[old + "_orig"].shape)))
    elif key not in state_dict:
      missing.append(key)
    elif tuple(state_dict[key].shape) != entry.shape:
      wrong.append((key, tuple(state_dict[key].shape), entry.shape))
    used.add(key)
  batch_norms = {key[:-len("running_mean")] for key in expected if key.endswith(".running_mean")}
  unexpected = sorted(k for k in state_dict if k not in used
                      and not (k.endswith(".num_batches_tracked") and k[:-len("num_batches_tracked")] in batch_norms))
  return Mismatch(missing, unexpected, wrong)


def check_keys(state_dict, expected: dict[str, Entry], source, hint: str) -> None:
  """Raises UserError unless the state_dict has exactly the expected keys and shapes (values need `.shape`)."""
  mismatch = compare(state_dict, expected)
  wrong = [f"{key} {got} (expected {want})" for key, got, want in mismatch.wrong]
  problems = [f"{what} {len(names)}: {', '.join(sorted(names)[:_SHOW])}{', ...' if len(names) > _SHOW else ''}"
              for what, names in (("missing keys", mismatch.missing), ("unexpected keys", mismatch.unexpected),
                                  ("wrong shapes", wrong)) if names]
  if problems:
    raise UserError(f"{source} does not match the model read from it: {'; '.join(problems)}. {hint}")


# --- filling the variables ---


def solve_spectral_v(weight_orig: np.ndarray, weight_u: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """torch's `_solve_v_and_rescale` for pre-1.0 checkpoints: v with u = normalize(W v), u . W v = sigma.

  sigma = mean(weight_orig / weight), as torch's pre-hook takes it (over entries where weight is non-zero,
  which torch would turn into NaN). torch's v = pinv(W^T W) W^T u is pinv(W) u = W^T pinv(W W^T) u: the
  smaller Gram matrix is inverted (1024 x 1024 rather than 9216 x 9216 for FaceIt's head_0).
  """
  matrix = np.asarray(weight_orig, np.float64).reshape(weight_orig.shape[0], -1)
  u = np.asarray(weight_u, np.float64)
  orig, normed = np.asarray(weight_orig, np.float64).ravel(), np.asarray(weight, np.float64).ravel()
  nonzero = normed != 0
  sigma = np.mean(orig[nonzero] / normed[nonzero]) if nonzero.any() else 1.0
  if matrix.shape[0] <= matrix.shape[1]:
    v = matrix.T @ (np.linalg.pinv(matrix @ matrix.T, hermitian=True) @ u)
  else:
    v = np.linalg.pinv(matrix.T @ matrix, hermitian=True) @ (matrix.T @ u)
  return (v * (sigma / (u @ (matrix @ v)))).astype(np.float32)


def convert_variables(state_dict, expected: dict[str, Entry], abstract: dict) -> dict:
  """{collection: tree} in `abstract`'s structure, filled from a state_dict already passed by `check_keys`.

  Variables whose leaf the table maps to None are left out, for the converter to add.
  """
  flat = {}
  for key, entry in expected.items():
    old = _old_spectral_weight(key, state_dict) if key not in state_dict else None
    if old is not None:
      value = solve_spectral_v(state_dict[old + "_orig"], state_dict[old + "_u"], state_dict[old])
    else:
      value = to_flax(entry.layout, state_dict[key])
    flat[(entry.collection,) + entry.path] = value
  out = traverse_util.unflatten_dict(flat)
  return {collection: out.get(collection, {}) for collection in abstract}


def load_variables(state_dict, abstract: dict, table: KeyTable, source, hint: str) -> dict:
  """`abstract` ({collection: tree}) filled from the state_dict, or a UserError naming the keys that differ."""
  expected = expected_keys(abstract, table)
  check_keys(state_dict, expected, source, hint)
  return convert_variables(state_dict, expected, abstract)


# --- reading ---


def read_state_dict(path, what: str) -> dict[str, np.ndarray]:
  """A checkpoint's state_dict (see `torch_reader.load_state_dict`) without DataParallel's `module.` prefix.

  `what` names the file the user should pass, for the error about an empty one.
  """
  state_dict = torch_reader.load_state_dict(path)
  # {"state_dict": sd} alone reads as "state_dict.fc.weight", ...; DataParallel adds "module.".
  prefixes = tuple(f"{name}." for name in ("module",) + torch_reader.STATE_DICT_KEYS)
  while state_dict and (prefix := next((p for p in prefixes if all(k.startswith(p) for k in state_dict)), None)):
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
  if not state_dict:
    raise UserError(f"{path} holds an empty state_dict: pass the {what}")
  return state_dict


def _check_fits(what: str, value, target) -> None:
  got, want = jax.tree.structure(value), jax.tree.structure(target)
  if target is None or got != want or any(
      np.shape(a) != b.shape for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(target))):
    raise AssertionError(f"{what}: the converted variables do not fit the family's ({got} vs {want})")


def save_run(out, config, params: dict, collections: dict | None = None) -> None:
  """DIR/config.json and a step-0 checkpoint of the family's train state: its fresh optimizer states (and EMA)
  with the converted `params` / `collections` groups in place of the initial ones, cast to their dtypes; the
  groups not given (a network the checkpoint lacks, a frozen network the family loads itself) are the family's
  init. Given groups must fit the init's structure and shapes. They are not returned from the jitted init, so
  XLA drops their sampling."""
  # Imported here: the families and the loop are not needed to read or map state_dicts.
  from facegen_jax import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from facegen_jax import families  # pylint: disable=g-import-not-at-top
  from facegen_jax import rundir  # pylint: disable=g-import-not-at-top
  given = {"params": params, "collections": collections or {}}
  dtypes = {}

  def fresh(key):
    state = families.init_state(config, key)
    full = {"params": state.params, "collections": state.collections}
    for kind, groups in given.items():
      for group, value in groups.items():
        _check_fits(f"{kind} {group}", value, full[kind].get(group))
        dtypes[kind, group] = jax.tree.map(lambda t: t.dtype, full[kind][group])
    return state.replace(**{kind: {g: v for g, v in full[kind].items() if g not in given[kind]} for kind in given})
  state = compile_lib.jit(fresh, run_once=True)(jax.random.key(config.seed))
  cast = {kind: {g: jax.tree.map(jnp.asarray, v, dtypes[kind, g]) for g, v in groups.items()}
          for kind, groups in given.items()}
  params, collections = {**state.params, **cast["params"]}, {**state.collections, **cast["collections"]}
  state = state.replace(params=params, collections=collections, ema={g: params[g] for g in state.ema})
  rundir.save_state(out, config, state)
