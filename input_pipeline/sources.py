"""Random-access sources of face images (and parsing maps): a folder of image files, or a TFDS dataset.

A source returns examples as dicts of numpy arrays at their stored size: `"image"` uint8 (H, W, 3),
`"label"` uint8 (H, W) when there are parsing maps, and int32 scalars. It returns None for an image it
cannot decode, which the pipeline drops.
"""

from collections.abc import Mapping, Sequence
import os
import threading

from absl import logging
import grain
import numpy as np
from PIL import Image

from facegen_jax.errors import ConfigError, DataError

# Process-wide, so the log can say how many distinct files this process has dropped so far, whichever
# source or iterator met them.
_unreadable_lock = threading.Lock()
_unreadable_files = set()


def skipped_count() -> int:
  """How many distinct unreadable files this process has skipped so far."""
  return len(_unreadable_files)


def _note_unreadable(path: str, error: Exception) -> None:
  """Logs a file the first time it fails to decode; a bad file is met again every epoch."""
  with _unreadable_lock:
    if path in _unreadable_files:
      return
    _unreadable_files.add(path)
    count = len(_unreadable_files)
  logging.warning("Skipping unreadable file '%s' (%s: %s); %d file(s) skipped so far in this process.",
                  path, type(error).__name__, error, count)


def map_and_check_label(label: np.ndarray, *, num_classes: int, label_mapping: Mapping[int, int] | None,
                        where: str, fix: str) -> np.ndarray:
  """Applies `label_mapping` ({stored value: class}) and checks every value is a class in [0, num_classes).

  `where` names the file or record and `fix` the config field to change, for the one-line error.
  """
  if label_mapping:
    mapped = label.copy()
    for src, dst in label_mapping.items():
      mapped[label == int(src)] = int(dst)
    label = mapped
  bad = np.unique(label[(label < 0) | (label >= num_classes)])
  if bad.size:
    shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
    raise DataError(
        f"{where} has label values {{{shown}}} outside [0, {num_classes}): map them with {fix} "
        f"(e.g. {{{bad[0]}: 0}}) or raise --config.input.num_classes")
  return label.astype(np.uint8)


def _list_files(root: str, extensions: Sequence[str]) -> dict[str, str]:
  """Files under `root` (recursively) with one of `extensions`, keyed by path relative to root sans extension."""
  extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
  files = {}
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for filename in sorted(filenames):
      stem, ext = os.path.splitext(filename)
      if ext.lower() in extensions:
        key = os.path.relpath(os.path.join(dirpath, stem), root)
        files.setdefault(key, os.path.join(dirpath, filename))
  return files


class FolderSource(grain.sources.RandomAccessDataSource):
  """Images under `image_dir`, with parsing maps under `label_dir` paired by relative path and stem.

  `image_dir/a/0001.jpg` pairs with `label_dir/a/0001.png`, as in SPADE's `--dataset_mode custom`.
  """

  LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")

  def __init__(self, image_dir: str, *, label_dir: str | None = None, extensions: Sequence[str],
               num_classes: int, label_mapping: Mapping[int, int] | None = None):
    for field, path in (("image_dir", image_dir), ("label_dir", label_dir)):
      if path is not None and not os.path.isdir(path):
        raise DataError(f"input.folder.{field} '{path}' does not exist or is not a folder: "
                        f"set --config.input.folder.{field} to a folder of images")
    images = _list_files(image_dir, extensions)
    if not images:
      raise DataError(f"input.folder.image_dir '{image_dir}' holds no images with extensions "
                      f"{tuple(extensions)}: point --config.input.folder.image_dir at your images or set "
                      "--config.input.folder.extensions")
    self._keys = sorted(images)
    self._images = [images[k] for k in self._keys]
    self._labels = None
    if label_dir is not None:
      labels = _list_files(label_dir, self.LABEL_EXTENSIONS)
      missing = [k for k in self._keys if k not in labels]
      if missing:
        raise DataError(
            f"{len(missing)} of {len(self._keys)} images have no label file, e.g. "
            f"'{images[missing[0]]}' needs '{os.path.join(label_dir, missing[0])}.png': add the label "
            "maps (same relative path and stem) or unset --config.input.folder.label_dir")
      self._labels = [labels[k] for k in self._keys]
    self._num_classes = num_classes
    self._label_mapping = dict(label_mapping) if label_mapping else None
    self.image_dir = image_dir
    self.has_labels = label_dir is not None
    # Distinct records this instance could not read; if that is all of them, the pipeline would spin.
    self._unreadable = set()

  def __len__(self) -> int:
    return len(self._images)

  def __repr__(self) -> str:
    return f"FolderSource({self.image_dir!r}, {len(self)} images, labels={self.has_labels})"

  def __getitem__(self, index: int) -> dict | None:
    index = index % len(self)
    path = self._images[index]
    try:
      example = {"image": read_image(path, "RGB")}
      if self._labels is not None:
        path = self._labels[index]
        example["label"] = read_label(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      # PIL raises OSError for truncated and unidentified files, ValueError and SyntaxError for some
      # malformed headers; one bad file in 30k should not stop a week-long run.
      self._skip(index, path, e)
      return None
    if "label" in example:
      example["label"] = map_and_check_label(
          example["label"], num_classes=self._num_classes, label_mapping=self._label_mapping,
          where=f"label file '{path}'", fix="--config.input.folder.label_mapping")
    return example

  def _skip(self, index: int, path: str, error: Exception) -> None:
    # The file is read again next epoch rather than blacklisted: a network file system may recover.
    _note_unreadable(path, error)
    self._unreadable.add(index)
    if len(self._unreadable) == len(self):
      raise DataError(f"none of the {len(self)} images under '{self.image_dir}' can be read (e.g. '{path}': "
                      f"{error}): check the files or point --config.input.folder.image_dir elsewhere")


def read_image(path: str, mode: str) -> np.ndarray:
  with Image.open(path) as image:
    image.load()  # Decodes now, so a truncated file fails here rather than later in a transform.
    return np.asarray(image.convert(mode))


def read_label(path: str) -> np.ndarray:
  """Reads a parsing map of class indices; a palette PNG gives its indices, not its colours."""
  with Image.open(path) as image:
    image.load()
    if image.mode not in ("L", "P", "I", "I;16", "1"):
      raise DataError(f"label file '{path}' has mode {image.mode}, not a single channel of class indices: "
                      "save parsing maps as 8-bit grayscale or palette PNGs")
    return np.asarray(image).astype(np.int64)


def _feature(example: Mapping, key: str):
  """`example[key]`, where 'a/b' reaches into nested features (e.g. celeb_a's 'attributes/Male')."""
  value = example
  for part in key.split("/"):
    value = value[part]
  return value


def _feature_paths(record: Mapping, prefix: str = "") -> list[str]:
  paths = []
  for key, value in record.items():
    paths += _feature_paths(value, f"{prefix}{key}/") if isinstance(value, Mapping) else [prefix + key]
  return paths


class TfdsSource(grain.sources.RandomAccessDataSource):
  """Selects and normalises the features the pipeline needs from a TFDS random-access data source."""

  def __init__(self, data_source, *, name: str, image_key: str, label_key: str | None,
               int_keys: Sequence[str], num_classes: int, label_mapping: Mapping[int, int] | None):
    self._source = data_source
    self._name = name
    self._image_key = image_key
    self._label_key = label_key
    self._int_keys = tuple(int_keys)
    self._num_classes = num_classes
    self._label_mapping = dict(label_mapping) if label_mapping else None
    self.has_labels = label_key is not None
    self._check_keys()

  def _check_keys(self) -> None:
    """Fails at start-up, not in a reader thread at the first batch, if a configured feature is missing."""
    if not len(self._source):
      raise DataError(f"TFDS dataset '{self._name}' has no examples in this split: check "
                      "--config.input.tfds.split")
    record = self._source[0]
    fields = [("image_key", self._image_key)] + ([("label_key", self._label_key)] if self._label_key else [])
    fields += [("int_keys", key) for key in self._int_keys]
    for field, key in fields:
      try:
        _feature(record, key)
      except (KeyError, TypeError):
        raise ConfigError(f"input.tfds.{field} '{key}' is not a feature of '{self._name}' (it has "
                          f"{_feature_paths(record)}): fix --config.input.tfds.{field}") from None

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TfdsSource({self._name!r}, {len(self)} examples, labels={self.has_labels})"

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    image = np.asarray(_feature(record, self._image_key))
    if image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    example = {"image": image[..., :3].astype(np.uint8)}
    if self._label_key is not None:
      label = np.asarray(_feature(record, self._label_key))
      label = label[..., 0] if label.ndim == 3 else label
      example["label"] = map_and_check_label(
          label.astype(np.int64), num_classes=self._num_classes, label_mapping=self._label_mapping,
          where=f"tfds {self._name} record {index}", fix="--config.input.tfds.label_mapping")
    for key in self._int_keys:
      example[int_key_name(key)] = np.int32(_feature(record, key))
    return example


def int_key_name(key: str) -> str:
  """The batch key of a passed-through TFDS feature: 'attributes/Male' -> 'male'."""
  return key.rsplit("/", 1)[-1].lower()


def open_tfds(name: str, *, split: str, data_dir: str | None):
  """`tfds.data_source(...)`, with one-line errors for the ways a dataset can be missing."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # Slow; only this source needs it.
  from input_pipeline import celebamask_hq  # pylint: disable=g-import-not-at-top,unused-import  # Registers it.

  searched = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  build_cmd = f"`tfds build {name} --data_dir={searched} --file_format=array_record`"
  if name.split("/")[0] == celebamask_hq.CelebAMaskHQ.name:  # `tfds build` needs apache_beam; this does not.
    build_cmd = f"`{celebamask_hq.PREPARE_COMMAND}`"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"TFDS dataset '{name}' is neither a known builder nor prepared under data_dir "
                    f"'{searched}': check --config.input.tfds.name / data_dir, or prepare it with "
                    f"{build_cmd} (for your own builder, run that in its folder)") from None
  if not builder.is_prepared():
    raise DataError(f"TFDS dataset '{name}' is not prepared in '{builder.data_dir}' (data_dir '{searched}'): "
                    f"run {build_cmd} or builder.download_and_prepare(file_format='array_record'), "
                    "or set --config.input.tfds.data_dir")
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format not in ("array_record", "parquet"):
    raise DataError(f"TFDS dataset '{name}' in '{builder.data_dir}' is stored as {file_format}, which has no "
                    f"random access: rebuild it with {build_cmd} or convert it with `tfds convert_format "
                    f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record`")
  splits = list(builder.info.splits)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except ValueError as e:
    if split.split("[")[0] not in splits:
      raise ConfigError(f"input.tfds.split '{split}' is not a split of '{name}' (it has {splits}): "
                        "set --config.input.tfds.split") from None
    raise DataError(f"TFDS dataset '{name}' split '{split}' cannot be read: {e}".replace("\n", " ")) from e
