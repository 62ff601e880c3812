"""The training input pipeline: a random-access source -> shuffle -> repeat -> transforms -> batches.

One global, infinite stream of records is defined by the seed alone: epoch e is a seeded permutation of
the source, and record k's crop and flip come from a generator seeded by (seed, k). Process p of P takes
records p, p + P, p + 2P, ... of that stream, so one step's batches over all processes are a contiguous
run of the stream (no record twice within an epoch), and neither `read_threads` nor `worker_count`
changes what a step sees (except that with worker_count > 1 a skipped unreadable file shifts later
records between batches). The iterator's state is its position in the stream (per worker process if
worker_count > 0, so restore with the same worker_count); Orbax saves it through
`grain.checkpoint.CheckpointSave(iterator)`.

With several domains (`config.input.domains = ("a", "b")`, unpaired translation), each domain is such a
stream of its own source, with its own seeds (from the run seed and the domain's name), and record k of
the pipeline is record k of every stream, keyed "a/image", "b/image", ...; one iterator holds every
stream's position in its one state.

With groups (`config.input.groups = (0, 1, 3)`, Face2webtoon's per-group loaders), every (domain, group) is
such a stream of that group's records only, seeded by (run seed, domain, group), and step k's records, all
B of the global batch in every domain, are the next B of group groups[k % len(groups)]'s streams: both
domains of a step show one group, round-robin, so a small group is seen as often as a large one and
repeats more epochs. Process p still takes records p, p + P, ... of the global stream, which keeps a
step's shards in that step's group; a record's crop and flip come from its position in its group's
stream. An unreadable file is replaced by the next readable record of its group's stream, so a step never
mixes groups. (Face2webtoon's UGATIT.next_iter sorts its group list and its first step, step 1, draws the
second group; here the order is as configured and step 0 draws groups[0].)

With `config.input.record = "panels"` the records are comic panel sequences (SSuperGAN's) instead of faces: the
same `source` names build input_pipeline/panels.py's sources, whose records come at their final sizes, so the
resize, crop and flip are skipped (the fields are documented there). One source; no domains or groups.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import os
import re
import sys
import zlib

from absl import flags
import grain
import ml_collections
from ml_collections import config_dict
import numpy as np

from facegen_jax import masks as masks_lib
from facegen_jax.errors import ConfigError, DataError
from input_pipeline import panels
from input_pipeline import sources
from input_pipeline import synthetic
from input_pipeline import transforms

SOURCES = ("synthetic", "folder", "tfds")
DOMAINS = synthetic.DOMAINS
SOURCE_GROUPS = ("synthetic", "folder", "tfds")  # The sub-configs a domain has of its own, beside `source`.


def _add_source_settings(config: ml_collections.ConfigDict, *, synthetic_domain, synthetic_seed) -> None:
  """The settings of one source: `synthetic`, `folder`, `tfds` (`source` itself is set by the caller)."""
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_examples = 10_000
  config.synthetic.domain = synthetic_domain  # "photo" or "toon" (a second domain for translation models).
  config.synthetic.num_identities = config_dict.placeholder(int)  # None: num_examples // 4 (4 views each).
  config.synthetic.seed = synthetic_seed      # The dataset's own seed: the data stay fixed across run seeds.
  # Exactly this many faces per group (woman, man, man + glasses, woman + glasses), replacing num_examples,
  # e.g. --config.input.b.synthetic.group_counts=1050,249,49,38 (the seed's webtoons); None: the natural
  # ~45/35/12/8 % of num_examples.
  config.synthetic.group_counts = config_dict.placeholder(object)

  config.folder = ml_collections.ConfigDict()
  config.folder.image_dir = config_dict.placeholder(str)  # Searched recursively.
  # Parsing maps (single-channel PNGs of class indices) paired to images by relative path and stem,
  # like SPADE's --dataset_mode custom; None for images only.
  config.folder.label_dir = config_dict.placeholder(str)
  # {stored value: class}, applied before the range check, e.g. {255: 0} for an "ignore" value.
  config.folder.label_mapping = config_dict.placeholder(object)
  # Hole masks (single-channel PNGs, 255/white = hole) paired like label_dir; batch "mask" is 1 in holes.
  config.folder.mask_dir = config_dict.placeholder(str)
  # image_dir/<g>/... are group g (Face2webtoon's trainA/0, trainA/1): the folder's name if every name is an
  # integer, else its index in the sorted names. Batch "group" int32.
  config.folder.groups = False
  config.folder.extensions = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
  # Hold out part of image_dir for evaluation (one person's photos): a fraction in (0, 1) (each file by a hash of
  # its relative path, so adding photos moves no other file) or a whole count (the files of lowest hash); training
  # reads the rest, the evaluator (FID, hole metrics) only that part. 0: no split (eval.image_dir, if set, is the
  # held-out folder instead; setting both is an error).
  config.folder.heldout = 0.0

  config.tfds = ml_collections.ConfigDict()
  config.tfds.name = "celeb_a"         # Any TFDS name prepared as array_record, or a local builder.
  config.tfds.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.tfds.split = "train"
  config.tfds.image_key = "image"
  config.tfds.label_key = config_dict.placeholder(str)  # Feature holding the parsing map, if any.
  config.tfds.label_mapping = config_dict.placeholder(object)  # As folder.label_mapping.
  config.tfds.mask_key = config_dict.placeholder(str)   # Feature holding a hole mask (255 or 1 = hole), if any.
  # Scalar features passed through as int32, named by their last path component in lower case:
  # "attributes/Male" -> batch["male"].
  config.tfds.int_keys = ()


def default_input_config() -> ml_collections.ConfigDict:
  """Every input setting with its default; placeholders keep a None default overridable by flag."""
  config = ml_collections.ConfigDict()
  # () reads one source (the settings below); names such as ("a", "b") read one source per name, each set in
  # config.input.<name> = domain_config(...), into one batch keyed "a/image", "b/image", ...
  config.domains = ()
  config.source = "synthetic"          # One of SOURCES.
  # Group ids, e.g. (0, 1, 3) or --config.input.groups=0,1,3: step k draws every domain's records from group
  # groups[k % len(groups)] (see the module docstring). () samples all records alike. Records carry their
  # group as "group" (synthetic faces; folder.groups subfolders).
  config.groups = ()
  # The size the model sees: an int (square) or (height, width), e.g. --config.input.resolution='(224, 192)'.
  config.resolution = config_dict.FieldReference(64, field_type=object)
  # Resize to this before cropping; None = resolution. An int is both sides ("square") or the shorter side
  # ("shorter_side"); a (height, width) pair is the exact size ("square") or the box the image must cover.
  config.load_size = config_dict.placeholder(object)
  config.resize = "square"             # "square" (squash to load_size) or "shorter_side" (keep aspect).
  config.random_crop = False           # Random (else centre) crop of `resolution` from `load_size`.
  config.random_flip = True            # Mirror image, label map, mask and landmarks together with probability 1/2.
  config.num_classes = 19              # Parsing-map classes (CelebAMask-HQ has 19); labels must be below.
  config.shuffle = True                # A fresh seeded permutation every epoch; False keeps source order.
  config.worker_count = 0              # 0: read in threads of this process; >0: that many processes.
                                       # (Checkpointed iterator state is only valid for the same count.)
  config.read_threads = 8              # Threads decoding and transforming records (in each process, per domain).
  config.prefetch_buffer_size = 128    # Records decoded ahead of the consumer (in each process, per domain).
  _add_source_settings(config, synthetic_domain="photo", synthetic_seed=0)
  # "image": faces (the batch fields of create_train_iterator); "panels": comic panel sequences, a target panel
  # with its face painted white and the face itself (input_pipeline/panels.py), from the same sources: synthetic
  # sequences, folder.image_dir = a folder of sequences, or tfds.name = "golden_panels".
  config.record = "image"
  # num_panels, panel_size, face_size (the same setting as resolution), domain, torchvision_resize.
  config.panels = panels.default_config(config.get_ref("resolution"))
  # Hole masks drawn for every record (batch "mask", 1 = hole; see `MaskedSource`); "none" keeps a source's own.
  config.masks = masks_config()
  return config


MASK_KINDS = ("none", "surgical", "n95", "kn95", "cloth", "mask", "random", "folder")
FACE_MASK_KINDS = ("surgical", "n95", "kn95", "cloth", "mask")


def masks_config() -> ml_collections.ConfigDict:
  """config.input.masks: the hole drawn for each record, the same for the same (seed, record index) always."""
  c = ml_collections.ConfigDict()
  # "surgical" | "n95" | "kn95" | "cloth": MaskTheFace's medical masks from the face's 68 landmarks (synthetic
  # faces give theirs); "mask": any of the four per record; "random": TFill's training mix (centre box / random
  # rectangles / free-form strokes); "folder": user masks from `mask_dir` (white = hole, file i % n for record i);
  # "none": no drawn masks (a folder.mask_dir or tfds.mask_key source brings its own).
  c.kind = "none"
  c.band = config_dict.placeholder(object)  # (lo, hi) hole ratio, e.g. (0.2, 0.3); None: as drawn.
  c.seed = 0             # The masks' own seed: evaluation masks stay fixed across runs and run seeds.
  c.dilate = 0.0         # Grow every hole by this many pixels (of the stored image) to cover a real mask.
  c.mask_dir = config_dict.placeholder(str)  # kind "folder": a folder of mask PNGs.
  return c


def domain_config(**overrides) -> ml_collections.ConfigDict:
  """The source settings of one domain of a multi-domain config (`source`, `synthetic`, `folder`, `tfds`).

  Defaults are those of the one-domain settings, except that synthetic.domain and synthetic.seed default
  (None) to the domain's position in config.input.domains: photo with seed 0 for the first, toon with seed 1
  for the second, so two synthetic domains are unpaired (different faces). Overrides are values or dicts for
  the sub-configs: `domain_config(source="folder", folder=dict(image_dir="data/trainA", groups=True))`.
  """
  config = ml_collections.ConfigDict()
  config.source = "synthetic"
  _add_source_settings(config, synthetic_domain=config_dict.placeholder(str),
                       synthetic_seed=config_dict.placeholder(int))
  for key, value in overrides.items():
    if key not in config:
      raise ConfigError(f"domain_config({key}=...): {key!r} is not a source setting; use one of {tuple(config)}")
    if key not in SOURCE_GROUPS:
      config[key] = value
      continue
    for field, field_value in dict(value).items():
      if field not in config[key]:
        raise ConfigError(f"domain_config({key}={{{field!r}: ...}}): {key}.{field} is not a setting; use one "
                          f"of {tuple(config[key])}")
      config[key][field] = field_value
  return config


def _size_hw(value, field: str) -> tuple[int, int]:
  """(height, width) of an int or pair setting, or a ConfigError naming the flag."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value), int(value)
  if (isinstance(value, (tuple, list)) and len(value) == 2
      and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
    return int(value[0]), int(value[1])
  raise ConfigError(f"input.{field} {value!r} is neither an int nor a (height, width) pair of ints: set "
                    f"--config.input.{field}=128 or --config.input.{field}='(224, 192)'")


def resolution_hw(input_config) -> tuple[int, int]:
  """(height, width) of the images the model sees."""
  return _size_hw(input_config.resolution, "resolution")


def load_size_hw(input_config) -> tuple[int, int]:
  """(height, width) of the box the resize targets ("square": the exact size; "shorter_side": the size the
  aspect-keeping resize covers)."""
  if input_config.load_size is None:
    return resolution_hw(input_config)
  return _size_hw(input_config.load_size, "load_size")


def load_size(input_config) -> int | tuple[int, int]:
  """The resize size as configured: an int (as before pairs existed) or a (height, width) tuple."""
  value = input_config.load_size or input_config.resolution
  return value if isinstance(value, (int, np.integer)) else tuple(value)


def _crop_size(input_config) -> int | tuple[int, int]:
  value = input_config.resolution
  return value if isinstance(value, (int, np.integer)) else tuple(value)


def field_domain(field: str) -> tuple[str, str]:
  """The domain and record key of a batch key: "a/image" -> ("a", "image"), "image" -> ("", "image")."""
  if "/" not in field:
    return "", field
  domain, key = field.split("/", 1)
  return domain, key


def domain_names(input_config) -> tuple[str, ...]:
  """The configured domain names; () for one domain."""
  names = input_config.get("domains") or ()  # A config saved before domains existed has none.
  if isinstance(names, str):
    raise ConfigError(f"input.domains {names!r} is a string, not a tuple of names: set "
                      "--config.input.domains='(\"a\", \"b\")'")
  names = tuple(names)
  shared = set(default_input_config())
  for name in names:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in shared:
      raise ConfigError(f"input.domains has the name {name!r}, which is not an identifier or is the name of a "
                        "shared input setting: set --config.input.domains='(\"a\", \"b\")' (a tuple of names)")
    if not isinstance(input_config.get(name), ml_collections.ConfigDict) or "source" not in input_config[name]:
      raise ConfigError(f"input.domains names {name!r} but config.input.{name} is not a domain's settings: add "
                        f"`config.input.{name} = pipeline.domain_config(...)` to the config file")
  if len(set(names)) != len(names):
    raise ConfigError(f"input.domains {names} repeats a name: fix --config.input.domains")
  return names


def _domain_settings(input_config) -> dict[str, tuple[ml_collections.ConfigDict, str]]:
  """{domain: (its source settings, their place in the config for messages)}; {"": (input, "input")} for one."""
  names = domain_names(input_config)
  if not names:
    return {"": (input_config, "input")}
  return {name: (input_config[name], f"input.{name}") for name in names}


def _synthetic_domain_and_seed(settings, index: int) -> tuple[str, int]:
  """synthetic.domain and synthetic.seed, a None (a domain_config default) filled in from the position."""
  s = settings.synthetic
  domain = s.domain if s.domain is not None else DOMAINS[index % len(DOMAINS)]
  return domain, (s.seed if s.seed is not None else index)


def domain_input_config(input_config, domain: str = "") -> ml_collections.ConfigDict:
  """A one-domain input config reading `domain` ("" for a one-domain config, returned as is): the shared
  settings with the domain's source settings at the top level and their position defaults filled in."""
  settings = _domain_settings(input_config)
  if domain not in settings:
    raise ConfigError(f"domain {domain!r} is not one of input.domains {tuple(settings)}")
  if domain == "":
    return input_config
  s, _ = settings[domain]
  flat = default_input_config()
  for key in flat:
    if key not in ("domains", "source") + SOURCE_GROUPS:
      flat[key] = input_config.get(key, flat[key])
  flat.source = s.source
  for group in SOURCE_GROUPS:
    for key, value in s[group].items():
      flat[group][key] = value
  flat.synthetic.domain, flat.synthetic.seed = _synthetic_domain_and_seed(s, list(settings).index(domain))
  return flat


def _int_tuple(value) -> tuple | None:
  """A tuple of a sequence, of a string of comma-separated items ("0,1,3", "(0, 1, 3)") or of one int, as a
  flag may give it (an object-typed field parses --config.groups=2 as 2); None if it is none of those."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return (value,)
  if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], str):
    value = value[0]  # --config.input.groups='"0,1,3"' reaches the config as ("0,1,3",).
  if isinstance(value, str):
    items = [item.strip() for item in value.strip().strip("()[]").split(",")]
    return tuple(int(item) if re.fullmatch(r"-?\d+", item) else item for item in items if item)
  if isinstance(value, (tuple, list)):
    return tuple(value)
  return None


def group_ids(input_config) -> tuple[int, ...]:
  """config.input.groups as a tuple of ints (() = no group sampling), or a ConfigError naming the fix."""
  value = input_config.get("groups") or ()  # A config saved before groups existed has none.
  groups = _int_tuple(value)
  fix = "set --config.input.groups=0,1,3 (distinct group ids >= 0, or () for no group sampling)"
  if groups is None:
    raise ConfigError(f"input.groups {value!r} is not a tuple of group ids: {fix}")
  for group in groups:
    if not isinstance(group, (int, np.integer)) or isinstance(group, bool):
      raise ConfigError(f"input.groups {value!r} has {group!r}, which is not an int: {fix}")
    if group < 0:
      raise ConfigError(f"input.groups {value!r} has the negative id {group}: {fix}")
  repeated = sorted({int(g) for g in groups if groups.count(g) > 1})
  if repeated:
    raise ConfigError(f"input.groups {value!r} repeats group {repeated[0]}: list each group once; {fix}")
  return tuple(int(g) for g in groups)


def _group_counts(value, flag: str) -> tuple[int, ...] | None:
  """synthetic.group_counts as a tuple of ints, or a ConfigError naming the flag."""
  if value is None:
    return None
  counts = _int_tuple(value)
  n = len(synthetic.GROUP_NAMES)
  valid = (counts is not None and len(counts) == n and all(
      isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in counts) and sum(counts) > 0)
  if not valid:
    raise ConfigError(f"{flag}.synthetic.group_counts {value!r} is not {n} non-negative ints with a positive "
                      f"sum, one per group {synthetic.GROUP_NAMES}: set --config.{flag}.synthetic.group_counts="
                      "1050,249,49,38 or None")
  return tuple(int(c) for c in counts)


def _label_mapping(value, field: str) -> dict[int, int] | None:
  if value is None:
    return None
  items = value.items() if hasattr(value, "items") else value
  try:
    return {int(src): int(dst) for src, dst in items}
  except (TypeError, ValueError):
    raise ConfigError(f"{field} {value!r} is not a mapping of ints: set --config.{field} to "
                      "e.g. '{255: 0}'") from None


def validate(input_config) -> None:
  """Raises ConfigError for the first setting that cannot work, naming the flag to change."""
  c = input_config
  record = panels.record_kind(c)
  if record not in panels.RECORDS:
    raise ConfigError(f"input.record {record!r} is unknown: set --config.input.record to one of {panels.RECORDS}")
  settings = _domain_settings(c)
  for s, flag in settings.values():
    if s.source not in SOURCES:
      raise ConfigError(f"{flag}.source {s.source!r} is unknown: set --config.{flag}.source to one of {SOURCES}")
  resolution, load = resolution_hw(c), load_size_hw(c)
  if min(resolution) < 1 or load[0] < resolution[0] or load[1] < resolution[1]:
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
  if record == "panels":
    panels.validate(c)  # Its own sizes and sources; resolution is the face size.
    _validate_masks(c, settings, panels_record=True)
    return
  group_ids(c)
  _validate_masks(c, settings)
  for index, (s, flag) in enumerate(settings.values()):
    _validate_source(c, s, flag, index)


def _mask_band(value) -> tuple[float, float] | None:
  if value is None:
    return None
  band = tuple(value) if isinstance(value, (tuple, list)) else None
  if (band is None or len(band) != 2 or not all(isinstance(v, (int, float)) for v in band)
      or not 0 <= band[0] < band[1] <= 1):
    raise ConfigError(f"input.masks.band {value!r} is not a (lo, hi) hole ratio with 0 <= lo < hi <= 1: set "
                      "--config.input.masks.band='(0.2, 0.3)' or None")
  return float(band[0]), float(band[1])


def _validate_masks(c, settings, panels_record: bool = False) -> None:
  m = c.get("masks")
  kind = "none" if m is None else m.kind
  if kind not in MASK_KINDS:
    raise ConfigError(f"input.masks.kind {kind!r} is unknown: set --config.input.masks.kind to one of {MASK_KINDS}")
  if kind == "none":
    return
  if panels_record or list(settings) != [""]:
    raise ConfigError("input.masks draws holes for one source of face images, not for panel sequences or several "
                      "domains: set --config.input.masks.kind=none")
  _mask_band(m.band)
  if m.dilate < 0 or not isinstance(m.seed, int) or m.seed < 0:
    raise ConfigError(f"input.masks.dilate {m.dilate!r} and seed {m.seed!r} must be >= 0: fix "
                      "--config.input.masks.dilate / --config.input.masks.seed")
  if c.source == "folder" and c.folder.mask_dir or c.source == "tfds" and c.tfds.get("mask_key"):
    raise ConfigError(f"input.masks.kind {kind!r} would replace the masks the {c.source} source brings: set "
                      "--config.input.masks.kind=none to use those, or unset folder.mask_dir / tfds.mask_key")
  if kind == "folder" and not (m.mask_dir and os.path.isdir(m.mask_dir)):
    raise ConfigError(f"input.masks.kind 'folder' needs a folder of mask PNGs (white = hole) and mask_dir is "
                      f"{m.mask_dir!r}: set --config.input.masks.mask_dir")
  if kind in FACE_MASK_KINDS and c.source == "folder":
    raise ConfigError(
        f"input.masks.kind {kind!r} draws a medical mask from a face's 68 landmarks, and folder images carry none: "
        f"write the masks with dlib's landmarks (`python -m facegen_jax.masks --images {c.folder.image_dir} --out "
        "MASKED --type surgical`) and set --config.input.folder.mask_dir=MASKED/masks --config.input.masks.kind=none")


def _validate_source(c, s, flag: str, index: int) -> None:
  """Checks the settings of one source: `s` is input (flag "input") or one domain's (flag "input.b")."""
  if s.source == "synthetic":
    domain, seed = _synthetic_domain_and_seed(s, index)
    if domain not in DOMAINS:
      raise ConfigError(f"{flag}.synthetic.domain {domain!r} is unknown: set "
                        f"--config.{flag}.synthetic.domain to one of {DOMAINS}")
    if s.synthetic.num_examples < 1:
      raise ConfigError(f"{flag}.synthetic.num_examples {s.synthetic.num_examples} must be positive: "
                        f"fix --config.{flag}.synthetic.num_examples")
    if not isinstance(seed, int) or seed < 0:
      raise ConfigError(f"{flag}.synthetic.seed {seed!r} must be a non-negative int: fix "
                        f"--config.{flag}.synthetic.seed")
    _group_counts(s.synthetic.get("group_counts"), flag)
    low, high = synthetic.MIN_RESOLUTION, synthetic.MAX_RESOLUTION
    if not low <= max(load_size_hw(c)) <= high:
      raise ConfigError(f"input.load_size {load_size(c)} is outside [{low}, {high}], the sizes synthetic faces "
                        "are drawn at (the longer side): fix --config.input.resolution or --config.input.load_size")
    if c.num_classes < synthetic.NUM_CLASSES:
      raise ConfigError(f"input.num_classes {c.num_classes} is below the {synthetic.NUM_CLASSES} classes of "
                        "synthetic faces: set --config.input.num_classes=19")
  elif s.source == "folder":
    if not s.folder.image_dir:
      raise ConfigError(f"{flag}.folder.image_dir is not set: set --config.{flag}.folder.image_dir to a "
                        "folder of images")
    _label_mapping(s.folder.label_mapping, f"{flag}.folder.label_mapping")
    sources.check_heldout(s.folder.get("heldout", 0), f"{flag}.folder")
  elif s.source == "tfds":
    if not s.tfds.name:
      raise ConfigError(f"{flag}.tfds.name is not set: set --config.{flag}.tfds.name to a TFDS dataset name")
    _label_mapping(s.tfds.label_mapping, f"{flag}.tfds.label_mapping")


def _build_source(c, s, flag: str, index: int) -> grain.sources.RandomAccessDataSource:
  source = _build_plain_source(c, s, flag, index)
  m = c.get("masks")  # A config saved before masks existed has none.
  if m is None or m.kind == "none":
    return source
  return MaskedSource(source, m.kind, band=_mask_band(m.band), seed=m.seed, dilate=m.dilate, mask_dir=m.mask_dir)


def _build_plain_source(c, s, flag: str, index: int) -> grain.sources.RandomAccessDataSource:
  if panels.record_kind(c) == "panels":
    return panels.create_source(c)
  if s.source == "synthetic":
    domain, seed = _synthetic_domain_and_seed(s, index)
    counts = _group_counts(s.synthetic.get("group_counts"), flag)
    # Drawn square at the longer side; the shared resize and crop make any other shape.
    return synthetic.SyntheticFaces(sum(counts) if counts else s.synthetic.num_examples, max(load_size_hw(c)),
                                    seed=seed, domain=domain, num_identities=s.synthetic.num_identities,
                                    group_counts=counts)
  if s.source == "folder":
    f = s.folder
    # .get: a config saved before a setting existed (an old run directory) reads as its default.
    return sources.FolderSource(
        f.image_dir, label_dir=f.label_dir, mask_dir=f.get("mask_dir"), groups=bool(f.get("groups", False)),
        extensions=tuple(f.extensions), num_classes=c.num_classes,
        label_mapping=_label_mapping(f.label_mapping, f"{flag}.folder.label_mapping"), flag=f"{flag}.folder",
        heldout=f.get("heldout", 0), part=f.get("part", "train"))  # part: set by the evaluator's reference config
  t = s.tfds
  data_source = sources.open_tfds(t.name, split=t.split, data_dir=t.data_dir, flag=f"{flag}.tfds")
  return sources.TfdsSource(
      data_source, name=t.name, image_key=t.image_key, label_key=t.label_key, mask_key=t.get("mask_key"),
      int_keys=tuple(t.int_keys), num_classes=c.num_classes,
      label_mapping=_label_mapping(t.label_mapping, f"{flag}.tfds.label_mapping"), flag=f"{flag}.tfds")


# TFill's training mix (options mask_type [0, 1, 3]: one type per image): type 0 is the centre box 30 % of the time
# and a random rectangle mask otherwise; type 3 (external irregular mask files) is stood in for by free-form strokes.
_TFILL_MIX = (("center", 0.1), ("boxes", 1 / 3 * 0.7 + 1 / 3), ("strokes", 1 / 3))
_MIX_STREAM = 0x6D6978  # "mix": the kind's draw is independent of the hole's own generator


class MaskedSource:
  """A source whose records gain "mask" (uint8 (H, W), 255 = hole) at their stored size, before any resize or
  crop, so the hole moves with the face; record `index`'s hole is `masks.record_hole(kind, seed, index, ...)`,
  the same in every epoch, run and process (and so in evaluation). Face kinds take synthetic faces' own 68
  landmarks, or a record's "landmarks" (68, 2) with pixel centres at +0.5 (a TFDS feature)."""

  def __init__(self, source, kind: str, *, band=None, seed: int = 0, dilate: float = 0.0, mask_dir=None):
    self.source, self.kind, self.band, self.seed, self.dilate = source, kind, band, seed, dilate
    self.mask_files = None
    if kind == "folder":
      self.mask_files = sorted(os.path.join(mask_dir, n) for n in os.listdir(mask_dir) if n.lower().endswith(".png"))
      if not self.mask_files:
        raise ConfigError(f"input.masks.mask_dir {mask_dir} holds no .png masks: fix --config.input.masks.mask_dir")

  def __len__(self) -> int:
    return len(self.source)

  def __getattr__(self, name):  # record_groups, has_labels, num_groups, ... of the wrapped source
    if name.startswith("__") or name == "source":
      raise AttributeError(name)
    return getattr(self.source, name)

  def __repr__(self) -> str:
    return f"MaskedSource({self.source!r}, kind={self.kind!r}, band={self.band}, seed={self.seed})"

  def _landmarks(self, index: int, record: dict) -> np.ndarray:
    if isinstance(self.source, synthetic.SyntheticFaces):
      s = self.source
      return synthetic.landmarks68(s.seed, s.render_index(index), s.resolution, s.domain, s.num_identities)
    points = record.get(transforms.LANDMARKS_KEY)
    if points is None or np.shape(points) != (68, 2):
      raise DataError(f"input.masks.kind {self.kind!r} needs 68 face landmarks per record and record {index} of "
                      f"{self.source!r} has {'none' if points is None else np.shape(points)}: use synthetic faces, "
                      "or write masks with `python -m facegen_jax.masks` and read them as the source's masks")
    return np.asarray(points, np.float64) - 0.5  # dlib's convention: pixel centres at integers

  def kind_of(self, index: int) -> str:
    """The masks-module kind drawn for record `index`."""
    if self.kind == "mask":
      return "random"  # masks.py's "random": any of the four medical masks
    if self.kind != "random":
      return self.kind
    mix = [(k, p) for k, p in _TFILL_MIX
           if k != "center" or self.band is None or self.band[0] <= 0.25 <= self.band[1]]
    probs = np.array([p for _, p in mix])
    pick = np.random.default_rng([_MIX_STREAM, self.seed, index]).choice(len(mix), p=probs / probs.sum())
    return mix[pick][0]

  def __getitem__(self, index: int):
    record = self.source[index]
    if record is None:
      return None
    image = record["image"]
    kind = self.kind_of(index)
    face = kind in masks_lib.TEMPLATE_KINDS + ("random",)
    hole = masks_lib.record_hole(kind, self.seed, index, image.shape[0], image.shape[1], band=self.band,
                                 image=image if face else None,
                                 landmarks=self._landmarks(index, record) if face else None,
                                 mask_files=self.mask_files, dilate_px=self.dilate)
    return {**record, "mask": hole.astype(np.uint8) * np.uint8(255)}


def create_source(input_config, domain: str | None = None) -> grain.sources.RandomAccessDataSource:
  """The configured source of one domain (None or "" for a one-domain config), returning examples at their
  stored size (synthetic ones at the longer side of load_size)."""
  validate(input_config)
  settings = _domain_settings(input_config)
  if domain is None and len(settings) == 1:
    domain = next(iter(settings))
  if domain not in settings:
    raise ValueError(f"create_source(domain={domain!r}): input.domains is {tuple(settings)}; pass one of them, "
                     "or call create_sources() for all")
  s, flag = settings[domain]
  # Not checked against input.groups here: readers in source order (the evaluator's reference data) need no
  # groups; create_sources and the iterator check them.
  return _build_source(input_config, s, flag, list(settings).index(domain))


def create_sources(input_config) -> dict[str, grain.sources.RandomAccessDataSource]:
  """{domain: source} for every configured domain; {"": source} for a one-domain config."""
  validate(input_config)
  built = {name: _build_source(input_config, s, flag, index)
           for index, (name, (s, flag)) in enumerate(_domain_settings(input_config).items())}
  _check_groups(input_config, built)
  return built


def record_groups(source) -> np.ndarray | None:
  """Every record's group (int array, len(source)) if the source knows them without decoding, else None."""
  method = getattr(source, "record_groups", None)
  groups = method() if method is not None else None
  return None if groups is None else np.asarray(groups)


def _group_records(source, groups: Sequence[int], domain: str, flag: str) -> dict[int, np.ndarray]:
  """{group: the source's indices of its records} for each of `groups`, or a ConfigError naming the domain,
  the missing group and the groups the source has."""
  if not groups:
    return {}
  where = f"domain {domain!r} ({flag})" if domain else f"the source ({flag})"
  ids = record_groups(source)
  if ids is None:
    raise ConfigError(f"input.groups {groups} needs every record's group, but {where} has none: use a synthetic "
                      f"source or set --config.{flag}.folder.groups=True (images in <image_dir>/<group>/), or "
                      "set --config.input.groups='()'")
  present = sorted({int(g) for g in np.unique(ids)})
  for group in groups:
    if group not in present:
      raise ConfigError(f"input.groups {groups} has group {group}, but {where} has no record of it (its groups: "
                        f"{present}): drop {group} from --config.input.groups or add records of group {group}")
  return {group: np.flatnonzero(ids == group) for group in groups}


def _check_groups(input_config, by_domain: Mapping) -> dict[str, dict[int, np.ndarray]]:
  """{domain: {group: record indices}} for the configured groups ({domain: {}} without groups)."""
  groups = group_ids(input_config)
  settings = _domain_settings(input_config)
  return {name: _group_records(source, groups, name, settings[name][1]) for name, source in by_domain.items()}


def _sources_by_domain(input_config, source) -> dict[str, grain.sources.RandomAccessDataSource]:
  """`source` (None, one source, or create_sources' dict) as {domain: source} in the configured order."""
  if source is None:
    return create_sources(input_config)
  names = list(domain_names(input_config)) or [""]
  if not isinstance(source, Mapping):
    if names != [""]:
      raise ValueError(f"input.domains is {tuple(names)}: pass source=create_sources(input_config), not one source")
    return {"": source}
  if sorted(source) != sorted(names):
    raise ValueError(f"source has domains {sorted(source)}, the config {names}: build it with create_sources")
  return {name: source[name] for name in names}


def _stream_seeds(seed: int, domain: str = "", group: int | None = None) -> tuple[int, int]:
  """Independent uint32 seeds for the shuffle and the augmentations, from the run seed (and the domain, and
  the group of a group stream)."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed {seed!r} must be a non-negative int: fix --config.seed")
  # One domain keeps the seeds it had before domains existed; a named domain mixes in a stable hash of its
  # name (not hash(), which differs between processes).
  entropy = int(seed) if not domain else [int(seed), zlib.crc32(domain.encode())]
  if group is not None:  # The 1 tells a group stream's entropy from any other's.
    entropy = [int(seed), zlib.crc32(domain.encode()), 1, int(group)]
  shuffle_seed, augment_seed = np.random.SeedSequence(entropy).generate_state(2)
  return int(shuffle_seed), int(augment_seed)


def _transformed(c, ds: grain.MapDataset, augment_seed: int) -> grain.MapDataset:
  """An infinite stream of records, resized, cropped and flipped (panel records come at their final sizes)."""
  if panels.record_kind(c) == "panels":
    return ds
  ds = ds.map(transforms.Resize(load_size(c), c.resize))
  # Before sharding (and before the groups' round-robin), so a record's crop and flip depend on its position
  # in its stream, not on how many processes read it.
  return ds.random_map(transforms.CropAndFlip(_crop_size(c), c.random_crop, c.random_flip), seed=augment_seed)


def _plain_stream(c, source, *, seed: int, domain: str) -> grain.MapDataset:
  """The infinite stream of a source's transformed uint8 records, every epoch reshuffled."""
  shuffle_seed, augment_seed = _stream_seeds(seed, domain)
  ds = grain.MapDataset.source(source)
  if c.shuffle:
    ds = ds.shuffle(seed=shuffle_seed)  # Folds the epoch into the seed: every epoch a new order.
  return _transformed(c, ds.repeat(), augment_seed)


@functools.lru_cache(maxsize=256)
def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(size)
  order.flags.writeable = False
  return order


class EpochShuffle(grain.MapDataset):
  """Its parent's records forever, epoch e in the order of a permutation drawn from (seed, e) (in order if
  not `shuffle`).

  For group streams rather than grain's shuffle, whose index_shuffle costs about 80 / size ms per record
  (2 ms in a group of 38, 15 ms in one of 2); a permutation is drawn once per epoch and kept."""

  def __init__(self, parent: grain.MapDataset, *, seed: int, shuffle: bool = True):
    super().__init__(parent)
    self._seed, self._shuffle, self._size = seed, shuffle, len(parent)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed}, shuffle={self._shuffle})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._size)
    if self._shuffle:
      position = int(_permutation(self._seed, epoch, self._size)[position])
    return self._parent[position]


def _group_stream(c, source, indices: np.ndarray, *, seed: int, domain: str, group: int) -> grain.MapDataset:
  """The infinite stream of one group's transformed records, every epoch reshuffled."""
  shuffle_seed, augment_seed = _stream_seeds(seed, domain, group)
  ds = EpochShuffle(grain.MapDataset.source(_Records(source, indices)), seed=shuffle_seed, shuffle=c.shuffle)
  return _transformed(c, ds, augment_seed)


class _Records:
  """The records `indices` of `source`, as a random-access source (one group's records)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]


class GroupRoundRobin(grain.MapDataset):
  """Record n of the global stream is in step k = n // batch_size, which takes the next batch_size records of
  group stream k % len(groups): record (k // len(groups)) * batch_size + n % batch_size of it.

  A record that cannot be read (None) is replaced by the next readable one of the same group stream, so
  every record of a step is of the step's group (dropping it would shift the next group's records in)."""

  def __init__(self, streams: Sequence[grain.MapDataset], *, batch_size: int, groups: Sequence[int],
               group_sizes: Sequence[int], domain: str = ""):
    super().__init__(streams)
    self._batch_size, self._groups, self._domain = batch_size, tuple(groups), domain
    self._group_sizes = tuple(group_sizes)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"GroupRoundRobin(groups={self._groups}, batch_size={self._batch_size})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, offset = divmod(index, self._batch_size)
    rounds, slot = divmod(step, len(self._groups))
    position = rounds * self._batch_size + offset
    # Twice the group's size: a shuffle has moved every readable record into reach by then.
    for attempt in range(2 * self._group_sizes[slot]):
      record = self._parents[slot][position + attempt]
      if record is not None:
        return record
    where = f" of domain {self._domain!r}" if self._domain else ""
    raise DataError(f"no record of group {self._groups[slot]}{where} can be read: check its files or drop the "
                    "group from --config.input.groups")


def _record_stream(c, source, *, seed: int, domain: str, process_index: int, process_count: int,
                   group_records: Mapping[int, np.ndarray] | None = None,
                   global_batch_size: int = 0) -> grain.IterDataset:
  """This process's share of one domain's infinite stream of transformed uint8 records; with
  `group_records` ({group: record indices}), the groups' round-robin of global_batch_size records per step."""
  if not group_records:
    ds = _plain_stream(c, source, seed=seed, domain=domain)
  else:
    streams = [_group_stream(c, source, indices, seed=seed, domain=domain, group=group)
               for group, indices in group_records.items()]
    ds = GroupRoundRobin(streams, batch_size=global_batch_size, groups=tuple(group_records), domain=domain,
                         group_sizes=[len(indices) for indices in group_records.values()])
  ds = ds[process_index::process_count]
  # Unreadable files come through as None and are dropped here (allow_nones=False), in this domain only.
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads,
                                              prefetch_buffer_size=c.prefetch_buffer_size))


@dataclasses.dataclass(frozen=True)
class MergeDomains(grain.transforms.Map):
  """(record of domain 1, record of domain 2, ...) -> one record keyed "<domain>/<key>"."""
  names: tuple[str, ...]

  def map(self, element: tuple) -> dict:
    return {f"{name}/{key}": value for name, record in zip(self.names, element) for key, value in record.items()}


def create_dataset(input_config, *, seed: int, local_batch_size: int, process_index: int = 0,
                   process_count: int = 1, source=None) -> grain.IterDataset:
  """This process's infinite stream of batches (see the module docstring for how records are assigned).

  `source`: the configured source(s) if already built (a folder source scans its directory when built): one
  source, or create_sources' dict."""
  c = input_config
  by_domain = _sources_by_domain(c, source)
  group_records = _check_groups(c, by_domain)
  streams = [_record_stream(c, domain_source, seed=seed, domain=name, process_index=process_index,
                            process_count=process_count, group_records=group_records[name],
                            global_batch_size=local_batch_size * process_count)
             for name, domain_source in by_domain.items()]
  if list(by_domain) == [""]:
    ds = streams[0]
  else:
    # Zipped records, not batches: each stream drops its own unreadable files, and mp_prefetch below slices
    # every stream alike, so worker processes still give the same records as threads.
    ds = grain.experimental.ZipIterDataset(streams).map(MergeDomains(tuple(by_domain)))
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

  Batches are dicts of numpy arrays, B = the local batch size and (H, W) = `resolution_hw(input_config)`:
    "image"      float32 (B, H, W, 3) in [-1, 1];
    "label"      int32 (B, H, W) class indices, if the source has parsing maps (synthetic faces do);
    "mask"       float32 (B, H, W, 1) in {0, 1}, 1 = hole, if the source has hole masks;
    "landmarks"  float32 (B, K, 2) points (x, y) in pixels of the batch image, if the source has them;
    scalars      int32 (B,) for each scalar field of the source: "group" (synthetic, folder.groups),
                 "identity", "male", ... (synthetic), int_keys (TFDS);
    other spatial fields (H, W[, C]) resized (nearest), cropped and flipped with the image; int32, or
    float32 if stored as floats.
  With config.input.record = "panels": "panels", "image" (the target face) and "face_box", see
  input_pipeline/panels.py.
  With config.input.domains = ("a", "b") every key is prefixed by its domain ("a/image", "b/group", ...;
  `field_domain` splits them) and each domain's records come from its own stream. With config.input.groups
  every record of batch k, in every domain, is of group groups[k % len(groups)] (in "group", "a/group", ...).
  `source`: one source, or create_sources' dict. Checkpoint the iterator with
  `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`: its one state holds every
  domain's position.
  """
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ConfigError(f"batch_size {global_batch_size} must be a positive multiple of the process count "
                      f"{process_count}: fix --config.batch_size")
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index {process_index} is outside [0, {process_count})")
  dataset = create_dataset(input_config, seed=seed, local_batch_size=global_batch_size // process_count,
                           process_index=process_index, process_count=process_count, source=source)
  return iter(dataset)


def _where(settings, index: int, source) -> str:
  """Where one domain's records come from, for the log."""
  s = settings
  if s.source == "synthetic":
    domain, seed = _synthetic_domain_and_seed(s, index)
    counts = s.synthetic.get("group_counts")
    return f"synthetic {domain} faces (seed {seed}" + (f", {_per_group(counts)} per group)" if counts else ")")
  if s.source == "folder":
    f = s.folder
    return (f"folder '{f.image_dir}'" + (f" + labels '{f.label_dir}'" if f.label_dir else "")
            + (f" + masks '{f.get('mask_dir')}'" if f.get("mask_dir") else "")
            + (f" ({f.get('part', 'train')} part of heldout={f.heldout})" if f.get("heldout") else "")
            + (f" in {source.num_groups} group folders" if getattr(source, "num_groups", 0) else ""))
  t = s.tfds
  return f"tfds {t.name}[{t.split}]" + (f" in '{t.data_dir}'" if t.data_dir else "")


def _per_group(counts) -> str:
  """"1,050 / 249 / 49 / 38" of synthetic.group_counts."""
  return " / ".join(f"{int(n):,}" for n in _int_tuple(counts))


def _group_sampling(input_config, by_domain) -> str:
  """", steps round-robin over groups (0, 1, 3) ...; records per group a {0: 1,050, ...}" with groups."""
  groups = group_ids(input_config)
  if not groups:
    return ""
  _check_groups(input_config, by_domain)
  counts = []
  for name, source in by_domain.items():
    ids, sizes = np.unique(record_groups(source), return_counts=True)
    counts.append((f"{name} " if name else "") + "{" + ", ".join(
        f"{g}: {n:,}" + ("" if g in groups else " unused") for g, n in zip(ids.tolist(), sizes.tolist())) + "}")
  return (f"; steps round-robin over groups {groups} (one group per step in every domain); records per group: "
          + ", ".join(counts))


def describe(input_config, source=None) -> str:
  """One line for the log: every domain's source and size, then resolution and augmentation, then the
  groups' round-robin and every domain's records per group (with config.input.groups)."""
  c = input_config
  by_domain = _sources_by_domain(c, source)
  if panels.record_kind(c) == "panels":
    return panels.describe(c, by_domain[""])
  settings = _domain_settings(c)
  height, width = resolution_hw(c)
  augment = [f"load {load_size(c)}"] if load_size_hw(c) != (height, width) else []
  augment += ["random crop"] if c.random_crop and load_size_hw(c) != (height, width) else []
  augment += ["flip"] if c.random_flip else []
  shared = (f"{height}x{width}" + (f" ({', '.join(augment)})" if augment else "")
            + (f", {c.num_classes}-class label maps" if any(_has_labels(settings[name][0], source)
                                                             for name, source in by_domain.items()) else "")
            + f", {c.worker_count} workers x {c.read_threads} threads")
  groups = _group_sampling(c, by_domain)
  if list(by_domain) == [""]:
    return f"{_where(c, 0, by_domain[''])}: {len(by_domain['']):,} examples at {shared}{groups}"
  domains = "; ".join(f"{name}: {_where(settings[name][0], index, source)}, {len(source):,} examples"
                      for index, (name, source) in enumerate(by_domain.items()))
  return f"{domains}; at {shared}{groups}"


def _has_labels(settings, source) -> bool:
  return settings.source == "synthetic" or getattr(source, "has_labels", False)
