"""The browser app (facegen_jax/app.py, facegen_jax/serving.py).

The unmarked tests check serving.py's parts without a browser. The slow ones start the app in this process on a
free port of 127.0.0.1 over tiny runs (the families' tiny presets with random parameters of init's shapes: no
init compile) and drive Debian's chromium through Playwright: one server and one browser for the module.
FACEGEN_SKIP_BROWSER=1 skips them; otherwise a missing chromium, playwright or gradio fails them with the install
command. FACEGEN_APP_SCREENSHOTS=DIR also copies one screenshot per tab to DIR/<tab>.png (docs/app for the README).
"""

import base64
import importlib.util
import io
import json
import math
import os
import shutil
import socket

import jax
import numpy as np
from PIL import Image
import pytest

from facegen_jax import align
from facegen_jax import errors
from facegen_jax import families
from facegen_jax import rundir
from facegen_jax import serving
from input_pipeline import synthetic
from tests import family_doubles
from tests.conftest import tiny_config

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_CHROMIUM = "apt-get install -y chromium (Debian's package; sh tests/setup.sh does it)"
# The served runs: family -> tab.
RUNS = {"spade": "label", "ugatit": "translate", "munit": "translate", "tfill": "inpaint",
        "ssupervae": "complete", "dcgan": "sample"}
DISPLAY = 256
# Read at import: the app's fixture changes the working directory.
SCREENSHOTS = os.environ.get("FACEGEN_APP_SCREENSHOTS") and os.path.abspath(os.environ["FACEGEN_APP_SCREENSHOTS"])


def random_state(config, seed: int = 0):
  """A train state of init's shapes and dtypes with random values (weights ~ N(0, 1/fan_in), variances and
  scales near 1), so a run directory costs no init compile."""
  abstract = jax.eval_shape(lambda key: families.init_state(config, key), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path).lower()
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(0)
    if not np.issubdtype(leaf.dtype, np.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if "var" in name:
      return (1 + 0.1 * rng.random(leaf.shape)).astype(leaf.dtype)
    if "scale" in name or "gamma" in name:
      return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return (rng.standard_normal(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]) or 1)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def make_run(workdir, name: str) -> str:
  config = family_doubles.DOUBLES[name].get_config() if name in family_doubles.DOUBLES else tiny_config(name)
  rundir.save_state(workdir, config, random_state(config), step=0)
  return str(workdir)


def _png(path, image) -> str:
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
  return str(path)


# --- serving.py without a browser ---


def test_label_colours_round_trip():
  label = serving.example_label(3, (32, 32), 19)
  assert len(np.unique(label)) >= 6  # a face's parts, not a blank map
  painted = serving.colour_label(label, 19, scale=8).astype(np.int32)
  painted += np.random.default_rng(0).integers(-20, 21, painted.shape)  # brush edges blend colours a little
  np.testing.assert_array_equal(serving.label_from_colours(np.clip(painted, 0, 255), 19, (32, 32)), label)


def test_read_upload_messages(tmp_path):
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(errors.UserError, match="notes.txt is not an image"):
    serving.read_upload(str(tmp_path / "notes.txt"), "the photo")
  with pytest.raises(errors.UserError, match="upload the photo first"):
    serving.read_upload(None, "the photo")
  big = np.broadcast_to(np.arange(3000, dtype=np.uint8)[None, :, None] % 251, (2500, 3000, 3))
  image, notes = serving.read_upload(_png(tmp_path / "big.png", big), "the photo")
  assert image.shape == (1707, 2048, 3) and notes == ["the photo resized from 3000x2500 to 2048x1707"]
  fitted, notes = serving.fit(image, (32, 32))
  assert fitted.shape == (32, 32, 3) and "centre-cropped to 1707x1707" in notes[0]
  assert fitted.min() >= -1 and fitted.max() <= 1


def test_hole_from_layers():
  layer = np.zeros((256, 256, 4), np.uint8)
  with pytest.raises(errors.UserError, match="the mask is empty"):
    serving.hole_from_layers([layer, None], (32, 32))
  layer[100:102, 40:200] = (255, 255, 255, 255)  # a 2 px stroke: thinner than a model pixel (8 px)
  hole = serving.hole_from_layers([layer], (32, 32))
  assert hole.shape == (32, 32, 1) and hole[12, 5:25, 0].all() and hole.sum() == 20
  assert serving.box_from_layers([layer]) == (40, 100, 200, 102)


def test_medical_mask_covers_mouth_not_eyes():
  face = serving.example_face(0, 128)
  masked, hole = serving.medical_mask(face, "surgical")
  points = serving.mean_landmarks((128, 128))
  mouth, eyes = points[48:68].round().astype(int), points[36:48].round().astype(int)
  assert hole[mouth[:, 1], mouth[:, 0]].all() and not hole[eyes[:, 1], eyes[:, 0]].any()
  assert 0.01 < hole.mean() < 0.5 and not np.array_equal(masked[hole], face[hole])


def _model(config, family="munit") -> serving.Model:
  """A served model for what only reads the config (templates, sizes): no state."""
  return serving.Model("m", "", config, families.FAMILIES[family], state=None, step=0)


def _tilted(image: np.ndarray, landmarks: np.ndarray, angle: float = 0.15, scale: float = 1.3,
            canvas: tuple[int, int] = (360, 420)):
  """`image` rotated by `angle` rad, scaled and moved off-centre into a grey (H, W) canvas, and its landmarks."""
  c, s = scale * math.cos(angle), scale * math.sin(angle)
  matrix = np.array([[c, -s, 60.0], [s, c, 10.0]])
  out = align.warp_affine(image, matrix, (canvas[1], canvas[0]))
  inside = align.warp_affine(np.ones(image.shape[:2], np.float32), matrix, (canvas[1], canvas[0])) > 0.5
  return np.where(inside[..., None], out, 90).astype(np.uint8), align.transform_points(matrix, landmarks)


def test_face_template_is_the_training_faces():
  from configs import munit as munit_configs, satnet as satnet_configs  # pylint: disable=g-import-not-at-top
  # Synthetic domains: the renderer's average face at the model's size (64 px renders agree with 256 px ones).
  model = _model(munit_configs.get_config("cpu"))
  template, what = serving.face_template(model, "a/image")
  photo = np.mean([align.five_points_from_dlib68(synthetic.landmarks68(0, i, 64, "photo")) for i in range(32)], 0)
  np.testing.assert_allclose(template, photo, atol=1e-9)
  assert what == "the synthetic photo faces' average"
  assert serving.face_template(model, "b/image")[1] == "the synthetic toon faces' average"
  # A folder domain: SATNet's alignment (200x232), covered to load_size 116x100 (half) and centre-cropped to 112x96.
  config = satnet_configs.get_config("cpu")
  config.input.b.source = "folder"
  template, what = serving.face_template(_model(config), "b/image")
  np.testing.assert_allclose(template, (align.reference_points() + 0.5) * 0.5 - 0.5 - 2, atol=1e-9)
  assert what.startswith("SATNet's")


def test_prepare_face_aligns_by_landmarks():
  from configs import munit as munit_configs  # pylint: disable=g-import-not-at-top
  model = _model(munit_configs.get_config("cpu"))  # 64 px, synthetic photo -> toon
  face = serving.example_face(0, 256)
  tilted, points = _tilted(face, synthetic.landmarks68(0, 0, 256))
  template, _ = serving.face_template(model, "a/image")
  aligned, notes, moved = serving.prepare_face(model, "a/image", tilted, detect=lambda image: points)
  assert aligned.shape == (64, 64, 3) and "aligned by its dlib landmarks" in notes[0], notes
  fitted, _ = serving.fit(tilted, (64, 64))
  # The face lands where the training faces have theirs: the similarity's residual only (this face's own shape).
  residual = np.abs(align.five_points_from_dlib68(moved) - template).max()
  assert residual < 1, residual
  direct = align.similarity_transform(align.five_points_from_dlib68(synthetic.landmarks68(0, 0, 256)), template)
  expected = align.warp_affine(face.astype(np.float32), direct, (64, 64)) / 127.5 - 1
  inside = align.warp_affine(np.ones((256, 256), np.float32), direct, (64, 64)) > 0.99  # not the border
  assert np.abs(aligned - expected)[inside].mean() < 0.04  # resampled twice, else the same crop
  assert np.abs(fitted - expected)[inside].mean() > 0.1  # which the centre crop is not
  # Without the extra, or without a face: the centre crop, and the note says why.
  def missing(image):
    raise errors.UserError("landmark detection needs dlib (dlib is missing)")
  def no_face(image):
    raise errors.DataError("no face found in the image (dlib's frontal face detector)")
  for detect, why in ((missing, "requirements-align.txt"), (no_face, "no face found")):
    image, notes, moved = serving.prepare_face(model, "a/image", tilted, detect=detect)
    np.testing.assert_array_equal(image, fitted)
    assert moved is None and why in notes[-1] and notes[-1].endswith("centre-cropped"), notes


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="needs the landmark extra: "
                    "pip install -r requirements-align.txt (tests/setup.sh installs it)")
def test_prepare_face_with_dlib():
  from configs import munit as munit_configs  # pylint: disable=g-import-not-at-top
  model = _model(munit_configs.get_config("cpu"))
  tilted, points = _tilted(serving.example_face(0, 256), synthetic.landmarks68(0, 0, 256))
  found = align.detect_landmarks(tilted)
  assert np.abs(found - points).mean() < 6  # dlib's 68 points on the drawn face (pixels of a 420x360 image)
  aligned, notes, moved = serving.prepare_face(model, "a/image", tilted)
  template, _ = serving.face_template(model, "a/image")
  assert "aligned by its dlib landmarks" in notes[0], notes
  assert np.abs(align.five_points_from_dlib68(moved) - template).max() < 3  # model pixels (64 px)
  with pytest.raises(errors.DataError, match="no face found"):
    align.detect_landmarks(np.full((200, 200, 3), 90, np.uint8))


def test_fit_points_follow_the_pixels():
  image = np.zeros((300, 500, 3), np.uint8)
  image[118:123, 318:323] = 255  # a dot centred at x 320, y 120
  fitted, _ = serving.fit(image, (64, 64))
  y, x = np.unravel_index(np.argmax(fitted.sum(-1)), (64, 64))
  point = serving.fit_points(np.array([[320.0, 120.0]]), image.shape, (64, 64))[0]
  assert abs(point[0] - x) <= 0.5 and abs(point[1] - y) <= 0.5, (point, x, y)


def test_load_models_names_what_it_cannot_serve(tmp_path, monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "tiny_inpainter", family_doubles.tiny_inpainter)
  good = make_run(tmp_path / "inpainter", "tiny_inpainter")
  config = family_doubles.tiny_inpainter.get_config()
  config.family = "no_such_family"
  rundir.save_config(tmp_path / "unknown", config)
  (tmp_path / "empty").mkdir()
  models, problems = serving.load_models([good, str(tmp_path / "missing"), str(tmp_path / "unknown"),
                                          str(tmp_path / "empty")])
  assert [m.name for m in models] == ["inpainter"] and models[0].tab == "inpaint"
  assert problems[0] == f"{tmp_path}/missing: no such directory"
  assert "unknown family 'no_such_family'" in problems[1]
  assert problems[2].startswith(f"{tmp_path}/empty: ")
  # One compile per input shape: the second request of a shape reuses the program.
  model = models[0]
  data = {"image": np.zeros((1, 32, 32, 3), np.float32), "mask": np.ones((1, 32, 32, 1), np.float32)}
  _, first = serving.generate(model, "inpainted", data, 1)
  generator = model.generators["inpainted"]
  _, second = serving.generate(model, "inpainted", data, 1)
  assert "first request of this shape (compiles)" in first and ": request " in second
  assert model.generators["inpainted"] is generator and generator._cache_size() == 1  # pylint: disable=protected-access


# --- the app in a browser ---


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _chromium() -> str:
  path = os.environ.get("FACEGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
  if not os.path.exists(path):
    pytest.fail(f"the browser tests need Debian's chromium at {path}: {INSTALL_CHROMIUM}, or set "
                "FACEGEN_CHROMIUM=/path/to/chromium (FACEGEN_SKIP_BROWSER=1 skips them)")
  return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  if os.environ.get("FACEGEN_SKIP_BROWSER") == "1":
    pytest.skip("FACEGEN_SKIP_BROWSER=1")
  try:
    import gradio  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pytest.fail("the app tests need gradio: pip install --no-deps -r requirements-app.txt")
  from facegen_jax import app  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("app_runs")
  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.chdir(root)  # the page names runs by the paths given: short relative ones, as a user types them
    workdirs = [os.path.relpath(make_run(root / name, name), root) for name in RUNS]
    config = family_doubles.tiny_inpainter.get_config()
    config.family = "no_such_family"
    rundir.save_config(root / "unknown", config)
    workdirs += ["missing", "unknown"]
    port = _free_port()
    models, problems = serving.load_models(workdirs)
    demo = app.launch(models, problems, port=port, block=False)
    try:
      yield {"url": f"http://127.0.0.1:{port}/", "root": root, "problems": problems,
             "models": {m.name: m for m in models}}
    finally:
      demo.close()


@pytest.fixture(scope="module")
def browser(server):
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail("the browser tests need playwright: pip install -r requirements-test.txt (never `playwright "
                f"install`: they use Debian's chromium, {INSTALL_CHROMIUM})")
  executable = _chromium()
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser, server):
  page = browser.new_page(viewport={"width": 1280, "height": 1100})
  page.goto(server["url"])
  page.wait_for_selector("#served")
  yield page
  page.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("app_files")
  (root / "notes.txt").write_text("a text file, not a photo")
  big = np.broadcast_to((np.arange(5000, dtype=np.int64)[None, :, None] * 7 + np.arange(3000)[:, None, None]) % 251,
                        (3000, 5000, 3)).astype(np.uint8)
  return {"face": _png(root / "face.png", serving.example_face(3, 256)),
          "tilted": _png(root / "tilted.png", _tilted(serving.example_face(0, 256), np.zeros((68, 2)))[0]),
          "toon": _png(root / "toon.png", serving.example_face(5, 256, "toon")),
          "wide": _png(root / "wide.png", np.concatenate([serving.example_face(4, 200)] * 2, axis=1)),
          "big": _png(root / "big.png", big), "text": str(root / "notes.txt"), "root": root}


def _tab(page, title: str):
  page.get_by_role("tab", name=title).click()


def _status(page, tab: str, before: str = "", timeout: float = 120_000) -> str:
  """The tab's status line once it changes from `before` (the request finished, or failed with its message)."""
  page.wait_for_function("([id, before]) => { const e = document.getElementById(id); "
                         "return e && e.innerText.trim() && e.innerText.trim() !== before; }",
                         arg=[f"{tab}-status", before.strip()], timeout=timeout)
  return page.inner_text(f"#{tab}-status").strip()


def _click(page, elem_id: str, tab: str) -> str:
  before = page.inner_text(f"#{tab}-status")
  page.click(f"#{elem_id}")
  return _status(page, tab, before)


def _image(page, elem_id: str) -> np.ndarray:
  """The output image element's pixels, fetched from the page's own URL (or data URL)."""
  locator = page.locator(f"#{elem_id} img").first
  locator.wait_for(timeout=30_000)
  src = locator.get_attribute("src")
  if src.startswith("data:"):
    data = base64.b64decode(src.split(",", 1)[1])
  else:
    data = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/")).body()
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _not_constant(image: np.ndarray) -> None:
  assert image.reshape(-1, 3).std(axis=0).max() > 2.0, "the output image is constant"


def _upload(page, elem_id: str, path, name: str | None = None) -> None:
  """Sets the file input; with `name`, waits until the component lists the file (tries the upload twice)."""
  from playwright.sync_api import TimeoutError as PlaywrightTimeout  # pylint: disable=g-import-not-at-top
  for attempt in range(2):
    clear = page.locator(f"#{elem_id} button[aria-label='Clear']")
    if clear.count():  # a file is shown already: its input comes back once it is cleared
      clear.first.click()
    page.locator(f"#{elem_id} input[type=file]").set_input_files(path)
    if name is None:
      return
    try:
      page.locator(f"#{elem_id}").get_by_text(name).first.wait_for(timeout=20_000)
      return
    except PlaywrightTimeout:
      if attempt:
        raise


def _choose(page, elem_id: str, option: str) -> None:
  page.click(f"#{elem_id} input")
  page.get_by_role("option", name=option).click()


def _stroke(page, elem_id: str, dx: float = 0.0, dy: float = 0.0, length: float = 60) -> None:
  """One brush stroke across the editor's canvas, (dx, dy) off its centre (the image is centred there)."""
  brush = page.locator(f"#{elem_id} button[aria-label='Brush']")
  if brush.count():
    brush.first.click()
    page.keyboard.press("Escape")  # closes the brush's options, if they opened
  box = page.locator(f"#{elem_id} canvas").first.bounding_box()
  x, y = box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy
  page.mouse.move(x - length / 2, y)
  page.mouse.down()
  for step in range(1, 11):
    page.mouse.move(x - length / 2 + step * length / 10, y + 3 * math.sin(step))
  page.mouse.up()


def _screenshot(page, tmp_path, tab: str) -> None:
  path = tmp_path / f"{tab}.png"
  page.screenshot(path=str(path), full_page=True)
  copy_to = SCREENSHOTS
  if copy_to:
    os.makedirs(copy_to, exist_ok=True)
    # Small PNGs for the README: 128 colours.
    Image.open(path).convert("RGB").quantize(128).save(os.path.join(copy_to, f"{tab}.png"), optimize=True)


def _latency(status: str, log: list) -> None:
  for line in status.splitlines():
    if "request" in line:
      print(f"latency: {line}")
      log.append(line)


LATENCIES = []


@pytest.mark.slow
def test_page_lists_served_and_unserved_runs(page, server):
  served = page.inner_text("#served")
  for name in RUNS:
    assert f"{name} (" in served
  problems = page.inner_text("#problems")
  assert "missing: no such directory" in problems
  assert "unknown family 'no_such_family'" in problems
  from playwright.sync_api import expect  # pylint: disable=g-import-not-at-top
  # expect() retries: the tab bar can render after #served (a CI run read it empty).
  expect(page.get_by_role("tab")).to_have_text(
      ["Label map -> face", "Translate", "Inpaint", "Complete a panel", "Sample"], timeout=30_000)


@pytest.mark.slow
def test_label_map_tab(page, server, tmp_path):
  _tab(page, "Label map -> face")
  first = _click(page, "label-run", "label")  # the example map the tab opens with
  assert "classes painted: background, skin" in first, first
  _latency(first, LATENCIES)
  face = _image(page, "label-result")
  assert face.shape == (DISPLAY, DISPLAY, 3)
  _not_constant(face)
  # What the page shows is the model's output for that map, read back from the painted colours.
  spade = server["models"]["spade"]
  expected, _ = serving.generate(spade, "generated", {"label": serving.example_label(0, (32, 32), 19)[None]}, 1)
  np.testing.assert_array_equal(face[::DISPLAY // 32, ::DISPLAY // 32], serving.to_uint8(expected[0]))
  page.fill("#label-example-index input", "7")
  page.click("#label-example")
  page.wait_for_function("() => !document.getElementById('label-status').innerText.trim()")
  page.wait_for_timeout(1000)
  _stroke(page, "label-editor", dy=-40)
  second = _click(page, "label-run", "label")
  _latency(second, LATENCIES)
  assert "(compiles)" not in second  # same shape: the compiled generator is reused
  other = _image(page, "label-result")
  _screenshot(page, tmp_path, "label")
  assert other.shape == face.shape and np.any(other != face, axis=-1).mean() > 0.005  # another map, another face


@pytest.mark.slow
def test_translate_tab(page, server, files, tmp_path):
  _tab(page, "Translate")
  _upload(page, "translate-photo", files["tilted"], "tilted.png")
  status = _click(page, "translate-run", "translate")
  assert "ugatit a2b" in status and "ugatit a2b_heatmap" in status, status
  aligned = "aligned by its dlib landmarks" if importlib.util.find_spec("dlib") else "not aligned (landmark det"
  assert aligned in status, status
  _latency(status, LATENCIES)
  result, heat = _image(page, "translate-result"), _image(page, "translate-heatmap")
  assert result.shape == (DISPLAY, 2 * DISPLAY + 4, 3) and heat.shape == (DISPLAY, DISPLAY, 3)
  ugatit = server["models"]["ugatit"]
  photo, _, _ = serving.prepare_face(ugatit, "a/image", np.asarray(Image.open(files["tilted"])))
  expected, _ = serving.generate(ugatit, "a2b", {"a/image": photo[None]}, 1)
  np.testing.assert_array_equal(result[::8, DISPLAY + 4::8], serving.to_uint8(expected[0]))
  _not_constant(result[:, DISPLAY + 4:])
  _not_constant(heat)
  _screenshot(page, tmp_path, "translate_ugatit")

  _choose(page, "translate-model", "munit")
  status = _click(page, "translate-run", "translate")
  assert "style: random, seed 0" in status and "munit a2b" in status, status
  _latency(status, LATENCIES)
  styled = _image(page, "translate-result")[:, DISPLAY + 4:]
  _not_constant(styled)
  status = _click(page, "translate-another", "translate")
  assert "style: random, seed 1" in status, status
  assert page.input_value("#translate-seed input") == "1"
  another = _image(page, "translate-result")[:, DISPLAY + 4:]
  assert np.abs(another.astype(int) - styled).mean() > 1  # another style code, another output
  _upload(page, "translate-style", files["toon"], "toon.png")
  status = _click(page, "translate-run", "translate")
  assert "style: the reference image's" in status, status
  _not_constant(_image(page, "translate-result")[:, DISPLAY + 4:])
  _screenshot(page, tmp_path, "translate")


@pytest.mark.slow
def test_inpaint_tab(page, server, files, tmp_path):
  _tab(page, "Inpaint")
  _upload(page, "inpaint-editor", files["face"])
  page.locator("#inpaint-editor canvas").first.wait_for(timeout=30_000)
  page.wait_for_timeout(1000)
  status = _click(page, "inpaint-run", "inpaint")
  assert "the mask is empty" in status, status  # nothing painted yet
  _stroke(page, "inpaint-editor", length=80)
  status = _click(page, "inpaint-run", "inpaint")
  assert "hole:" in status and "tfill inpainted" in status, status
  _latency(status, LATENCIES)
  shown = _image(page, "inpaint-result")
  assert shown.shape == (DISPLAY, 2 * DISPLAY + 4, 3)
  masked, result = shown[::8, :DISPLAY:8], shown[::8, DISPLAY + 4::8]
  photo, _ = serving.fit(np.asarray(Image.open(files["face"])), (32, 32))
  hole = np.any(masked != serving.to_uint8(photo), axis=-1)  # the masked input shows the hole grey (0 in [-1, 1])
  assert 0.005 < hole.mean() < 0.5 and hole[12:20].any() and (masked[hole] == 128).all()
  inpainter = server["models"]["tfill"]
  expected, _ = serving.generate(inpainter, "inpainted", {"image": photo[None],
                                                          "mask": hole[None, ..., None].astype(np.float32)}, 1)
  np.testing.assert_array_equal(result, serving.to_uint8(expected[0]))  # the composite of that hole
  status = _click(page, "inpaint-medical", "inpaint")
  assert "surgical mask placed" in status, status
  hole = np.any(_image(page, "inpaint-result")[::8, :DISPLAY:8] != serving.to_uint8(photo), axis=-1)
  landmarks, where = serving.face_landmarks(np.asarray(Image.open(files["face"])))
  assert where in status, status
  landmarks = None if landmarks is None else serving.fit_points(landmarks, (256, 256), (32, 32))
  _, expected = serving.medical_mask(serving.to_uint8(photo), "surgical", 0, landmarks=landmarks)
  np.testing.assert_array_equal(hole, expected)  # masks.py's surgical mask on the face's (or average) landmarks
  assert hole.sum() >= 5 and not hole[:12].any()  # the lower face, not the eyes and above
  _screenshot(page, tmp_path, "inpaint")


@pytest.mark.slow
def test_complete_tab(page, files, tmp_path):
  _tab(page, "Complete a panel")
  status = _click(page, "complete-run", "complete")
  assert "upload the panels" in status, status
  _click(page, "complete-example", "complete")
  page.wait_for_timeout(1000)
  status = _click(page, "complete-run", "complete")
  assert "face box [" in status and "ssupervae face" in status, status
  _latency(status, LATENCIES)
  shown = _image(page, "complete-result")
  assert shown.shape[0] == DISPLAY and shown.shape[1] == 2 * DISPLAY + 4
  _not_constant(shown[:, DISPLAY + 4:])
  _screenshot(page, tmp_path, "complete")
  # Uploaded panels, and the face box painted with the brush.
  root = files["root"]
  panels = [_png(root / f"p{i}.png", serving.example_face(10 + i, 96, "toon")) for i in range(3)]
  page.locator("#complete-files input[type=file]").set_input_files(panels)
  status = _status(page, "complete", status)
  assert "3 panels" in status, status
  page.wait_for_timeout(1000)
  for _ in range(3):  # the editor may still be loading the panel the server sent: stroke again then
    page.wait_for_timeout(1000)
    _stroke(page, "complete-editor", length=40)
    status = _click(page, "complete-run", "complete")
    if "no face box" not in status:
      break
  page.screenshot(path=str(tmp_path / "complete_upload.png"), full_page=True)
  assert "face box [" in status, status
  _not_constant(_image(page, "complete-result"))


@pytest.mark.slow
def test_sample_tab(page, server, tmp_path):
  _tab(page, "Sample")
  status = _click(page, "sample-run", "sample")
  assert "dcgan generated" in status, status
  _latency(status, LATENCIES)
  grid = _image(page, "sample-result")
  assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 16 images of 32 px, 2 px apart
  expected, _ = serving.generate(server["models"]["dcgan"], "generated", {}, 16, seed=0)
  np.testing.assert_array_equal(grid, serving.grid(expected))
  _not_constant(grid)
  status = _click(page, "sample-run", "sample")
  assert ": request " in status, status  # compiled once
  _latency(status, LATENCIES)
  _screenshot(page, tmp_path, "sample")


@pytest.mark.slow
def test_bad_inputs_get_messages(page, files):
  _tab(page, "Translate")
  status = _click(page, "translate-run", "translate")
  assert "Error: upload the photo first" in status, status
  _upload(page, "translate-photo", files["text"], "notes.txt")
  status = _click(page, "translate-run", "translate")
  assert "notes.txt is not an image we can read" in status, status
  _upload(page, "translate-photo", files["big"], "big.png")
  status = _click(page, "translate-run", "translate")
  assert "the photo resized from 5000x3000 to 2048x1229" in status and "centre-cropped" in status, status
  _not_constant(_image(page, "translate-result"))
  _upload(page, "translate-photo", files["wide"], "wide.png")
  status = _click(page, "translate-run", "translate")
  assert "centre-cropped to 200x200" in status, status
  # The server is still serving: the page answers a request after the errors.
  _tab(page, "Sample")
  assert "dcgan generated" in _click(page, "sample-run", "sample")


@pytest.mark.slow
def test_requests_queue(browser, server):
  """Two pages ask at once: both are answered (the second waits in the queue)."""
  pages = [browser.new_page() for _ in range(2)]
  for p in pages:
    p.goto(server["url"])
    p.wait_for_selector("#served")
    _tab(p, "Sample")
  for p in pages:
    p.click("#sample-run")
  numbers = []
  for p in pages:
    status = _status(p, "sample")
    assert "dcgan generated" in status, status
    numbers.append(int(status.rsplit("(#", 1)[1].rstrip(")")))
    p.close()
  assert len(set(numbers)) == 2
  print("latencies:", json.dumps(LATENCIES))
