"""A tiny TFDS dataset for the input-pipeline tests, built into a tmp data_dir in about a second.

Importing this module registers the builder under the name `facegen_tiny_faces`, which is how a user's
own local builder reaches the pipeline: `--config.input.tfds.name=facegen_tiny_faces`. TFDS registers a
builder only when its module lives in a package, so import it as `tests.tfds_fixture`.
"""

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

NAME = "facegen_tiny_faces"
NUM_EXAMPLES = 12
SIZE = 12
NUM_CLASSES = 5


def arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
  """Image (uint8 HxWx3) and label (uint8 HxW) of example i, for the test to compare against."""
  rng = np.random.default_rng(i)
  label = rng.integers(0, NUM_CLASSES, size=(SIZE, SIZE), dtype=np.uint8)
  image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
  # The red channel encodes the label, so a test can check alignment after any crop or flip.
  image[..., 0] = label * 50
  return image, label


def male(i: int) -> bool:
  return i % 2 == 1


class FacegenTinyFaces(tfds.core.GeneratorBasedBuilder):
  """Twelve 12x12 images of noise with a parsing map, an index and two attributes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test fixture."}
  # TFDS 4.9.10 looks for a checksums file beside the builder's code through `importlib_resources`, which
  # it requires only on Python < 3.9, so it is not installed; this builder downloads nothing anyway.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "segmentation": tfds.features.Image(shape=(SIZE, SIZE, 1)),
            "attributes": {"Male": np.bool_, "Eyeglasses": np.bool_},
            "index": np.int64,
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the examples are generated.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_EXAMPLES):
      image, label = arrays(i)
      # PIL images rather than arrays: TFDS encodes arrays with TensorFlow, whose import takes ~10 s.
      yield i, {
          "image": Image.fromarray(image),
          "segmentation": Image.fromarray(label),
          "attributes": {"Male": male(i), "Eyeglasses": i % 3 == 0},
          "index": i,
      }


def build(data_dir: str) -> None:
  """Writes the dataset as array_record, the format `tfds.data_source` reads by random access."""
  FacegenTinyFaces(data_dir=data_dir, file_format="array_record").download_and_prepare()
