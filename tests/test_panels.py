"""Comic panel-sequence records (input_pipeline/panels.py): resizing against torch, the white box, SSuperGAN's
GoldenPanelsDataset semantics, synthetic sequences (identity, determinism, resume), the folder layout, errors."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from facegen_jax.errors import ConfigError, DataError
from input_pipeline import panels
from input_pipeline import pipeline
from input_pipeline import synthetic

P, F, S = 40, 16, 3  # Tiny panels and faces: synthetic panels are drawn at max(P, 4 F) = 64.


def _config(source="synthetic", **panel_settings):
  config = pipeline.default_input_config()
  config.record = "panels"
  config.source = source
  config.resolution = F
  config.panels.panel_size = P
  config.synthetic.num_examples = 12
  config.read_threads = 2
  config.prefetch_buffer_size = 4
  for key, value in panel_settings.items():
    config.panels[key] = value
  return config


def _torch():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)  # A second thread only slows tiny ops on the shared cores.
  return torch


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("shape,size", [((256, 256), (96, 96)), ((37, 53), (96, 80)), ((300, 211), (64, 64)),
                                        ((5, 7), (3, 11))])
def test_resize_is_torch_bilinear_interpolate(shape, size, antialias):
  torch = _torch()
  image = np.random.default_rng(0).random(shape + (3,)).astype(np.float32) * 255
  expected = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size,
                                             mode="bilinear", align_corners=False, antialias=antialias)
  ours = panels.resize_bilinear(image, size, antialias=antialias)
  # torch computes source positions in float32: 0.004 of 255 at most here.
  np.testing.assert_allclose(ours, expected[0].permute(1, 2, 0).numpy(), atol=0.01)


def _random_panels(rng, shapes):
  return [rng.integers(0, 250, size=shape + (3,), dtype=np.uint8) for shape in shapes]


def test_the_box_is_white_exactly_where_face_box_says_and_nothing_else_changes():
  rng = np.random.default_rng(1)
  shots = _random_panels(rng, [(70, 90), (50, 50), (123, 101)])
  box = (17, 30, 58, 77)  # x1, y1, x2, y2 in the 101x123 target.
  record = panels.make_record(shots, box, panel_size=P, face_size=F)
  assert record["panels"].shape == (S, P, P, 3) and record["panels"].dtype == np.uint8
  assert record["image"].shape == (F, F, 3) and record["image"].dtype == np.uint8
  x1, y1, x2, y2 = record["face_box"].tolist()
  assert record["face_box"].dtype == np.int32
  # Scaled outwards: floor(17 * 40 / 101), floor(30 * 40 / 123), ceil(58 * 40 / 101), ceil(77 * 40 / 123).
  assert (x1, y1, x2, y2) == (6, 9, 23, 26)
  target = record["panels"][-1]
  white = np.zeros((P, P), bool)
  white[y1:y2, x1:x2] = True
  assert np.all(target[white] == 255)
  unpainted = np.rint(panels.resize_bilinear(shots[-1], (P, P))).astype(np.uint8)
  np.testing.assert_array_equal(target[~white], unpainted[~white])  # Inputs stop at 249: no white outside.
  for shot, panel in zip(shots[:-1], record["panels"][:-1]):
    np.testing.assert_array_equal(panel, np.rint(panels.resize_bilinear(shot, (P, P))).astype(np.uint8))
  face = np.rint(panels.resize_bilinear(shots[-1][30:77, 17:58], (F, F))).astype(np.uint8)
  np.testing.assert_array_equal(record["image"], face)
  given = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
  np.testing.assert_array_equal(panels.make_record(shots, box, panel_size=P, face_size=20, face=given)["image"],
                                given)


def _original_item(images, panel_areas, face_areas, panel_size, face_size):
  """SSuperGAN's GoldenPanelsDataset.__getitem__ (mask_val 1, mask_all False, augment off, return_mask's box) in
  torch: TF.crop of a PIL image is PIL's crop, ToTensor scales to [0, 1], TF.resize of a tensor is
  interpolate(bilinear, align_corners=False) (torchvision is not importable beside this torch)."""
  torch = _torch()
  resize = lambda x, size: torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
  out, last = [], len(images) - 1
  for i, (image, p_area, f_area) in enumerate(zip(images, panel_areas, face_areas)):
    f = [f_area[k] - p_area[k % 2] for k in range(4)]
    crop = image.convert("RGB").crop(tuple(p_area))
    panel = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)[None].float() / 255
    if i == last:
      face = resize(panel[:, :, f[1]:f[3], f[0]:f[2]].clone(), [face_size, face_size])
      panel[:, :, f[1]:f[3], f[0]:f[2]] = 1
      height, width = panel.shape[2:]
      box = [int(f[0] * panel_size / width), int(f[1] * panel_size / height), int(f[2] * panel_size / width),
             int(f[3] * panel_size / height)]
    out.append(resize(panel, [panel_size, panel_size]))
  normalise = lambda x: (x - 0.5) / 0.5
  return (normalise(torch.cat(out)).permute(0, 2, 3, 1).numpy(), normalise(face[0]).permute(1, 2, 0).numpy(), box)


def _golden_images(rng):
  """Three panel images of different sizes, the last grayscale (as some scans are)."""
  images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (80, 80))]
  return images + [Image.fromarray(rng.integers(0, 256, size=(130, 110), dtype=np.uint8))]


# panel_area [x1, y1, x2, y2] (square crops; the second reaches past its image: PIL pads black) and face_area.
GOLDEN_AREAS = [[[10, 5, 90, 85], [30, 20, 60, 50]], [[20, 20, 100, 100], [40, 40, 70, 70]],
                [[5, 12, 105, 112], [33, 41, 77, 85]]]


@pytest.mark.parametrize("torchvision_resize", [True, False])
def test_golden_crops_and_record_match_ssupergans_dataset(torchvision_resize):
  images = [image.convert("RGB") for image in _golden_images(np.random.default_rng(2))]
  panel_areas = np.array([a[0] for a in GOLDEN_AREAS])
  face_areas = np.array([a[1] for a in GOLDEN_AREAS])
  crops, box = panels.golden_crops(images, panel_areas, face_areas[-1], "test")
  assert box == (28, 29, 72, 73) and [c.shape for c in crops] == [(80, 80, 3), (80, 80, 3), (100, 100, 3)]
  assert np.all(crops[1][60:, :] == 0) and np.all(crops[1][:, 60:] == 0)  # Beyond the 80x80 image: black.
  record = panels.make_record(crops, box, panel_size=P, face_size=F, torchvision_resize=torchvision_resize)
  expected_panels, expected_face, expected_box = _original_item(images, panel_areas, face_areas, P, F)
  as_float = lambda x: x.astype(np.float32) / 127.5 - 1
  if torchvision_resize:  # The original to the uint8 rounding (0.5 / 255 in [0, 1], 1 / 255 in [-1, 1]).
    np.testing.assert_allclose(as_float(record["panels"]), expected_panels, atol=1 / 255 + 1e-4)
    np.testing.assert_allclose(as_float(record["image"]), expected_face, atol=1 / 255 + 1e-4)
    assert record["face_box"].tolist() == expected_box == [11, 11, 28, 29]
  else:  # Antialiased: the context panels and faces differ from the aliased original; the box is whole pixels.
    assert record["face_box"].tolist() == [11, 11, 29, 30]
    assert np.abs(as_float(record["panels"][:-1]) - expected_panels[:-1]).mean() < 0.2


def test_synthetic_batches_have_the_documented_fields_and_the_white_box():
  config = _config()
  batch = next(pipeline.create_train_iterator(config, seed=0, global_batch_size=4))
  assert sorted(batch) == ["face_box", "identity", "image", "panels"]
  assert batch["panels"].shape == (4, S, P, P, 3) and batch["panels"].dtype == np.float32
  assert batch["image"].shape == (4, F, F, 3) and batch["image"].dtype == np.float32
  assert batch["face_box"].shape == (4, 4) and batch["face_box"].dtype == np.int32
  assert batch["identity"].dtype == np.int32
  for images in (batch["panels"], batch["image"]):
    assert images.min() >= -1 and images.max() <= 1
  for panel, (x1, y1, x2, y2) in zip(batch["panels"][:, -1], batch["face_box"]):
    assert 0 <= x1 < x2 <= P and 0 <= y1 < y2 <= P
    assert np.all(panel[y1:y2, x1:x2] == 1.0)
    assert np.mean(panel == 1.0) < 0.6  # The rest is a picture, not white.
  assert not np.all(batch["image"] == 1.0)
  assert "synthetic toon panel sequences (seed 0, 3 identities): 12 sequences of 3 panels at 40x40" in (
      pipeline.describe(config))


def _skin(seed, identity):
  return synthetic._palette(synthetic._identity_traits(seed, identity), True)[synthetic._C["skin"]]


def _share_of(pixels, colour, tolerance=1.5):
  return np.mean(np.all(np.abs(pixels.reshape(-1, 3).astype(np.float32) - colour) <= tolerance, axis=-1))


def test_every_panel_shows_the_sequences_identity_and_the_face_crop_is_its_face():
  """Toon skin is one flat colour per identity: the character's face square holds it in every panel (a context
  panel's bubble may hide a third), and the target face crop is mostly that colour, not another identity's."""
  seed, num_identities = 3, 5
  source = panels.SyntheticPanels(20, num_panels=4, panel_size=64, face_size=32, seed=seed,
                                  num_identities=num_identities)
  others_seen = 0
  for index in range(8):
    drawn = panels.draw_sequence(seed, index, num_panels=4, size=128, num_identities=num_identities)
    identity = drawn["identity"]
    assert identity == index % num_identities and drawn["other"] != identity
    skin = _skin(seed, identity)
    for panel, (x1, y1, x2, y2) in zip(drawn["panels"], drawn["face_boxes"]):
      assert _share_of(panel[y1:y2, x1:x2], skin) > 0.2
    record = source[index]
    assert record["identity"] == identity
    assert _share_of(record["image"], skin, tolerance=3) > 0.1  # 0.17 to 0.32 here.
    for other in range(num_identities):
      if np.abs(_skin(seed, other) - skin).max() > 12:  # Another identity's skin is absent (0.0 here).
        assert _share_of(record["image"], _skin(seed, other), tolerance=3) < 0.02
    if drawn["other"] >= 0:  # The second character is really drawn in some panels.
      other_skin = _skin(seed, drawn["other"])
      others_seen += any(_share_of(p, other_skin) > 0.003 for p in drawn["panels"])
  assert others_seen >= 2


def test_synthetic_sequences_are_deterministic_and_differ_by_seed_and_index():
  a = panels.SyntheticPanels(6, panel_size=P, face_size=F)
  b = panels.SyntheticPanels(6, panel_size=P, face_size=F)
  for key in ("panels", "image", "face_box", "identity"):
    np.testing.assert_array_equal(a[4][key], b[4][key])
  assert not np.array_equal(a[4]["panels"], a[5]["panels"])
  assert not np.array_equal(a[4]["panels"], panels.SyntheticPanels(6, panel_size=P, face_size=F, seed=1)[4]["panels"])


def test_same_seed_same_batches_and_a_restored_iterator_continues_identically():
  config = _config()
  first = pipeline.create_train_iterator(config, seed=5, global_batch_size=3)
  batches = [next(first) for _ in range(2)]
  state = first.get_state()
  after = [next(first) for _ in range(3)]  # Crosses the 12-record epoch: a new permutation.
  again = pipeline.create_train_iterator(config, seed=5, global_batch_size=3)
  for expected in batches:
    np.testing.assert_array_equal(next(again)["panels"], expected["panels"])
  restored = pipeline.create_train_iterator(config, seed=5, global_batch_size=3)
  restored.set_state(state)
  for expected in after:
    got = next(restored)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  other = next(pipeline.create_train_iterator(config, seed=6, global_batch_size=3))
  assert not np.array_equal(other["panels"], batches[0]["panels"])


def test_export_then_folder_source_gives_the_same_records(tmp_path):
  source = panels.SyntheticPanels(5, panel_size=P, face_size=F, seed=2)
  records = [source[i] for i in range(5)]
  seq_dir = str(tmp_path / "seqs")
  ids = panels.export_sequences(records, seq_dir)
  assert ids == [f"{i:06d}" for i in range(5)]
  assert sorted(os.listdir(os.path.join(seq_dir, ids[0]))) == ["0.png", "1.png", "2.png", "face.png"]
  with open(os.path.join(seq_dir, panels.BOXES_FILE)) as f:
    assert json.load(f)[ids[3]] == records[3]["face_box"].tolist()
  folder = panels.FolderPanels(seq_dir, num_panels=S, panel_size=P, face_size=F)
  for record, read in zip(records, (folder[i] for i in range(5))):
    for key in ("panels", "image", "face_box"):
      np.testing.assert_array_equal(read[key], record[key])
  # Through the pipeline, in source order.
  config = _config("folder")
  config.folder.image_dir = seq_dir
  config.shuffle = False
  batch = next(pipeline.create_train_iterator(config, seed=0, global_batch_size=5))
  np.testing.assert_array_equal(batch["panels"], np.stack([r["panels"] for r in records]) / np.float32(127.5) - 1)
  np.testing.assert_array_equal(batch["face_box"], np.stack([r["face_box"] for r in records]))
  assert f"panel sequences in '{seq_dir}': 5 sequences" in pipeline.describe(config)


def test_a_folder_for_generate_needs_no_faces_and_no_boxes(tmp_path):
  source = panels.SyntheticPanels(2, panel_size=P, face_size=F)
  seq_dir = str(tmp_path / "seqs")
  panels.export_sequences([source[0], source[1]], seq_dir, ids=["b", "a"])
  for name in ("a", "b"):
    os.remove(os.path.join(seq_dir, name, "face.png"))
  # The exported targets are painted already: filling the box again changes nothing.
  boxed = panels.FolderPanels(seq_dir, num_panels=S, panel_size=P, face_size=F, faces=False)
  assert boxed.ids == ["a", "b"] and sorted(boxed[0]) == ["face_box", "panels"]
  np.testing.assert_array_equal(boxed[1]["panels"], source[0]["panels"])
  with pytest.raises(DataError, match=r"painted white at the face box and there is no face.png: save the real face "
                                      r"as '.*a/face.png'"):
    panels.FolderPanels(seq_dir, num_panels=S, panel_size=P, face_size=F)[0]
  os.remove(os.path.join(seq_dir, panels.BOXES_FILE))
  plain = panels.FolderPanels(seq_dir, num_panels=S, panel_size=2 * P, face_size=F, faces=False)
  assert sorted(plain[0]) == ["panels"] and plain[0]["panels"].shape == (S, 2 * P, 2 * P, 3)


def _write_sequence(seq_dir, name, count=S, size=30):
  os.makedirs(os.path.join(seq_dir, name), exist_ok=True)
  for j in range(count):
    Image.fromarray(np.full((size, size, 3), 40 * j, np.uint8)).save(os.path.join(seq_dir, name, f"{j}.png"))


def _write_boxes(seq_dir, boxes):
  with open(os.path.join(seq_dir, panels.BOXES_FILE), "w") as f:
    f.write(boxes if isinstance(boxes, str) else json.dumps(boxes))


def test_folder_errors_name_the_file_and_the_fix(tmp_path, caplog):
  seq_dir = str(tmp_path / "seqs")
  make = lambda **kw: panels.FolderPanels(seq_dir, num_panels=S, panel_size=P, face_size=F, **kw)
  with pytest.raises(DataError, match=r"input.folder.image_dir '.*seqs' does not exist.*--config.input.folder"):
    make()
  os.makedirs(seq_dir)
  with pytest.raises(DataError, match=r"holds no sequence folders: put each sequence's 3 panels in"):
    make()
  _write_sequence(seq_dir, "s1")
  with pytest.raises(DataError, match=r"boxes.json' does not exist: write the target face boxes there"):
    make()
  _write_boxes(seq_dir, "{not json")
  with pytest.raises(DataError, match=r"boxes.json' cannot be read as JSON"):
    make()
  _write_boxes(seq_dir, {"s1": [1, 2, 3]})
  with pytest.raises(DataError, match=r"boxes.json': the entry 's1': \[1, 2, 3\] is not"):
    make()
  _write_boxes(seq_dir, {"s2": [1, 2, 3, 4]})
  with pytest.raises(DataError, match=r"has no box for sequence 's1': add \"s1\": \[x1, y1, x2, y2\]"):
    make()
  _write_boxes(seq_dir, {"s1": [5, 5, 40, 20]})
  with pytest.raises(DataError, match=r"face box \[5, 5, 40, 20\] is empty or outside the 30x30 panel"):
    make()[0]
  _write_sequence(seq_dir, "s0", count=2)
  with pytest.raises(DataError, match=r"s0' holds 2 panel images, not input.panels.num_panels=3"):
    make()
  _write_sequence(seq_dir, "s0")
  _write_boxes(seq_dir, {"s0": [5, 5, 20, 20], "s1": [5, 5, 20, 20]})
  with open(os.path.join(seq_dir, "s1", "1.png"), "wb") as f:
    f.write(b"not a png")
  source = make()
  assert source[0]["panels"].shape == (S, P, P, 3)
  assert source[1] is None  # Skipped and logged, as the image folders do.
  assert any("s1/1.png" in r.getMessage() for r in caplog.records)


def test_config_errors_name_the_flag():
  def check(match, **settings):
    config = _config()
    for key, value in settings.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    with pytest.raises(ConfigError, match=match):
      pipeline.validate(config)
  check(r"input.record 'faces' is unknown: set --config.input.record to one of \('image', 'panels'\)",
        record="faces")
  check(r"input.panels.num_panels 1 is not an int in \[2, 64\]", **{"panels.num_panels": 1})
  check(r"input.panels.panel_size 8 is not an int in \[16, 1024\]", **{"panels.panel_size": 8})
  check(r"input.panels.face_size \(64, 32\) is not an int", resolution=(64, 32))
  check(r"unset --config.input.domains and --config.input.groups", groups=(0, 1))
  check(r"input.panels.domain 'sketch' is unknown", **{"panels.domain": "sketch"})
  check(r"input.folder.image_dir is not set", source="folder")
  config = _config()
  config.panels.face_size = 32  # One setting with the resolution ...
  assert config.resolution == 32
  flat = type(config)(config.to_dict())  # ... until a saved config is edited by hand.
  flat.panels.face_size = 48
  with pytest.raises(ConfigError, match=r"face_size 48 and input.resolution 32 differ"):
    pipeline.validate(flat)


# ----------------------------------------------------------------------------------------------------------------
# The Golden Age builder on a fixture in SSuperGAN's layout.


def _write_golden(manual_dir, rng, num_sequences=6):
  """raw_panel_images/<book>/<page>_<panel>.jpg and the sequence JSON; returns (images by path, sequences)."""
  images = {}
  for book in ("12", "7"):
    os.makedirs(os.path.join(manual_dir, "raw_panel_images", book))
    for k, image in enumerate(_golden_images(rng)):
      path = f"{book}/1_{k}.jpg"
      image.save(os.path.join(manual_dir, "raw_panel_images", path), quality=95)
      with Image.open(os.path.join(manual_dir, "raw_panel_images", path)) as stored:
        images[path] = stored.convert("RGB")
  sequences = {}
  for i in range(num_sequences):
    book = ("12", "7")[i % 2]
    shift = i % 3  # Different areas per sequence, all inside their crops.
    areas = [[[p[0] + shift, p[1], p[2] + shift, p[3]], [f[0] + shift, f[1], f[2] + shift, f[3]]]
             for p, f in GOLDEN_AREAS]
    sequences[str(i)] = [[f"{book}/1_{k}.jpg" for k in range(3)], areas]
  with open(os.path.join(manual_dir, "panel_face_areas.json"), "w") as f:
    json.dump(sequences, f)
  return images, sequences


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  from input_pipeline import golden_panels  # pylint: disable=g-import-not-at-top  # Imports TFDS.
  root = tmp_path_factory.mktemp("golden")
  manual_dir, data_dir = str(root / "manual"), str(root / "data")
  images, sequences = _write_golden(manual_dir, np.random.default_rng(4))
  golden_panels.prepare(manual_dir=manual_dir, data_dir=data_dir)
  return data_dir, images, sequences


def test_golden_builder_splits_95_5_in_file_order_and_keeps_the_files(golden):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir, images, sequences = golden
  train = tfds.data_source("golden_panels", split="train", data_dir=data_dir)
  test = tfds.data_source("golden_panels", split="test", data_dir=data_dir)
  assert [r["id"].decode() for r in train] == ["0", "1", "2", "3", "4"]  # int(6 * 0.95) = 5.
  assert [r["id"].decode() for r in test] == ["5"]
  record = train[4]
  paths, areas = sequences["4"]
  assert [p.decode() for p in record["paths"]] == paths
  np.testing.assert_array_equal(record["panel_areas"], [a[0] for a in areas])
  np.testing.assert_array_equal(record["face_areas"], [a[1] for a in areas])
  assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in record["panels"])  # The JPEG files as stored.


@pytest.mark.parametrize("torchvision_resize", [True, False])
def test_golden_records_through_the_pipeline_are_ssupergans(golden, torchvision_resize):
  data_dir, images, sequences = golden
  config = _config("tfds", torchvision_resize=torchvision_resize)
  config.tfds.name, config.tfds.data_dir, config.tfds.split = "golden_panels", data_dir, "test"
  config.shuffle = False
  batch = next(pipeline.create_train_iterator(config, seed=0, global_batch_size=1))
  paths, areas = sequences["5"]
  panel_areas, face_areas = np.array([a[0] for a in areas]), np.array([a[1] for a in areas])
  if torchvision_resize:
    expected_panels, expected_face, expected_box = _original_item([images[p] for p in paths], panel_areas,
                                                                  face_areas, P, F)
    np.testing.assert_allclose(batch["panels"][0], expected_panels, atol=1 / 255 + 1e-4)
    np.testing.assert_allclose(batch["image"][0], expected_face, atol=1 / 255 + 1e-4)
    assert batch["face_box"][0].tolist() == expected_box
  else:
    crops, box = panels.golden_crops([images[p] for p in paths], panel_areas, face_areas[-1], "test")
    record = panels.make_record(crops, box, panel_size=P, face_size=F)
    np.testing.assert_array_equal(batch["panels"][0], record["panels"] / np.float32(127.5) - 1)
    np.testing.assert_array_equal(batch["face_box"][0], record["face_box"])
  assert "tfds golden_panels[test]" in pipeline.describe(config)


def test_golden_builder_errors_name_the_file_and_the_fix(tmp_path):
  from input_pipeline import golden_panels  # pylint: disable=g-import-not-at-top

  def build(name):
    manual_dir = str(tmp_path / name)
    _, sequences = _write_golden(manual_dir, np.random.default_rng(5), num_sequences=2)
    return manual_dir, sequences

  def write(manual_dir, sequences):
    with open(os.path.join(manual_dir, "panel_face_areas.json"), "w") as f:
      json.dump(sequences, f)

  def prepare(manual_dir):
    golden_panels.prepare(manual_dir=manual_dir, data_dir=str(tmp_path / f"data_{os.path.basename(manual_dir)}"))

  manual_dir, sequences = build("missing")
  os.remove(os.path.join(manual_dir, "raw_panel_images", "7", "1_2.jpg"))
  with pytest.raises(DataError, match=r"panel '.*raw_panel_images/7/1_2.jpg' of '.*panel_face_areas.json' entry "
                                      r"'1' is missing: put the COMICS panels in"):
    prepare(manual_dir)
  manual_dir, sequences = build("corrupt")
  with open(os.path.join(manual_dir, "raw_panel_images", "12", "1_1.jpg"), "wb") as f:
    f.write(b"\xff\xd8 truncated")
  with pytest.raises(DataError, match=r"panel '.*12/1_1.jpg' of .* entry '0' cannot be decoded .*: replace the file"):
    prepare(manual_dir)
  manual_dir, sequences = build("malformed")
  sequences["1"][1] = sequences["1"][1][:2]
  write(manual_dir, sequences)
  with pytest.raises(DataError, match=r"entry '1' is not \[\[paths\], \[\[panel_area, face_area\] per panel\]\]"):
    prepare(manual_dir)
  manual_dir, sequences = build("outside")
  sequences["0"][1][2][1] = [300, 300, 320, 320]
  write(manual_dir, sequences)
  with pytest.raises(DataError, match=r"entry '0' \(face_area \[300, 300, 320, 320\] in panel_area .*\): face box "
                                      r"\[295, 288, 100, 100\] is empty or outside"):
    prepare(manual_dir)
  manual_dir, sequences = build("empty")
  sequences["1"][1][0][0] = [10, 10, 10, 50]
  write(manual_dir, sequences)
  with pytest.raises(DataError, match=r"entry '1': panel_area \[10, 10, 10, 50\] is empty: rebuild the sequence"):
    prepare(manual_dir)
  manual_dir, _ = build("nojson")
  os.rename(os.path.join(manual_dir, "panel_face_areas.json"), os.path.join(manual_dir, "a.txt"))
  with pytest.raises(DataError, match=r"holds 0 JSON files \[\] and no panel_face_areas.json: name the sequence"):
    prepare(manual_dir)
  config = _config("tfds")
  config.tfds.name, config.tfds.data_dir = "golden_panels", str(tmp_path / "empty")
  with pytest.raises(DataError, match=r"python -m input_pipeline.golden_panels --manual_dir"):
    pipeline.create_source(config)


def test_an_image_dataset_read_as_panels_names_the_fix(tmp_path):
  from tests import tfds_fixture  # pylint: disable=g-import-not-at-top
  tfds_fixture.build(str(tmp_path))
  config = _config("tfds")
  config.tfds.name, config.tfds.data_dir = tfds_fixture.NAME, str(tmp_path)
  with pytest.raises(ConfigError, match=r"is not a panel dataset .*--config.input.tfds.name=golden_panels"):
    pipeline.create_source(config)
