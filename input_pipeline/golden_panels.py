"""SSuperGAN's Golden Age comics panel sequences as a TFDS dataset, built from files downloaded by hand.

The manual dir holds the panels of the COMICS dataset (Iyyer et al. 2017, "The Amazing Mysteries of the Gutter";
SSuperGAN's `panel_path`) and the sequence JSON that SSuperGAN's data/preprocess/extract_golden_panels.py writes
(its `sequence_path`):

  <manual_dir>/raw_panel_images/<book>/<page>_<panel>.jpg
  <manual_dir>/panel_face_areas.json   (or the only *.json there)
      {"<id>": [[path_1, ..., path_S], [[panel_area_1, face_area_1], ..., [panel_area_S, face_area_S]]], ...}
      paths relative to raw_panel_images/, areas [x1, y1, x2, y2] in the panel image's pixels

Build once as array_record (not `tfds build`, which needs apache_beam):

  python -m input_pipeline.golden_panels --manual_dir DIR [--data_dir DIR] [--panel_dir DIR] [--sequences FILE]

then train with `--config.input.record=panels --config.input.source=tfds --config.input.tfds.name=golden_panels`.
Splits as GoldenPanelsDataset (train_test_ratio 0.95): "train" is the first int(0.95 N) ids in the file's order,
"test" the rest; records keep that order. An example holds each panel file's bytes as stored, its panel_area and
face_area, its path and the sequence id; `panels.TfdsPanels` crops each panel to its panel_area when read, so
the crops are SSuperGAN's to the pixel and any panel_size can be read from one build. Every referenced file is
checked to exist and decode before anything is written.
"""

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from facegen_jax.errors import DataError
from input_pipeline import panels as panels_lib

NAME = "golden_panels"
PANEL_DIR = "raw_panel_images"
SEQUENCE_FILE = "panel_face_areas.json"
TRAIN_FRACTION = 0.95  # GoldenPanelsDataset's train_test_ratio.
HOMEPAGE = "https://github.com/barisbatuhan/SSuperGAN"
FIX = ("rebuild it with SSuperGAN's data/preprocess/extract_golden_panels.py or fix the entry")
PREPARE_COMMAND = "python -m input_pipeline.golden_panels --manual_dir DIR_WITH_PANELS_AND_JSON --data_dir DATA_DIR"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put the COMICS dataset's panel images as {PANEL_DIR}/<book>/<page>_<panel>.jpg and the sequence JSON written by
SSuperGAN's data/preprocess/extract_golden_panels.py as {SEQUENCE_FILE} in the manual dir ({HOMEPAGE}).
"""

_CITATION = """\
@inproceedings{iyyer2017amazing,
  title={The Amazing Mysteries of the Gutter: Drawing Inferences Between Panels in Comic Book Narratives},
  author={Iyyer, Mohit and Manjunatha, Varun and Guha, Anupam and Vyas, Yogarshi and Boyd-Graber, Jordan and
          Daume III, Hal and Davis, Larry S},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2017}
}"""


def read_sequences(path: str) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
  """{id: (paths, panel_areas int32 (S, 4), face_areas int32 (S, 4))} in the file's order, or a DataError naming
  the file, the entry and the fix."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"'{path}' cannot be read as JSON ({e}): {FIX}") from None
  if not isinstance(raw, dict) or not raw:
    raise DataError(f"'{path}' is not a non-empty {{\"<id>\": [[paths], [[panel_area, face_area], ...]]}} object: "
                    f"{FIX}")
  sequences, length = {}, None
  for key, entry in raw.items():
    try:
      paths, areas = entry
      if not all(isinstance(p, str) for p in paths):
        raise ValueError("a path is not a string")
      areas = np.asarray(areas)
      if (areas.dtype.kind not in "iu" and not (areas.dtype.kind == "f" and np.all(areas == np.round(areas)))
          or areas.shape != (len(paths), 2, 4)):
        raise ValueError(f"areas of shape {areas.shape}, not ({len(paths)}, 2, 4) integers")
    except (TypeError, ValueError) as e:
      raise DataError(f"'{path}' entry {key!r} is not [[paths], [[panel_area, face_area] per panel]] ({e}): "
                      f"{FIX}") from None
    if length is None:
      length = len(paths)
    if len(paths) != length or length < 2:
      raise DataError(f"'{path}' entry {key!r} has {len(paths)} panels, the first entry {length}: every sequence "
                      f"needs the same number (>= 2); {FIX}")
    areas = areas.astype(np.int32)
    sequences[str(key)] = (list(paths), areas[:, 0], areas[:, 1])
  return sequences


def split_ids(ids: list[str]) -> dict[str, list[str]]:
  """GoldenPanelsDataset's split: the first int(N * 0.95) ids train, the rest test."""
  cut = int(len(ids) * TRAIN_FRACTION)
  return {"train": ids[:cut], "test": ids[cut:]}


def _locate(manual_dir: str, panel_dir: str | None, sequence_file: str | None) -> tuple[str, str]:
  """(panel folder, sequence JSON) from the arguments or the manual dir's layout."""
  if panel_dir is None:
    candidate = os.path.join(manual_dir, PANEL_DIR)
    panel_dir = candidate if os.path.isdir(candidate) else manual_dir
  if not os.path.isdir(panel_dir):
    raise DataError(f"the panel folder '{panel_dir}' does not exist: put the COMICS panels in "
                    f"{os.path.join(manual_dir, PANEL_DIR)}/ or pass --panel_dir")
  if sequence_file is None:
    candidate = os.path.join(manual_dir, SEQUENCE_FILE)
    found = sorted(n for n in os.listdir(manual_dir) if n.endswith(".json")) if os.path.isdir(manual_dir) else []
    if os.path.isfile(candidate):
      sequence_file = candidate
    elif len(found) == 1:
      sequence_file = os.path.join(manual_dir, found[0])
    else:
      raise DataError(f"the manual dir '{manual_dir}' holds {len(found)} JSON files {found[:5]} and no "
                      f"{SEQUENCE_FILE}: name the sequence JSON {SEQUENCE_FILE} or pass --sequences FILE")
  return panel_dir, sequence_file


def _check_files(panel_dir: str, sequence_file: str, sequences) -> None:
  """Fails before writing anything when a panel is missing, cannot be decoded, or a face box leaves its crop."""
  checked = set()
  for key, (paths, panel_areas, face_areas) in sequences.items():
    where = f"'{sequence_file}' entry {key!r}"
    for path in paths:
      if path in checked:
        continue
      full = os.path.join(panel_dir, path)
      if not os.path.isfile(full):
        raise DataError(f"panel '{full}' of {where} is missing: put the COMICS panels in '{panel_dir}' "
                        "(or pass --panel_dir), or drop the entry")
      with open(full, "rb") as f:
        panels_lib.decode_panel(f.read(), f"panel '{full}' of {where}")
      checked.add(path)
    panels_lib.golden_face_box(panel_areas, face_areas[-1], where)


class GoldenPanels(tfds.core.GeneratorBasedBuilder):
  """SSuperGAN's Golden Age panel sequences: S panels and their crop and face areas per example."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  # TFDS 4.9.10 looks for a checksums file beside the builder's code through `importlib_resources`, which
  # it requires only on Python < 3.9, so it is not installed; this builder downloads nothing anyway.
  code_path = None

  def __init__(self, *, panel_dir: str | None = None, sequence_file: str | None = None, **kwargs):
    self._panel_dir, self._sequence_file = panel_dir, sequence_file
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            # The files' bytes, decoded by panels.TfdsPanels: PIL's RGB conversion as SSuperGAN's loader, also
            # of grayscale scans, which an Image feature would not convert.
            "panels": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "panel_areas": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
            "face_areas": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
            "paths": tfds.features.Sequence(tfds.features.Text()),
            "id": tfds.features.Text(),
        }),
        homepage=HOMEPAGE,
        citation=_CITATION,
        disable_shuffling=True,  # The file's order, as GoldenPanelsDataset splits it.
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:
      where = getattr(dl_manager, "_manual_dir", None) or "<data_dir>/downloads/manual"
      raise DataError(f"the manual dir '{where}' for {NAME} does not exist or is empty: put {PANEL_DIR}/ and "
                      f"{SEQUENCE_FILE} there, or pass manual_dir= to prepare()") from None
    panel_dir, sequence_file = _locate(manual_dir, self._panel_dir, self._sequence_file)
    sequences = read_sequences(sequence_file)
    _check_files(panel_dir, sequence_file, sequences)
    return {split: self._generate_examples(panel_dir, {key: sequences[key] for key in ids})
            for split, ids in split_ids(list(sequences)).items()}

  def _generate_examples(self, panel_dir: str, sequences):
    for key, (paths, panel_areas, face_areas) in sequences.items():
      data = []
      for path in paths:
        with open(os.path.join(panel_dir, path), "rb") as f:
          data.append(f.read())
      yield key, {"panels": data, "panel_areas": panel_areas, "face_areas": face_areas, "paths": paths, "id": key}


def prepare(*, manual_dir: str, data_dir: str | None = None, panel_dir: str | None = None,
            sequence_file: str | None = None) -> None:
  """Builds the dataset as array_record under data_dir (None: ~/tensorflow_datasets)."""
  expand = lambda p: os.path.expanduser(p) if p else None
  builder = GoldenPanels(data_dir=expand(data_dir), file_format="array_record", panel_dir=expand(panel_dir),
                         sequence_file=expand(sequence_file))
  download_config = tfds.download.DownloadConfig(manual_dir=expand(manual_dir))
  builder.download_and_prepare(download_config=download_config)


def _main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Build SSuperGAN's Golden Age panel sequences for facegen_jax.")
  parser.add_argument("--manual_dir", required=True, help=f"Holds {PANEL_DIR}/ and {SEQUENCE_FILE}.")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets).")
  parser.add_argument("--panel_dir", default=None, help=f"The panel folder, if not <manual_dir>/{PANEL_DIR}.")
  parser.add_argument("--sequences", default=None, help=f"The sequence JSON, if not <manual_dir>/{SEQUENCE_FILE}.")
  args = parser.parse_args(argv)
  try:
    prepare(manual_dir=args.manual_dir, data_dir=args.data_dir, panel_dir=args.panel_dir,
            sequence_file=args.sequences)
  except DataError as e:
    raise SystemExit(f"{NAME}: error: {e}") from None


if __name__ == "__main__":
  _main()
