"""Two domains in one batch, group subfolders, hole masks, landmarks, non-square crops, and a two-domain
iterator resumed after SIGKILL."""

import hashlib
import os
import sys

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from facegen_jax.errors import ConfigError, DataError
from input_pipeline import pipeline
from input_pipeline import sources
from tests import iterator_kill
from tests.test_input_pipeline import _assert_same, _batches, _raises

SYNTHETIC_KEYS = ("image", "label", "identity", "group", "male", "long_hair", "glasses", "hat", "earrings")


def _two_domains(a=None, b=None, **shared) -> ml_collections.ConfigDict:
  """A two-domain config: small synthetic domains (6 and 10 faces, one identity each) unless overridden."""
  config = pipeline.default_input_config()
  config.read_threads = 2
  config.prefetch_buffer_size = 16
  config.resolution = 32
  config.domains = ("a", "b")
  config.a = pipeline.domain_config(synthetic=dict(num_examples=6, num_identities=6))
  config.b = pipeline.domain_config(synthetic=dict(num_examples=10, num_identities=10))
  for name, overrides in (("a", a), ("b", b)):
    for key, value in (overrides or {}).items():
      group, _, field = key.rpartition(".")
      (config[name][group] if group else config[name])[field] = value
  for key, value in shared.items():
    config[key] = value
  return config


def _save_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


# Two domains: keys, streams, seeds, shards, workers.


def test_two_domain_batches_have_prefixed_keys_shapes_and_dtypes(tmp_path):
  for i in range(3):
    _save_png(tmp_path / "trainB" / f"{i}.png", np.full((40, 40, 3), 50 * i, np.uint8))
  config = _two_domains(b={"source": "folder", "folder.image_dir": str(tmp_path / "trainB")})
  batch = _batches(config, 1)[0]
  assert set(batch) == {f"a/{k}" for k in SYNTHETIC_KEYS} | {"b/image"}
  assert batch["a/image"].shape == batch["b/image"].shape == (4, 32, 32, 3)
  assert batch["a/image"].dtype == batch["b/image"].dtype == np.float32
  assert batch["a/label"].shape == (4, 32, 32) and batch["a/label"].dtype == np.int32
  assert batch["a/group"].shape == (4,) and batch["a/group"].dtype == np.int32
  assert pipeline.field_domain("a/image") == ("a", "image") and pipeline.field_domain("image") == ("", "image")
  line = pipeline.describe(config)
  assert "\n" not in line and "a: synthetic photo faces (seed 0), 6 examples" in line
  assert f"b: folder '{tmp_path / 'trainB'}', 3 examples" in line and "32x32" in line


def test_two_synthetic_domains_default_to_unpaired_photo_and_toon():
  config = _two_domains(a={"synthetic.num_examples": 8}, b={"synthetic.num_examples": 8})
  sources_by_domain = pipeline.create_sources(config)
  assert list(sources_by_domain) == ["a", "b"]
  a, b = sources_by_domain["a"], sources_by_domain["b"]
  assert (a.domain, a.seed, b.domain, b.seed) == ("photo", 0, "toon", 1)
  # Unpaired: face i of b is another person than face i of a, not a toon rendering of it.
  assert [int(a[i]["male"]) for i in range(8)] != [int(b[i]["male"]) for i in range(8)]
  assert pipeline.create_source(config, "b").domain == "toon"
  assert pipeline.create_sources(pipeline.default_input_config()).keys() == {""}
  flat = pipeline.domain_input_config(config, "b")
  assert (flat.source, flat.synthetic.domain, flat.synthetic.seed, flat.synthetic.num_examples) == (
      "synthetic", "toon", 1, 8)
  same_seed = _two_domains(b={"synthetic.seed": 0, "synthetic.domain": "photo"})
  assert pipeline.create_source(same_seed, "b").seed == 0


def test_each_domain_is_its_own_stream_covering_its_source_every_epoch():
  config = _two_domains()
  batches = _batches(config, 15, batch_size=2)  # 5 epochs of a (6 faces), 3 of b (10 faces).
  for name, size in (("a", 6), ("b", 10)):
    stream = np.concatenate([batch[f"{name}/identity"] for batch in batches]).tolist()
    epochs = [stream[i:i + size] for i in range(0, len(stream), size)]
    assert all(sorted(epoch) == list(range(size)) for epoch in epochs), (name, epochs)
    assert len({tuple(epoch) for epoch in epochs}) == len(epochs)
  # Domain a's records do not depend on domain b's source, nor on there being a domain b.
  bigger_b = _batches(_two_domains(b={"synthetic.num_examples": 12}), 15, batch_size=2)
  for x, y in zip(batches, bigger_b):
    np.testing.assert_array_equal(x["a/image"], y["a/image"])
  # Nor are two domains with the same source the same stream: their shuffles and flips have their own seeds.
  twins = _batches(_two_domains(b={"synthetic.num_examples": 6, "synthetic.num_identities": 6,
                                   "synthetic.seed": 0, "synthetic.domain": "photo"}), 3, batch_size=2)
  assert any(not np.array_equal(t["a/identity"], t["b/identity"]) for t in twins)


def test_two_domain_process_shards_form_the_global_batch():
  config = _two_domains(random_crop=True, load_size=36)
  single = _batches(config, 4, batch_size=4)
  shards = [_batches(config, 4, batch_size=4, process_index=p, process_count=2) for p in range(2)]
  for step in range(4):
    for name in ("a", "b"):
      union = {key: np.concatenate([shards[0][step][key], shards[1][step][key]])
               for key in single[step] if key.startswith(name + "/")}
      order, single_order = np.argsort(union[f"{name}/identity"]), np.argsort(single[step][f"{name}/identity"])
      for key in union:
        np.testing.assert_array_equal(union[key][order], single[step][key][single_order], err_msg=key)


def test_two_domain_worker_processes_give_the_same_batches_as_threads():
  config = _two_domains(random_crop=True, load_size=36)
  in_threads = _batches(config, 3)
  config.worker_count = 2
  _assert_same(_batches(config, 3), in_threads)


def test_two_domain_iterator_state_restores_both_positions(tmp_path):
  config = _two_domains(random_crop=True, load_size=36)
  sources_by_domain = pipeline.create_sources(config)
  iterator = pipeline.create_train_iterator(config, seed=3, global_batch_size=4, source=sources_by_domain)
  for _ in range(4):  # Past the first epoch of both domains.
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True))
  manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(3)]
  iterator.close()
  fresh = pipeline.create_train_iterator(config, seed=3, global_batch_size=4, source=sources_by_domain)
  manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same([next(fresh) for _ in range(3)], expected)
  fresh.close()
  manager.close()


# Config errors.


def test_domain_config_errors_name_the_key_and_the_fix():
  config = _two_domains(b={"source": "folder"})
  _raises(ConfigError, ["input.b.folder.image_dir is not set", "--config.input.b.folder.image_dir"],
          lambda: pipeline.create_sources(config))
  _raises(ConfigError, ["input.a.source 'nope'", "--config.input.a.source"],
          lambda: pipeline.create_sources(_two_domains(a={"source": "nope"})))
  _raises(ConfigError, ["input.b.synthetic.domain 'anime'", "--config.input.b.synthetic.domain"],
          lambda: pipeline.create_sources(_two_domains(b={"synthetic.domain": "anime"})))
  _raises(ConfigError, ["input.b.folder.label_mapping", "--config.input.b.folder.label_mapping"],
          lambda: pipeline.create_sources(_two_domains(b={"source": "folder", "folder.image_dir": "x",
                                                          "folder.label_mapping": "oops"})))
  missing = _two_domains()
  missing.domains = ("a", "c")
  _raises(ConfigError, ["config.input.c", "pipeline.domain_config"], lambda: pipeline.create_sources(missing))
  missing.domains = ("a", "source")
  _raises(ConfigError, ["'source'", "--config.input.domains"], lambda: pipeline.validate(missing))
  _raises(ConfigError, ["folder.imagedir", "image_dir"],
          lambda: pipeline.domain_config(folder=dict(imagedir="x")))
  _raises(ConfigError, ["input.resolution 'big'", "--config.input.resolution"],
          lambda: pipeline.validate(_two_domains(resolution="big")))
  with pytest.raises(ValueError, match="create_sources"):
    pipeline.create_source(_two_domains())
  with pytest.raises(ValueError, match="create_sources"):
    pipeline.create_train_iterator(_two_domains(), seed=0, global_batch_size=2,
                                   source=pipeline.create_source(_two_domains(), "a"))


def test_a_bad_folder_in_a_domain_names_that_domains_flag(tmp_path):
  config = _two_domains(b={"source": "folder", "folder.image_dir": str(tmp_path / "missing")})
  _raises(DataError, [str(tmp_path / "missing"), "--config.input.b.folder.image_dir"],
          lambda: pipeline.create_sources(config))


# Group subfolders.


def _group_folder(root, names, per_group=2):
  """root/<name>/<i>.png, each image filled with the grey level 40 * (index of its folder) + 10."""
  for g, name in enumerate(names):
    for i in range(per_group):
      _save_png(root / name / f"{i}.png", np.full((8, 8, 3), 40 * g + 10, np.uint8))
  return str(root)


@pytest.mark.parametrize("names,ids", [(("0", "1", "3"), (0, 1, 3)), (("b", "a", "c"), (1, 0, 2)),
                                       (("10", "9", "x"), (0, 1, 2))])
def test_group_ids_come_from_subfolder_names(tmp_path, names, ids):
  root = _group_folder(tmp_path / "trainA", names)
  config = pipeline.default_input_config()
  config.source, config.folder.image_dir, config.folder.groups, config.resolution = "folder", root, True, 8
  config.read_threads = 2
  source = pipeline.create_source(config)
  assert source.num_groups == 3 and "3 group folders" in pipeline.describe(config, source)
  for batch in _batches(config, 3, batch_size=2, source=source):
    assert batch["group"].dtype == np.int32 and set(batch) == {"image", "group"}
    folder_index = np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5 - 10).astype(int) // 40
    np.testing.assert_array_equal(batch["group"], np.array(ids)[folder_index])


def test_group_folder_errors_name_the_file_or_folder_and_the_flag(tmp_path):
  root = tmp_path / "trainA"
  _group_folder(root, ("0", "1"))
  config = _two_domains(a={"source": "folder", "folder.image_dir": str(root), "folder.groups": True})
  _save_png(root / "stray.png", np.zeros((8, 8, 3), np.uint8))
  _raises(DataError, [str(root / "stray.png"), "outside a group subfolder", "--config.input.a.folder.groups=False"],
          lambda: pipeline.create_sources(config))
  os.remove(root / "stray.png")
  (root / "2").mkdir()
  _raises(DataError, [str(root / "2"), "holds no images"], lambda: pipeline.create_sources(config))


# Hole masks.


def test_masks_pair_by_relative_path_and_white_is_a_hole(tmp_path):
  # Image i (grey level 20 i) has holes in its first i + 1 rows; masks in a subfolder to test pairing by path.
  for i in range(4):
    _save_png(tmp_path / "images" / "s" / f"{i}.png", np.full((8, 8, 3), 20 * i, np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[:i + 1] = 255
    _save_png(tmp_path / "masks" / "s" / f"{i}.png", mask)
  config = pipeline.default_input_config()
  config.source, config.resolution, config.random_flip, config.read_threads = "folder", 8, False, 2
  config.folder.image_dir, config.folder.mask_dir = str(tmp_path / "images"), str(tmp_path / "masks")
  for batch in _batches(config, 2, batch_size=4):
    assert batch["mask"].shape == (4, 8, 8, 1) and batch["mask"].dtype == np.float32
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    for image, mask in zip(batch["image"], batch["mask"]):
      i = int(round((image[0, 0, 0] + 1) * 127.5 / 20))
      np.testing.assert_array_equal(mask[:, 0, 0], [1.0] * (i + 1) + [0.0] * (7 - i))
  os.remove(tmp_path / "masks" / "s" / "2.png")
  _raises(DataError, [os.path.join(str(tmp_path / "masks"), "s", "2"), "--config.input.folder.mask_dir"],
          lambda: pipeline.create_source(config))


def test_mask_values_white_or_one_are_holes():
  np.testing.assert_array_equal(sources.mask_to_uint8(np.array([0, 127, 128, 255])), [0, 0, 255, 255])
  np.testing.assert_array_equal(sources.mask_to_uint8(np.array([0, 1, 1])), [0, 255, 255])  # A 0/1 mask.
  np.testing.assert_array_equal(sources.mask_to_uint8(np.zeros(3, np.int64)), [0, 0, 0])


# Alignment of every spatial field and landmarks under random crop and flip, non-square.


class _CodedSource:
  """Records whose pixels encode their own position: R = 10 row, G = 10 col; label, mask and landmarks are
  functions of the position that a flip or a shift would change."""

  SIZE = 24

  def __len__(self):
    return 4

  def __getitem__(self, index):
    rows, cols = np.mgrid[:self.SIZE, :self.SIZE]
    image = np.stack([rows * 10, cols * 10, np.full_like(rows, 60 * index)], axis=-1).astype(np.uint8)
    points = np.array([[3.5, 5.5], [20.5, 7.5], [12.5, 18.5]], np.float32)  # (x, y) at pixel centres.
    return {"image": image, "label": ((rows + 2 * cols) % 5).astype(np.uint8),
            "mask": np.where((rows + cols) % 3 == 0, 255, 0).astype(np.uint8),
            "landmarks": points + index, "index": np.asarray(index, np.int32)}


def test_crop_and_flip_keep_image_label_mask_and_landmarks_aligned():
  config = pipeline.default_input_config()
  config.resolution, config.random_crop, config.random_flip, config.read_threads = (16, 12), True, True, 2
  config.load_size = _CodedSource.SIZE
  flips, offsets = set(), set()
  for batch in _batches(config, 8, source=_CodedSource()):
    assert batch["image"].shape == (4, 16, 12, 3) and batch["mask"].shape == (4, 16, 12, 1)
    for image, label, mask, points, index in zip(batch["image"], batch["label"], batch["mask"],
                                                 batch["landmarks"], batch["index"]):
      code = np.round((image + 1) * 127.5).astype(int)
      rows, cols = code[..., 0] // 10, code[..., 1] // 10
      np.testing.assert_array_equal(label, (rows + 2 * cols) % 5)
      np.testing.assert_array_equal(mask[..., 0], (rows + cols) % 3 == 0)
      for (x, y), (x0, y0) in zip(points, _CodedSource()[int(index)]["landmarks"]):
        if 0 <= x < 12 and 0 <= y < 16:  # The point is inside the crop: it sits on its own pixel.
          assert (rows[int(y), int(x)], cols[int(y), int(x)]) == (int(y0), int(x0))
      flips.add(bool(cols[0, 0] > cols[0, 1]))
      offsets.add((rows[0, 0], min(cols[0, 0], cols[0, -1])))
  # The checks above would pass vacuously without augmentation: make sure crops and flips happened.
  assert flips == {False, True} and len(offsets) > 4


# Non-square resolutions.


def test_non_square_crops_from_synthetic_and_folder_sources(tmp_path):
  synthetic = _two_domains(resolution=(224, 192), random_crop=True)
  batch = _batches(synthetic, 1, batch_size=2)[0]
  assert batch["a/image"].shape == batch["b/image"].shape == (2, 224, 192, 3)
  assert batch["a/label"].shape == (2, 224, 192)
  assert "224x192" in pipeline.describe(synthetic)
  for i in range(2):
    _save_png(tmp_path / f"{i}.png", np.random.default_rng(i).integers(0, 256, (300, 240, 3), dtype=np.uint8))
  folder = pipeline.default_input_config()
  folder.source, folder.folder.image_dir, folder.read_threads = "folder", str(tmp_path), 2
  folder.resolution, folder.load_size, folder.resize, folder.random_crop = (224, 192), 200, "shorter_side", True
  with pytest.raises(ConfigError, match="load_size"):  # A shorter side of 200 cannot hold 224 rows.
    _batches(folder, 1)
  folder.load_size = 240
  assert _batches(folder, 1, batch_size=2)[0]["image"].shape == (2, 224, 192, 3)
  assert pipeline.resolution_hw(folder) == (224, 192) and pipeline.load_size_hw(folder) == (240, 240)


# Resuming a two-domain iterator after SIGKILL.


def _digest(batch: dict) -> str:
  digest = hashlib.sha256()
  for key in sorted(batch):
    digest.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
  return digest.hexdigest()[:16]


def _child(checkpoint_dir: str, steps: int, save_every: int) -> None:
  """Iterates a two-domain iterator, saving it as the train loop does every `save_every` batches (restoring
  the latest save first, if any) and printing "step digest" per batch."""
  config = _two_domains(random_crop=True, load_size=36)
  iterator = pipeline.create_train_iterator(config, seed=5, global_batch_size=4)
  iterator_kill.child(iterator, _digest, checkpoint_dir, steps, save_every)


@pytest.mark.slow
def test_a_two_domain_iterator_resumes_bit_exactly_after_sigkill(tmp_path):
  steps, save_every = 30, 4
  config = _two_domains(random_crop=True, load_size=36)
  iterator = pipeline.create_train_iterator(config, seed=5, global_batch_size=4)
  expected = {step + 1: _digest(next(iterator)) for step in range(steps)}
  iterator.close()
  iterator_kill.kill_and_resume("tests.test_input_domains", tmp_path / "ckpt", steps=steps, save_every=save_every,
                               kill_at=14, expected=expected)


if __name__ == "__main__":
  _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
