"""WebCaricature (Huo et al., BMVC 2018) as a TFDS dataset: caricatures and photos aligned as SATNet aligns them.

The dataset is downloaded by hand (see MANUAL_DOWNLOAD_INSTRUCTIONS). Build it once as array_record (not
`tfds build`, which needs apache_beam):

  python -m input_pipeline.webcaricature --manual_dir DIR [--data_dir DIR] [--config caricature photo]

then give SATNet's two domains their configs (a = caricature, b = photo, as SATNet's 'c' and 'p'):

  --config.input.a.source=tfds --config.input.a.tfds.name=webcaricature/caricature
  --config.input.b.source=tfds --config.input.b.tfds.name=webcaricature/photo
  (--config.eval.split=test scores against the test people; --config.input.a.tfds.int_keys='("identity",)' and
  the same for b pass the identities through)

One config per domain, each with splits "train" and "test", so one split name selects the same people in both
domains (the evaluator's eval.split applies to both).

What SATNet does (codes/mysite/datasetviewer/warp.py `alignment`, codes/SATNet/data.py `WCDataset`), and so we:
every image is aligned from its 17 FacialPoints: the five points (eye centres = means of the eye corners, nose tip,
mouth corners) mapped by a similarity onto SphereFace's reference, x2 with a 2 px margin, into 200x232 (W x H),
the 17 points moved alongside (facegen_jax/align.py). Configs "caricature" and "photo" drop the side faces
(SATNet's clear_mode): those whose aligned points fail `align.is_frontal` (the landmark-order checks, a point
outside the image, or a point farther than ~38.4 px from its reference); "caricature_all" and "photo_all" keep
them and say which they are.

Splits: SATNet's train / test identities are those of EvaluationProtocols/FaceVerification/UnRestricted/
UnRestrictedView1_DevTrain.txt / _DevTest.txt, whose first line is the number of people and each next line
`<Name, may hold spaces> <number of caricatures> <number of photos>`; a person's images are then C00001.jpg ..
C<n>.jpg and P00001.jpg .. P<m>.jpg (numbered from 1 without gaps, as SATNet reads them). Without an
EvaluationProtocols folder (our rule, not SATNet's): every C*/P* image present, the sorted people split 4:1 by
position (every fifth, index % 5 == 4, in test; the author's report split about 8:2).

Assumed of the files (from SATNet's readers and the dataset's Readme): OriginalImages/<Name>/C00001.jpg
(caricatures) and P00001.jpg (photos), any size, RGB or grayscale (converted to RGB; EXIF orientation is not
applied, the points being in the stored pixel grid); FacialPoints/<Name>/C00001.txt with 17 lines `x y` in that
image's pixels (x right, y down, 0-based as SATNet uses them), in the Readme's order: contour top, left ear, chin,
right ear; brows' corners left to right; eye corners left to right; nose tip; upper lip; left mouth corner; lower
lip; right mouth corner.

Records in protocol order (people in the file's order, images by number). Examples: "image" uint8 (232, 200, 3)
JPEG; "identity" the person (ClassLabel: the sorted names of every listed person, train and test, so the ids
agree across the configs); "landmarks" float32 (17, 2) the aligned points; "frontal" whether the face passes
SATNet's side-face rejection (always, without _all); "file" `<Name>/C00001`. Every file of the config's domain is
checked to exist and its points to parse before anything is written.
"""

import dataclasses
import io
import os
import re

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from facegen_jax import align
from facegen_jax.errors import ConfigError, DataError

NAME = "webcaricature"
HOMEPAGE = "https://cs.nju.edu.cn/rl/WebCaricature.htm"
TOP_FOLDER = "WebCaricature"
IMAGE_DIR = "OriginalImages"
POINTS_DIR = "FacialPoints"
PROTOCOL_DIR = "EvaluationProtocols"
PROTOCOL_FILES = {split: f"{PROTOCOL_DIR}/FaceVerification/UnRestricted/UnRestrictedView1_Dev{name}.txt"
                  for split, name in (("train", "Train"), ("test", "Test"))}
DOMAINS = {"caricature": "C", "photo": "P"}  # SATNet's 'c' (domain a) and 'p' (domain b), the files' prefixes.
SPLITS = ("train", "test")
NUM_POINTS = 17
TEST_EVERY = 5  # Without protocol files: people index % 5 == 4 (in sorted order) are test.
JPEG_QUALITY = 95  # cv2.imwrite's default, with which SATNet stored its aligned faces.
_FILE = re.compile(r"^([CP])(\d+)\.jpg$")

PREPARE_COMMAND = "python -m input_pipeline.webcaricature --manual_dir DIR_WITH_WEBCARICATURE --data_dir DATA_DIR"
FIX = f"download WebCaricature again from {HOMEPAGE}"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request WebCaricature from {HOMEPAGE} (a licence for academic use), extract it and put its {IMAGE_DIR}/,
{POINTS_DIR}/ and {PROTOCOL_DIR}/ folders (or the {TOP_FOLDER}/ folder holding them) in the manual dir
(--manual_dir, or prepare(..., manual_dir=...)).
"""

_CITATION = """\
@inproceedings{huo2018webcaricature,
  title={WebCaricature: a benchmark for caricature recognition},
  author={Huo, Jing and Li, Wenbin and Shi, Yinghuan and Gao, Yang and Yin, Hujun},
  booktitle={British Machine Vision Conference},
  year={2018}
}"""


@dataclasses.dataclass(eq=False)
class WebCaricatureConfig(tfds.core.BuilderConfig):
  domain: str = "caricature"  # A key of DOMAINS.
  clear_mode: bool = True  # SATNet's clear_mode: drop the side faces.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of the dataset: where its files are and how it aligns."""
  split: str        # "train" or "test".
  name: str         # The person (folder name).
  stem: str         # "C00001" or "P00001".
  matrix: np.ndarray     # 2x3, original image -> aligned image.
  landmarks: np.ndarray  # (17, 2) aligned.
  frontal: bool


def read_landmarks(path: str) -> np.ndarray:
  """The (17, 2) points of a FacialPoints file, or a DataError naming the file and the fix."""
  try:
    with open(path) as f:
      lines = [line.split() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"'{path}' cannot be read ({e}): {FIX}") from None
  try:
    points = np.array([[float(v) for v in line] for line in lines], np.float64)
  except ValueError:
    points = None
  if points is None or points.shape != (NUM_POINTS, 2) or not np.isfinite(points).all():
    raise DataError(f"'{path}' is not {NUM_POINTS} lines of 'x y' numbers ({len(lines)} lines): {FIX}")
  return points


def read_protocol(path: str) -> list[tuple[str, int, int]]:
  """[(name, caricatures, photos)] of an UnRestrictedView1 file: a count line, then `<Name> <n_c> <n_p>` lines."""
  try:
    with open(path) as f:
      lines = [line.split() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"'{path}' cannot be read ({e}): {FIX}") from None
  if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
    raise DataError(f"'{path}' does not start with a line holding the number of people: {FIX}")
  count = int(lines[0][0])
  if len(lines) < 1 + count:
    raise DataError(f"'{path}' lists {len(lines) - 1} people after a count of {count}: {FIX}")
  people = []
  for words in lines[1:1 + count]:
    if len(words) < 3 or not (words[-1].isdigit() and words[-2].isdigit()):
      raise DataError(f"'{path}' has a line {' '.join(words)[:60]!r} that is not '<Name> <caricatures> "
                      f"<photos>': {FIX}")
    people.append((" ".join(words[:-2]), int(words[-2]), int(words[-1])))
  return people


def find_root(manual_dir: str) -> str:
  """The folder holding OriginalImages/ and FacialPoints/: the manual dir or its WebCaricature/ folder."""
  for root in (manual_dir, os.path.join(manual_dir, TOP_FOLDER)):
    if all(os.path.isdir(os.path.join(root, d)) for d in (IMAGE_DIR, POINTS_DIR)):
      return root
  if not os.path.isdir(manual_dir):
    raise DataError(f"the manual dir '{manual_dir}' for {NAME} does not exist: put WebCaricature's {IMAGE_DIR}/, "
                    f"{POINTS_DIR}/ and {PROTOCOL_DIR}/ there (from {HOMEPAGE}), or pass --manual_dir")
  for root in (manual_dir, os.path.join(manual_dir, TOP_FOLDER)):
    zipped = [n for n in (IMAGE_DIR, POINTS_DIR, PROTOCOL_DIR) if os.path.isfile(os.path.join(root, n + ".zip"))]
    if zipped:
      raise DataError(f"'{root}' holds {', '.join(z + '.zip' for z in zipped)}: extract them there (the builder "
                      "reads the folders)")
  missing = [d + "/" for d in (IMAGE_DIR, POINTS_DIR) if not os.path.isdir(os.path.join(manual_dir, d))]
  raise DataError(f"the manual dir '{manual_dir}' lacks {', '.join(missing)} (nor has a {TOP_FOLDER}/ folder with "
                  f"them): put WebCaricature's extracted folders there, from {HOMEPAGE}")


def list_people(root: str) -> dict[str, list[tuple[str, list[str]]]]:
  """{"train" | "test": [(name, [stems])]}: from the protocol files, else every image present, split by rule."""
  if os.path.isdir(os.path.join(root, PROTOCOL_DIR)):
    listed = {}
    for part, relative in PROTOCOL_FILES.items():
      path = os.path.join(root, *relative.split("/"))
      if not os.path.isfile(path):
        raise DataError(f"'{path}' is missing: put WebCaricature's whole {PROTOCOL_DIR}/ folder in '{root}' "
                        f"(or remove {PROTOCOL_DIR}/ to split the people by {NAME}'s own rule)")
      listed[part] = [(name, [f"C{i:05d}" for i in range(1, n_c + 1)] + [f"P{i:05d}" for i in range(1, n_p + 1)])
                      for name, n_c, n_p in read_protocol(path)]
    return listed
  logging.warning("%s: no %s/ in '%s': every image present is used, people split train / test 4:1 by sorted "
                  "position (index %% %d == %d in test)", NAME, PROTOCOL_DIR, root, TEST_EVERY, TEST_EVERY - 1)
  images = os.path.join(root, IMAGE_DIR)
  listed = {"train": [], "test": []}
  for index, name in enumerate(sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))):
    matches = [_FILE.match(f) for f in os.listdir(os.path.join(images, name))]
    stems = sorted((m.group(1), int(m.group(2)), m.group(0)[:-4]) for m in matches if m)
    listed["test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"].append((name, [s[2] for s in stems]))
  return listed


def _entry(root: str, split: str, name: str, stem: str, clear_mode: bool) -> Entry | None:
  image = os.path.join(root, IMAGE_DIR, name, stem + ".jpg")
  if not os.path.isfile(image):
    raise DataError(f"'{image}' is missing ({name} is listed with at least {int(stem[1:])} "
                    f"{'caricatures' if stem[0] == 'C' else 'photos'}): {FIX}")
  points_file = os.path.join(root, POINTS_DIR, name, stem + ".txt")
  if not os.path.isfile(points_file):
    raise DataError(f"'{points_file}' is missing (the landmarks of '{image}'): {FIX}")
  points = read_landmarks(points_file)
  try:
    matrix = align.similarity_transform(align.five_points_from_webcaricature17(points), align.reference_points())
  except DataError as e:
    raise DataError(f"'{points_file}': {e}: {FIX}") from None
  aligned = align.transform_points(matrix, points)
  frontal = align.is_frontal(aligned)
  if clear_mode and not frontal:
    return None
  return Entry(split, name, stem, matrix, aligned.astype(np.float32), frontal)


def list_entries(root: str, domain: str, clear_mode: bool) -> tuple[dict[str, list[Entry]], list[str]]:
  """({split: [Entry]} of the domain's listed images (side faces dropped with clear_mode), files checked; the
  sorted names of every listed person)."""
  entries = {split: [] for split in SPLITS}
  listed = dict.fromkeys(SPLITS, 0)
  people = list_people(root)
  for split in SPLITS:
    for name, stems in people[split]:
      for stem in stems:
        if stem[0] != DOMAINS[domain]:
          continue
        listed[split] += 1
        entry = _entry(root, split, name, stem, clear_mode)
        if entry is not None:
          entries[split].append(entry)
    logging.info("%s %s %s: %d of %d images%s", NAME, domain, split, len(entries[split]), listed[split],
                 " (side faces dropped)" if clear_mode else "")
  return entries, sorted({name for split in SPLITS for name, _ in people[split]})


def _open_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))  # Decodes now, so a corrupt file fails here, naming itself.
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(f"'{path}' cannot be decoded ({type(e).__name__}: {e}): {FIX}") from None


def aligned_image(root: str, entry: Entry) -> np.ndarray:
  """The entry's image warped into 200x232 (uint8 (232, 200, 3))."""
  image = _open_image(os.path.join(root, IMAGE_DIR, entry.name, entry.stem + ".jpg"))
  return align.warp_affine(image, entry.matrix, align.ALIGNED_SIZE)


class WebCaricature(tfds.core.GeneratorBasedBuilder):
  """WebCaricature's caricatures and photos, aligned to 200x232 as SATNet, split by its View 1 protocol."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      WebCaricatureConfig(name=domain + suffix, domain=domain, clear_mode=not suffix,
                          description=f"{domain.capitalize()}s, " + (
                              "side faces marked." if suffix else "side faces dropped (SATNet's clear_mode)."))
      for suffix in ("", "_all") for domain in DOMAINS]
  DEFAULT_CONFIG_NAME = "caricature"
  # TFDS 4.9.10 looks for a checksums file beside the builder's code through `importlib_resources`, which
  # it requires only on Python < 3.9, so it is not installed; this builder downloads nothing anyway.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    width, height = align.ALIGNED_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(height, width, 3), encoding_format="jpeg"),
            "identity": tfds.features.ClassLabel(),  # Names set from the files in _split_generators.
            "landmarks": tfds.features.Tensor(shape=(NUM_POINTS, 2), dtype=np.float32),
            "frontal": np.bool_,
            "file": tfds.features.Text(),
        }),
        homepage=HOMEPAGE,
        citation=_CITATION,
        disable_shuffling=True,  # Protocol order.
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:
      where = getattr(dl_manager, "_manual_dir", None) or "<data_dir>/downloads/manual"
      raise DataError(f"the manual dir '{where}' for {NAME} does not exist or is empty: put WebCaricature's "
                      f"{IMAGE_DIR}/, {POINTS_DIR}/ and {PROTOCOL_DIR}/ there, or pass --manual_dir") from None
    root = find_root(manual_dir)
    config = self.builder_config
    entries, names = list_entries(root, config.domain, config.clear_mode)
    self.info.features["identity"].names = names
    return {split: self._generate_examples(root, split_entries) for split, split_entries in entries.items()}

  def _generate_examples(self, root: str, entries: list[Entry]):
    for entry in entries:
      encoded = io.BytesIO()
      Image.fromarray(aligned_image(root, entry)).save(encoded, format="JPEG", quality=JPEG_QUALITY)
      key = f"{entry.name}/{entry.stem}"
      # Encoded bytes: TFDS would encode numpy arrays with TensorFlow graph code.
      yield key, {"image": encoded.getvalue(), "identity": entry.name, "landmarks": entry.landmarks,
                  "frontal": entry.frontal, "file": key}


CONFIGS = tuple(c.name for c in WebCaricature.BUILDER_CONFIGS)


def prepare(config: str = "caricature", *, manual_dir: str, data_dir: str | None = None) -> None:
  """Builds one config (CONFIGS) as array_record under data_dir (None: ~/tensorflow_datasets)."""
  if config not in CONFIGS:
    raise ConfigError(f"{NAME} config {config!r} is unknown: use one of {list(CONFIGS)}")
  builder = WebCaricature(config=config, data_dir=os.path.expanduser(data_dir) if data_dir else None,
                          file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir)))


def _main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Build WebCaricature (aligned as SATNet) as array_record.")
  parser.add_argument("--config", nargs="+", default=["caricature", "photo"], choices=CONFIGS,
                      help="Configs to build: a domain drops side faces (SATNet's clear_mode), <domain>_all keeps "
                           "and marks them.")
  parser.add_argument("--manual_dir", required=True, help=f"Holds {IMAGE_DIR}/, {POINTS_DIR}/, {PROTOCOL_DIR}/.")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets).")
  args = parser.parse_args(argv)
  try:
    for config in args.config:
      prepare(config, manual_dir=args.manual_dir, data_dir=args.data_dir)
  except (ConfigError, DataError) as e:
    raise SystemExit(f"{NAME}: error: {e}") from None


if __name__ == "__main__":
  _main()
