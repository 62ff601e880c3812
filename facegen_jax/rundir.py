"""A run directory: what `main` writes and what `generate`, `evaluate` and a resumed `main` read.

  DIR/config.json          the full config of the run (written by `main` and by `convert`)
  DIR/checkpoints/<step>/  Orbax checkpoints: item "state" (the family's train state) and, from training,
                           item "data" (the Grain iterator position)
  DIR/best_checkpoint/<step>/  with evaluation on: the state with the lowest FID so far (item "state")
  DIR/fid_stats/           cached FID/KID statistics of the reference data (unless config.eval.stats_dir)
  DIR/tensorboard/, DIR/samples/  logs and sample grids (from training only)

A converter writes config.json and a step-0 checkpoint with the "state" item only; `main --workdir DIR`
fine-tunes from it (the data then starts from the beginning) and `generate --workdir DIR` uses it as it is.
"""

from __future__ import annotations

import json

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import state as state_lib

CONFIG_FILE = "config.json"
STATE_ITEM = "state"
DATA_ITEM = "data"
BEST_DIR = "best_checkpoint"
_LEGACY_OPTIMIZERS = {"g": "g_opt", "d": "d_opt"}
# Fields of the GAN states saved before the one train state, and where they live now.
_LEGACY_FIELDS = {"g_params": ("params", "g"), "d_params": ("params", "d"), "g_opt_state": ("opt_state", "g"),
                  "d_opt_state": ("opt_state", "d"), "ema_params": ("ema", "g")}


def absolute(path) -> epath.Path:
  path = epath.Path(path)
  return path if "://" in str(path) else path.resolve()  # Orbax wants absolute local paths; gs:// already is.


def checkpoint_dir(workdir) -> epath.Path:
  return absolute(workdir) / "checkpoints"


def best_checkpoint_dir(workdir) -> epath.Path:
  return absolute(workdir) / BEST_DIR


def save_config(workdir, config: ml_collections.ConfigDict) -> None:
  """Writes DIR/config.json (process 0 only): the resolved values, field references included."""
  if jax.process_index() == 0:
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def load_config(workdir) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise errors.UserError(
        f"{path} does not exist: --workdir must be a directory written by `python -m facegen_jax.main` or by "
        "`python -m facegen_jax.convert`")
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise errors.UserError(f"{path} is not valid JSON ({e}): restore it from the run or re-run the converter") from e
  if "optim" not in values:  # Written before config.optim: the optimizers were config.g_opt / config.d_opt.
    values["optim"] = {group: values.pop(key) for group, key in _LEGACY_OPTIMIZERS.items() if key in values}
  return ml_collections.ConfigDict(values)


def _directory(workdir, best: bool) -> epath.Path:
  return best_checkpoint_dir(workdir) if best else checkpoint_dir(workdir)


def latest_step(workdir, *, best: bool = False) -> int | None:
  directory = _directory(workdir, best)
  if not directory.exists():
    return None
  with ocp.CheckpointManager(directory) as manager:
    return manager.latest_step()


def has_item(workdir, step: int, item: str, *, best: bool = False) -> bool:
  return (_directory(workdir, best) / str(step) / item).exists()


def _saved_fields(directory: epath.Path, step: int) -> dict:
  """The top level of the saved state's tree: {field: its metadata tree}."""
  tree = ocp.StandardCheckpointHandler().metadata(directory / str(step) / STATE_ITEM).tree
  return dict(tree)


def _has_arrays(tree) -> bool:
  return bool(jax.tree.leaves(tree))


def _legacy_target(target: state_lib.TrainState, family, saved: dict, with_ema: bool) -> dict:
  fields = {"step": target.step, **family.collections_to_legacy(target.collections)}
  for field, (attribute, group) in _LEGACY_FIELDS.items():
    if field != "ema_params" or with_ema:
      fields[field] = getattr(target, attribute)[group]
  if "ema_params" in saved and not with_ema:
    fields["ema_params"] = None  # Saved as None by a run without EMA.
  return fields


def _from_legacy(fields: dict, target: state_lib.TrainState, family) -> state_lib.TrainState:
  parts = {"params": {}, "opt_state": {}, "ema": {}}
  for field, (attribute, group) in _LEGACY_FIELDS.items():
    if fields.get(field) is not None:
      parts[attribute][group] = fields[field]
  return target.replace(step=fields["step"], collections=family.collections_from_legacy(fields), **parts)


def restore(manager: ocp.CheckpointManager, step: int, target: state_lib.TrainState, config, *,
            items: dict | None = None) -> state_lib.TrainState:
  """The state at `step` restored into `target`'s structure and shardings (abstract arrays), with `items` (e.g.
  the data iterator) restored beside it.

  Also reads checkpoints saved without the EMA groups the config now keeps (the averages then start from the
  parameters, as a warning says) and the GAN states of run directories written before the one train state.
  """
  directory = epath.Path(manager.directory)
  saved = _saved_fields(directory, step)
  family = families.get_family(config.family)
  legacy = "g_params" in saved
  saved_ema = _has_arrays(saved.get("ema_params" if legacy else "ema"))
  with_ema = saved_ema and bool(target.ema)
  if legacy:
    if not hasattr(family, "collections_to_legacy"):
      raise errors.UserError(f"the checkpoint at {directory / str(step)} has the old GAN layout, which family "
                             f"{config.family!r} never used: is --workdir the right run?")
    state_target = _legacy_target(target, family, saved, with_ema)
  else:
    state_target = target if with_ema or not target.ema else target.replace(ema={})
  args = {STATE_ITEM: ocp.args.StandardRestore(state_target), **(items or {})}
  restored = manager.restore(step, args=ocp.args.Composite(**args))[STATE_ITEM]
  state = _from_legacy(restored, target, family) if legacy else restored
  if target.ema and not with_ema:
    state = state.replace(ema={group: jax.tree.map(jnp.copy, state.params[group]) for group in target.ema})
    logging.warning("The checkpoint at step %d has no EMA of %s (saved with ema_decay 0, or converted): the "
                    "average starts from the parameters.", step, sorted(target.ema))
  elif not target.ema:
    state = state.replace(ema={})
  return state


def restore_state(workdir, config: ml_collections.ConfigDict, *, step: int | None = None, best: bool = False,
                  sharding: jax.sharding.Sharding | None = None):
  """The family's train state at `step` (default: the latest checkpoint), on one device unless `sharding`.

  `best`: from DIR/best_checkpoint (the best evaluation of a run that evaluated) instead of DIR/checkpoints.
  Returns (state, step). Only the "state" item is read, so the input pipeline need not exist here.
  """
  families.get_family(config.family)  # An unknown family is a ConfigError naming the known ones.
  directory = _directory(workdir, best)
  if step is None:
    step = latest_step(workdir, best=best)
    if step is None and best:
      raise errors.UserError(f"no best checkpoint in {directory}: it is written when training evaluates FID "
                             "(--config.eval.every_steps > 0); leave out --best to use the latest checkpoint")
    if step is None:
      raise errors.UserError(f"no checkpoint in {directory}: train first (`python -m "
                             "facegen_jax.main --workdir ...`) or convert one (`python -m facegen_jax.convert`)")
  elif not has_item(workdir, step, STATE_ITEM, best=best):
    raise errors.UserError(f"no checkpoint for step {step} in {directory}: leave out the step to "
                           f"use the latest ({latest_step(workdir, best=best)})")
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda key: families.init_state(config, key), jax.random.key(0))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
  with ocp.CheckpointManager(directory) as manager:
    return restore(manager, step, target, config), step


def set_array_saving() -> None:
  """Before a save: replica-parallel array writes only when several processes hold replicas.

  Orbax's default on CPU and TPU splits each replicated array among its replicas, one sliced program compiled
  per array shape: on one process with 8 devices that is ~300 programs (15 s) at the first save of a tiny SPADE
  run, for writes that the one process makes anyway. With several processes each host writes its share."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1), override=True)


def save_state(workdir, config: ml_collections.ConfigDict, state, *, step: int = 0) -> epath.Path:
  """Writes config.json and a checkpoint holding only the "state" item (what converters produce)."""
  save_config(workdir, config)
  set_array_saving()
  with ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(create=True)) as manager:
    manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}), force=True)
    manager.wait_until_finished()
  return checkpoint_dir(workdir) / str(step)
