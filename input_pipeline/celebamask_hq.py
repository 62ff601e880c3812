"""CelebAMask-HQ (Lee et al., CVPR 2020) as a TFDS dataset: faces, 19-class parsing maps, 40 attributes.

The archive has to be downloaded by hand (see MANUAL_DOWNLOAD_INSTRUCTIONS). Build one size once, as
array_record, the format `tfds.data_source` (and so the pipeline) reads by random access:

  python -m input_pipeline.celebamask_hq --size 512 --manual_dir ~/Downloads [--data_dir DIR]

(the default data_dir is ~/tensorflow_datasets). Not `tfds build`: TFDS 4.9.10's command line
imports apache_beam at start-up, which this project does not install. Then train with
`--config.input.source=tfds --config.input.tfds.name=celebamask_hq/512 --config.input.tfds.label_key=label`
(and e.g. `--config.input.tfds.int_keys='("attributes/Male",)'`).

Examples: "image" uint8 (S, S, 3), downsized from 1024 with a Lanczos filter and stored as JPEG;
"label" uint8 (S, S, 1) of the classes in `synthetic.CLASS_NAMES`, stored as PNG; "id" the CelebA-HQ
index; "attributes" the 40 CelebA attributes as bools. S is the config: 512 (the masks' own size), 256,
128, or 32 for tests and smoke runs. Building 512 from the zip takes about half an hour on one core.
"""

import dataclasses
import io
import os
import zipfile

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from facegen_jax.errors import ConfigError, DataError
from input_pipeline import synthetic

HOMEPAGE = "https://github.com/switchablenorms/CelebAMask-HQ"
ZIP_NAME = "CelebAMask-HQ.zip"
TOP_FOLDER = "CelebAMask-HQ"
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
REQUIRED = (MAPPING_FILE, ATTRIBUTE_FILE, IMAGE_DIR + "/", MASK_DIR + "/")

# The part names of the mask files, in the order of the authors' g_mask.py, which is also our label order
# (class i + 1); a later part overwrites an earlier one where masks overlap (hair over eyes, cloth over neck).
PARTS = synthetic.CLASS_NAMES[1:]
# Mask files are grouped 2,000 images to a folder: 0/00000_skin.png ... 14/29999_cloth.png.
IMAGES_PER_MASK_FOLDER = 2000

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")

# CelebA's own partition (list_eval_partition.txt), by the 0-based `orig_idx` of the mapping file, whose
# `orig_file` is orig_idx + 1: files 000001-162770 train, 162771-182637 validation, the rest test. The
# authors' g_partition.py compares orig_idx with the 1-based file numbers, one off at both boundaries.
FIRST_VALIDATION_ORIG_IDX = 162770
FIRST_TEST_ORIG_IDX = 182637

# Quality 95 without chroma subsampling: a 512 image takes ~80 kB instead of ~400 kB as PNG, and the
# sources are JPEGs already.
JPEG_QUALITY = 95

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {ZIP_NAME} (Google Drive or Baidu links on {HOMEPAGE}) and put either the zip
itself or the `{TOP_FOLDER}/` folder it extracts to in the manual dir (by default
~/tensorflow_datasets/downloads/manual, or prepare(..., manual_dir=...)). The zip is read in place:
there is no need to extract it.
"""

_CITATION = """\
@inproceedings{CelebAMask-HQ,
  title={MaskGAN: Towards Diverse and Interactive Facial Image Manipulation},
  author={Lee, Cheng-Han and Liu, Ziwei and Wu, Lingyun and Luo, Ping},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2020}
}"""


@dataclasses.dataclass(eq=False)
class CelebAMaskHQConfig(tfds.core.BuilderConfig):
  size: int = 512  # Side of the stored images and label maps.


def split_of(orig_idx: int) -> str:
  """The split of a CelebA-HQ image whose original CelebA index (0-based) is `orig_idx`."""
  if orig_idx < FIRST_VALIDATION_ORIG_IDX:
    return "train"
  return "validation" if orig_idx < FIRST_TEST_ORIG_IDX else "test"


class CelebAMaskHQ(tfds.core.GeneratorBasedBuilder):
  """30,000 CelebA-HQ faces with 19-class parsing maps and 40 attributes, split as CelebA."""

  name = "celebamask_hq"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [CelebAMaskHQConfig(name=str(size), size=size, description=f"{size}x{size}")
                     for size in (512, 256, 128, 32)]
  DEFAULT_CONFIG_NAME = "512"
  # TFDS 4.9.10 looks for a checksums file beside the builder's code through `importlib_resources`, which
  # it requires only on Python < 3.9, so it is not installed; this builder downloads nothing anyway.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
            "label": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
            "id": np.int32,
            "attributes": {name: np.bool_ for name in ATTRIBUTE_NAMES},
        }),
        homepage=HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    archive = _open_archive(_manual_dir(dl_manager))
    try:
      _check_layout(archive)
      origins = _parse_mapping(archive)
      attributes = _parse_attributes(archive)
      _check_complete(archive, origins, attributes)
    finally:
      archive.close()
    ids = {"train": [], "validation": [], "test": []}
    for hq_id, orig_idx in sorted(origins.items()):
      ids[split_of(orig_idx)].append(hq_id)
    return {split: self._generate_examples(archive.path, split_ids, attributes)
            for split, split_ids in ids.items()}

  def _generate_examples(self, path: str, ids: list[int], attributes: dict[int, tuple[bool, ...]]):
    # Opened here, not in _split_generators: TFDS runs these generators after that has returned.
    archive = _Archive(path)
    try:
      for hq_id in ids:
        yield hq_id, _example(archive, hq_id, self.builder_config.size, attributes[hq_id])
    finally:
      archive.close()


def prepare(config: str = "512", *, manual_dir: str, data_dir: str | None = None) -> None:
  """Builds config "512", "256", "128" or "32" as array_record under data_dir (None: ~/tensorflow_datasets)."""
  names = [c.name for c in CelebAMaskHQ.BUILDER_CONFIGS]
  if config not in names:
    raise ConfigError(f"celebamask_hq config {config!r} is unknown: use one of {names}")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = CelebAMaskHQ(config=config, data_dir=data_dir, file_format="array_record")
  download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  builder.download_and_prepare(download_config=download_config)


def _manual_dir(dl_manager) -> str:
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError:
    # TFDS's own message spans the whole of MANUAL_DOWNLOAD_INSTRUCTIONS; ours is one line.
    where = getattr(dl_manager, "_manual_dir", None) or "<data_dir>/downloads/manual"
    raise DataError(f"the manual dir '{where}' for celebamask_hq does not exist or is empty: put "
                    f"{ZIP_NAME} (from {HOMEPAGE}) or its extracted {TOP_FOLDER}/ folder there, "
                    "or pass manual_dir= to prepare()") from None


class _Archive:
  """The files of the CelebAMask-HQ folder, read from the zip in place or from the extracted folder.

  `names` holds every file's path relative to the CelebAMask-HQ folder, with '/' separators.
  """

  def __init__(self, path: str):
    self.path = path
    self._zip = None
    if os.path.isdir(path):
      self._root = path
      self.names = set()
      for dirpath, _, filenames in os.walk(path, followlinks=True):
        relative = os.path.relpath(dirpath, path).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        self.names.update(prefix + filename for filename in filenames)
      return
    try:
      self._zip = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
      raise DataError(f"'{path}' cannot be opened as a zip ({e}): download {ZIP_NAME} again from "
                      f"{HOMEPAGE}") from None
    members = [n for n in self._zip.namelist() if not n.endswith("/")]
    # The folder inside the zip is wherever the mapping file is (CelebAMask-HQ/ in the official zip).
    mappings = sorted((n for n in members if n == MAPPING_FILE or n.endswith("/" + MAPPING_FILE)), key=len)
    self._prefix = mappings[0][:-len(MAPPING_FILE)] if mappings else TOP_FOLDER + "/"
    self.names = {n[len(self._prefix):] for n in members if n.startswith(self._prefix)}

  def read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(self._prefix + name)
    with open(os.path.join(self._root, *name.split("/")), "rb") as f:
      return f.read()

  def where(self, name: str = "") -> str:
    """How a message names a file of the archive: a path, or zip-path:member."""
    if self._zip is not None:
      return f"{self.path}:{self._prefix}{name}"
    return os.path.join(self.path, *name.split("/")) if name else self.path

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()


def _open_archive(path: str) -> _Archive:
  """The archive at `path` (a zip or a CelebAMask-HQ folder), or the one inside the manual dir `path`."""
  if os.path.isfile(path):
    return _Archive(path)
  for candidate in (os.path.join(path, ZIP_NAME), os.path.join(path, TOP_FOLDER)):
    if os.path.exists(candidate):
      return _Archive(candidate)
  if os.path.isfile(os.path.join(path, MAPPING_FILE)):  # The manual dir is the extracted folder itself.
    return _Archive(path)
  raise DataError(f"the manual dir '{path}' holds neither {ZIP_NAME} nor a {TOP_FOLDER}/ folder: download "
                  f"{ZIP_NAME} from {HOMEPAGE} and put it (or its extracted {TOP_FOLDER}/ folder) there")


def _check_complete(archive: _Archive, origins: dict[int, int], attributes: dict[int, tuple]) -> None:
  """Fails before a half-hour build, not in the middle of it, when a listed image or its row is missing."""
  for hq_id in sorted(origins):
    image = f"{IMAGE_DIR}/{hq_id}.jpg"
    if image not in archive.names:
      raise DataError(f"'{archive.where(image)}' is missing (image {hq_id} of {MAPPING_FILE}): the archive is "
                      f"incomplete, download {ZIP_NAME} again from {HOMEPAGE}")
    if hq_id not in attributes:
      raise DataError(f"'{archive.where(ATTRIBUTE_FILE)}' has no row for {hq_id}.jpg: the archive is "
                      f"incomplete, download {ZIP_NAME} again from {HOMEPAGE}")


def _check_layout(archive: _Archive) -> None:
  missing = [r for r in REQUIRED
             if not (any(n.startswith(r) for n in archive.names) if r.endswith("/") else r in archive.names)]
  if missing:
    raise DataError(f"'{archive.where()}' is not a complete CelebAMask-HQ folder: it lacks "
                    f"{', '.join(missing)}; use {ZIP_NAME} from {HOMEPAGE} or its extracted {TOP_FOLDER}/ folder")


def _read_text(archive: _Archive, name: str) -> list[str]:
  return [line for line in archive.read(name).decode("utf-8").splitlines() if line.strip()]


def _parse_mapping(archive: _Archive) -> dict[int, int]:
  """{CelebA-HQ id: 0-based CelebA index} from the lines `idx orig_idx orig_file` under a header."""
  origins = {}
  for line in _read_text(archive, MAPPING_FILE):
    fields = line.split()
    if fields[0] == "idx":  # The header.
      continue
    try:
      origins[int(fields[0])] = int(fields[1])
    except (ValueError, IndexError):
      raise DataError(f"'{archive.where(MAPPING_FILE)}' has a line {line!r} that is not 'idx orig_idx "
                      f"orig_file': download {ZIP_NAME} again from {HOMEPAGE}") from None
  return origins


def _parse_attributes(archive: _Archive) -> dict[int, tuple[bool, ...]]:
  """{CelebA-HQ id: 40 bools} from a count line, a names line, then `<id>.jpg v1 .. v40` of 1 / -1."""
  lines = _read_text(archive, ATTRIBUTE_FILE)
  where = archive.where(ATTRIBUTE_FILE)
  if len(lines) < 2 or tuple(lines[1].split()) != ATTRIBUTE_NAMES:
    raise DataError(f"'{where}' does not start with a count line and the 40 CelebA attribute names: "
                    f"download {ZIP_NAME} again from {HOMEPAGE}")
  attributes = {}
  for line in lines[2:]:
    fields = line.split()
    stem, ext = os.path.splitext(fields[0])
    if len(fields) != 1 + len(ATTRIBUTE_NAMES) or ext != ".jpg" or not stem.isdigit() or (
        set(fields[1:]) - {"1", "-1"}):
      raise DataError(f"'{where}' has a line {line[:60]!r} that is not '<id>.jpg' and 40 values of 1 or -1: "
                      f"download {ZIP_NAME} again from {HOMEPAGE}")
    attributes[int(stem)] = tuple(v == "1" for v in fields[1:])
  return attributes


def _open_image(archive: _Archive, name: str, mode: str) -> Image.Image:
  try:
    with Image.open(io.BytesIO(archive.read(name))) as image:
      return image.convert(mode)  # Decodes now, so a corrupt file fails here, naming itself.
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(f"'{archive.where(name)}' cannot be decoded ({type(e).__name__}: {e}): download "
                    f"{ZIP_NAME} again from {HOMEPAGE}") from None


def _label_map(archive: _Archive, hq_id: int, size: int) -> np.ndarray:
  """The parts' masks painted in PARTS order, so a later part wins where masks overlap; nonzero = part.

  Each mask is resized with nearest sampling before painting, which picks the same source pixel for every
  part, so this equals painting at the masks' 512 and resizing the label map.
  """
  label = np.zeros((size, size), np.uint8)
  folder = f"{MASK_DIR}/{hq_id // IMAGES_PER_MASK_FOLDER}"
  for class_index, part in enumerate(PARTS, start=1):
    name = f"{folder}/{hq_id:05d}_{part}.png"
    if name in archive.names:
      mask = _open_image(archive, name, "L").resize((size, size), Image.Resampling.NEAREST)
      label[np.asarray(mask) != 0] = class_index
  return label


def _example(archive: _Archive, hq_id: int, size: int, attributes: tuple[bool, ...]) -> dict:
  image = _open_image(archive, f"{IMAGE_DIR}/{hq_id}.jpg", "RGB")
  if image.size != (size, size):
    image = image.resize((size, size), Image.Resampling.LANCZOS)
  encoded = io.BytesIO()
  image.save(encoded, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
  return {
      # Encoded bytes and PIL images: TFDS would encode numpy arrays with TensorFlow graph code.
      "image": encoded.getvalue(),
      "label": Image.fromarray(_label_map(archive, hq_id, size)),
      "id": hq_id,
      "attributes": dict(zip(ATTRIBUTE_NAMES, attributes)),
  }


PREPARE_COMMAND = "python -m input_pipeline.celebamask_hq --size 512 --manual_dir DIR_WITH_ZIP --data_dir DATA_DIR"


def _main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Build CelebAMask-HQ as array_record for facegen_jax.")
  parser.add_argument("--size", default="512", choices=[c.name for c in CelebAMaskHQ.BUILDER_CONFIGS])
  parser.add_argument("--manual_dir", required=True, help="Holds CelebAMask-HQ.zip or CelebAMask-HQ/.")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets).")
  args = parser.parse_args(argv)
  try:
    prepare(args.size, manual_dir=args.manual_dir, data_dir=args.data_dir)
  except (ConfigError, DataError) as e:
    raise SystemExit(f"celebamask_hq: error: {e}") from None


if __name__ == "__main__":
  _main()
