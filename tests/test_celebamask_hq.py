"""The CelebAMask-HQ builder on a six-image fake archive in the real layout, zipped and extracted."""

import os
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from facegen_jax.errors import DataError
from input_pipeline import celebamask_hq
from input_pipeline import pipeline

SIZE = 32  # The "32" config; the fake images are 64x64 and most masks 32x32.
# CelebA-HQ id -> 0-based CelebA index, on both sides of both partition boundaries; the ids spread over
# the mask folders (id // 2000 = 0, 0, 1, 2, 7, 14).
ORIGINS = {0: 162769, 1: 162770, 2001: 182636, 4999: 182637, 15000: 5, 29999: 202598}
SPLITS = {"train": [0, 15000], "validation": [1, 2001], "test": [4999, 29999]}
# Rectangles (top, bottom, left, right) of the parts in a 32x32 mask, overlapping so the painting order
# matters: hair covers the top of l_eye, hat covers hair, neck covers skin, cloth covers neck.
RECTS = {"skin": (4, 28, 4, 28), "nose": (14, 18, 14, 18), "l_eye": (10, 14, 18, 22), "hair": (0, 12, 0, 32),
         "hat": (0, 4, 8, 24), "neck": (24, 30, 10, 22), "cloth": (26, 32, 0, 32)}


def _parts(hq_id: int) -> list[str]:
  """Which parts image hq_id has: all for most, none for one (all background), a few for another."""
  return {15000: [], 2001: ["skin", "hair", "l_eye"]}.get(hq_id, list(RECTS))


def _expected_label(hq_id: int) -> np.ndarray:
  label = np.zeros((SIZE, SIZE), np.uint8)
  for part in sorted(_parts(hq_id), key=celebamask_hq.PARTS.index):
    top, bottom, left, right = RECTS[part]
    label[top:bottom, left:right] = celebamask_hq.PARTS.index(part) + 1
  return label


def _image(hq_id: int) -> np.ndarray:
  """A smooth 64x64 image with a colour of its own, so JPEG keeps it close and images tell apart."""
  y, x = np.mgrid[0:64, 0:64]
  rng = np.random.default_rng(hq_id)
  base = rng.integers(40, 200, size=3)
  return np.clip(np.stack([base[0] + x, base[1] + y, base[2] + (x - y) // 2], -1), 0, 255).astype(np.uint8)


def _attributes(hq_id: int) -> np.ndarray:
  return np.random.default_rng(hq_id + 1).integers(0, 2, size=40).astype(bool)


def _write_folder(root) -> str:
  """CelebAMask-HQ/ under root, in the layout of the official zip."""
  top = os.path.join(root, celebamask_hq.TOP_FOLDER)
  os.makedirs(os.path.join(top, celebamask_hq.IMAGE_DIR))
  for hq_id in ORIGINS:
    Image.fromarray(_image(hq_id)).save(os.path.join(top, celebamask_hq.IMAGE_DIR, f"{hq_id}.jpg"), quality=95)
    mask_dir = os.path.join(top, celebamask_hq.MASK_DIR, str(hq_id // 2000))
    os.makedirs(mask_dir, exist_ok=True)
    for part in _parts(hq_id):
      mask = np.zeros((SIZE, SIZE), np.uint8)
      top_, bottom, left, right = RECTS[part]
      mask[top_:bottom, left:right] = 255
      if hq_id == 4999:  # 64x64 RGB masks, which must come out the same after nearest resizing.
        mask = np.repeat(np.kron(mask, np.ones((2, 2), np.uint8))[..., None], 3, axis=-1)
      Image.fromarray(mask).save(os.path.join(mask_dir, f"{hq_id:05d}_{part}.png"))
  with open(os.path.join(top, celebamask_hq.MAPPING_FILE), "w") as f:
    f.write("idx orig_idx orig_file\n")
    f.writelines(f"{hq_id} {orig} {orig + 1:06d}.jpg\n" for hq_id, orig in ORIGINS.items())
  with open(os.path.join(top, celebamask_hq.ATTRIBUTE_FILE), "w") as f:
    f.write(f"{len(ORIGINS)}\n{' '.join(celebamask_hq.ATTRIBUTE_NAMES)}\n")
    for hq_id in ORIGINS:
      f.write(f"{hq_id}.jpg  " + " ".join("1" if a else "-1" for a in _attributes(hq_id)) + "\n")
  return top


def _zip(folder: str, zip_path: str) -> None:
  parent = os.path.dirname(folder)
  with zipfile.ZipFile(zip_path, "w") as archive:
    for dirpath, _, filenames in os.walk(folder):
      for filename in filenames:
        path = os.path.join(dirpath, filename)
        archive.write(path, os.path.relpath(path, parent))


def _build(manual_dir: str, data_dir: str) -> None:
  celebamask_hq.prepare(str(SIZE), manual_dir=manual_dir, data_dir=data_dir)


def _raises_one_line(match_all, fn) -> None:
  with pytest.raises(DataError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for part in match_all:
    assert part in message, (part, message)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  """(folder manual dir, zip manual dir, data_dir built from the zip)."""
  root = tmp_path_factory.mktemp("celebamask_hq")
  folder_dir, zip_dir, data_dir = root / "folder", root / "zip", str(root / "data")
  folder = _write_folder(folder_dir)
  zip_dir.mkdir()
  _zip(folder, str(zip_dir / celebamask_hq.ZIP_NAME))
  _build(str(zip_dir), data_dir)
  return str(folder_dir), str(zip_dir), data_dir


def _records(data_dir: str, split: str) -> list[dict]:
  source = tfds.data_source(f"celebamask_hq/{SIZE}", split=split, data_dir=data_dir, download=False)
  return [source[i] for i in range(len(source))]


def test_splits_labels_images_and_attributes_from_the_zip(fake):
  data_dir = fake[2]
  for split, ids in SPLITS.items():
    records = _records(data_dir, split)
    assert sorted(int(r["id"]) for r in records) == ids, split
    for record in records:
      hq_id = int(record["id"])
      assert celebamask_hq.split_of(ORIGINS[hq_id]) == split
      assert record["label"].shape == (SIZE, SIZE, 1) and record["label"].dtype == np.uint8
      np.testing.assert_array_equal(record["label"][..., 0], _expected_label(hq_id), err_msg=str(hq_id))
      source = np.asarray(Image.open(os.path.join(fake[0], celebamask_hq.TOP_FOLDER, celebamask_hq.IMAGE_DIR,
                                                  f"{hq_id}.jpg")))
      expected = np.asarray(Image.fromarray(source).resize((SIZE, SIZE), Image.Resampling.LANCZOS), np.float32)
      assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
      assert np.abs(record["image"] - expected).mean() < 1.5, hq_id  # Only the JPEG at quality 95 differs.
      attributes = [bool(record["attributes"][name]) for name in celebamask_hq.ATTRIBUTE_NAMES]
      assert attributes == _attributes(hq_id).tolist()


def test_painting_order_lets_later_parts_win():
  label = _expected_label(0)  # The oracle itself, checked at pixels worked out by hand.
  c = {name: i + 1 for i, name in enumerate(celebamask_hq.PARTS)}
  assert c == {name: i for i, name in enumerate(celebamask_hq.synthetic.CLASS_NAMES) if i}
  assert label[11, 20] == c["hair"] == 13 and label[13, 20] == c["l_eye"] == 4
  assert label[2, 16] == c["hat"] and label[2, 2] == c["hair"] and label[16, 16] == c["nose"]
  assert label[25, 16] == c["neck"] and label[27, 16] == c["cloth"] and label[25, 5] == c["skin"]
  assert label[20, 1] == 0 and label[31, 0] == c["cloth"]
  assert label[0, 0] == c["hair"] and label[12, 20] == c["l_eye"]


def test_partition_boundaries_are_celeba_s():
  # Files 162770.jpg / 162771.jpg and 182637.jpg / 182638.jpg have 0-based indices one less.
  assert [celebamask_hq.split_of(i) for i in (0, 162769, 162770, 182636, 182637, 202598)] == [
      "train", "train", "validation", "validation", "test", "test"]


def test_extracted_folder_gives_the_same_records_as_the_zip(fake, tmp_path):
  folder_dir, _, zip_data_dir = fake
  _build(folder_dir, str(tmp_path))
  for split in SPLITS:
    for from_folder, from_zip in zip(_records(str(tmp_path), split), _records(zip_data_dir, split)):
      assert int(from_folder["id"]) == int(from_zip["id"])
      for key in ("image", "label"):
        np.testing.assert_array_equal(from_folder[key], from_zip[key])


def test_pipeline_batches_from_celebamask_hq(fake):
  config = pipeline.default_input_config()
  config.source = "tfds"
  config.tfds.name = f"celebamask_hq/{SIZE}"
  config.tfds.data_dir = fake[2]
  config.tfds.label_key = "label"
  config.tfds.int_keys = ("id", "attributes/Male")
  config.resolution = SIZE
  config.read_threads = 2
  config.prefetch_buffer_size = 4
  iterator = pipeline.create_train_iterator(config, seed=0, global_batch_size=2)
  batch = next(iterator)
  iterator.close()
  assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["label"].shape == (2, SIZE, SIZE)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["label"].dtype == np.int32 and 0 <= batch["label"].min() and batch["label"].max() < 19
  assert set(batch["id"].tolist()) <= set(SPLITS["train"]) and batch["male"].dtype == np.int32


def test_missing_manual_files_are_one_line_errors(fake, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not the dataset")
  _raises_one_line([str(empty), celebamask_hq.ZIP_NAME, celebamask_hq.HOMEPAGE],
                   lambda: _build(str(empty), str(tmp_path / "data")))
  _raises_one_line([str(tmp_path / "nowhere"), "manual dir", "manual_dir="],
                   lambda: _build(str(tmp_path / "nowhere"), str(tmp_path / "data")))

  broken = tmp_path / "broken"
  folder = _write_folder(broken)
  os.remove(os.path.join(folder, celebamask_hq.MAPPING_FILE))
  _raises_one_line([folder, celebamask_hq.MAPPING_FILE], lambda: _build(str(broken), str(tmp_path / "data")))

  zip_dir = tmp_path / "zip_without_image"
  zip_dir.mkdir()
  folder = _write_folder(tmp_path / "partial")
  os.remove(os.path.join(folder, celebamask_hq.IMAGE_DIR, "2001.jpg"))
  _zip(folder, str(zip_dir / celebamask_hq.ZIP_NAME))
  _raises_one_line([celebamask_hq.ZIP_NAME, "CelebAMask-HQ/CelebA-HQ-img/2001.jpg"],
                   lambda: _build(str(zip_dir), str(tmp_path / "data")))


def test_command_line_builds_and_unprepared_error_names_it(fake, tmp_path):
  data_dir = str(tmp_path / "cli_data")
  config = pipeline.default_input_config()
  config.source, config.tfds.name, config.tfds.data_dir = "tfds", f"celebamask_hq/{SIZE}", data_dir
  config.resolution = SIZE
  with pytest.raises(DataError, match=r"python -m input_pipeline\.celebamask_hq --size 512"):
    pipeline.create_source(config)
  celebamask_hq._main(["--size", str(SIZE), "--manual_dir", fake[1], "--data_dir", data_dir])
  assert len(pipeline.create_source(config)) == len(SPLITS["train"])
  with pytest.raises(SystemExit, match="celebamask_hq: error: .*manual"):
    celebamask_hq._main(["--size", str(SIZE), "--manual_dir", str(tmp_path / "nowhere"),
                         "--data_dir", str(tmp_path / "other_data")])
