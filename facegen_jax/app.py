r"""A browser app over trained or converted runs: one tab per task the runs serve (needs the app extra:
`pip install --no-deps -r requirements-app.txt`).

  python -m facegen_jax.app --workdir runs/spade --workdir runs/f2w [--host 127.0.0.1] [--port 7860]

Tabs come from each run's family CONTRACT (a family added later gets its tab without app code): label map -> face
(sampling families conditioned on "label": SPADE), translate (U-GAT-IT's CAM heatmap where the family has
HEATMAPS; a style seed, 'another style' and a reference style where eval_inputs draws style codes: MUNIT /
SATNet), inpaint (brush or a synthetic medical mask), complete a panel (SSuperGAN) and sample (DCGAN, VAE,
IntroVAE). A run directory that is missing or does not load is named at start-up and in the page; the others are
served. Requests queue (one model call at a time) and the page says what went wrong with an input.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

from absl import logging
import numpy as np

from facegen_jax import errors
from facegen_jax import serving

TITLES = {"label": "Label map -> face", "translate": "Translate", "inpaint": "Inpaint", "complete": "Complete a panel",
          "sample": "Sample"}
DISPLAY = 256  # px: outputs are shown at this height (nearest), whatever the model's resolution
GRID_SIZE = 16  # images in a sample grid


def _gradio():
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  try:
    import gradio as gr  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError("the app needs gradio: pip install --no-deps -r requirements-app.txt") from e
  return gr


def _hex(colour) -> str:
  return "#" + "".join(f"{int(c):02x}" for c in colour)


def _display(image: np.ndarray) -> np.ndarray:
  return serving.side_by_side(image, height=DISPLAY)


def _guard(fn: Callable, num_outputs: int) -> Callable:
  """`fn` whose UserErrors (and bugs) become the status message, the last output, instead of a dead request."""
  def wrapped(*args):
    try:
      return fn(*args)
    except errors.UserError as e:
      message = f"**Error:** {e}"
    except Exception as e:  # pylint: disable=broad-except
      logging.error("app: %s", traceback.format_exc())
      message = f"**Error:** the model failed ({type(e).__name__}: {e}); see the server log"
    return (None,) * (num_outputs - 1) + (message,)
  return wrapped


def _status(notes) -> str:
  return "  \n".join(notes)


def _models_by_name(models):
  return {m.name: m for m in models}


def _layers(value) -> list:
  return list((value or {}).get("layers") or [])


def _background(value, what: str) -> np.ndarray:
  image = (value or {}).get("background")
  if image is None:
    image = (value or {}).get("composite")
  if image is None:
    raise errors.UserError(f"upload {what} first")
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


# --- tabs ---


def _label_tab(gr, models):
  by_name = _models_by_name(models)
  first = models[0]
  num_classes = first.config.input.num_classes
  scale = max(1, DISPLAY // max(first.size))

  def example(name, index):
    model = by_name[name]
    classes = model.config.input.num_classes
    label = serving.example_label(index, model.size, classes)
    return serving.colour_label(label, classes, max(1, DISPLAY // max(model.size)))

  legend = " ".join(f"<span style='background:{_hex(c)};padding:0 6px'>&nbsp;</span> {i} {n}"
                    for i, (c, n) in enumerate(zip(serving.palette(num_classes), serving.class_names(num_classes))))
  model = gr.Dropdown(list(by_name), value=first.name, label="model", elem_id="label-model")
  gr.Markdown(f"Paint with the class colours: {legend}")
  with gr.Row():
    editor = gr.ImageEditor(value=example(first.name, 0), type="numpy", image_mode="RGB", sources=["upload"],
                            brush=gr.Brush(colors=[_hex(c) for c in serving.palette(num_classes)],
                                           color_mode="fixed", default_size=max(4, 2 * scale)),
                            layers=False, format="png", label="label map", elem_id="label-editor",
                            canvas_size=(DISPLAY, DISPLAY))
    result = gr.Image(label="face", type="numpy", format="png", elem_id="label-result", interactive=False)
  with gr.Row():
    index = gr.Number(value=0, precision=0, label="example map", elem_id="label-example-index")
    load = gr.Button("load example map", elem_id="label-example")
    seed = gr.Number(value=0, precision=0, label="seed", elem_id="label-seed")
    style = gr.File(label="style image (models trained with use_vae)", elem_id="label-style")
  run = gr.Button("generate", variant="primary", elem_id="label-run")
  status = gr.Markdown(elem_id="label-status")

  def generate(name, value, seed, style_path):
    model = by_name[name]
    painted = (value or {}).get("composite")
    if painted is None:
      painted = _background(value, "or paint a label map")
    classes = model.config.input.num_classes
    label = serving.label_from_colours(np.asarray(painted), classes, model.size)
    data, notes = {"label": label[None]}, []
    if style_path:
      if not model.config.model.get("use_vae", False):
        raise errors.UserError(f"{model.name} was not trained with a style encoder (use_vae): leave out the style")
      image, notes = serving.read_upload(style_path, "the style image")
      fitted, crop = serving.fit(image, model.size, "the style image")
      data["style"], notes = fitted[None], notes + crop
    output = next(iter(model.family.CONTRACT.eval_outputs))
    images, note = serving.generate(model, output, data, 1, seed=int(seed or 0))
    present = ", ".join(serving.class_names(classes)[c] for c in np.unique(label))
    return _display(serving.to_uint8(images[0])), _status(notes + [f"classes painted: {present}", note])

  load.click(_guard(lambda n, i: (example(n, int(i or 0)), ""), 2), [model, index], [editor, status],
             show_progress_on=editor)
  run.click(_guard(generate, 2), [model, editor, seed, style], [result, status], show_progress_on=result)


def _translate_tab(gr, models):
  by_name = _models_by_name(models)
  first = models[0]
  directions = list(first.family.CONTRACT.eval_outputs)
  model = gr.Dropdown(list(by_name), value=first.name, label="model", elem_id="translate-model")
  direction = gr.Radio(directions, value=directions[0], label="direction", elem_id="translate-direction")
  with gr.Row():
    photo = gr.File(label="photo (source domain)", elem_id="translate-photo")
    style = gr.File(label="reference style (target domain; multimodal models)", elem_id="translate-style")
  with gr.Row():
    seed = gr.Number(value=0, precision=0, label="style seed", elem_id="translate-seed")
    run = gr.Button("translate", variant="primary", elem_id="translate-run")
    another = gr.Button("another style", elem_id="translate-another")
  with gr.Row():
    result = gr.Image(label="input | translation", type="numpy", format="png", elem_id="translate-result",
                      interactive=False)
    heatmap = gr.Image(label="CAM heatmap", type="numpy", format="png", elem_id="translate-heatmap",
                       interactive=False)
  status = gr.Markdown(elem_id="translate-status")

  def translate(name, direction, photo_path, style_path, seed):
    model = by_name[name]
    if direction not in model.family.CONTRACT.eval_outputs:
      raise errors.UserError(f"{model.name} translates {', '.join(model.family.CONTRACT.eval_outputs)}")
    image, notes = serving.read_upload(photo_path, "the photo")
    output = model.family.CONTRACT.eval_outputs[direction]
    [field] = [f for f in output.inputs if f.endswith("image")]
    fitted, aligned, _ = serving.prepare_face(model, field, image)
    notes += aligned
    style_image = None
    random_styles = serving.has_random_styles(model, direction)
    if style_path:
      if not random_styles:
        raise errors.UserError(f"{model.name} has one style per domain: leave out the reference style")
      raw, style_notes = serving.read_upload(style_path, "the reference style")
      style_image, style_crop, _ = serving.prepare_face(model, output.reference, raw, "the reference style")
      notes += style_notes + style_crop + ["style: the reference image's"]
    elif random_styles:
      notes.append(f"style: random, seed {int(seed or 0)}")
    data = serving.translate_inputs(model, direction, fitted, style_image)
    images, note = serving.generate(model, direction, data, 1, seed=int(seed or 0))
    shown = serving.side_by_side(serving.to_uint8(fitted), serving.to_uint8(images[0]), height=DISPLAY)
    heat = None
    if getattr(model.family, "HEATMAPS", False):
      heat_images, heat_note = serving.generate(model, f"{direction}_heatmap", data, 1, seed=int(seed or 0))
      heat, note = _display(serving.to_uint8(heat_images[0])), f"{note}; {heat_note}"
    return shown, heat, _status(notes + [note])

  def another_style(name, direction, photo_path, style_path, seed):
    model = by_name[name]
    if direction in model.family.CONTRACT.eval_outputs and not serving.has_random_styles(model, direction):
      raise errors.UserError(f"{model.name} has one style per domain: 'another style' is for multimodal models "
                             "(MUNIT, SATNet)")
    seed = int(seed or 0) + 1
    del style_path  # another random style, not the reference's
    return (*translate(name, direction, photo_path, None, seed), seed)

  run.click(_guard(translate, 3), [model, direction, photo, style, seed], [result, heatmap, status],
            show_progress_on=result)
  another.click(_guard(lambda *a: _reorder(another_style(*a)), 4), [model, direction, photo, style, seed],
                [result, heatmap, seed, status], show_progress_on=result)


def _reorder(outputs):
  """(result, heatmap, status, seed) -> (result, heatmap, seed, status): the status stays last for _guard."""
  result, heat, status, seed = outputs
  return result, heat, seed, status


def _inpaint_tab(gr, models):
  by_name = _models_by_name(models)
  first = models[0]
  model = gr.Dropdown(list(by_name), value=first.name, label="model", elem_id="inpaint-model")
  with gr.Row():
    editor = gr.ImageEditor(type="numpy", image_mode="RGB", sources=["upload"], format="png", layers=False,
                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                            label="photo: paint the hole", elem_id="inpaint-editor", canvas_size=(DISPLAY, DISPLAY))
    result = gr.Image(label="masked input | result", type="numpy", format="png", elem_id="inpaint-result",
                      interactive=False)
  with gr.Row():
    load = gr.Button("example face", elem_id="inpaint-example")
    run = gr.Button("inpaint", variant="primary", elem_id="inpaint-run")
    medical = gr.Button("medical mask", elem_id="inpaint-medical")
    kind = gr.Dropdown(["surgical", "n95", "kn95", "cloth"], value="surgical", label="mask kind")
    seed = gr.Number(value=0, precision=0, label="seed", elem_id="inpaint-seed")
  status = gr.Markdown(elem_id="inpaint-status")

  def fill(model, photo, hole, notes, seed):
    fitted, crop = serving.fit(photo, model.size)
    data = {"mask": hole[None]}
    [field] = [f for f in model.inputs if f.endswith("image")]
    data[field] = fitted[None]
    output = next(iter(model.family.CONTRACT.eval_outputs))
    images, note = serving.generate(model, output, data, 1, seed=int(seed or 0))
    masked = serving.to_uint8(np.where(hole > 0, 0.0, fitted))
    return serving.side_by_side(masked, serving.to_uint8(images[0]), height=DISPLAY), _status(notes + crop + [note])

  def inpaint(name, value, seed):
    model = by_name[name]
    photo = _background(value, "a photo")
    photo, notes = _shrink(photo)
    hole = serving.hole_from_layers(_layers(value), model.size)
    return fill(model, photo, hole, notes + [f"hole: {hole.mean():.0%} of the image"], seed)

  def medical_mask(name, value, kind, seed):
    model = by_name[name]
    photo, notes = _shrink(_background(value, "a photo"))
    fitted, _ = serving.fit(photo, model.size)
    landmarks, where = serving.face_landmarks(photo)  # found at the photo's own size, moved as fit moved it
    landmarks = None if landmarks is None else serving.fit_points(landmarks, photo.shape, model.size)
    _, hole = serving.medical_mask(serving.to_uint8(fitted), kind, int(seed or 0), landmarks=landmarks)
    hole = hole.astype(np.float32)[..., None]
    return fill(model, photo, hole, notes + [f"{kind} mask placed on {where}: hole {hole.mean():.0%} of the "
                                             "image"], seed)

  load.click(_guard(lambda: (serving.example_face(0), ""), 2), [], [editor, status], show_progress_on=editor)
  run.click(_guard(inpaint, 2), [model, editor, seed], [result, status], show_progress_on=result)
  medical.click(_guard(medical_mask, 2), [model, editor, kind, seed], [result, status], show_progress_on=result)


def _shrink(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """An editor's image shrunk to serving.MAX_SIDE (the editor hands back what was uploaded, at any size)."""
  height, width = image.shape[:2]
  if max(height, width) <= serving.MAX_SIDE:
    return image, []
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image)
  pil.thumbnail((serving.MAX_SIDE, serving.MAX_SIDE), Image.Resampling.LANCZOS)
  return np.asarray(pil), [f"the photo resized from {width}x{height} to {pil.size[0]}x{pil.size[1]}"]


def _complete_tab(gr, models):
  by_name = _models_by_name(models)
  first = models[0]
  model = gr.Dropdown(list(by_name), value=first.name, label="model", elem_id="complete-model")
  panels = gr.State([])
  with gr.Row():
    files = gr.File(file_count="multiple", label=f"panels in order ({first.config.input.panels.num_panels}, the "
                    "last with the face)", elem_id="complete-files")
    index = gr.Number(value=0, precision=0, label="example sequence", elem_id="complete-example-index")
    load = gr.Button("example sequence", elem_id="complete-example")
  with gr.Row():
    editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=[], format="png", layers=False,
                            brush=gr.Brush(colors=["#ff0000"], color_mode="fixed", default_size=8),
                            label="last panel: paint over the face (its bounding box is the box)",
                            elem_id="complete-editor", canvas_size=(DISPLAY, DISPLAY))
    result = gr.Image(label="completed panel | face", type="numpy", format="png", elem_id="complete-result",
                      interactive=False)
  run = gr.Button("complete", variant="primary", elem_id="complete-run")
  status = gr.Markdown(elem_id="complete-status")

  def uploaded(paths):
    if not paths:
      raise errors.UserError("upload the panels of one sequence")
    paths = sorted(paths, key=os.path.basename)
    read, notes = [], []
    for i, path in enumerate(paths):
      image, n = serving.read_upload(path, f"panel {i + 1}")
      read.append(image)
      notes += n
    return read, {"background": read[-1], "layers": [], "composite": None}, _status(
        notes + [f"{len(read)} panels; now paint over the face on the last one"])

  def example(name, index):
    model = by_name[name]
    read, (x1, y1, x2, y2) = serving.example_sequence(model, int(index or 0))
    layer = np.zeros(read[-1].shape[:2] + (4,), np.uint8)
    layer[y1:y2, x1:x2] = (255, 0, 0, 128)
    return read, {"background": read[-1], "layers": [layer], "composite": None}, f"face box {[x1, y1, x2, y2]}"

  def complete(name, read, value):
    model = by_name[name]
    if not read:
      raise errors.UserError("upload the panels (or load the example sequence) first")
    box = serving.box_from_layers(_layers(value))
    pasted, face, note = serving.complete(model, read, box)
    return serving.side_by_side(pasted, face, height=DISPLAY), _status([f"face box {list(box)}", note])

  files.upload(_guard(uploaded, 3), [files], [panels, editor, status], show_progress_on=editor)
  load.click(_guard(example, 3), [model, index], [panels, editor, status], show_progress_on=editor)
  run.click(_guard(complete, 2), [model, panels, editor], [result, status], show_progress_on=result)


def _sample_tab(gr, models):
  by_name = _models_by_name(models)
  model = gr.Dropdown(list(by_name), value=models[0].name, label="model", elem_id="sample-model")
  seed = gr.Slider(0, 1000, value=0, step=1, label="seed", elem_id="sample-seed")
  run = gr.Button("sample", variant="primary", elem_id="sample-run")
  result = gr.Image(label=f"{GRID_SIZE} samples", type="numpy", format="png", elem_id="sample-result",
                    interactive=False)
  status = gr.Markdown(elem_id="sample-status")

  def sample(name, seed):
    model = by_name[name]
    output = next(iter(model.family.CONTRACT.eval_outputs))
    images, note = serving.generate(model, output, {}, GRID_SIZE, seed=int(seed or 0))
    return serving.grid(images), note

  run.click(_guard(sample, 2), [model, seed], [result, status], show_progress_on=result)


_TABS = {"label": _label_tab, "translate": _translate_tab, "inpaint": _inpaint_tab, "complete": _complete_tab,
         "sample": _sample_tab}


def build(models, problems):
  """The page: a line per model served and per run directory that is not, then one tab per task served."""
  gr = _gradio()
  with gr.Blocks(title="facegen_jax") as demo:
    served = ", ".join(f"{m.name} ({m.config.family}, step {m.step})" for m in models) or "nothing"
    gr.Markdown(f"# facegen_jax\nServing {served}.", elem_id="served")
    if problems:
      gr.Markdown("**Not served:**\n" + "\n".join(f"- {p}" for p in problems), elem_id="problems")
    for tab in serving.TABS:
      members = [m for m in models if m.tab == tab]
      if members:
        with gr.Tab(TITLES[tab], elem_id=f"tab-{tab}"):
          _TABS[tab](gr, members)
  return demo


def serve(workdirs, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
  """Loads the runs and serves them (see `launch`); a run that does not load is named on stderr and in the page."""
  models, problems = serving.load_models(workdirs)
  for problem in problems:
    print(f"facegen_jax.app: not serving {problem}", file=sys.stderr, flush=True)
  if not models:
    raise errors.UserError("no run directory could be loaded: " + "; ".join(problems))
  return launch(models, problems, host=host, port=port, block=block)


def launch(models, problems=(), *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
  """Starts the server over loaded models; returns the gradio app (serving in the background unless `block`).
  Requests queue and run one at a time: the models share the CPU, and XLA uses all of its cores per call."""
  demo = build(models, problems)
  demo.queue(default_concurrency_limit=1)
  demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False, ssr_mode=False,
              max_file_size="200mb", quiet=not block)
  return demo


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m facegen_jax.app", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", action="append", required=True,
                 help="a training run or a converter's output directory (repeat for several)")
  p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
  p.add_argument("--port", type=int, default=7860)
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  return errors.run_command("facegen_jax.app", lambda: serve(args.workdir, host=args.host, port=args.port))


if __name__ == "__main__":
  sys.exit(main())
