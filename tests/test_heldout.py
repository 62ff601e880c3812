"""A held-out split of one image folder (config.input.folder.heldout): the split itself, its stability when photos
are added, its errors, that training never reads a held-out file and that the evaluator's reference set is exactly
the held-out part. Random Inception weights (the network's numbers are test_fid's business)."""

import os
import shutil

import numpy as np
from PIL import Image
import pytest

from facegen_jax import errors
from facegen_jax import evaluate
from facegen_jax.metrics import evaluator as evaluator_lib
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception
from input_pipeline import pipeline
from input_pipeline import sources
from tests import fid_weights
from tests.conftest import tiny_config

_KEYS = [f"{d}/{i:04d}" if d else f"{i:04d}" for d in ("", "sub") for i in range(100)]


@pytest.mark.parametrize("heldout", [0.15, 16])
def test_parts_are_disjoint_and_cover_the_folder(heldout):
  split = sources.heldout_split(_KEYS, heldout)
  train, held = set(split["train"]), set(split["heldout"])
  assert not train & held and train | held == set(_KEYS)
  assert split["train"] == sorted(train) and split["heldout"] == sorted(held)
  if heldout == 16:
    assert len(held) == 16
  else:  # Binomial(200, 0.15): 30 +- 5
    assert 15 <= len(held) <= 45
  assert sources.heldout_split(list(reversed(_KEYS)), heldout) == split  # Not the listing's order.
  assert sources.heldout_split(_KEYS, 0) == {"train": sorted(_KEYS), "heldout": []}


def test_a_fraction_split_is_stable_when_files_are_added():
  before = sources.heldout_split(_KEYS, 0.15)
  for n in range(1, 41):
    after = sources.heldout_split(_KEYS + [f"new/{i}" for i in range(n)], 0.15)
    assert set(before["heldout"]) <= set(after["heldout"]) and set(before["train"]) <= set(after["train"])
  assert any(k.startswith("new/") for k in after["heldout"]) and any(k.startswith("new/") for k in after["train"])


def test_a_count_split_moves_at_most_one_file_per_added_file():
  keys, moved = list(_KEYS), 0
  for i in range(40):
    before = set(sources.heldout_split(keys, 16)["heldout"])
    keys.append(f"new/{i}")
    after = set(sources.heldout_split(keys, 16)["heldout"])
    assert len(after) == 16 and len(before - after) <= 1
    moved += len(before - after)
  assert moved >= 1  # 40 new files among 200: some take a held-out place.


def _write_folder(root, n, size=16):
  """n PNGs of one flat colour each, index i at value 8 * i + 4 (so a batch pixel names its file)."""
  os.makedirs(root, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full((size, size, 3), 8 * i + 4, np.uint8)).save(os.path.join(root, f"{i:04d}.png"))
  return str(root)


def _input_config(image_dir, heldout, **overrides):
  c = pipeline.default_input_config()
  c.source, c.resolution, c.random_flip = "folder", 16, False
  c.folder.image_dir, c.folder.heldout = image_dir, heldout
  c.update(overrides)
  return c


def test_split_errors(tmp_path):
  folder = _write_folder(tmp_path / "faces", 6)
  for heldout, message in ((6, "leaving no training image"), (0.001, "leaving no held-out image")):
    with pytest.raises(errors.ConfigError, match=message):
      pipeline.create_sources(_input_config(folder, heldout))
  for bad in (-0.1, 2.5, "0.1"):
    with pytest.raises(errors.ConfigError, match="input.folder.heldout"):
      sources.check_heldout(bad)
  config = tiny_config("dcgan", **{"eval.image_dir": folder})
  config.input.source, config.input.folder.image_dir, config.input.folder.heldout = "folder", folder, 2
  with pytest.raises(errors.ConfigError, match="--config.input.folder.heldout=0 to evaluate on eval.image_dir"):
    evaluator_lib.validate(config)
  config.input.folder.heldout = 0
  evaluator_lib.validate(config)  # eval.image_dir alone still works


def test_training_batches_never_contain_a_heldout_file(tmp_path):
  folder = _write_folder(tmp_path / "faces", 30)
  config = _input_config(folder, 0.3, read_threads=2, prefetch_buffer_size=8)
  split = sources.heldout_split([f"{i:04d}" for i in range(30)], 0.3)
  assert split["heldout"] and split["train"]
  iterator = pipeline.create_train_iterator(config, seed=0, global_batch_size=6)
  seen = set()
  for _ in range(15):  # 90 records: four epochs of the training part
    images = next(iterator)["image"]
    values = np.round((images[:, 0, 0, 0] + 1) * 127.5).astype(int)
    assert np.all(images == images[:, :1, :1, :1])  # flat images, so the pixel names the file
    seen.update(f"{(v - 4) // 8:04d}" for v in values)
  iterator.close()
  assert seen == set(split["train"])


def test_the_evaluators_reference_set_is_exactly_the_heldout_part(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "faces"
  folder.mkdir()
  for i in range(20):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
  weights = tmp_path / "inception.npz"
  fid_weights.write_random_weights(weights)
  config = tiny_config("dcgan", **{"eval.inception_weights": str(weights), "eval.num_samples": 50,
                                   "eval.batch_size": 4, "eval.kid": False})
  config.input.source, config.input.folder.image_dir, config.input.folder.heldout = "folder", str(folder), 5
  config.input.resolution, config.input.random_flip = 16, False
  held = sources.heldout_split([f"{i:04d}" for i in range(20)], 5)["heldout"]
  assert len(pipeline.create_sources(config.input)[""]) == 15
  mesh = fid.create_mesh()
  evaluator = evaluator_lib.Evaluator(config, mesh, stats_dir=tmp_path / "stats")
  assert evaluator.counts == (5, 5)  # num_samples 50 capped at the held-out part
  reference = evaluator.reference_statistics()
  alone = tmp_path / "heldout"
  alone.mkdir()
  for key in held:
    shutil.copy(folder / f"{key}.png", alone / f"{key}.png")
  variables = inception.load_params(str(weights))
  direct = evaluate.folder_statistics(str(alone), variables, mesh=mesh)
  assert reference.count == direct.count == 5
  np.testing.assert_allclose(np.sort(reference.features, axis=0), np.sort(direct.features, axis=0), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(reference.mu, direct.mu, rtol=1e-4, atol=1e-5)
  digest = evaluator_lib._file_digest(str(weights))  # pylint: disable=protected-access
  (stats,) = (tmp_path / "stats").glob("*.npz")
  assert stats.name == evaluator_lib.stats_file_name(evaluator_lib.reference_input_config(config), 5, digest)
  config.input.folder.heldout = 0  # the whole folder's statistics are another file
  assert stats.name != evaluator_lib.stats_file_name(evaluator_lib.reference_input_config(config), 5, digest)
