"""The one training loop every family uses.

The state is built sharded (`jax.eval_shape` -> shardings from the mesh -> `jax.jit(init, out_shardings=...)`),
the family's pure step is jitted with the state donated, each process feeds its own slice of the global batch,
and one Orbax CheckpointManager saves the state together with the Grain iterator, so a restart (after a crash,
SIGKILL or SIGTERM) continues with the same parameters and the same data order.
"""

import dataclasses
import functools
import json
import math
import resource
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import flax.linen as nn
import grain
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax.optim import path_name as optim_path
from facegen_jax import families
from facegen_jax import images as images_lib
from facegen_jax import rundir
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.metrics import evaluator as evaluator_lib
from input_pipeline import pipeline

NONFINITE_MODES = ("error", "skip")


class NonFiniteLossError(errors.UserError):
  """A loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
  workdir: epath.Path

  @property
  def tensorboard(self) -> epath.Path:
    return self.workdir / "tensorboard"

  @property
  def samples(self) -> epath.Path:
    return self.workdir / "samples"

  @property
  def checkpoints(self) -> epath.Path:
    return self.workdir / "checkpoints"

  @property
  def best_checkpoint(self) -> epath.Path:
    return self.workdir / rundir.BEST_DIR


def create_mesh() -> Mesh:
  """All devices of all processes on one "data" axis: parameters replicated, batches split."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the loop's own settings; the family and the input pipeline check theirs."""
  devices = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % devices:
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} must be a positive multiple of the {devices} devices: "
        f"set --config.batch_size to e.g. {devices * max(1, math.ceil(max(config.batch_size, 1) / devices))}")
  for key in ("num_steps", "first_step"):
    if not isinstance(config.profile[key], int) or config.profile[key] < 0:
      raise errors.ConfigError(f"config.profile.{key} must be an integer >= 0, got {config.profile[key]!r}: "
                               f"set --config.profile.{key}")
  for key in ("num_train_steps", "log_every_steps", "sample_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "num_sample_images"):
    if not isinstance(config[key], int) or config[key] <= 0:
      raise errors.ConfigError(f"config.{key} must be a positive integer, got {config[key]!r}: "
                               f"set --config.{key}")
  if not 0.0 <= config.ema_decay < 1.0:
    raise errors.ConfigError(f"config.ema_decay={config.ema_decay!r} must be in [0, 1) (0: no EMA generator): "
                             "set --config.ema_decay, e.g. 0.999")
  if config.compute_dtype not in common.COMPUTE_DTYPES:
    raise errors.ConfigError(f"config.compute_dtype={config.compute_dtype!r}: set it to one of "
                             f"{tuple(common.COMPUTE_DTYPES)}")
  if config.nonfinite not in NONFINITE_MODES:
    raise errors.ConfigError(f"config.nonfinite={config.nonfinite!r}: set it to one of {NONFINITE_MODES}")
  evaluator_lib.validate(config)


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a state: leaves without partitioning metadata are replicated; a family can shard a large
  weight with nn.with_partitioning and it is honoured here."""
  specs = nn.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def _guarded_step(family, config, train_key, mesh: Mesh | None = None):
  """The family's step with the per-step key folded in, the EMA groups updated (config.ema_decay > 0) and,
  when configured, non-finite updates dropped. Traced under `mesh` (if given), so a family can split the
  batch-sized arrays it creates over "data" (`common.shard_over_batch`)."""
  def step(state, batch):
    rng = jax.random.fold_in(train_key, state.step)
    if mesh is None:
      new_state, metrics = family.train_step(config, state, batch, rng)
    else:
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        new_state, metrics = family.train_step(config, state, batch, rng)
    if config.ema_decay:
      new_state = state_lib.update_ema(new_state, config.ema_decay)
    if config.nonfinite == "skip":
      finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      new_state = new_state.replace(step=state.step + 1)
      metrics = dict(metrics, **{"train/skipped_update": 1.0 - finite.astype(jnp.float32)})
    return new_state, metrics
  return step


class Programs:
  """The loop's jitted programs for `config` on `mesh`, built as training builds them (tests and benchmarks use
  this too, so they run what training runs):

    init(init_key) -> state              sharded by `state_sharding`
    step(state, batch) -> state, metrics the family's step with the loop's guards; donates the state
    sample(state, inputs) -> images      the family's sample grid from the inference (EMA) parameters
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    self.config = config
    self.family = families.get_family(config.family)
    self.mesh = mesh if mesh is not None else create_mesh()
    self.init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
    init_fn = functools.partial(families.init_state, config)
    self.abstract_state = jax.eval_shape(init_fn, self.init_key)
    self.state_sharding = state_shardings(self.abstract_state, self.mesh)
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.replicated = NamedSharding(self.mesh, P())
    # Init runs once per job: compiled at XLA:CPU's lowest optimisation (tiny DCGAN 4.0 -> 2.3 CPU-s to compile).
    self.init = compile_lib.jit(init_fn, out_shardings=self.state_sharding, run_once=True)
    self.step = compile_lib.jit(_guarded_step(self.family, config, self.train_key, self.mesh),
                                in_shardings=(self.state_sharding, self.batch_sharding),
                                out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
    family = self.family
    self.sample = compile_lib.jit(
        lambda state, inputs: family.sample(config, state_lib.inference_state(state), inputs),
        out_shardings=self.replicated)

  def target(self):
    """The abstract state with its shardings: what a checkpoint is restored into."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract_state,
                        self.state_sharding)

  def global_batch(self, host_batch: dict) -> dict:
    """This process's rows of a batch -> the global batch split over "data"."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), host_batch)

  def replicate(self, tree):
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), self.replicated), tree)


class _FrozenIteratorState:
  """The iterator's position at save() time, so an asynchronous save cannot see a later position."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self._state


def _checkpoint_args(state, iterator) -> ocp.args.Composite:
  return ocp.args.Composite(**{rundir.STATE_ITEM: ocp.args.StandardSave(state),
                               rundir.DATA_ITEM: grain.checkpoint.CheckpointSave(_FrozenIteratorState(iterator))})


class _PreemptionWatcher:
  """SIGTERM (a preempted VM, `kill`, SLURM's time limit) asks the loop to save and stop at a step boundary."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._requested.set())

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # Every process must stop at the same step; JAX's coordination service agrees on it.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step) or self._requested.is_set()
    return self._requested.is_set()

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _sample_inputs(programs: Programs, source):
  """Fixed sample inputs, the same on every process and after every restart: the first batch of a fresh,
  unsharded iterator and a key derived from the seed."""
  config = programs.config
  input_config = ml_collections.ConfigDict(config.input.to_dict())
  input_config.worker_count = 0
  iterator = pipeline.create_train_iterator(input_config, seed=config.seed + 1,
                                            global_batch_size=config.num_sample_images, source=source)
  batch = next(iterator)
  return programs.replicate(programs.family.sample_inputs(config, jax.random.key(config.seed + 2), batch))


def _memory_scalars() -> dict[str, float]:
  """Memory in use on this process's first device (where the backend reports it: GPU, TPU) and the host's peak."""
  scalars = {"perf/host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
  stats = jax.local_devices()[0].memory_stats()  # None on CPU
  if stats:
    scalars["perf/device_memory_gib"] = stats.get("bytes_in_use", 0) / 2**30
    scalars["perf/device_peak_memory_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
  return scalars


class _Profiler:
  """A jax.profiler trace of config.profile.num_steps steps from first_step (clu's periodic action) into the
  TensorBoard directory, stopped at the end of the run if it is still open."""

  def __init__(self, config, logdir: epath.Path):
    self._action = None
    if config.profile.num_steps:
      self._action = periodic_actions.Profile(
          logdir=logdir, num_profile_steps=config.profile.num_steps, profile_duration_ms=None,
          first_profile=config.profile.first_step, every_steps=None, every_secs=None)

  def __call__(self, step: int) -> None:
    if self._action is not None:
      self._action(step)

  def close(self) -> None:
    if self._action is not None and self._action._session_running:  # pylint: disable=protected-access
      jax.profiler.stop_trace()


class _MetricAverager:
  """Means of the fetched per-step scalars between two logging steps, checking each for NaN/inf."""

  def __init__(self, nonfinite: str):
    self._nonfinite = nonfinite
    self._sums: dict[str, float] = {}
    self._count = 0

  def add(self, step: int, metrics: dict[str, Any], last_checkpoint: int | None) -> None:
    metrics = jax.device_get(metrics)
    if self._nonfinite == "error":
      for name, value in sorted(metrics.items()):
        if not np.all(np.isfinite(value)):
          where = f"step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint yet"
          raise NonFiniteLossError(
              f"{name} is {float(value)} at step {step}: lower the learning rates or check the data, or set "
              f"--config.nonfinite=skip to drop such updates (last checkpoint: {where})")
    for name, value in metrics.items():
      self._sums[name] = self._sums.get(name, 0.0) + float(value)
    self._count += 1

  def pop(self) -> dict[str, float]:
    means = {name: total / self._count for name, total in self._sums.items()} if self._count else {}
    self._sums, self._count = {}, 0
    return means


def _write_samples(writer, paths: RunPaths, step: int, sample_fn, state, sample_inputs) -> None:
  outputs = jax.device_get(sample_fn(state, sample_inputs))
  grid = images_lib.make_grid(np.concatenate([np.asarray(x) for x in outputs.values()], axis=2))
  writer.write_images(step, {"samples": grid[None]})
  if jax.process_index() == 0:
    paths.samples.mkdir(parents=True, exist_ok=True)
    images_lib.save_png(grid, paths.samples / f"step_{step:08d}.png")


class _BestCheckpoint:
  """DIR/best_checkpoint: the state of the evaluation with the lowest `metric` (an eval/ scalar without the
  prefix, e.g. "fid" or "fid_a2b"); Orbax keeps the one best."""

  def __init__(self, workdir, metric: str):
    self.metric = metric
    self._manager = ocp.CheckpointManager(
        rundir.best_checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric], best_mode="min",
                                             create=True, enable_async_checkpointing=False))

  def best(self) -> tuple[int | None, float]:
    step = self._manager.best_step()
    if step is None or self.metric not in (self._manager.metrics(step) or {}):
      return None, math.inf
    return step, float(self._manager.metrics(step)[self.metric])

  def offer(self, step: int, value: float, state) -> None:
    # A step already saved is the same evaluation repeated after a restart from an earlier checkpoint.
    if value < self.best()[1] and step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.Composite(**{rundir.STATE_ITEM: ocp.args.StandardSave(state)}),
                         metrics={self.metric: value}, force=True)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _evaluate(evaluator, best: _BestCheckpoint, writer, step: int, state) -> None:
  start = time.perf_counter()
  scalars = evaluator(state)
  name = f"eval/{best.metric}"
  if name not in scalars:
    raise errors.ConfigError(f"config.eval.best_metric {best.metric!r} is not among the evaluation's metrics "
                             f"{sorted(k.removeprefix('eval/') for k in scalars)}: fix --config.eval.best_metric")
  best.offer(step, scalars[name], state)
  best_step, best_value = best.best()
  scalars[f"eval/best_{best.metric}"] = best_value
  scalars["eval/seconds"] = time.perf_counter() - start
  writer.write_scalars(step, scalars)
  shown = ", ".join(f"{k.removeprefix('eval/')} {v:.5g}" for k, v in sorted(scalars.items())
                    if k.startswith(("eval/fid", "eval/kid_mean")))
  logging.info("eval at step %d: %s (best %s %.5g at step %s) in %.0f s", step, shown, best.metric, best_value,
               best_step, scalars["eval/seconds"])


def _init_groups(requested, state, source) -> dict[str, str]:
  """config.init_from.groups -> {our group: the source's group}: () takes every group both states have, names
  keep their names, a mapping {ours: theirs} renames."""
  if not requested:
    return {group: group for group in state.params if group in source.params}
  if hasattr(requested, "items"):
    return {str(ours): str(theirs) for ours, theirs in requested.items()}
  if isinstance(requested, str):
    requested = (requested,)
  return {group: group for group in requested}


def _check_same_shapes(ours, theirs, what: str) -> None:
  mine = {optim_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(ours)}
  other = {optim_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(theirs)}
  if mine != other:
    differ = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
    shown = ", ".join(f"{k} {mine.get(k)} vs {other.get(k)}" for k in differ[:5])
    raise errors.ConfigError(f"config.init_from: {what} differ from this config's ({len(differ)} of them: "
                             f"{shown}): give a run of the same model, or fix --config.model")


def init_from(config: ml_collections.ConfigDict, state: state_lib.TrainState, sharding):
  """`state` with the groups config.init_from names (parameters, collections, EMA) taken from another run
  directory (a training run or a converter's output); the other groups and every optimizer stay fresh, the step
  stays 0 and the data starts from the beginning."""
  c = config.init_from
  source_config = rundir.load_config(c.workdir)
  source, step = rundir.restore_state(c.workdir, source_config, step=c.step, best=c.best)
  groups = _init_groups(c.groups, state, source)
  for ours, theirs in groups.items():
    if ours not in state.params or theirs not in source.params:
      raise errors.ConfigError(
          f"config.init_from.groups: cannot take group {theirs!r} of {c.workdir} (it has {sorted(source.params)}) "
          f"into {ours!r} (this config has {sorted(state.params)}): fix --config.init_from.groups")
    _check_same_shapes(state.params[ours], source.params[theirs], f"the parameters of group {theirs!r}")
    _check_same_shapes(state.collections.get(ours, {}), source.collections.get(theirs, {}),
                       f"the statistics of group {theirs!r}")
  params, collections, ema = dict(state.params), dict(state.collections), dict(state.ema)
  for ours, theirs in groups.items():
    params[ours] = source.params[theirs]
    if ours in state.collections:
      collections[ours] = source.collections[theirs]
    if ours in state.ema:
      ema[ours] = source.ema.get(theirs, source.params[theirs])
  new = jax.device_put(state.replace(params=params, collections=collections, ema=ema), sharding)
  fresh = sorted(set(state.params) - set(groups))
  logging.info("Initialised %s: group(s) %s from %s at step %d; %s fresh; optimizers fresh, data from the start.",
               config.family, ", ".join(f"{o}<-{t}" if o != t else o for o, t in groups.items()), c.workdir, step,
               ", ".join(fresh) if fresh else "no group")
  return new


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config.family` to `config.num_train_steps`, resuming from the last checkpoint in `workdir`.

  Returns the final train state (used by tests).
  """
  family = families.get_family(config.family)
  validate_config(config)
  family.validate(config)
  paths = RunPaths(epath.Path(workdir))
  mesh = create_mesh()
  logging.info("Devices: %d (%s) in %d process(es); mesh %s", jax.device_count(), jax.default_backend(),
               jax.process_count(), dict(mesh.shape))
  source = pipeline.create_sources(config.input)  # Built once: a folder source scans its directory.
  logging.info("Data: %s", pipeline.describe(config.input, source))
  evaluator = None  # Built before the state, so a setting it cannot work with fails in seconds.
  if config.eval.every_steps:
    evaluator = evaluator_lib.Evaluator(config, mesh, stats_dir=config.eval.stats_dir or
                                        paths.workdir / evaluator_lib.STATS_DIR)
    best_metric = evaluator.best_metric()

  train_iter = pipeline.create_train_iterator(
      config.input, seed=config.seed, global_batch_size=config.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(), source=source)

  programs = Programs(config, mesh)
  rundir.save_config(paths.workdir, config)
  rundir.set_array_saving()
  manager = ocp.CheckpointManager(
      rundir.checkpoint_dir(paths.workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           enable_async_checkpointing=config.async_checkpointing))
  # Resume > init_from another run > scratch, in that order.
  latest = manager.latest_step()
  if latest is None:
    if config.init_from.get("required") and not config.init_from.workdir:
      raise errors.ConfigError("this config fine-tunes another run: set --config.init_from.workdir to a run "
                               "directory or a converter's output")
    state = programs.init(programs.init_key)
    if config.init_from.workdir:
      state = init_from(config, state, programs.state_sharding)
    else:
      logging.info("Initialised %s from scratch.", config.family)
  else:
    has_data = rundir.has_item(paths.workdir, latest, rundir.DATA_ITEM)
    items = {rundir.DATA_ITEM: grain.checkpoint.CheckpointRestore(train_iter)} if has_data else {}
    state = rundir.restore(manager, latest, programs.target(), config, items=items)
    logging.info("Resumed from the checkpoint at step %d in %s%s", latest, paths.checkpoints,
                 "" if has_data else " (a converted checkpoint without data position: the data starts anew)")
  for group, params in state.params.items():
    trained = "" if group in programs.family.CONTRACT.optimizer_groups else " (frozen: no optimizer)"
    logging.info("Parameter group %r: %s parameters%s", group, f"{common.count_params(params):,}", trained)

  sample_inputs = _sample_inputs(programs, source)

  best = _BestCheckpoint(paths.workdir, best_metric) if evaluator is not None else None
  writer = metric_writers.create_default_writer(
      str(paths.tensorboard), just_logging=jax.process_index() > 0, asynchronous=True)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps)
  profiler = _Profiler(config, paths.tensorboard)
  _log_locations(paths, "Writing", with_best=best is not None)
  watcher = _PreemptionWatcher()
  averager = _MetricAverager(config.nonfinite)
  first_step = int(jax.device_get(state.step))
  last_checkpoint = latest
  pending = None  # (step, metrics) of the previous step, read only after the next step is dispatched.
  log_start = (first_step, time.perf_counter())
  try:
    for step in range(first_step + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = programs.step(state, programs.global_batch(next(train_iter)))
      if pending is not None:
        averager.add(*pending, last_checkpoint)
      pending = (step, metrics)
      report_progress(step)
      profiler(step)
      is_last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or is_last:
        averager.add(*pending, last_checkpoint)
        pending = None
        scalars = averager.pop()
        elapsed = time.perf_counter() - log_start[1]
        scalars["perf/images_per_sec"] = (step - log_start[0]) * config.batch_size / max(elapsed, 1e-9)
        scalars.update(_memory_scalars())
        log_start = (step, time.perf_counter())
        writer.write_scalars(step, scalars)
      if step % config.sample_every_steps == 0 or is_last:
        _write_samples(writer, paths, step, programs.sample, state, sample_inputs)
      if evaluator is not None and (step % config.eval.every_steps == 0 or is_last):
        _evaluate(evaluator, best, writer, step, state)
      preempted = watcher.should_stop(step)
      if step % config.checkpoint_every_steps == 0 or is_last or preempted:
        manager.save(step, args=_checkpoint_args(state, train_iter), force=True)
        last_checkpoint = step
      if preempted:
        logging.warning("SIGTERM: saved a checkpoint at step %d; exiting so the job can be restarted.", step)
        break
  finally:
    profiler.close()
    watcher.close()
    if best is not None:
      best.close()
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  _log_locations(paths, "Wrote", with_best=best is not None)
  return state


def _log_locations(paths: RunPaths, verb: str, with_best: bool) -> None:
  if jax.process_index() == 0:
    message = (f"{verb}: TensorBoard logs {paths.tensorboard} (tensorboard --logdir {paths.tensorboard}), "
               f"sample grids {paths.samples}, checkpoints {paths.checkpoints}"
               + (f", best-FID checkpoint {paths.best_checkpoint}" if with_best else ""))
    logging.info(message)
    print(message, flush=True)
