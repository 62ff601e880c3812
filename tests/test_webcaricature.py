"""The WebCaricature builder on a tiny fake dataset in the real layout: alignment, side faces, splits, pipeline."""

import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from facegen_jax import align
from facegen_jax.errors import ConfigError, DataError
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import webcaricature

REFERENCE = align.reference_points()
# A frontal face in the aligned frame whose five points are exactly the reference: eye corners 10 px either side
# of the eye centres, nose tip and mouth corners on theirs, lips between the corners, contour around.
(_LX, _LY), (_RX, _RY), (_NX, _NY), (_MLX, _MLY), (_MRX, _MRY) = REFERENCE
CANONICAL17 = np.array([
    [100, 20], [20, 130], [100, 228], [180, 130],
    [45, 85], [80, 82], [120, 82], [155, 85],
    [_LX - 10, _LY], [_LX + 10, _LY], [_RX - 10, _RY], [_RX + 10, _RY],
    [_NX, _NY], [(_MLX + _MRX) / 2, _MLY - 8], [_MLX, _MLY], [(_MLX + _MRX) / 2, _MLY + 10], [_MRX, _MRY]])


def _side_by_order():
  """A head turned away: the inner face squeezed against the left contour, the nose beyond it."""
  lm = CANONICAL17.copy()
  lm[4:17, 0] = 20 + (lm[4:17, 0] - 20) * 0.3
  lm[12, 0] = 15
  return lm


def _side_by_distance():
  """In order, but the right mouth corner ~40 px from its reference once aligned (the bound is 38.4 px)."""
  lm = CANONICAL17.copy()
  lm[16] = (225, 216)
  return lm


# name -> (protocol part or None, {stem: shape}); one person is in neither protocol file.
PEOPLE = {
    "Ann Lee": ("train", {"C00001": CANONICAL17, "C00002": CANONICAL17, "P00001": CANONICAL17}),
    "Bo Chen": ("train", {"C00001": _side_by_order(), "P00001": CANONICAL17, "P00002": _side_by_distance()}),
    "Cy Dao": ("test", {"C00001": CANONICAL17, "P00001": CANONICAL17}),
    "Di Eng": (None, {"C00001": CANONICAL17, "P00001": CANONICAL17}),
    "Ed Fox": (None, {"C00001": CANONICAL17, "P00001": CANONICAL17}),
}
SIDE = {"Bo Chen/C00001", "Bo Chen/P00002"}
GRAY = "Cy Dao/P00001"  # Stored as an 8-bit grayscale JPEG.
DOMAIN_GREEN = {"C": 200, "P": 60}  # The green channel tells the domains apart.


def _placement(key: str) -> np.ndarray:
  """The 2x3 similarity taking the aligned frame into key's source image (tilted, scaled, shifted)."""
  rng = np.random.default_rng(sum(map(ord, key)))
  angle, scale = rng.uniform(-0.35, 0.35), rng.uniform(0.6, 0.9)
  linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return np.hstack([linear, (np.array([[90.0], [105.0]]) - linear @ [[100.0], [116.0]])])


def _source(key: str) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 (210, 180, 3) or (210, 180), 17 source points): Gaussian dots in red at the five points."""
  name, stem = key.split("/")
  points = align.transform_points(_placement(key), PEOPLE[name][1][stem])
  points += np.random.default_rng(len(key)).normal(0, 0.1, points.shape)  # Annotations are not exact.
  ys, xs = np.mgrid[0:210, 0:180]
  red = np.zeros((210, 180))
  for x, y in align.five_points_from_webcaricature17(points):
    red += 255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0 ** 2))
  person = sorted(PEOPLE).index(name)
  image = np.stack([red, np.full_like(red, DOMAIN_GREEN[stem[0]]), np.full_like(red, 40 * person)], -1)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return (image[..., 0] if key == GRAY else image), points


def _write(root, protocols: bool = True) -> str:
  """The dataset's layout under root/WebCaricature; protocols: the two View 1 files (DevTrain, DevTest)."""
  top = os.path.join(root, webcaricature.TOP_FOLDER)
  for name, (_, stems) in PEOPLE.items():
    for sub in (webcaricature.IMAGE_DIR, webcaricature.POINTS_DIR):
      os.makedirs(os.path.join(top, sub, name))
    for stem in stems:
      image, points = _source(f"{name}/{stem}")
      Image.fromarray(image).save(os.path.join(top, webcaricature.IMAGE_DIR, name, stem + ".jpg"), quality=95,
                                  subsampling=0)
      with open(os.path.join(top, webcaricature.POINTS_DIR, name, stem + ".txt"), "w") as f:
        f.writelines(f"{x:.6f} {y:.6f}\n" for x, y in points)
  if protocols:
    for part, relative in webcaricature.PROTOCOL_FILES.items():
      path = os.path.join(top, *relative.split("/"))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      listed = [(n, s) for n, (p, s) in PEOPLE.items() if p == part]
      with open(path, "w") as f:
        f.write(f"{len(listed)}\n")
        f.writelines(f"{n} {sum(k[0] == 'C' for k in s)} {sum(k[0] == 'P' for k in s)}\n" for n, s in listed)
  return top


def _build(manual_dir, data_dir, config="caricature"):
  webcaricature.prepare(config, manual_dir=str(manual_dir), data_dir=str(data_dir))


def _records(data_dir, config, split) -> list[dict]:
  source = tfds.data_source(f"webcaricature/{config}", split=split, data_dir=str(data_dir), download=False)
  return [source[i] for i in range(len(source))]


def _file(record) -> str:
  return record["file"].decode() if isinstance(record["file"], bytes) else str(record["file"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(manual dir, data_dir holding every config, built from the protocol files)."""
  root = tmp_path_factory.mktemp("webcaricature")
  _write(root / "manual")
  for config in webcaricature.CONFIGS:
    _build(root / "manual", root / "data", config)
  return root / "manual", root / "data"


def _expected(part: str, domain: str, *, keep_side: bool, people=None) -> list[str]:
  people = people or [n for n, (p, _) in PEOPLE.items() if p == part]
  return [f"{n}/{s}" for n in people for s in PEOPLE[n][1]
          if s[0] == domain and (keep_side or f"{n}/{s}" not in SIDE)]


def test_splits_follow_the_protocol_and_side_faces_are_dropped(built):
  _, data_dir = built
  assert tfds.builder("webcaricature", data_dir=str(data_dir)).builder_config.name == "caricature"
  for config in webcaricature.CONFIGS:
    # The same ids in every config: Di Eng and Ed Fox are in neither protocol file.
    names = tfds.builder(f"webcaricature/{config}", data_dir=str(data_dir)).info.features["identity"].names
    assert names == ["Ann Lee", "Bo Chen", "Cy Dao"], config
    domain, keep_side = config.split("_")[0], config.endswith("_all")
    for split in webcaricature.SPLITS:
      records = _records(data_dir, config, split)
      files = [_file(r) for r in records]
      assert files == _expected(split, webcaricature.DOMAINS[domain], keep_side=keep_side), (config, split)
      for record, key in zip(records, files):
        assert names[int(record["identity"])] == key.split("/")[0]
        assert bool(record["frontal"]) == (key not in SIDE), key
  side = {_file(r): r for config in ("caricature_all", "photo_all") for r in _records(data_dir, config, "train")}
  # One side face fails the order checks, the other only the distance bound: both as align.is_frontal says.
  assert not align.landmark_order_ok(side["Bo Chen/C00001"]["landmarks"])
  assert align.landmark_order_ok(side["Bo Chen/P00002"]["landmarks"])
  assert not align.is_frontal(side["Bo Chen/P00002"]["landmarks"])


def _centroid(red: np.ndarray, point: np.ndarray, radius: int = 9) -> np.ndarray:
  x0, y0 = np.rint(point).astype(int)
  patch = red[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
  weights = np.maximum(patch - 12, 0)  # JPEG's ripple around the dots stays below 12.
  ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
  return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def test_aligned_landmarks_and_pixels_land_on_the_reference(built):
  manual_dir, data_dir = built
  checked = 0
  for config, split in ((c, s) for c in webcaricature.DOMAINS for s in webcaricature.SPLITS):
    for record in _records(data_dir, config, split):
      key = _file(record)
      assert record["image"].shape == (232, 200, 3) and record["image"].dtype == np.uint8
      five = align.five_points_from_webcaricature17(record["landmarks"])
      assert np.abs(five - REFERENCE).max() < 0.5, key
      # The stored points are the file's points through the matrix that warped the image.
      points = webcaricature.read_landmarks(os.path.join(manual_dir, "WebCaricature", "FacialPoints",
                                                         key + ".txt"))
      matrix = align.similarity_transform(align.five_points_from_webcaricature17(points), REFERENCE)
      np.testing.assert_allclose(record["landmarks"], align.transform_points(matrix, points), atol=1e-4)
      # The dots drawn at the five points show up at the stored points in the aligned image.
      image = record["image"].astype(np.int32)
      for point in five:
        assert np.linalg.norm(_centroid(image[..., 0], point) - point) < 0.5, (key, point)
      if key == GRAY:  # Grayscale converted to RGB: the dots in every channel.
        assert np.abs(image[..., 0] - image[..., 2]).max() <= 2
      else:
        inside = image[100:130, 90:110]
        assert abs(inside[..., 1].mean() - DOMAIN_GREEN[key.split("/")[1][0]]) < 3, key
      checked += 1
  assert checked == 6  # Ann Lee 3, Bo Chen 1 (two side faces), Cy Dao 2.


def test_without_protocol_files_every_image_splits_by_the_documented_rule(tmp_path):
  _write(tmp_path / "manual", protocols=False)
  for domain in webcaricature.DOMAINS:  # The top folder itself as manual dir.
    _build(tmp_path / "manual" / "WebCaricature", tmp_path / "data", domain + "_all")
  # Sorted people Ann Lee, Bo Chen, Cy Dao, Di Eng, Ed Fox: index % 5 == 4 (Ed Fox) is test.
  train, test = ["Ann Lee", "Bo Chen", "Cy Dao", "Di Eng"], ["Ed Fox"]
  for domain, prefix in webcaricature.DOMAINS.items():
    for split, people in (("train", train), ("test", test)):
      files = [_file(r) for r in _records(tmp_path / "data", domain + "_all", split)]
      assert files == _expected(split, prefix, keep_side=True, people=people), (domain, split)
    assert tfds.builder(f"webcaricature/{domain}_all", data_dir=str(tmp_path / "data")).info.features[
        "identity"].names == sorted(PEOPLE)


def test_two_domain_pipeline_reads_caricatures_as_a_and_photos_as_b(built):
  _, data_dir = built
  config = pipeline.default_input_config()
  config.domains = ("a", "b")
  for domain, name in (("a", "webcaricature/caricature"), ("b", "webcaricature/photo")):
    config[domain] = pipeline.domain_config(source="tfds", tfds=dict(
        name=name, data_dir=str(data_dir), int_keys=("identity",)))  # The default split, "train".
  config.resolution, config.load_size = (224, 192), (232, 200)  # configs/satnet.py's transform.
  config.resize, config.random_crop = "shorter_side", True
  config.read_threads, config.prefetch_buffer_size = 1, 4
  iterator = pipeline.create_train_iterator(config, seed=0, global_batch_size=2)
  batches = [next(iterator) for _ in range(2)]
  iterator.close()
  for batch in batches:
    assert batch["a/image"].shape == batch["b/image"].shape == (2, 224, 192, 3)
    assert -1.0 <= batch["a/image"].min() and batch["a/image"].max() <= 1.0
    green = {d: (batch[f"{d}/image"][:, 100:130, 85:105, 1].mean() + 1) * 127.5 for d in "ab"}
    assert abs(green["a"] - DOMAIN_GREEN["C"]) < 4 and abs(green["b"] - DOMAIN_GREEN["P"]) < 4, green
    assert batch["a/identity"].dtype == np.int32
    assert set(batch["a/identity"].tolist()) <= {0} and set(batch["b/identity"].tolist()) <= {0, 1}


def test_satnet_config_reads_both_domains_and_the_evaluator_their_test_people(built):
  from configs import satnet  # pylint: disable=g-import-not-at-top
  from facegen_jax.metrics import evaluator  # pylint: disable=g-import-not-at-top
  _, data_dir = built
  config = satnet.get_config()
  for domain, name in (("a", "webcaricature/caricature"), ("b", "webcaricature/photo")):  # The README's flags.
    config.input[domain].source = "tfds"
    config.input[domain].tfds.update(name=name, data_dir=str(data_dir))
  config.eval.split = "test"
  train = pipeline.create_sources(config.input)
  assert {d: len(s) for d, s in train.items()} == {"a": 2, "b": 2}  # Ann Lee's C1, C2; Ann Lee's P1, Bo Chen's P1.
  for domain in ("a", "b"):
    test = pipeline.create_source(evaluator.reference_input_config(config, domain))
    assert len(test) == 1 and test[0]["image"].shape == (232, 200, 3)  # Cy Dao's.


def _raises_one_line(parts, fn) -> None:
  with pytest.raises(DataError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for part in parts:
    assert part in message, (part, message)


def test_missing_and_corrupt_files_are_one_line_errors_naming_them(tmp_path):
  fresh = lambda: str(tmp_path / f"data{len(os.listdir(tmp_path))}")
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not the dataset")
  _raises_one_line([str(empty), "OriginalImages/", webcaricature.HOMEPAGE], lambda: _build(empty, fresh()))
  _raises_one_line(["nowhere", "manual dir", "--manual_dir"], lambda: _build(tmp_path / "nowhere", fresh()))
  zipped = tmp_path / "zipped"
  zipped.mkdir()
  for name in ("OriginalImages", "FacialPoints"):
    (zipped / f"{name}.zip").write_bytes(b"PK")
  _raises_one_line(["OriginalImages.zip", "extract"], lambda: _build(zipped, fresh()))

  def broken(change):
    manual = tmp_path / f"broken{len(os.listdir(tmp_path))}"
    top = _write(manual)
    change(top)
    return manual

  no_test = broken(lambda top: os.remove(os.path.join(top, *webcaricature.PROTOCOL_FILES["test"].split("/"))))
  _raises_one_line(["UnRestrictedView1_DevTest.txt", "EvaluationProtocols/"], lambda: _build(no_test, fresh()))
  no_image = broken(lambda top: os.remove(os.path.join(top, "OriginalImages", "Ann Lee", "C00002.jpg")))
  _raises_one_line([os.path.join("OriginalImages", "Ann Lee", "C00002.jpg"), "missing", "download"],
                   lambda: _build(no_image, fresh()))

  def short_points(top):
    path = os.path.join(top, "FacialPoints", "Cy Dao", "P00001.txt")
    lines = open(path).readlines()
    open(path, "w").writelines(lines[:16])
  _raises_one_line([os.path.join("FacialPoints", "Cy Dao", "P00001.txt"), "17 lines", "16 lines"],
                   lambda: _build(broken(short_points), fresh(), "photo"))

  def bad_protocol(top):
    path = os.path.join(top, *webcaricature.PROTOCOL_FILES["train"].split("/"))
    open(path, "a").write("Zed Young three 1\n")
    text = open(path).read().replace("2\n", "3\n", 1)
    open(path, "w").write(text)
  _raises_one_line(["UnRestrictedView1_DevTrain.txt", "Zed Young three 1", "<Name> <caricatures> <photos>"],
                   lambda: _build(broken(bad_protocol), fresh()))

  def corrupt(top):
    with open(os.path.join(top, "OriginalImages", "Cy Dao", "C00001.jpg"), "wb") as f:
      f.write(b"\xff\xd8 not a jpeg")
  _raises_one_line([os.path.join("OriginalImages", "Cy Dao", "C00001.jpg"), "cannot be decoded"],
                   lambda: _build(broken(corrupt), fresh()))


def test_command_line_builds_and_the_unprepared_error_names_it(built, tmp_path):
  manual_dir, _ = built
  data_dir = str(tmp_path / "cli")
  with pytest.raises(DataError, match=r"python -m input_pipeline\.webcaricature --manual_dir"):
    sources.open_tfds("webcaricature/photo", split="test", data_dir=data_dir)
  webcaricature._main(["--manual_dir", str(manual_dir), "--data_dir", data_dir])  # Both domains.
  assert len(sources.open_tfds("webcaricature/photo", split="test", data_dir=data_dir)) == 1
  assert len(sources.open_tfds("webcaricature/caricature", split="train", data_dir=data_dir)) == 2
  with pytest.raises(ConfigError, match=r"split 'validation' is not a split .*'train', 'test'"):
    sources.open_tfds("webcaricature/photo", split="validation", data_dir=data_dir)
  with pytest.raises(SystemExit, match="webcaricature: error: .*manual dir"):
    webcaricature._main(["--manual_dir", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path / "other")])
  shutil.rmtree(data_dir)
