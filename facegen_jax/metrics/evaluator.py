"""FID and KID of a family's generator against its data: what training logs as eval/... and what
`python -m facegen_jax.evaluate --workdir DIR` prints. Both build an `Evaluator` from the run's config, so the
same checkpoint gives the same numbers in both.

* Every output the family's contract names (`CONTRACT.eval_outputs`: SPADE's "generated", a translator's "a2b"
  and "b2a", an inpainter's composite) is scored against its reference field. With one output the metrics are
  eval/fid, eval/kid_mean, eval/kid_std; with several, eval/fid_<output>, ... (e.g. eval/fid_a2b against domain
  B's real images).
* Reference images: the first `num_real` records of the reference field's domain in source order (`eval.split`
  for TFDS, `eval.image_dir` for folders select other data than training's; with `input.folder.heldout` the
  held-out part of training's folder, and num_samples / num_real at most its size), resized and centre-cropped as
  in training, never flipped. Their statistics are cached in `stats_dir` under a name made of (dataset, split,
  resolution, count, Inception weights) and reused by later evaluations, restarts and other runs sharing it.
* Generated images: `num_samples` per output, in batches of `batch_size`; batch b is `family.generate` (eval
  mode, with the EMA parameters where the state keeps them) on `family.eval_inputs(config, key_b, size, data)`
  with key_b = fold_in(key(eval.seed), b) and `data` the output's input fields of records
  [b * batch_size, (b + 1) * batch_size) of their domain (SPADE draws the reference records' label maps, a2b
  domain A's images). Outputs are rounded to uint8 as a saved PNG would be, so a folder of `generate` outputs
  scores the same.
* Every process reads its share of each batch; generation and Inception run sharded over the mesh axis
  "data" and the features come back replicated, so each process holds all of them (multi-host as training).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from typing import Callable

from absl import logging
from etils import epath
import grain
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
from ml_collections import config_dict
import numpy as np

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax import families
from facegen_jax import state as state_lib
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception
from input_pipeline import panels
from input_pipeline import pipeline
from input_pipeline import transforms

STATS_DIR = "fid_stats"  # Under the workdir, unless eval.stats_dir says otherwise.


def default_config() -> ml_collections.ConfigDict:
  """config.eval with its defaults (base_config adds it; runs saved before it existed get these)."""
  c = ml_collections.ConfigDict()
  c.every_steps = 0             # FID/KID every this many steps and at the last step; 0: never.
  c.num_samples = 10_000        # Generated images.
  c.num_real = config_dict.placeholder(int)  # Reference images; None: num_samples.
  c.batch_size = 50             # Images per generator + Inception call (a multiple of the device count).
  c.inception_weights = config_dict.placeholder(str)  # .npz of `python -m facegen_jax.convert inception`.
  c.stats_dir = config_dict.placeholder(str)  # Reference statistics cache; None: WORKDIR/fid_stats.
  c.kid = True
  c.kid_subsets = fid.KID_SUBSETS
  # Images per KID subset; None: 1000 (torch-fidelity's), or as many as the smaller image count allows.
  c.kid_subset_size = config_dict.placeholder(int)
  # The metric whose lowest value picks DIR/best_checkpoint ("fid", "kid_mean", "fid_a2b", ...); None: the FID of
  # the family's first eval output.
  c.best_metric = config_dict.placeholder(str)
  c.split = config_dict.placeholder(str)      # TFDS split of the reference data; None: input.tfds.split.
  c.image_dir = config_dict.placeholder(str)  # Folder of reference images; None: input.folder.image_dir.
  c.label_dir = config_dict.placeholder(str)  # Its parsing maps; None: input.folder.label_dir.
  c.seed = 0                    # Generator noise: the same samples at every evaluation.
  return c


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.eval over the defaults (a config.json from before config.eval existed has none)."""
  merged = default_config()
  if "eval" in config:
    merged.update(config.eval.to_dict() if hasattr(config.eval, "to_dict") else dict(config.eval))
  return merged


def num_real(e: ml_collections.ConfigDict) -> int:
  return e.num_samples if e.num_real is None else e.num_real


def config_option(key: str) -> str:
  """How a training run sets eval.<key> ("kid_off": how it turns KID off)."""
  return "--config.eval.kid=False" if key == "kid_off" else f"--config.eval.{key}"


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks config.eval before any training, naming the setting to change; only when evaluation is on."""
  e = eval_config(config)
  if not isinstance(e.every_steps, int) or e.every_steps < 0:
    raise errors.ConfigError(f"config.eval.every_steps must be >= 0 (0 turns evaluation off), got {e.every_steps!r}")
  check_heldout(config)
  if e.every_steps:
    check_settings(e, config_option, off_hint=", or set --config.eval.every_steps=0 to train without FID")


def heldout_domains(config: ml_collections.ConfigDict) -> list[str]:
  """The domains ("" for a one-domain config) whose folder holds out part of its images for evaluation."""
  return [d for d in (config.input.get("domains") or ("",))
          if (s := pipeline.domain_input_config(config.input, d)).source == "folder" and s.folder.get("heldout")]


def check_heldout(config: ml_collections.ConfigDict) -> None:
  """ConfigError when a folder's held-out part and eval.image_dir both name the reference photos."""
  e = eval_config(config)
  if e.image_dir and heldout_domains(config):
    raise errors.ConfigError(
        f"input.folder.heldout holds out part of the training folder for evaluation and eval.image_dir "
        f"'{e.image_dir}' names another folder of held-out photos: use one, --config.input.folder.heldout=0 to "
        "evaluate on eval.image_dir, or unset --config.eval.image_dir to hold out part of the folder")


def check_settings(e: ml_collections.ConfigDict, option: Callable[[str], str] = config_option,
                   off_hint: str = "") -> None:
  """The settings an evaluation needs, in training or from the evaluate command; `option(key)` names the flag."""
  for key in ("num_samples", "batch_size", "kid_subsets"):
    if not isinstance(e[key], int) or e[key] < 1:
      raise errors.ConfigError(f"eval.{key} must be a positive integer, got {e[key]!r}: set {option(key)}")
  if num_real(e) < 2 or e.num_samples < 2:
    raise errors.ConfigError(f"FID needs at least 2 images on each side, got {e.num_samples} generated and "
                             f"{num_real(e)} real: raise {option('num_samples')} (thousands for a usable FID)")
  if e.kid and e.kid_subset_size is not None and e.kid_subset_size < 2:
    raise errors.ConfigError(f"KID needs {option('kid_subset_size')} >= 2, got {e.kid_subset_size}")
  if e.kid and e.kid_subset_size is not None and e.kid_subset_size > min(e.num_samples, num_real(e)):
    raise errors.ConfigError(
        f"KID subset size {e.kid_subset_size} is larger than the {min(e.num_samples, num_real(e))} images: lower "
        f"{option('kid_subset_size')} to at most {min(e.num_samples, num_real(e))}, raise "
        f"{option('num_samples')}, or turn KID off with {option('kid_off')}")
  if not e.inception_weights:
    raise errors.ConfigError(
        f"FID needs Inception weights and {option('inception_weights')} is not set: convert them with "
        f"`{inception.CONVERT_COMMAND.format(path='inception.npz')}` and set {option('inception_weights')}="
        f"inception.npz{off_hint}")
  if not epath.Path(os.path.expanduser(e.inception_weights)).is_file():
    raise errors.ConfigError(
        f"Inception weights {e.inception_weights} not found: convert them with "
        f"`{inception.CONVERT_COMMAND.format(path=e.inception_weights)}` or fix {option('inception_weights')}")


def reference_input_config(config: ml_collections.ConfigDict, domain: str = "") -> ml_collections.ConfigDict:
  """A domain's one-domain input config for the reference data: eval's split or folders, source order, centre
  crop, no flip."""
  e = eval_config(config)
  check_heldout(config)
  c = ml_collections.ConfigDict(pipeline.domain_input_config(config.input, domain).to_dict())
  c.shuffle, c.random_crop, c.random_flip = False, False, False
  if e.split:
    c.tfds.split = e.split
  if e.image_dir:
    c.folder.image_dir = e.image_dir
    c.folder.label_dir = e.label_dir
  if c.source == "folder" and c.folder.get("heldout"):
    c.folder.part = "heldout"
  return c


def _file_digest(path: str) -> str:
  with epath.Path(path).open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def stats_file_name(input_config: ml_collections.ConfigDict, count: int, weights_digest: str) -> str:
  """(dataset, split, resolution, count, weights) -> a file name; any change in them gives a new name."""
  c = input_config
  if c.source == "synthetic":
    s = c.synthetic
    dataset = f"synthetic-{s.domain}-seed{s.seed}-n{s.num_examples}-ids{s.num_identities or 'default'}"
    if s.get("group_counts"):  # Exact faces per group replace num_examples.
      dataset += f"-groups{s.group_counts}"
  elif c.source == "folder":
    where = f"{os.path.abspath(c.folder.image_dir)}|{c.folder.label_dir}"
    if c.folder.get("heldout"):  # The held-out part (or what training reads) is other data than the whole folder.
      where += f"|heldout={c.folder.heldout}|{c.folder.get('part', 'train')}"
    dataset = (f"folder-{os.path.basename(os.path.normpath(c.folder.image_dir))}-"
               f"{hashlib.sha256(where.encode()).hexdigest()[:10]}")
  else:
    dataset = f"tfds-{c.tfds.name}-{c.tfds.split}"
  if panels.record_kind(c) == "panels":  # The target faces of panel sequences, which their settings shape.
    p = c.panels
    dataset += f"-panels{p.num_panels}-p{p.panel_size}-{p.domain}-{'tv' if p.torchvision_resize else 'aa'}"
  resolution = f"{c.resize}{pipeline.load_size(c)}-crop{c.resolution}"
  name = f"{dataset}_{resolution}_{count}_inception-{weights_digest[:12]}.npz"
  return re.sub(r"[^A-Za-z0-9._=-]", "-", name)


def _to_uint8(images: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8, rounding as `images.to_uint8` (and so a saved PNG) does."""
  return jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8)


class _ReferenceRecords:
  """Record i of a domain's reference data as the model sees it at eval: resized and centre-cropped, unflipped,
  in the source's dtypes (image uint8)."""

  def __init__(self, input_config, source):
    self._source = source
    self._resize = transforms.Resize(pipeline.load_size(input_config), input_config.resize)
    self._crop = transforms.CropAndFlip(pipeline.resolution_hw(input_config), random_crop=False,
                                        random_flip=False)

  def __call__(self, index: int) -> dict:
    record = self._source[index]
    if record is None:
      raise errors.DataError(f"reference record {index} of {self._source!r} is unreadable: remove or replace it")
    return self._crop.random_map(self._resize.map(record), np.random.default_rng(0))


def _fields(record: dict, fields: tuple[str, ...], real: bool) -> dict:
  """{field: value} of one record: the uint8 image for Inception (`real`), else in the train step's dtypes."""
  if real:
    return {field: np.asarray(record[pipeline.field_domain(field)[1]], np.uint8) for field in fields}
  converted = transforms.to_float(record)
  return {field: converted[pipeline.field_domain(field)[1]] for field in fields}


def _output_domain(name: str, output) -> str:
  domains = {pipeline.field_domain(field)[0] for field in output.inputs}
  if len(domains) > 1:
    raise ValueError(f"eval output {name!r} reads fields of several domains: {output.inputs}")
  return domains.pop() if domains else ""


class Evaluator:
  """Computes {"eval/fid", "eval/kid_mean", "eval/kid_std"} (per output: "eval/fid_a2b", "eval/kid_mean_a2b" also
  logged as "eval/kid_a2b", ...) of a train state.

  Build it once (it loads the weights and compiles on first use); call it with a state. `stats_dir` is where
  reference statistics are cached.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, *, stats_dir,
               option: Callable[[str], str] = config_option):
    self._config = config
    self._eval = e = eval_config(config)
    check_settings(e, option)
    self._family = families.get_family(config.family)
    self._outputs = dict(self._family.CONTRACT.eval_outputs)
    self._mesh = mesh
    devices = mesh.devices.size
    self._batch_size = math.ceil(e.batch_size / devices) * devices
    self._num_real = num_real(e)
    # Domain of the generator's inputs and (domain, key) of the reference images, per output.
    self._input_domain = {name: _output_domain(name, out) for name, out in self._outputs.items()}
    self._reference = {name: pipeline.field_domain(out.reference) for name, out in self._outputs.items()}
    domains = set(self._input_domain.values()) | {d for d, _ in self._reference.values()}
    self._inputs = {d: reference_input_config(config, d) for d in sorted(domains)}
    self._sources = {d: pipeline.create_source(c) for d, c in self._inputs.items()}
    self._cap_to_heldout(e, heldout_domains(config))
    for name, out in self._outputs.items():
      self._check_size(self._reference[name][0], self._num_real, "real images", option)
      if out.inputs:
        self._check_size(self._input_domain[name], e.num_samples, f"records to generate {name!r} from", option)
    weights = os.path.expanduser(e.inception_weights)
    digest = _file_digest(weights)
    self._stats_paths = {d: epath.Path(stats_dir) / stats_file_name(c, self._num_real, digest)
                         for d, c in self._inputs.items()}
    self._variables = jax.device_put(inception.load_params(weights), NamedSharding(mesh, P()))
    self._features = fid.feature_fn(mesh)
    self._data_sharding = NamedSharding(mesh, P("data"))
    self._generate = compile_lib.jit(self._generate_uint8, static_argnums=(2, 3),
                                     out_shardings=(self._data_sharding, NamedSharding(mesh, P())))
    self._real: dict[str, fid.Statistics] = {}

  def _cap_to_heldout(self, e: ml_collections.ConfigDict, domains: list[str]) -> None:
    """A held-out part's size is known only once its folder is listed: num_samples and num_real at most that."""
    for domain in (d for d in domains if d in self._sources):
      have = len(self._sources[domain])
      if e.num_samples > have or self._num_real > have:
        logging.info("eval: the held-out part of %s has %d images: num_samples %d -> %d, num_real %d -> %d",
                     self._inputs[domain].folder.image_dir, have, e.num_samples, min(e.num_samples, have),
                     self._num_real, min(self._num_real, have))
        e.num_samples, self._num_real = min(e.num_samples, have), min(self._num_real, have)

  @property
  def counts(self) -> tuple[int, int]:
    """(generated images per output, reference images): the config's, capped by a held-out part's size."""
    return self._eval.num_samples, self._num_real

  def _check_size(self, domain: str, needed: int, what: str, option) -> None:
    have = len(self._sources[domain])
    if have < needed:
      where = f"domain {domain!r} of the reference data" if domain else "the reference data"
      raise errors.ConfigError(
          f"{where} has {have} examples, fewer than the {needed} {what}: lower {option('num_samples')} (or "
          f"{option('num_real')}) to at most {have}")

  @property
  def metric_names(self) -> dict[str, str]:
    """{output: suffix of its metrics}: "" with one output (eval/fid), "_<output>" with several."""
    return {name: "" if len(self._outputs) == 1 else f"_{name}" for name in self._outputs}

  def _generate_uint8(self, state, data: dict, size: int, output: str, key: jax.Array):
    """(uint8 images of `output`, {name: (B,) figures} of the family's optional eval_scores)."""
    state = state_lib.inference_state(state)
    inputs = self._family.eval_inputs(self._config, key, size, data)
    generated = self._family.generate(self._config, state, inputs, key)
    score_fn = getattr(self._family, "eval_scores", None)
    scores = score_fn(self._config, state, inputs, generated, output) if score_fn else {}
    return _to_uint8(generated[output]), scores

  def _local_batches(self, count: int, fields: tuple[str, ...], *, domain: str = "", real: bool = False):
    """This process's rows of each global batch over records [0, count) of `domain`, zero-padded at the end.

    Yields (global index of the batch, number of real rows in it, {field: local rows}).
    """
    batch, processes, process = self._batch_size, jax.process_count(), jax.process_index()
    per_process = batch // processes if batch % processes == 0 else None
    if per_process is None:
      raise errors.ConfigError(f"eval.batch_size {batch} must be a multiple of the {processes} processes")
    num_batches = math.ceil(count / batch)
    read = _ReferenceRecords(self._inputs[domain], self._sources[domain])
    indices = [b * batch + process * per_process + j for b in range(num_batches) for j in range(per_process)]
    blank = {k: np.zeros_like(v) for k, v in _fields(read(0), fields, real).items()}
    records = grain.MapDataset.source(indices).map(
        lambda i: _fields(read(i), fields, real) if i < count else blank)
    records = records.to_iter_dataset(grain.ReadOptions(num_threads=self._inputs[domain].read_threads,
                                                        prefetch_buffer_size=2 * per_process))
    for b, rows in enumerate(records.batch(per_process)):
      yield b, min(batch, count - b * batch), rows

  def _global(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self._data_sharding, local)

  def _collect(self, count: int, what: str, batches, features_of_batch) -> np.ndarray:
    """Runs `features_of_batch(b, local rows)` over `batches` and gathers the first `count` feature rows."""
    progress = _Progress(what, count)
    out, pending, done = [], None, 0
    for b, valid, rows in batches:
      features = features_of_batch(b, rows)  # dispatched; the previous batch is fetched meanwhile
      if pending is not None:
        out.append(np.asarray(pending[0])[:pending[1]])
        done += pending[1]
        progress(done)
      pending = (features, valid)
    out.append(np.asarray(pending[0])[:pending[1]])
    progress(count)
    return np.concatenate(out)

  def reference_statistics(self, output: str | None = None) -> fid.Statistics:
    """The statistics of `output`'s reference images (default: the first output's): from the cache if there,
    else computed (by all processes) and cached."""
    domain, key = self._reference[output or next(iter(self._outputs))]
    if domain not in self._real:
      path = self._stats_paths[domain]
      have = path.exists()
      if jax.process_count() > 1:  # All processes compute together unless every one can read the file.
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        have = bool(np.min(multihost_utils.process_allgather(np.int32(have))))
      real = fid.Statistics.load(path) if have else None
      if real is not None and real.count != self._num_real:
        real = None
      if real is None:
        logging.info("eval: reference statistics of %d images -> %s", self._num_real, path)
        field = f"{domain}/{key}" if domain else key
        batches = self._local_batches(self._num_real, (field,), domain=domain, real=True)
        real = fid.Statistics.of(self._collect(
            self._num_real, f"real{' ' + domain if domain else ''}", batches,
            lambda b, rows: self._features(self._variables, self._global(rows[field]))))
        if not path.exists():  # Each process whose filesystem lacks it; the write is atomic.
          path.parent.mkdir(parents=True, exist_ok=True)
          real.save(path)
      else:
        logging.info("eval: reference statistics from %s", path)
      self._real[domain] = real
    return self._real[domain]

  def generated_features(self, state, output: str | None = None, scores: dict | None = None) -> np.ndarray:
    """Inception features of `output`'s num_samples generated images; `scores`, if given, gets the mean of
    each of the family's eval_scores over those samples."""
    output = output or next(iter(self._outputs))
    key, count = jax.random.key(self._eval.seed), self._eval.num_samples
    fields = tuple(self._outputs[output].inputs)
    if fields:
      batches = self._local_batches(count, fields, domain=self._input_domain[output])
    else:
      batches = ((b, min(self._batch_size, count - b * self._batch_size), {})
                 for b in range(math.ceil(count / self._batch_size)))

    per_batch = []  # (figures of the batch, its rows that are samples): fetched after the loop

    def features_of_batch(b, rows):
      images, figures = self._generate(state, {k: self._global(v) for k, v in rows.items()}, self._batch_size,
                                       output, jax.random.fold_in(key, b))
      per_batch.append((figures, min(self._batch_size, count - b * self._batch_size)))
      return self._features(self._variables, images)

    features = self._collect(count, f"generated {output}", batches, features_of_batch)
    if scores is not None and per_batch and per_batch[0][0]:
      for name in per_batch[0][0]:
        scores[name] = float(np.mean(np.concatenate([np.asarray(f[name])[:valid] for f, valid in per_batch])))
    return features

  def __call__(self, state) -> dict[str, float]:
    e = self._eval
    scalars = {}
    for output, suffix in self.metric_names.items():
      real = self.reference_statistics(output)
      figures = {}
      fake = fid.Statistics.of(self.generated_features(state, output, figures))
      result = fid.metrics(real, fake, with_kid=e.kid, num_subsets=e.kid_subsets, subset_size=e.kid_subset_size,
                           option="eval.kid_subset_size")
      scalars.update({f"eval/{name}{suffix}": value for name, value in result.items()})
      if suffix and "kid_mean" in result:  # Per direction also as eval/kid_a2b, the name the U-GAT-IT issue uses.
        scalars[f"eval/kid{suffix}"] = result["kid_mean"]
      scalars.update({f"eval/{name}": value for name, value in figures.items()})
    return scalars

  def best_metric(self) -> str:
    """The eval/ scalar (without the prefix) whose lowest value picks the best checkpoint."""
    return self._eval.best_metric or f"fid{next(iter(self.metric_names.values()))}"


class _Progress:
  """Logs images done, rate and ETA every `every` seconds and at the end."""

  def __init__(self, what: str, total: int, every: float = 15.0):
    self._what, self._total, self._every = what, total, every
    self._start = self._last = time.perf_counter()

  def __call__(self, done: int) -> None:
    now = time.perf_counter()
    if done < self._total and now - self._last < self._every:
      return
    self._last = now
    rate = done / max(now - self._start, 1e-9)
    eta = (self._total - done) / rate if rate > 0 else float("inf")
    logging.info("eval: %s images %d/%d (%.1f images/s, ETA %.0f s)", self._what, done, self._total, rate, eta)
