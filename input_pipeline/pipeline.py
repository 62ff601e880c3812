"""The training input pipeline: a random-access source -> shuffle -> repeat -> transforms -> batches.

One global, infinite stream of records is defined by the seed alone: epoch e is a seeded permutation of
the source, and record k's crop and flip come from a generator seeded by (seed, k). Process p of P takes
records p, p + P, p + 2P, ... of that stream, so one step's batches over all processes are a contiguous
run of the stream (no record twice within an epoch), and neither `read_threads` nor `worker_count`
changes what a step sees (except that with worker_count > 1 a skipped unreadable file shifts later
records between batches). The iterator's state is its position in the stream (per worker process if
worker_count > 0, so restore with the same worker_count); Orbax saves it through
`grain.checkpoint.CheckpointSave(iterator)`.
"""

from absl import flags
import grain
import ml_collections
from ml_collections import config_dict
import numpy as np

from facegen_jax.errors import ConfigError
from input_pipeline import sources
from input_pipeline import synthetic
from input_pipeline import transforms

SOURCES = ("synthetic", "folder", "tfds")
DOMAINS = synthetic.DOMAINS


def default_input_config() -> ml_collections.ConfigDict:
  """Every input setting with its default; placeholders keep a None default overridable by flag."""
  config = ml_collections.ConfigDict()
  config.source = "synthetic"          # One of SOURCES.
  config.resolution = 64               # Side of the square images the model sees.
  config.load_size = config_dict.placeholder(int)  # Resize to this before cropping; None = resolution.
  config.resize = "square"             # "square" (squash to load_size) or "shorter_side" (keep aspect).
  config.random_crop = False           # Random (else centre) crop of `resolution` from `load_size`.
  config.random_flip = True            # Mirror image and label map together with probability 1/2.
  config.num_classes = 19              # Parsing-map classes (CelebAMask-HQ has 19); labels must be below.
  config.shuffle = True                # A fresh seeded permutation every epoch; False keeps source order.
  config.worker_count = 0              # 0: read in threads of this process; >0: that many processes.
                                       # (Checkpointed iterator state is only valid for the same count.)
  config.read_threads = 8              # Threads decoding and transforming records (in each process).
  config.prefetch_buffer_size = 128    # Records decoded ahead of the consumer (in each process).

  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_examples = 10_000
  config.synthetic.domain = "photo"    # "photo" or "toon" (a second domain for translation models).
  config.synthetic.num_identities = config_dict.placeholder(int)  # None: num_examples // 4 (4 views each).
  config.synthetic.seed = 0            # The dataset's own seed: the data stay fixed across run seeds.

  config.folder = ml_collections.ConfigDict()
  config.folder.image_dir = config_dict.placeholder(str)  # Searched recursively.
  # Parsing maps (single-channel PNGs of class indices) paired to images by relative path and stem,
  # like SPADE's --dataset_mode custom; None for images only.
  config.folder.label_dir = config_dict.placeholder(str)
  # {stored value: class}, applied before the range check, e.g. {255: 0} for an "ignore" value.
  config.folder.label_mapping = config_dict.placeholder(object)
  config.folder.extensions = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

  config.tfds = ml_collections.ConfigDict()
  config.tfds.name = "celeb_a"         # Any TFDS name prepared as array_record, or a local builder.
  config.tfds.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.tfds.split = "train"
  config.tfds.image_key = "image"
  config.tfds.label_key = config_dict.placeholder(str)  # Feature holding the parsing map, if any.
  config.tfds.label_mapping = config_dict.placeholder(object)  # As folder.label_mapping.
  # Scalar features passed through as int32, named by their last path component in lower case:
  # "attributes/Male" -> batch["male"].
  config.tfds.int_keys = ()
  return config


def load_size(input_config) -> int:
  return input_config.load_size or input_config.resolution


def _label_mapping(value, field: str) -> dict[int, int] | None:
  if value is None:
    return None
  items = value.items() if hasattr(value, "items") else value
  try:
    return {int(src): int(dst) for src, dst in items}
  except (TypeError, ValueError):
    raise ConfigError(f"input.{field} {value!r} is not a mapping of ints: set --config.input.{field} to "
                      "e.g. '{255: 0}'") from None


def validate(input_config) -> None:
  """Raises ConfigError for the first setting that cannot work, naming the flag to change."""
  c = input_config
  if c.source not in SOURCES:
    raise ConfigError(f"input.source {c.source!r} is unknown: set --config.input.source to one of {SOURCES}")
  if c.resolution < 1 or load_size(c) < c.resolution:
    raise ConfigError(f"input.resolution {c.resolution} and load_size {c.load_size} need "
                      "1 <= resolution <= load_size: fix --config.input.resolution or --config.input.load_size")
  if c.resize not in transforms.RESIZE_MODES:
    raise ConfigError(f"input.resize {c.resize!r} is unknown: set --config.input.resize to one of "
                      f"{transforms.RESIZE_MODES}")
  if not 1 <= c.num_classes <= 256:
    raise ConfigError(f"input.num_classes {c.num_classes} is outside [1, 256] (labels are stored as uint8): "
                      "fix --config.input.num_classes")
  for field, minimum in (("worker_count", 0), ("read_threads", 1), ("prefetch_buffer_size", 1)):
    if c[field] < minimum:
      raise ConfigError(f"input.{field} {c[field]} is below {minimum}: fix --config.input.{field}")
  if c.source == "synthetic":
    if c.synthetic.domain not in DOMAINS:
      raise ConfigError(f"input.synthetic.domain {c.synthetic.domain!r} is unknown: set "
                        f"--config.input.synthetic.domain to one of {DOMAINS}")
    if c.synthetic.num_examples < 1:
      raise ConfigError(f"input.synthetic.num_examples {c.synthetic.num_examples} must be positive: "
                        "fix --config.input.synthetic.num_examples")
    low, high = synthetic.MIN_RESOLUTION, synthetic.MAX_RESOLUTION
    if not low <= load_size(c) <= high:
      raise ConfigError(f"input.load_size {load_size(c)} is outside [{low}, {high}], the sizes synthetic faces "
                        "are drawn at: fix --config.input.resolution or --config.input.load_size")
    if c.num_classes < synthetic.NUM_CLASSES:
      raise ConfigError(f"input.num_classes {c.num_classes} is below the {synthetic.NUM_CLASSES} classes of "
                        "synthetic faces: set --config.input.num_classes=19")
  elif c.source == "folder":
    if not c.folder.image_dir:
      raise ConfigError("input.folder.image_dir is not set: set --config.input.folder.image_dir to a "
                        "folder of images")
    _label_mapping(c.folder.label_mapping, "folder.label_mapping")
  elif c.source == "tfds":
    if not c.tfds.name:
      raise ConfigError("input.tfds.name is not set: set --config.input.tfds.name to a TFDS dataset name")
    _label_mapping(c.tfds.label_mapping, "tfds.label_mapping")


def create_source(input_config) -> grain.sources.RandomAccessDataSource:
  """The configured source, returning examples at their stored size (synthetic ones at load_size)."""
  validate(input_config)
  c = input_config
  if c.source == "synthetic":
    return synthetic.SyntheticFaces(c.synthetic.num_examples, load_size(c), seed=c.synthetic.seed,
                                    domain=c.synthetic.domain, num_identities=c.synthetic.num_identities)
  if c.source == "folder":
    return sources.FolderSource(
        c.folder.image_dir, label_dir=c.folder.label_dir, extensions=tuple(c.folder.extensions),
        num_classes=c.num_classes, label_mapping=_label_mapping(c.folder.label_mapping, "folder.label_mapping"))
  data_source = sources.open_tfds(c.tfds.name, split=c.tfds.split, data_dir=c.tfds.data_dir)
  return sources.TfdsSource(
      data_source, name=c.tfds.name, image_key=c.tfds.image_key, label_key=c.tfds.label_key,
      int_keys=tuple(c.tfds.int_keys), num_classes=c.num_classes,
      label_mapping=_label_mapping(c.tfds.label_mapping, "tfds.label_mapping"))


def _stream_seeds(seed: int) -> tuple[int, int]:
  """Independent uint32 seeds for the shuffle and the augmentations, both from the run seed."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed {seed!r} must be a non-negative int: fix --config.seed")
  shuffle_seed, augment_seed = np.random.SeedSequence(int(seed)).generate_state(2)
  return int(shuffle_seed), int(augment_seed)


def create_dataset(input_config, *, seed: int, local_batch_size: int, process_index: int = 0,
                   process_count: int = 1, source=None) -> grain.IterDataset:
  """This process's infinite stream of batches (see the module docstring for how records are assigned).

  `source`: the configured source if already built (a folder source scans its directory when built)."""
  c = input_config
  source = create_source(c) if source is None else source
  shuffle_seed, augment_seed = _stream_seeds(seed)
  ds = grain.MapDataset.source(source)
  if c.shuffle:
    ds = ds.shuffle(seed=shuffle_seed)  # Folds the epoch into the seed: every epoch a new order.
  ds = ds.repeat()
  ds = ds.map(transforms.Resize(load_size(c), c.resize))
  # Before sharding, so a record's crop and flip depend on its position in the global stream, not on
  # how many processes read it.
  ds = ds.random_map(transforms.CropAndFlip(c.resolution, c.random_crop, c.random_flip), seed=augment_seed)
  ds = ds[process_index::process_count]
  # Unreadable files come through as None and are dropped here (allow_nones=False).
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads,
                                            prefetch_buffer_size=c.prefetch_buffer_size))
  if c.worker_count > 0:
    _use_flag_defaults_if_unparsed()
    # Records, not batches, cross the process boundary: the workers' outputs interleave back into the
    # same record order, so batches do not depend on worker_count.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count,
                                                     per_worker_buffer_size=local_batch_size))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  # After batching: records wait in the buffers as uint8, a quarter of the float32 size.
  return ds.map(transforms.ToFloat())


def _use_flag_defaults_if_unparsed() -> None:
  # grain 0.2.18 starts workers by reading absl flags' .value, which raises UnparsedFlagAccessError in a
  # program that never parsed flags (pytest, a notebook, a script without app.run); defaults are what
  # such a program means. Under app.run, flags are parsed already and this does nothing.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def create_train_iterator(input_config: ml_collections.ConfigDict, *, seed: int, global_batch_size: int,
                          process_index: int = 0, process_count: int = 1, source=None) -> grain.DatasetIterator:
  """An infinite iterator over this process's share (global_batch_size // process_count) of each batch.

  Batches are dicts: "image" float32 (B, H, W, 3) in [-1, 1]; "label" int32 (B, H, W) if the source has
  parsing maps; int32 (B,) for each scalar field of the source. Checkpoint it with
  `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`.
  """
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ConfigError(f"batch_size {global_batch_size} must be a positive multiple of the process count "
                      f"{process_count}: fix --config.batch_size")
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index {process_index} is outside [0, {process_count})")
  dataset = create_dataset(input_config, seed=seed, local_batch_size=global_batch_size // process_count,
                           process_index=process_index, process_count=process_count, source=source)
  return iter(dataset)


def describe(input_config, source=None) -> str:
  """One line for the log: source, size, resolution and augmentation."""
  c = input_config
  source = create_source(c) if source is None else source
  if c.source == "synthetic":
    where = f"synthetic {c.synthetic.domain} faces (seed {c.synthetic.seed})"
  elif c.source == "folder":
    where = f"folder '{c.folder.image_dir}'" + (f" + labels '{c.folder.label_dir}'" if c.folder.label_dir else "")
  else:
    where = f"tfds {c.tfds.name}[{c.tfds.split}]" + (f" in '{c.tfds.data_dir}'" if c.tfds.data_dir else "")
  augment = [f"load {load_size(c)}"] if load_size(c) != c.resolution else []
  augment += ["random crop"] if c.random_crop and load_size(c) != c.resolution else []
  augment += ["flip"] if c.random_flip else []
  return (f"{where}: {len(source):,} examples at {c.resolution}x{c.resolution}"
          + (f" ({', '.join(augment)})" if augment else "")
          + (f", {c.num_classes}-class label maps" if _has_labels(c, source) else "")
          + f", {c.worker_count} workers x {c.read_threads} threads")


def _has_labels(input_config, source) -> bool:
  return input_config.source == "synthetic" or getattr(source, "has_labels", False)
