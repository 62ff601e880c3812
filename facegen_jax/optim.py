"""One optimizer per parameter group, built from `config.optim.<group>` (big_vision's `optax.make`, our keys).

  config.optim.g = dict(
      name="adam",               # "adam" (torch.optim.Adam) or "adamw" (torch.optim.AdamW)
      lr=2e-4, b1=0.5, b2=0.999, eps=1e-8,
      weight_decay=0.0,          # adam: torch's L2 term added to the gradient (coupled); adamw: decoupled
      decay_start_step=None,     # linear decay to 0 from this step to the last (SPADE's niter / niter_decay)
      decay_steps=None,          # with decay_start_step: the decay's length, if not to the last step (SATNet:
                                 # 1 - (step - 400k) / 450k, so its 450k-step run ends at 0.889 of the lr)
      decay_every_steps=None,    # or: step decay, lr * decay_factor every N steps (torch's StepLR)
      decay_factor=0.1,
      clip_global_norm=None,     # clip the group's gradient to this global norm first (SSuperGAN: 100)
      frozen=(),                 # regexes over parameter paths ("encoder/.*"): no update, no optimizer memory
  )

A frozen leaf gets `optax.set_to_zero` inside `optax.multi_transform`, so its moments are never allocated and
its value stays bit-identical. Paths are the group's parameter keys joined by "/", matched with `re.fullmatch`;
a pattern that matches nothing is a ConfigError naming it. (Run directories saved before `config.optim` have
`config.g_opt` / `config.d_opt`; `rundir.load_config` reads them as groups "g" and "d".)
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import jax
import ml_collections
from ml_collections import config_dict
import optax

from facegen_jax import errors

OPTIMIZERS = ("adam", "adamw")
_DEFAULTS = dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decay_start_step=None,
                 decay_steps=None, decay_every_steps=None, decay_factor=0.1, clip_global_norm=None, frozen=())
_PLACEHOLDER_TYPES = {"decay_start_step": int, "decay_steps": int, "decay_every_steps": int,
                      "clip_global_norm": float}


def config(**values) -> ml_collections.ConfigDict:
  """A group's optimizer config with every key (so each can be set from the command line), e.g.
  `config.optim.g = optim.config(lr=2e-4, b1=0.5)`."""
  unknown = sorted(set(values) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown optimizer keys {unknown}: use {sorted(_DEFAULTS)}")
  c = ml_collections.ConfigDict()
  for key, default in _DEFAULTS.items():
    value = values.get(key, default)
    c[key] = config_dict.placeholder(_PLACEHOLDER_TYPES[key]) if value is None and key in _PLACEHOLDER_TYPES else value
  return c


def group_config(config: ml_collections.ConfigDict, group: str) -> ml_collections.ConfigDict:
  """config.optim.<group> over the defaults; ConfigError naming the key when the group has none."""
  found = config.optim.get(group) if "optim" in config else None
  if found is None:
    raise errors.ConfigError(f"no optimizer for parameter group {group!r}: set config.optim.{group} (e.g. "
                             f"--config.optim.{group}.lr=2e-4 in a config that defines it)")
  merged = ml_collections.ConfigDict(_DEFAULTS)
  found = found.to_dict() if hasattr(found, "to_dict") else dict(found)
  unknown = sorted(set(found) - set(_DEFAULTS))
  if unknown:
    raise errors.ConfigError(f"config.optim.{group} has unknown keys {unknown}: use {sorted(_DEFAULTS)}")
  merged.update(found)
  return merged


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Constant; linear decay from `decay_start_step` to 0 at the last step (or after `decay_steps` steps, cut off at
  the last step); or times `decay_factor` every `decay_every_steps`."""
  decay_start, every = opt_config.get("decay_start_step"), opt_config.get("decay_every_steps")
  if every:
    return optax.exponential_decay(opt_config.lr, transition_steps=every, decay_rate=opt_config.decay_factor,
                                   staircase=True)
  if decay_start is None or decay_start >= num_train_steps:
    return optax.constant_schedule(opt_config.lr)
  length = opt_config.get("decay_steps") or num_train_steps - decay_start
  return optax.join_schedules(
      [optax.constant_schedule(opt_config.lr), optax.linear_schedule(opt_config.lr, 0.0, length)],
      boundaries=[decay_start])


def _check(c: ml_collections.ConfigDict, name: str) -> None:
  if c.name not in OPTIMIZERS:
    raise errors.ConfigError(f"unknown optimizer {c.name!r} in config.{name}: set --config.{name}.name to one of "
                             f"{', '.join(OPTIMIZERS)}")
  if c.lr <= 0:
    raise errors.ConfigError(f"config.{name}.lr must be > 0, got {c.lr}: set --config.{name}.lr to e.g. 2e-4")
  if c.decay_start_step is not None and c.decay_every_steps:
    raise errors.ConfigError(f"config.{name} sets both decay_start_step (linear decay) and decay_every_steps "
                             "(step decay): unset one of them")
  if c.decay_steps is not None and (c.decay_start_step is None or c.decay_steps <= 0):
    raise errors.ConfigError(f"config.{name}.decay_steps {c.decay_steps} is the length of the linear decay from "
                             f"decay_start_step: set a positive decay_steps with decay_start_step, or unset it")
  if c.decay_every_steps is not None and c.decay_every_steps < 0:
    raise errors.ConfigError(f"config.{name}.decay_every_steps must be > 0, got {c.decay_every_steps}")
  if c.clip_global_norm is not None and c.clip_global_norm <= 0:
    raise errors.ConfigError(f"config.{name}.clip_global_norm must be > 0 (None: no clipping), got "
                             f"{c.clip_global_norm}")
  for pattern in c.frozen:
    try:
      re.compile(pattern)
    except re.error as e:
      raise errors.ConfigError(f"config.{name}.frozen pattern {pattern!r} is not a regex ({e})") from None


def _base(c: ml_collections.ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
  """Adam(W) with PyTorch's defaults where the config is silent (eps 1e-8; weight decay 0)."""
  lr = learning_rate_schedule(c, num_train_steps)
  if c.name == "adamw":
    tx = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
  else:
    tx = optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps)
    if c.weight_decay:  # torch.optim.Adam's L2 penalty is added to the gradient before the moments.
      tx = optax.chain(optax.add_decayed_weights(c.weight_decay), tx)
  if c.clip_global_norm:
    tx = optax.chain(optax.clip_by_global_norm(c.clip_global_norm), tx)
  return tx


def path_name(path) -> str:
  """A parameter's key path as "a/b/kernel" (what `frozen` patterns match)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def frozen_mask(patterns: Iterable[str], params) -> Any:
  """A tree of bools like `params`: True where a leaf's path fully matches one of `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(p.fullmatch(path_name(path)) for p in compiled), params)


def check_frozen(config: ml_collections.ConfigDict, group: str, params) -> None:
  """Every `frozen` pattern of the group matches at least one parameter; else a ConfigError naming it."""
  names = [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  for pattern in group_config(config, group).frozen:
    if not any(re.fullmatch(pattern, name) for name in names):
      shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
      raise errors.ConfigError(f"config.optim.{group}.frozen pattern {pattern!r} matches no parameter of group "
                               f"{group!r} (paths look like {shown}): fix or remove the pattern")


def create(config: ml_collections.ConfigDict, group: str) -> optax.GradientTransformation:
  """The optimizer of one parameter group (see the module docstring)."""
  c = group_config(config, group)
  _check(c, f"optim.{group}")
  tx = _base(c, config.num_train_steps)
  if not c.frozen:
    return tx
  patterns = tuple(c.frozen)
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(patterns, params))
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def create_all(config: ml_collections.ConfigDict, groups: Iterable[str]) -> dict[str, optax.GradientTransformation]:
  return {group: create(config, group) for group in groups}
