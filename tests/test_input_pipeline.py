"""The Grain input pipeline: shapes, determinism, sharding, alignment, errors, TFDS, checkpoints, workers."""

import hashlib
import logging
import os

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from facegen_jax.errors import ConfigError, DataError
from input_pipeline import pipeline
from input_pipeline import transforms
from input_pipeline import sources
from tests import tfds_fixture

# Colour of each class in the folder fixture: the label is a function of the pixel colour, so alignment
# can be checked after crop and flip.
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _config(source="synthetic", **overrides) -> ml_collections.ConfigDict:
  config = pipeline.default_input_config()
  config.source = source
  config.read_threads = 2
  config.prefetch_buffer_size = 16
  config.synthetic.num_examples = 16
  config.resolution = 32
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _batches(config, n, *, seed=0, batch_size=4, **kwargs) -> list[dict]:
  iterator = pipeline.create_train_iterator(config, seed=seed, global_batch_size=batch_size, **kwargs)
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def _assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _raises(error_type, match_all, fn):
  """Runs fn, checks the error type, that the message is one line and that it names every `match_all`."""
  with pytest.raises(error_type) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for part in match_all:
    assert part in message, (part, message)
  return message


def _write_folder(root, num_images, size=20, seed=0, label_offset=0):
  """Images coloured by a random parsing map (image = PALETTE[label]) and that map as a PNG."""
  rng = np.random.default_rng(seed)
  image_dir, label_dir = root / "images", root / "labels"
  image_dir.mkdir(parents=True)
  label_dir.mkdir(parents=True)
  for i in range(num_images):
    label = rng.integers(0, len(PALETTE), size=(size, size), dtype=np.uint8)
    Image.fromarray(PALETTE[label]).save(image_dir / f"{i:03d}.png")
    Image.fromarray(label + label_offset).save(label_dir / f"{i:03d}.png")
  return str(image_dir), str(label_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp("folder"), 12)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds_fixture.build(data_dir)
  return data_dir


# Shapes, dtypes, ranges.


def test_synthetic_batches_have_the_documented_shapes_dtypes_and_ranges():
  batch = _batches(_config(), 1)[0]
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 32, 32, 3)
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (4, 32, 32)
  assert 0 <= batch["label"].min() and batch["label"].max() < 19
  for key in ("identity", "group", "male", "long_hair", "glasses", "hat", "earrings"):
    assert batch[key].dtype == np.int32 and batch[key].shape == (4,), key


def test_folder_images_only_and_with_labels(folder):
  image_dir, label_dir = folder
  images_only = _batches(_config("folder", **{"folder.image_dir": image_dir}, resolution=16), 1)[0]
  assert set(images_only) == {"image"}
  assert images_only["image"].shape == (4, 16, 16, 3) and images_only["image"].dtype == np.float32
  with_labels = _batches(_config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir},
                                 resolution=16, num_classes=5), 1)[0]
  assert with_labels["label"].shape == (4, 16, 16) and with_labels["label"].dtype == np.int32
  assert set(np.unique(with_labels["label"])) <= set(range(5))


def test_resize_is_bicubic_for_images_and_nearest_for_labels(folder):
  image_dir, label_dir = folder
  expected = set()
  for name in sorted(os.listdir(image_dir)):
    image = Image.open(os.path.join(image_dir, name)).resize((8, 8), Image.Resampling.BICUBIC)
    label = Image.open(os.path.join(label_dir, name)).resize((8, 8), Image.Resampling.NEAREST)
    expected.add((np.asarray(image).tobytes(), np.asarray(label).tobytes()))
  config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir},
                   resolution=8, num_classes=5, random_flip=False)
  for batch in _batches(config, 3):
    for image, label in zip(batch["image"], batch["label"]):
      image = np.round((image + 1) * 127.5).astype(np.uint8)
      assert (image.tobytes(), label.astype(np.uint8).tobytes()) in expected


def test_describe_is_one_line_with_source_size_and_resolution(folder):
  line = pipeline.describe(_config("folder", **{"folder.image_dir": folder[0]}, resolution=16))
  assert "\n" not in line and folder[0] in line and "12 examples" in line and "16x16" in line
  assert "synthetic" in pipeline.describe(_config())


# Determinism, epochs, shards.


def test_same_seed_same_batches_and_different_seed_different_batches():
  config = _config(random_crop=True, load_size=36)
  first, again, other = _batches(config, 3, seed=1), _batches(config, 3, seed=1), _batches(config, 3, seed=2)
  _assert_same(first, again)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(first, other))


def test_every_epoch_is_a_new_permutation_of_the_whole_dataset():
  # identity == index when there are as many identities as examples.
  config = _config(**{"synthetic.num_examples": 8, "synthetic.num_identities": 8})
  epochs = [b["identity"].tolist() for b in _batches(config, 3, batch_size=8)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(8))
  assert len({tuple(e) for e in epochs}) == 3, epochs


def test_shuffle_false_reads_in_source_order():
  config = _config(shuffle=False, **{"synthetic.num_examples": 8, "synthetic.num_identities": 8})
  assert [b["identity"].tolist() for b in _batches(config, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_process_shards_are_disjoint_cover_each_epoch_and_form_the_global_batch():
  config = _config(random_crop=True, load_size=36,
                   **{"synthetic.num_examples": 16, "synthetic.num_identities": 16})
  single = _batches(config, 8, batch_size=8)
  shards = [_batches(config, 8, batch_size=8, process_index=p, process_count=2) for p in range(2)]
  for step in range(8):
    assert all(len(shards[p][step]["identity"]) == 4 for p in range(2))
    union = {key: np.concatenate([shards[0][step][key], shards[1][step][key]]) for key in single[step]}
    # The same records with the same crops and flips as one process reading the global batch.
    order, single_order = np.argsort(union["identity"]), np.argsort(single[step]["identity"])
    for key in union:
      np.testing.assert_array_equal(union[key][order], single[step][key][single_order], err_msg=key)
  for epoch in range(4):
    seen = np.concatenate([shards[p][step]["identity"] for p in range(2) for step in (2 * epoch, 2 * epoch + 1)])
    assert sorted(seen.tolist()) == list(range(16))


def test_indivisible_batch_is_a_config_error():
  _raises(ConfigError, ["batch_size 8", "3", "--config.batch_size"],
          lambda: pipeline.create_train_iterator(_config(), seed=0, global_batch_size=8, process_count=3))


# Alignment of image and label under crop and flip.


def test_crop_and_flip_keep_image_and_label_aligned(tmp_path):
  image_dir, label_dir = _write_folder(tmp_path, 4, size=20, seed=3)
  originals = [np.asarray(Image.open(os.path.join(label_dir, f))) for f in sorted(os.listdir(label_dir))]
  config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir},
                   resolution=12, load_size=20, random_crop=True, random_flip=True, num_classes=5)
  seen = set()
  for batch in _batches(config, 8):
    for image, label in zip(batch["image"], batch["label"]):
      np.testing.assert_array_equal(np.round((image + 1) * 127.5).astype(np.uint8), PALETTE[label])
      seen |= {(top, left, flip) for original in originals for top in range(9) for left in range(9)
               for flip in (False, True)
               if np.array_equal((original[:, ::-1] if flip else original)[top:top + 12, left:left + 12], label)}
  # The check above would pass vacuously without augmentation: make sure crops and flips happened.
  assert len({(t, l) for t, l, _ in seen}) > 4 and {f for _, _, f in seen} == {False, True}


# Folder errors, mapping, unreadable files.


def test_folder_config_and_data_errors_name_the_path_and_the_fix(tmp_path, folder):
  _raises(ConfigError, ["'nope'", "('synthetic', 'folder', 'tfds')", "--config.input.source"],
          lambda: pipeline.create_source(_config("nope")))
  _raises(ConfigError, ["--config.input.folder.image_dir"], lambda: pipeline.create_source(_config("folder")))
  _raises(ConfigError, ["load_size 600", "--config.input.resolution"],
          lambda: pipeline.create_source(_config(load_size=600)))
  missing = str(tmp_path / "missing")
  _raises(DataError, [missing, "--config.input.folder.image_dir"],
          lambda: pipeline.create_source(_config("folder", **{"folder.image_dir": missing})))
  (tmp_path / "empty").mkdir()
  _raises(DataError, [str(tmp_path / "empty"), "no images", "--config.input.folder.image_dir"],
          lambda: pipeline.create_source(_config("folder", **{"folder.image_dir": str(tmp_path / "empty")})))
  image_dir, label_dir = _write_folder(tmp_path / "unpaired", 3)
  os.remove(os.path.join(label_dir, "001.png"))
  _raises(DataError, [os.path.join(image_dir, "001.png"), os.path.join(label_dir, "001"), "label_dir"],
          lambda: pipeline.create_source(_config("folder", **{"folder.image_dir": image_dir,
                                                              "folder.label_dir": label_dir})))


def test_out_of_range_label_is_a_data_error_naming_file_values_and_fix(tmp_path):
  image_dir, label_dir = _write_folder(tmp_path, 2, label_offset=251)  # Values 251..255.
  config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir}, resolution=16)
  message = _raises(DataError, ["label file", "251, 252, 253, 254, 255", "--config.input.folder.label_mapping",
                                "num_classes"], lambda: _batches(config, 1))
  assert os.path.join(label_dir, "000.png") in message or os.path.join(label_dir, "001.png") in message


def test_label_255_with_mapping_to_0_works(tmp_path):
  image_dir, label_dir = _write_folder(tmp_path, 2)
  # Classes 0..3 stay; class 4 is stored as 255, an "ignore" value, and mapped back to 0.
  for name in os.listdir(label_dir):
    label = np.asarray(Image.open(os.path.join(label_dir, name))).copy()
    label[label == 4] = 255
    Image.fromarray(label).save(os.path.join(label_dir, name))
  config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir,
                                "folder.label_mapping": {255: 0}}, resolution=20, num_classes=4,
                   random_flip=False)
  for batch in _batches(config, 2, batch_size=2):
    assert set(np.unique(batch["label"])) <= {0, 1, 2, 3}
    image = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(batch["label"] == 0, (image == PALETTE[0]).all(-1) | (image == PALETTE[4]).all(-1))


def test_unreadable_images_are_skipped_logged_and_counted(tmp_path, caplog):
  image_dir, _ = _write_folder(tmp_path, 6)
  good = (tmp_path / "images" / "000.png").read_bytes()
  (tmp_path / "images" / "001.png").write_bytes(b"not a png at all")
  (tmp_path / "images" / "002.png").write_bytes(good[: len(good) // 2])  # Truncated.
  before = sources.skipped_count()
  config = _config("folder", **{"folder.image_dir": image_dir}, resolution=16)
  with caplog.at_level(logging.WARNING):
    batches = _batches(config, 6, batch_size=4)  # Six epochs of the four readable images.
  assert all(b["image"].shape == (4, 16, 16, 3) for b in batches)
  assert sources.skipped_count() == before + 2
  logged = caplog.text
  assert "001.png" in logged and "002.png" in logged and "skipped so far in this process" in logged
  # Only the four readable images ever come out: one of each per epoch.
  means = np.concatenate([b["image"].mean(axis=(1, 2, 3)) for b in batches])
  assert len(np.unique(means)) == 4


def test_a_folder_of_only_unreadable_images_is_a_data_error(tmp_path):
  (tmp_path / "bad").mkdir()
  for i in range(3):
    (tmp_path / "bad" / f"{i}.jpg").write_bytes(b"garbage")
  config = _config("folder", **{"folder.image_dir": str(tmp_path / "bad")}, resolution=16)
  _raises(DataError, ["none of the 3 images", str(tmp_path / "bad")], lambda: _batches(config, 1))


# TFDS.


def test_tfds_dataset_is_read_by_name_with_labels_and_int_keys(tfds_dir):
  config = _config("tfds", **{"tfds.name": tfds_fixture.NAME, "tfds.data_dir": tfds_dir,
                              "tfds.label_key": "segmentation", "tfds.int_keys": ("index", "attributes/Male")},
                   resolution=12, num_classes=tfds_fixture.NUM_CLASSES, random_flip=False)
  assert f"{tfds_fixture.NUM_EXAMPLES} examples" in pipeline.describe(config)
  seen = []
  for batch in _batches(config, 3):
    assert batch["image"].shape == (4, 12, 12, 3) and batch["label"].shape == (4, 12, 12)
    for image, label, index, male in zip(batch["image"], batch["label"], batch["index"], batch["male"]):
      expected_image, expected_label = tfds_fixture.arrays(int(index))
      np.testing.assert_array_equal(np.round((image + 1) * 127.5).astype(np.uint8), expected_image)
      np.testing.assert_array_equal(label, expected_label)
      assert male == tfds_fixture.male(int(index))
      seen.append(int(index))
  assert sorted(seen) == list(range(tfds_fixture.NUM_EXAMPLES))


def test_tfds_mask_key_reads_a_mask_feature_and_a_missing_one_names_the_flag(tfds_dir):
  # The fixture has no mask feature; its segmentation (classes 0..4, none >= 128) reads as a mask with no hole.
  config = _config("tfds", **{"tfds.name": tfds_fixture.NAME, "tfds.data_dir": tfds_dir,
                              "tfds.mask_key": "segmentation"}, resolution=8, load_size=12, random_crop=True)
  batch = _batches(config, 1)[0]
  assert batch["mask"].shape == (4, 8, 8, 1) and batch["mask"].dtype == np.float32 and not batch["mask"].any()
  config.tfds.mask_key = "holes"
  _raises(ConfigError, ["'holes'", "--config.input.tfds.mask_key"], lambda: pipeline.create_source(config))


def test_tfds_crop_and_flip_keep_alignment(tfds_dir):
  config = _config("tfds", **{"tfds.name": tfds_fixture.NAME, "tfds.data_dir": tfds_dir,
                              "tfds.label_key": "segmentation"},
                   resolution=8, load_size=12, random_crop=True, num_classes=tfds_fixture.NUM_CLASSES)
  for batch in _batches(config, 3):
    red = np.round((batch["image"][..., 0] + 1) * 127.5)
    np.testing.assert_array_equal(red, batch["label"] * 50)


def test_tfds_errors_say_how_to_prepare_and_where_was_searched(tmp_path, tfds_dir):
  empty = str(tmp_path / "empty_data_dir")
  _raises(DataError, ["no_such_dataset_xyz", empty, "tfds build no_such_dataset_xyz"],
          lambda: pipeline.create_source(_config("tfds", **{"tfds.name": "no_such_dataset_xyz",
                                                            "tfds.data_dir": empty})))
  # A registered builder (the fixture) that was never built in this data_dir.
  _raises(DataError, ["not prepared", empty, f"tfds build {tfds_fixture.NAME}", "download_and_prepare"],
          lambda: pipeline.create_source(_config("tfds", **{"tfds.name": tfds_fixture.NAME,
                                                            "tfds.data_dir": empty})))
  _raises(ConfigError, ["'attributes/Bald'", "attributes/Male", "--config.input.tfds.int_keys"],
          lambda: pipeline.create_source(_config("tfds", **{"tfds.name": tfds_fixture.NAME,
                                                            "tfds.data_dir": tfds_dir,
                                                            "tfds.int_keys": ("attributes/Bald",)})))
  _raises(ConfigError, ["'validation'", "['train']", "--config.input.tfds.split"],
          lambda: pipeline.create_source(_config("tfds", **{"tfds.name": tfds_fixture.NAME,
                                                            "tfds.data_dir": tfds_dir,
                                                            "tfds.split": "validation"})))


# Checkpoints and worker processes.


def test_orbax_checkpoint_restores_the_iterator_to_the_same_next_batches(tmp_path):
  config = _config(random_crop=True, load_size=36)
  iterator = pipeline.create_train_iterator(config, seed=3, global_batch_size=4)
  for _ in range(5):  # Past the first epoch of 16 examples.
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(3)]
  iterator.close()

  fresh = pipeline.create_train_iterator(config, seed=3, global_batch_size=4)
  restored = manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert restored.data is fresh
  _assert_same([next(fresh) for _ in range(3)], expected)
  fresh.close()
  manager.close()


def test_get_state_set_state_round_trip():
  config = _config(random_crop=True, load_size=36)
  iterator = pipeline.create_train_iterator(config, seed=0, global_batch_size=4)
  next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  iterator.set_state(state)
  _assert_same([next(iterator) for _ in range(2)], expected)
  iterator.close()


def test_worker_processes_produce_the_same_batches_as_threads(folder):
  image_dir, label_dir = folder
  config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir},
                   resolution=16, load_size=18, random_crop=True, num_classes=5)
  in_threads = _batches(config, 4)
  config.worker_count = 1
  _assert_same(_batches(config, 4), in_threads)
  config.worker_count = 2
  _assert_same(_batches(config, 4), in_threads)


def test_shorter_side_resize_keeps_aspect_and_centre_crops():
  # A 20x40 image whose left half is black and right half white: shorter side -> 10x20, centre 10x10 crop
  # straddles the edge; a square resize would keep both halves.
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 20:] = 255
  label = (image[..., 0] > 0).astype(np.uint8)
  out = transforms.resize({"image": image, "label": label}, 10, "shorter_side")
  assert out["image"].shape == (10, 20, 3) and out["label"].shape == (10, 20)
  assert transforms.resize({"image": image}, 10, "square")["image"].shape == (10, 10, 3)
  cropped = transforms.crop(out, 0, 5, 10)
  np.testing.assert_array_equal(cropped["label"][0], [0] * 5 + [1] * 5)


def test_resize_crop_and_flip_move_landmarks_with_the_pixels():
  # A 20x40 image whose label has one block (rows 4-7, columns 8-15); a landmark at the block's centre.
  label = np.zeros((20, 40), np.uint8)
  label[4:8, 8:16] = 1
  example = {"image": np.zeros((20, 40, 3), np.uint8), "label": label,
             "landmarks": np.array([[12.0, 6.0], [0.0, 0.0]], np.float32)}
  out = transforms.resize(example, 10, "square")  # x scales by 10/40, y by 10/20.
  np.testing.assert_allclose(out["landmarks"], [[3.0, 3.0], [0.0, 0.0]])
  rows, cols = np.nonzero(out["label"])
  assert (rows.mean() + 0.5, cols.mean() + 0.5) == (3.0, 3.0)  # The block's centre, in pixel units.
  out = transforms.crop(out, 1, 2, (6, 5))
  np.testing.assert_allclose(out["landmarks"][0], [1.0, 2.0])
  assert out["label"].shape == (6, 5) and out["image"].shape == (6, 5, 3)
  flipped = transforms.flip_left_right(out)
  np.testing.assert_allclose(flipped["landmarks"][0], [4.0, 2.0])  # x' = width - x.
  np.testing.assert_array_equal(flipped["label"], out["label"][:, ::-1])
  assert flipped["landmarks"].dtype == np.float32


def test_other_spatial_fields_follow_the_image_and_other_fields_pass_through():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 5, size=(20, 30), dtype=np.uint8)
  example = {"image": rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8), "label": label,
             "parts": np.stack([label, 4 - label], axis=-1).astype(np.int16),  # (H, W, C) ints
             "depth": label.astype(np.float32) / 4,                             # (H, W) floats
             "code": np.arange(7, dtype=np.int32), "group": np.asarray(2, np.int32)}
  out = transforms.resize(example, (10, 12))
  assert out["image"].shape == (10, 12, 3)
  np.testing.assert_array_equal(out["parts"][..., 0], out["label"])
  np.testing.assert_array_equal(out["parts"][..., 1], 4 - out["label"])
  np.testing.assert_array_equal(out["depth"], out["label"] / np.float32(4))
  assert out["parts"].dtype == np.int16 and out["depth"].dtype == np.float32
  out = transforms.flip_left_right(transforms.crop(out, 1, 2, (8, 6)))
  np.testing.assert_array_equal(out["parts"][..., 0], out["label"])
  np.testing.assert_array_equal(out["depth"] * 4, out["label"])
  np.testing.assert_array_equal(out["code"], np.arange(7))
  assert out["group"] == 2


def test_to_float_gives_the_documented_dtypes_with_and_without_domain_prefixes():
  mask = np.array([[[0, 255], [255, 0]]], np.uint8)
  for prefix in ("", "b/"):
    out = transforms.to_float({f"{prefix}image": np.full((1, 2, 2, 3), 255, np.uint8), f"{prefix}mask": mask,
                               f"{prefix}landmarks": np.ones((1, 3, 2), np.float32),
                               f"{prefix}label": mask // 255, f"{prefix}group": np.array([3], np.int64)})
    assert out[f"{prefix}image"].dtype == np.float32 and out[f"{prefix}image"].max() == 1.0
    assert out[f"{prefix}mask"].dtype == np.float32 and out[f"{prefix}mask"].shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(out[f"{prefix}mask"][..., 0], [[[0, 1], [1, 0]]])
    assert out[f"{prefix}landmarks"].dtype == np.float32
    assert out[f"{prefix}label"].dtype == out[f"{prefix}group"].dtype == np.int32


def test_an_int_resolution_and_the_same_square_pair_give_the_same_batches():
  square = _batches(_config(random_crop=True, load_size=36), 2)
  _assert_same(_batches(_config(random_crop=True, load_size=(36, 36), resolution=(32, 32)), 2), square)
  assert pipeline.resolution_hw(_config(resolution=(24, 20))) == (24, 20)
  assert pipeline.resolution_hw(_config()) == (32, 32)
  assert pipeline.load_size_hw(_config(resolution=[24, 20])) == (24, 20)  # A list, as read from config.json.


def test_shorter_side_with_a_pair_covers_the_box_keeping_the_aspect():
  image = np.zeros((20, 40, 3), np.uint8)
  assert transforms.resize({"image": image}, (12, 30), "shorter_side")["image"].shape == (15, 30, 3)
  assert transforms.resize({"image": image}, (12, 10), "shorter_side")["image"].shape == (12, 24, 3)
  assert transforms.resize({"image": image}, (12, 10), "square")["image"].shape == (12, 10, 3)

# Today's batches, pinned: new features must leave single-domain batches identical record for record.


def _digest(batches: list[dict]) -> str:
  """SHA-256 over every key, dtype, shape and byte of the batches, in key order."""
  digest = hashlib.sha256()
  for batch in batches:
    for key in sorted(batch):
      value = np.ascontiguousarray(batch[key])
      digest.update(f"{key}|{value.dtype}|{value.shape}|".encode())
      digest.update(value.tobytes())
  return digest.hexdigest()[:16]


def _write_wide_folder(root, num_images=5):
  """Non-square (20x30 and 30x20) noise images with labels: exercises the shorter-side resize."""
  rng = np.random.default_rng(7)
  image_dir, label_dir = root / "images", root / "labels"
  image_dir.mkdir(parents=True)
  label_dir.mkdir(parents=True)
  for i in range(num_images):
    shape = (20, 30) if i % 2 else (30, 20)
    Image.fromarray(rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)).save(image_dir / f"{i}.png")
    Image.fromarray(rng.integers(0, 5, size=shape, dtype=np.uint8)).save(label_dir / f"{i}.png")
  return str(image_dir), str(label_dir)


PINNED = {
    "synthetic": "89e6b76f103404cf",
    "synthetic_random_crop": "f48a77539645b93f",
    "synthetic_process_1_of_2": "2a576a845ab3c51e",
    "folder_labels_random_crop": "a8edd30e701fa0b7",
    "folder_shorter_side": "4347b2c31fbb19e6",
    "tfds_labels_int_keys": "3a01b2ee03f664e6",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_single_domain_batches_are_pinned(name, folder, tfds_dir, tmp_path):
  kwargs = {}
  if name == "synthetic":
    config = _config()
  elif name == "synthetic_random_crop":
    config = _config(random_crop=True, load_size=36)
  elif name == "synthetic_process_1_of_2":
    config = _config(random_crop=True, load_size=36)
    kwargs = dict(process_index=1, process_count=2)
  elif name == "folder_labels_random_crop":
    config = _config("folder", **{"folder.image_dir": folder[0], "folder.label_dir": folder[1]},
                     resolution=16, load_size=18, random_crop=True, num_classes=5)
  elif name == "folder_shorter_side":
    image_dir, label_dir = _write_wide_folder(tmp_path)
    config = _config("folder", **{"folder.image_dir": image_dir, "folder.label_dir": label_dir},
                     resolution=12, load_size=16, resize="shorter_side", random_crop=True, num_classes=5)
  else:
    config = _config("tfds", **{"tfds.name": tfds_fixture.NAME, "tfds.data_dir": tfds_dir,
                                "tfds.label_key": "segmentation", "tfds.int_keys": ("index", "attributes/Male")},
                     resolution=8, load_size=12, random_crop=True, num_classes=tfds_fixture.NUM_CLASSES)
  assert _digest(_batches(config, 2, **kwargs)) == PINNED[name]
