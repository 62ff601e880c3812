"""Random-access sources of face images (and parsing maps, masks): a folder of image files, or a TFDS dataset.

A source returns examples as dicts of numpy arrays at their stored size: `"image"` uint8 (H, W, 3),
`"label"` uint8 (H, W) when there are parsing maps, `"mask"` uint8 (H, W) {0, 255} (255 = hole) when there
are hole masks, and int32 scalars (e.g. `"group"` from group subfolders). It returns None for an image it
cannot decode, which the pipeline drops. A source with groups says every record's group without reading a
file: `record_groups()` (what `config.input.groups` samples by).
"""

from collections.abc import Mapping, Sequence
import hashlib
import os
import re
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


PARTS = ("train", "heldout")


def check_heldout(heldout, flag: str = "input.folder") -> float:
  """`heldout` as a number: 0 (no split), a fraction in (0, 1), or a whole count >= 1; ConfigError otherwise."""
  if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or heldout < 0 or (
      heldout >= 1 and heldout != int(heldout)):
    raise ConfigError(f"{flag}.heldout {heldout!r} must be 0 (no split), a fraction in (0, 1) or a whole number of "
                      f"files >= 1: fix --config.{flag}.heldout")
  return heldout


def _path_hash(key: str) -> float:
  """A file's place in [0, 1) from its relative path alone ('/'-separated, so every OS splits alike)."""
  digest = hashlib.sha256(key.replace(os.sep, "/").encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def heldout_split(keys: Sequence[str], heldout: float) -> dict[str, list[str]]:
  """{"train": keys, "heldout": keys} of a folder's files (relative paths without extension), each sorted.

  A fraction in (0, 1) holds out the files whose path hash falls below it: a file's side depends on its own path
  only, so adding photos moves none of the others (the held-out count is about heldout * len(keys)). A whole number
  n >= 1 holds out the n files of lowest hash: exactly n, and adding a photo moves at most one held-out file into
  training (when the new one takes its place).
  """
  heldout = check_heldout(heldout)
  if not heldout:
    return {"train": sorted(keys), "heldout": []}
  if heldout < 1:
    held = {k for k in keys if _path_hash(k) < heldout}
  else:
    held = set(sorted(keys, key=lambda k: (_path_hash(k), k))[:int(heldout)])
  return {"train": sorted(k for k in keys if k not in held), "heldout": sorted(held)}


def _group_ids(image_dir: str, keys: Sequence[str], images: Mapping[str, str], flag: str) -> dict[str, int]:
  """{subfolder: group id}: the subfolder's name if every name is an integer, else its index in sorted order."""
  outside = [k for k in keys if os.sep not in k]
  if outside:
    raise DataError(f"{len(outside)} image(s) lie directly in '{image_dir}', outside a group subfolder, e.g. "
                    f"'{images[outside[0]]}': move them into {os.path.join(image_dir, '<group>')}/ or set "
                    f"--config.{flag}.groups=False")
  names = sorted(entry.name for entry in os.scandir(image_dir) if entry.is_dir(follow_symlinks=True))
  used = {k.split(os.sep, 1)[0] for k in keys}
  empty = [name for name in names if name not in used]
  if empty:
    raise DataError(f"group subfolder '{os.path.join(image_dir, empty[0])}' holds no images: add images or "
                    f"remove it (or set --config.{flag}.groups=False)")
  # Integer names are the dataset's own ids (Face2webtoon's trainA/0, trainA/1, ...); mixing them with the
  # indices of other names could give two folders one id, so any non-integer name switches to indices.
  if all(re.fullmatch(r"\d+", name) for name in names):
    return {name: int(name) for name in names}
  return {name: i for i, name in enumerate(names)}


def mask_to_uint8(values: np.ndarray) -> np.ndarray:
  """A hole mask as stored (255/white = hole, or 1 in a 0/1 mask) -> uint8 {0, 255} with 255 = hole."""
  hole = values == 1 if values.max(initial=0) <= 1 else values >= 128
  return np.where(hole, 255, 0).astype(np.uint8)


class FolderSource(grain.sources.RandomAccessDataSource):
  """Images under `image_dir`, with parsing maps under `label_dir` and hole masks under `mask_dir`, each
  paired by relative path and stem.

  `image_dir/a/0001.jpg` pairs with `label_dir/a/0001.png`, as in SPADE's `--dataset_mode custom`. With
  `groups`, the first-level subfolders of `image_dir` are group labels (Face2webtoon's `trainA/0/*.jpg`).
  `flag` is where the settings live in the config ("input.folder", "input.b.folder"), for error messages.
  With `heldout` (see `heldout_split`) the source reads only its `part` of the folder: "train" (training) or
  "heldout" (the evaluator's reference photos).
  """

  LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
  MASK_EXTENSIONS = LABEL_EXTENSIONS + (".jpg", ".jpeg")

  def __init__(self, image_dir: str, *, label_dir: str | None = None, mask_dir: str | None = None,
               groups: bool = False, extensions: Sequence[str], num_classes: int,
               label_mapping: Mapping[int, int] | None = None, flag: str = "input.folder", heldout: float = 0,
               part: str = "train"):
    for field, path in (("image_dir", image_dir), ("label_dir", label_dir), ("mask_dir", mask_dir)):
      if path is not None and not os.path.isdir(path):
        raise DataError(f"{flag}.{field} '{path}' does not exist or is not a folder: "
                        f"set --config.{flag}.{field} to a folder of images")
    images = _list_files(image_dir, extensions)
    if not images:
      raise DataError(f"{flag}.image_dir '{image_dir}' holds no images with extensions "
                      f"{tuple(extensions)}: point --config.{flag}.image_dir at your images or set "
                      f"--config.{flag}.extensions")
    if part not in PARTS:
      raise ValueError(f"part {part!r} is not one of {PARTS}")
    ids = _group_ids(image_dir, sorted(images), images, flag) if groups else None  # Of the whole folder.
    self._keys = self._part(images, heldout, part, flag, image_dir)
    self._images = [images[k] for k in self._keys]
    self._groups = None if ids is None else [ids[k.split(os.sep, 1)[0]] for k in self._keys]
    self._labels = self._pair(label_dir, self.LABEL_EXTENSIONS, images, "label", f"{flag}.label_dir")
    self._masks = self._pair(mask_dir, self.MASK_EXTENSIONS, images, "mask", f"{flag}.mask_dir")
    self._num_classes = num_classes
    self._label_mapping = dict(label_mapping) if label_mapping else None
    self._flag = flag
    self.image_dir = image_dir
    self.heldout, self.part = heldout, part
    self.has_labels = label_dir is not None
    self.has_masks = mask_dir is not None
    self.num_groups = len(set(self._groups)) if self._groups is not None else 0
    # Distinct records this instance could not read; if that is all of them, the pipeline would spin.
    self._unreadable = set()

  @staticmethod
  def _part(images: Mapping[str, str], heldout: float, part: str, flag: str, image_dir: str) -> list[str]:
    """The sorted keys of `part`; ConfigError when the split leaves either part empty."""
    split = heldout_split(list(images), heldout)
    if heldout and not (split["train"] and split["heldout"]):
      empty = "held-out" if not split["heldout"] else "training"
      raise ConfigError(
          f"{flag}.heldout={heldout} splits the {len(images)} images of '{image_dir}' into "
          f"{len(split['train'])} for training and {len(split['heldout'])} held out, leaving no {empty} image: "
          f"{'raise' if empty == 'held-out' else 'lower'} --config.{flag}.heldout (a fraction in (0, 1) or a count), "
          "or add images")
    return split[part]

  def _pair(self, folder: str | None, extensions: Sequence[str], images: Mapping[str, str], what: str,
            flag: str) -> list[str] | None:
    """The file of `folder` paired with each image by relative path and stem."""
    if folder is None:
      return None
    found = _list_files(folder, extensions)
    missing = [k for k in self._keys if k not in found]
    if missing:
      raise DataError(
          f"{len(missing)} of {len(self._keys)} images have no {what} file, e.g. "
          f"'{images[missing[0]]}' needs '{os.path.join(folder, missing[0])}.png': add the {what} files "
          f"(same relative path and stem) or unset --config.{flag}")
    return [found[k] for k in self._keys]

  def __len__(self) -> int:
    return len(self._images)

  @property
  def files(self) -> list[str]:
    """The image files this source reads, in record order."""
    return list(self._images)

  def __repr__(self) -> str:
    return (f"FolderSource({self.image_dir!r}, {len(self)} images, labels={self.has_labels}"
            + (f", {self.part} part of heldout={self.heldout}" if self.heldout else "")
            + (f", masks={self.has_masks}" if self.has_masks else "")
            + (f", groups={self.num_groups}" if self._groups is not None else "") + ")")

  def __getitem__(self, index: int) -> dict | None:
    index = index % len(self)
    path = self._images[index]
    try:
      example = {"image": read_image(path, "RGB")}
      if self._labels is not None:
        path = self._labels[index]
        example["label"] = read_label(path)
      if self._masks is not None:
        path = self._masks[index]
        example["mask"] = read_mask(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      # PIL raises OSError for truncated and unidentified files, ValueError and SyntaxError for some
      # malformed headers; one bad file in 30k should not stop a week-long run.
      self._skip(index, path, e)
      return None
    if "label" in example:
      example["label"] = map_and_check_label(
          example["label"], num_classes=self._num_classes, label_mapping=self._label_mapping,
          where=f"label file '{self._labels[index]}'", fix=f"--config.{self._flag}.label_mapping")
    if self._groups is not None:
      example["group"] = np.asarray(self._groups[index], np.int32)
    return example

  def record_groups(self) -> np.ndarray | None:
    """Every record's group id (int32, len(self)) from its subfolder; None without `groups`."""
    return None if self._groups is None else np.asarray(self._groups, np.int32)

  def _skip(self, index: int, path: str, error: Exception) -> None:
    # The file is read again next epoch rather than blacklisted: a network file system may recover.
    _note_unreadable(path, error)
    self._unreadable.add(index)
    if len(self._unreadable) == len(self):
      raise DataError(f"none of the {len(self)} images under '{self.image_dir}' can be read (e.g. '{path}': "
                      f"{error}): check the files or point --config.{self._flag}.image_dir elsewhere")


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


def read_mask(path: str) -> np.ndarray:
  """Reads a hole mask (white = hole) as uint8 {0, 255}."""
  with Image.open(path) as image:
    image.load()
    if image.mode in ("P", "RGB"):  # Grey levels as saved, not palette indices.
      image = image.convert("L")
    if image.mode not in ("L", "1", "I", "I;16"):
      raise DataError(f"mask file '{path}' has mode {image.mode}, not a single channel: save hole masks as "
                      "8-bit grayscale PNGs, white (255) = hole")
    return mask_to_uint8(np.asarray(image).astype(np.int64))


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
               int_keys: Sequence[str], num_classes: int, label_mapping: Mapping[int, int] | None,
               mask_key: str | None = None, flag: str = "input.tfds"):
    self._source = data_source
    self._name = name
    self._image_key = image_key
    self._label_key = label_key
    self._mask_key = mask_key
    self._flag = flag
    self._int_keys = tuple(int_keys)
    self._num_classes = num_classes
    self._label_mapping = dict(label_mapping) if label_mapping else None
    self.has_labels = label_key is not None
    self.has_masks = mask_key is not None
    self._check_keys()

  def _check_keys(self) -> None:
    """Fails at start-up, not in a reader thread at the first batch, if a configured feature is missing."""
    if not len(self._source):
      raise DataError(f"TFDS dataset '{self._name}' has no examples in this split: check "
                      f"--config.{self._flag}.split")
    record = self._source[0]
    fields = [("image_key", self._image_key)] + ([("label_key", self._label_key)] if self._label_key else [])
    fields += [("mask_key", self._mask_key)] if self._mask_key else []
    fields += [("int_keys", key) for key in self._int_keys]
    for field, key in fields:
      try:
        _feature(record, key)
      except (KeyError, TypeError):
        raise ConfigError(f"{self._flag}.{field} '{key}' is not a feature of '{self._name}' (it has "
                          f"{_feature_paths(record)}): fix --config.{self._flag}.{field}") from None

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
          where=f"tfds {self._name} record {index}", fix=f"--config.{self._flag}.label_mapping")
    if self._mask_key is not None:
      mask = np.asarray(_feature(record, self._mask_key))
      example["mask"] = mask_to_uint8((mask[..., 0] if mask.ndim == 3 else mask).astype(np.int64))
    for key in self._int_keys:
      example[int_key_name(key)] = np.int32(_feature(record, key))
    return example


def int_key_name(key: str) -> str:
  """The batch key of a passed-through TFDS feature: 'attributes/Male' -> 'male'."""
  return key.rsplit("/", 1)[-1].lower()


def open_tfds(name: str, *, split: str, data_dir: str | None, flag: str = "input.tfds"):
  """`tfds.data_source(...)`, with one-line errors for the ways a dataset can be missing."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # Slow; only this source needs it.
  from input_pipeline import celebamask_hq  # pylint: disable=g-import-not-at-top,unused-import  # Registers it.
  from input_pipeline import golden_panels  # pylint: disable=g-import-not-at-top,unused-import  # Registers it.
  from input_pipeline import webcaricature  # pylint: disable=g-import-not-at-top,unused-import  # Registers it.

  searched = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  build_cmd = f"`tfds build {name} --data_dir={searched} --file_format=array_record`"
  if name.split("/")[0] == celebamask_hq.CelebAMaskHQ.name:  # `tfds build` needs apache_beam; this does not.
    build_cmd = f"`{celebamask_hq.PREPARE_COMMAND}`"
  if name.split("/")[0] == golden_panels.NAME:
    build_cmd = f"`{golden_panels.PREPARE_COMMAND}`"
  if name.split("/")[0] == webcaricature.NAME:
    build_cmd = f"`{webcaricature.PREPARE_COMMAND}`"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"TFDS dataset '{name}' is neither a known builder nor prepared under data_dir "
                    f"'{searched}': check --config.{flag}.name / data_dir, or prepare it with "
                    f"{build_cmd} (for your own builder, run that in its folder)") from None
  if not builder.is_prepared():
    raise DataError(f"TFDS dataset '{name}' is not prepared in '{builder.data_dir}' (data_dir '{searched}'): "
                    f"run {build_cmd} or builder.download_and_prepare(file_format='array_record'), "
                    f"or set --config.{flag}.data_dir")
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
      raise ConfigError(f"{flag}.split '{split}' is not a split of '{name}' (it has {splits}): "
                        f"set --config.{flag}.split") from None
    raise DataError(f"TFDS dataset '{name}' split '{split}' cannot be read: {e}".replace("\n", " ")) from e
