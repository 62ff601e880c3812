"""Procedural head-and-shoulders portraits with exact CelebAMask-HQ parsing labels: the default data.

Every part (cloth, neck, necklace, ears, earrings, face, nose, eyes, brows, lips, mouth, glasses, hair, hat)
is an implicit shape (ellipses, bands, arcs) evaluated on the pixel centres in head coordinates, which are
shifted, scaled and rotated per view. Parts are painted into the label map in a painter's order, and the
image is coloured from the label map, so each pixel's label is the part that owns its centre and its colour
comes from that part. Only the 1-px soft edges (photo) and outlines (toon) mix colours at boundaries.

* An identity, (seed, index % num_identities), fixes face shape, colours, hair style and accessories.
* A view, (seed, index), fixes pose, yaw-like feature offset, expression, background and light.
* `photo` shades from a light direction, adds fine noise and softens edges over a gradient/pattern
  background; `toon` uses flat saturated colours, dark outlines and larger eyes with highlights.

Gender and glasses follow the Face2webtoon groups with imbalanced frequencies (~45/35/12/8 %); an identity's
group is known without rendering (`identity_group`), and `group_counts` picks exact numbers of faces per group
(the seed's webtoon set: 1050 / 249 / 49 / 38).
"""

import colorsys
import functools
import math
import operator

import numpy as np

from facegen_jax import errors

CLASS_NAMES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
               "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
NUM_CLASSES = len(CLASS_NAMES)
GROUP_NAMES = ("woman_no_glasses", "man_no_glasses", "man_glasses", "woman_glasses")
DOMAINS = ("photo", "toon")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 512
_HEAD_RADIUS = 1.6  # head units around the head centre that hold ears, face, glasses and hat

_C = {name: i for i, name in enumerate(CLASS_NAMES)}
# "l_*" is the person's left, which appears on the image's right (u > 0), as in CelebAMask-HQ.
_SIDES = ((-1, "r_"), (1, "l_"))
# Parts that long hair may fall in front of; everything else of the head stays in front of the hair.
_BEHIND_HAIR = np.isin(np.arange(NUM_CLASSES), [_C[c] for c in ("background", "cloth", "l_ear", "r_ear",
                                                                  "ear_r", "hair")])
_SKIN_LIKE = np.isin(np.arange(NUM_CLASSES), [_C[c] for c in ("skin", "nose", "l_ear", "r_ear", "neck")])

# Group frequencies 45/35/12/8 % come from P(male) and P(glasses | gender).
_P_MALE = 0.47
_P_GLASSES = {False: 0.08 / 0.53, True: 0.12 / 0.47}
_HAIR_STYLES = ("short", "long", "bob", "bald")
_STYLE_P = {False: (0.13, 0.6, 0.25, 0.02), True: (0.75, 0.08, 0.05, 0.12)}
_HAIR_COLOURS = np.array([[28, 22, 20], [70, 45, 28], [115, 75, 42], [215, 180, 110], [165, 72, 35],
                          [170, 170, 165]], np.float32)  # black, dark/light brown, blond, red, grey
_HAIR_P = (0.33, 0.24, 0.13, 0.12, 0.07, 0.05, 0.06)  # the last one is dyed (any hue)
_EYE_COLOURS = np.array([[70, 45, 25], [40, 28, 20], [60, 110, 170], [70, 125, 75], [115, 130, 140],
                         [125, 95, 45]], np.float32)
_SKIN_LIGHT = np.array([252, 222, 198], np.float32)
_SKIN_DARK = np.array([80, 50, 34], np.float32)
_FRAME_COLOURS = np.array([[22, 22, 22], [95, 55, 30], [205, 170, 80], [170, 30, 40], [185, 190, 195]],
                          np.float32)
_JEWEL_COLOURS = np.array([[225, 185, 70], [205, 205, 212], [242, 236, 222]], np.float32)
_LIP_RED = np.array([195, 45, 70], np.float32)


def _check(resolution, domain, seed, num_identities):
  if not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
    raise errors.ConfigError(f"synthetic resolution={resolution!r} is invalid: use an integer in "
                             f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}]")
  if domain not in DOMAINS:
    raise errors.ConfigError(f"synthetic domain={domain!r} is invalid: use one of {DOMAINS}")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise errors.ConfigError(f"synthetic seed={seed!r} is invalid: use an integer >= 0")
  if num_identities is not None and num_identities < 1:
    raise errors.ConfigError(f"synthetic num_identities={num_identities!r} is invalid: use an integer >= 1")


def _hue(rng, sat, val):
  return np.array(colorsys.hsv_to_rgb(rng.random(), sat, val), np.float32) * 255


def _sex_draws(seed, identity, size):
  """The first draws of an identity: whether it is male, and `size` uniforms (u[8] decides the glasses)."""
  rng = np.random.default_rng([seed, 0, identity])
  male = bool(rng.random() < _P_MALE)
  return rng, male, rng.random(size)


def _group(male: bool, glasses: bool) -> int:
  return (2 if glasses else 1) if male else (3 if glasses else 0)


def identity_group(seed: int, identity: int) -> int:
  """The group (an index of GROUP_NAMES) of identity `identity`, without rendering it."""
  _, male, u = _sex_draws(seed, identity, 9)  # PCG64 doubles come one per draw: u[:9] of the 44 below.
  return _group(male, bool(u[8] < _P_GLASSES[male]))


def _identity_traits(seed, identity):
  """Everything that stays the same across views of one person."""
  rng, male, u = _sex_draws(seed, identity, 44)  # one fixed draw, so adding a trait never reshuffles the others
  skin = (1 - u[0]) * _SKIN_LIGHT + u[0] * _SKIN_DARK + (u[1:4] - 0.5) * 14
  hair_kind = min(int(np.searchsorted(np.cumsum(_HAIR_P), u[4])), 6)
  hair = _hue(rng, 0.8, 0.8) if hair_kind == 6 else _HAIR_COLOURS[hair_kind] * (0.85 + 0.3 * u[5])
  lip_red = 0.2 * u[6] + (0.05 if male else 0.4)
  style = _HAIR_STYLES[min(int(np.searchsorted(np.cumsum(_STYLE_P[male]), u[7])), 3)]
  return dict(
      male=male, glasses=bool(u[8] < _P_GLASSES[male]), hat=bool(u[9] < 0.14),
      earrings=bool(u[10] < (0.06 if male else 0.45)), necklace=bool(u[11] < (0.08 if male else 0.3)),
      style=style, face_w=0.7 + 0.1 * u[12] + 0.07 * male, taper=0.2 + 0.15 * u[13] - 0.1 * male,
      hair_volume=0.1 + 0.15 * u[14], hair_len=(1.3 + 0.9 * u[15]) if style == "long" else 0.35 + 0.4 * u[15],
      hairline=-0.62 + 0.3 * u[16] - 0.08 * male + (0.08 if style == "bob" else 0.0), fringe_slope=0.5 * (u[17] - 0.5),
      brow_th=(0.032 + 0.012 * u[18]) * (1.5 if male else 1.0), brow_arch=0.02 + 0.06 * u[19],
      brow_w=0.17 + 0.05 * u[20], eye_sep=0.31 + 0.06 * u[21], eye_size=0.85 + 0.3 * u[22],
      nose=0.8 + 0.45 * u[23] + 0.1 * male, mouth_w=0.22 + 0.08 * u[24] + 0.03 * male,
      lip_up=0.045 + 0.025 * u[25] - 0.015 * male, lip_lo=0.06 + 0.03 * u[26] - 0.015 * male,
      ear_size=0.8 + 0.4 * u[27], neck_w=0.34 + 0.06 * u[28] + 0.08 * male, neckline=0.2 + 0.5 * u[29],
      shoulder_w=2.2 + 0.5 * u[30] + 0.3 * male, frame_p=2.0 + 3.0 * u[31], lens_w=0.19 + 0.05 * u[32],
      sunglasses=bool(u[33] < 0.2), hat_kind=int(u[34] * 3), hat_h=0.5 + 0.3 * u[35], hoop=bool(u[36] < 0.5),
      skin=skin, hair=hair, eye=_EYE_COLOURS[int(u[37] * 6)], lip=(1 - lip_red) * skin * 0.8 + lip_red * _LIP_RED,
      cloth=_hue(rng, 0.25 + 0.6 * rng.random(), 0.25 + 0.7 * rng.random()),
      hat_colour=_hue(rng, 0.7 * rng.random(), 0.2 + 0.7 * rng.random()),
      frame=_FRAME_COLOURS[int(u[38] * 5)], jewel=_JEWEL_COLOURS[int(u[39] * 3)],
      curl=0.1 * u[40] ** 2, curl_freq=10 + 15 * u[41])


def _view_traits(seed, index):
  """Pose, expression, background and light of one picture."""
  rng = np.random.default_rng([seed, 1, index])
  u = rng.random(16)
  yaw = 2 * u[4] - 1
  # The light comes from the left, above or right (y points down), never from below.
  return dict(
      cx=0.16 * (u[0] - 0.5), cy=-0.18 + 0.1 * (u[1] - 0.5), scale=0.31 + 0.07 * u[2],
      angle=0.4 * (u[3] - 0.5), yaw=yaw, du=0.14 * yaw, smile=-0.03 + 0.13 * u[5],
      mouth_open=max(0.0, 0.2 * u[6] - 0.08), brow_raise=0.08 * u[7] - 0.02, eye_open=0.5 + 0.6 * u[8],
      gaze=u[9] - 0.5, light=-math.pi * u[10], bg_kind=int(u[11] * 4), bg_angle=2 * math.pi * u[12],
      bg_freq=4 + 10 * u[13], bg=(_hue(rng, 0.5 * rng.random(), 0.3 + 0.6 * rng.random()),
                                   _hue(rng, 0.5 * rng.random(), 0.3 + 0.6 * rng.random())))


@functools.lru_cache(maxsize=16)
def _grid(resolution):
  """Pixel-centre coordinates in [-1, 1], y pointing down."""
  c = (np.arange(resolution, dtype=np.float32) + 0.5) * (2 / resolution) - 1
  return c[:, None], c[None, :]


def _ellipse(u, v, cu, cv, ru, rv):
  return np.square((u - cu) * (1 / ru)) + np.square((v - cv) * (1 / rv)) < 1


def _coords(resolution, w):
  """Body coordinates (shifted, scaled) and head coordinates (also rotated); 1 unit = half face height."""
  y, x = _grid(resolution)
  u0 = (x - w["cx"]) * (1 / w["scale"])
  v0 = (y - w["cy"]) * (1 / w["scale"])
  c, s = math.cos(w["angle"]), math.sin(w["angle"])
  return u0, v0, c * u0 + s * v0, c * v0 - s * u0


def _paint_body(lab, u0, v0, t, px):
  sw = t["shoulder_w"]
  lab[_ellipse(u0, v0, 0, 2.7, sw, 1.4) | ((v0 > 2.7) & (np.abs(u0) < sw))] = _C["cloth"]
  nw, au = t["neck_w"], np.abs(u0)
  neck = (au < nw) & (v0 > 0.2) & (v0 < 1.45)
  # A V-neckline: skin continues below the collar in a triangle of random depth.
  lab[neck | ((v0 > 1.3) & (au < 1.1 * nw * (1.3 + t["neckline"] - v0) / t["neckline"]))] = _C["neck"]
  if t["necklace"]:
    arc = 1.38 - 0.35 * np.square(u0 * (1 / nw))
    chain = (np.abs(v0 - arc) < max(0.03, 0.6 * px)) & (au < nw)
    lab[chain | _ellipse(u0, v0, 0, 1.45, 0.06, 0.07)] = _C["neck_l"]


def _paint_ears(lab, u, v, t, w, px):
  es, ex = t["ear_size"], t["face_w"] - 0.03
  for side, prefix in _SIDES:
    width = 0.16 * es * (1 - 0.5 * side * w["yaw"])  # the ear the face turns towards hides
    lab[_ellipse(u, v, side * ex, 0.0, width, 0.25 * es)] = _C[prefix + "ear"]
  if t["earrings"]:
    ring = False
    for side, _ in _SIDES:
      cu, cv = side * (t["face_w"] + 0.02), 0.24 * es + 0.08
      d = np.square(u - cu) + np.square(v - cv)
      ring = ring | ((d < 0.08 ** 2) & (d > (0.08 - max(0.025, px)) ** 2) if t["hoop"] else d < 0.05 ** 2)
    lab[ring] = _C["ear_r"]


def _face_mask(u, v, t):
  half_width = t["face_w"] * (1 - t["taper"] * np.clip(v, 0, 1))  # the jaw narrows to the chin
  return np.square(u / half_width) + np.square(v) < 1


def _paint_nose(lab, u, v, t, w):
  ns, du = t["nose"], w["du"]
  ridge = (np.abs(u - du) < (0.03 + 0.06 * (v + 0.1)) * ns) & (v > -0.1) & (v < 0.25)
  lab[ridge | _ellipse(u, v, du, 0.25, 0.12 * ns, 0.075 * ns)] = _C["nose"]


def _eye_geometry(t, w, toon):
  """Centre, half-width, half-height, iris radius of both eyes; toon eyes are larger."""
  k = 1.5 if toon else 1.0
  for side, prefix in _SIDES:
    cu = w["du"] + side * t["eye_sep"] * (1 - 0.1 * abs(w["yaw"]))
    rw = 0.13 * t["eye_size"] * k * (1 - 0.2 * side * w["yaw"])
    yield prefix, cu, -0.12, rw, 0.07 * t["eye_size"] * k * (1.2 if toon else 1.0) * w["eye_open"], 0.5 * rw


def _paint_eyes_brows(lab, u, v, t, w, toon, px):
  for prefix, cu, cv, rw, rh, _ in _eye_geometry(t, w, toon):
    lab[_ellipse(u, v, cu, cv, rw, max(rh, 0.6 * px))] = _C[prefix + "eye"]
  for side, prefix in _SIDES:
    xn = (u - w["du"] - side * (t["eye_sep"] + 0.02)) * (side / t["brow_w"])  # 1 at the outer end
    centre = -0.3 - w["brow_raise"] - (0.07 if toon else 0) - t["brow_arch"] * (1 - np.square(xn - 0.1))
    half_th = max(t["brow_th"], 0.6 * px) * (1 - 0.35 * xn)
    lab[(np.abs(xn) < 1) & (np.abs(v - centre) < half_th)] = _C[prefix + "brow"]


def _paint_mouth(lab, u, v, t, w, px):
  """Lips around a line curved by the smile; an open mouth shows the "mouth" class between them."""
  x = u - w["du"]
  mw = t["mouth_w"] * (1 + 0.6 * w["smile"])
  xn2 = np.square(x * (1 / mw))
  vv = v - 0.58 + w["smile"] * xn2
  half_open = 0.5 * w["mouth_open"]
  lips = xn2 + np.square(vv / np.where(vv < 0, t["lip_up"] + half_open, t["lip_lo"] + half_open)) < 1
  lab[lips & (vv < 0)] = _C["u_lip"]
  lab[lips & (vv >= 0)] = _C["l_lip"]
  if half_open > 0:
    lab[lips & (np.abs(vv) < max(half_open, 0.5 * px) * np.sqrt(np.clip(1 - 1.3 * xn2, 0, 1)))] = _C["mouth"]
  return vv < -half_open * 0.35  # upper teeth, shown where the mouth is open


def _glasses_mask(u, v, t, w, toon, px):
  rx = t["lens_w"] * (1.25 if toon else 1.0)
  ry, p, th = 0.72 * rx, t["frame_p"], max(0.03, 0.8 * px)
  mask = False
  centres = [g[1] for g in _eye_geometry(t, w, toon)]
  for cu in centres:
    r = np.abs((u - cu) * (1 / rx)) ** p + np.abs((v + 0.12) * (1 / ry)) ** p
    mask = mask | ((r < 1) & (r > max(0.0, 1 - th / ry) ** p) if not t["sunglasses"] else r < 1)
  bar = np.abs(v + 0.16) < th * 0.7
  au = np.abs(u - w["du"])
  inner, outer = abs(centres[1] - centres[0]) / 2 - 0.9 * rx, max(centres[1], -centres[0]) + 0.9 * rx
  return mask | (bar & (au < inner)) | (bar & (np.abs(u) > outer) & (np.abs(u) < t["face_w"]))


def _paint_hair(lab, u, v, t, face):
  a, vol, style = t["face_w"], t["hair_volume"], t["style"]
  wave = t["curl"] * np.sin(t["curl_freq"] * (u + v))  # wavy outlines, from straight to curly
  cap = np.square(u * (1 / (a + vol))) + np.square((v + 0.1) * (1 / (1 + vol))) < 1 + 2 * wave
  au = np.abs(u)
  if style == "long":
    back = (cap & (v < 0)) | ((au < a + vol + 0.1 + 0.12 * np.clip(v, 0, None) + wave)
                              & (v < t["hair_len"] - 0.2 * np.square(u)) & (v > -0.3))
  elif style == "bob":
    back = (cap & (v < 0)) | ((au < a + vol) & (v < t["hair_len"]) & (v > -0.3))
  elif style == "short":  # clear of the ears, with short sideburns
    back = cap & ((v < -0.22) | ((v < 0.1) & (au < a + 0.03)))
  else:  # bald-ish: a fringe of hair at the sides and back only
    back = cap & (v < -0.18) & (v > -0.6) & (au > 0.6 * a)
  hair = back & _BEHIND_HAIR[lab]  # hair behind the head shows only where nothing of the head is
  if style != "bald":
    hairline = t["hairline"] + t["fringe_slope"] * u + 0.12 * np.square(u) + wave
    hair |= face & cap & (v < hairline)  # the fringe falls over the face
  lab[hair] = _C["hair"]


def _paint_hat(lab, u, v, t):
  a, base = t["face_w"], -0.6
  crown = _ellipse(u, v, 0, base, a + 0.1, t["hat_h"]) & (v < base)
  if t["hat_kind"] == 0:  # brimmed hat
    crown |= (np.abs(v - base) < 0.07) & (np.abs(u) < a + 0.35)
  elif t["hat_kind"] == 1:  # beanie with a folded band
    crown |= (v < base + 0.12) & (v > base - 0.15) & (np.abs(u) < a + 0.12)
  else:  # cap with a visor seen from the front
    crown |= _ellipse(u, v, 0, base, 0.8 * a, 0.16)
  lab[crown] = _C["hat"]


def _head_window(resolution, w):
  """Pixel slices of the square that holds every part of the head but the hair: parts are evaluated there."""
  half = _HEAD_RADIUS * w["scale"]
  lo = lambda c: min(resolution, max(0, int((c - half + 1) * resolution / 2)))
  hi = lambda c: max(0, min(resolution, int((c + half + 1) * resolution / 2) + 2))
  return slice(lo(w["cy"]), hi(w["cy"])), slice(lo(w["cx"]), hi(w["cx"]))


def _label_map(resolution, t, w, toon):
  """Paints all parts in a painter's order; returns the labels, head coordinates, window and teeth."""
  u0, v0, u, v = _coords(resolution, w)
  px = 2 / (resolution * w["scale"])  # one pixel in head units: thin parts stay at least ~1 px wide
  lab = np.zeros((resolution, resolution), np.uint8)
  _paint_body(lab, u0, v0, t, px)
  win = _head_window(resolution, w)
  hl, hu, hv = lab[win], u[win], v[win]  # views: painting into hl paints into lab
  _paint_ears(hl, hu, hv, t, w, px)
  face = np.zeros(lab.shape, bool)
  face[win] = _face_mask(hu, hv, t)
  lab[face] = _C["skin"]
  _paint_nose(hl, hu, hv, t, w)
  _paint_eyes_brows(hl, hu, hv, t, w, toon, px)
  teeth = _paint_mouth(hl, hu, hv, t, w, px)
  if t["glasses"]:
    hl[_glasses_mask(hu, hv, t, w, toon, px)] = _C["eye_g"]
  _paint_hair(lab, u, v, t, face)
  if t["hat"]:
    _paint_hat(hl, hu, hv, t)
  return dict(lab=lab, u=u, v=v, win=win, teeth=teeth)


def _palette(t, toon):
  pal = np.zeros((NUM_CLASSES, 3), np.float32)
  skin = t["skin"]
  for name, colour in (("skin", skin), ("nose", skin * 0.9), ("l_eye", (238, 236, 230)),
                       ("r_eye", (238, 236, 230)), ("l_brow", 0.7 * t["hair"] + 0.15 * skin),
                       ("r_brow", 0.7 * t["hair"] + 0.15 * skin), ("l_ear", skin * 0.95), ("r_ear", skin * 0.95),
                       ("mouth", (95, 25, 35)), ("u_lip", t["lip"] * 0.88), ("l_lip", t["lip"]), ("hair", t["hair"]),
                       ("hat", t["hat_colour"]), ("ear_r", t["jewel"]), ("neck_l", t["jewel"]),
                       ("neck", skin * 0.86), ("cloth", t["cloth"]), ("eye_g", t["frame"])):
    pal[_C[name]] = colour
  if t["sunglasses"]:
    pal[_C["eye_g"]] = 0.3 * pal[_C["eye_g"]] + 15
  if toon:  # brighter, more saturated flat colours
    grey = pal.mean(axis=1, keepdims=True)
    pal = (grey + 1.35 * (pal - grey)) * 0.9 + 30
  return np.clip(pal, 0, 255)


def _details(img, g, t, w, toon):
  """Irises, pupils, toon highlights and teeth, drawn inside their own classes only."""
  img, lab, u, v = img[g["win"]], g["lab"][g["win"]], g["u"][g["win"]], g["v"][g["win"]]
  img[g["teeth"] & (lab == _C["mouth"])] = 235
  eye = (lab == _C["l_eye"]) | (lab == _C["r_eye"])
  for _, cu, cv, _, _, ri in _eye_geometry(t, w, toon):
    ci = cu + 0.35 * w["gaze"] * ri
    d = np.square(u - ci) + np.square(v - cv)
    img[eye & (d < ri ** 2)] = t["eye"] * (1.2 if toon else 1.0)
    img[eye & (d < (0.45 * ri) ** 2)] = 15
    if toon:
      img[eye & _ellipse(u, v, ci - 0.35 * ri, cv - 0.35 * ri, 0.3 * ri, 0.3 * ri)] = 255


def _background(resolution, w, toon):
  y, x = _grid(resolution)
  c0, c1 = w["bg"]
  cos, sin = math.cos(w["bg_angle"]), math.sin(w["bg_angle"])
  d = x * cos + y * sin
  if toon:  # a flat colour or a clean two-tone split
    return np.where((d > 0.3)[..., None] & (w["bg_kind"] < 2), 0.85 * c0 + 0.15 * c1, c0)
  g = d * 0.35 + 0.5
  f = w["bg_freq"]
  if w["bg_kind"] == 1:  # stripes across the gradient
    g = g + 0.12 * np.sign(np.sin(f * (y * cos - x * sin)))
  elif w["bg_kind"] == 2:  # soft blobs
    g = g + 0.3 * np.sin(0.5 * f * x) * np.cos(0.4 * f * y)
  elif w["bg_kind"] == 3:  # checks
    g = g + 0.1 * np.sign(np.sin(f * x) * np.sin(f * y))
  return c0 + g[..., None] * (c1 - c0)


def _shading(lab, u, v, t, w):
  """Brightness factors: Lambert light on an ellipsoid head, a flat gradient on cloth, hair strands."""
  lx, ly = math.cos(w["light"]), math.sin(w["light"])
  nx, ny = u * (1 / t["face_w"]), v
  r2 = np.square(nx) + np.square(ny)
  nz = np.sqrt(np.maximum(1 - r2, 0))
  # Outside the ellipsoid the normal lies in the image plane: necks and hair fall into shadow or light.
  lambert = np.maximum((nx * lx + ny * ly) * (0.6 / np.sqrt(np.maximum(r2, 1))) + 0.8 * nz, 0)
  shade = 0.74 + 0.32 * lambert
  hair = lab == _C["hair"]
  hu, hv = u[hair], v[hair]
  shade[hair] *= 1 + 0.07 * np.sin(30 * hu / np.maximum(hv + 1.8, 0.1) + 2 * np.sin(3 * hv))  # combed strands
  cloth = lab == _C["cloth"]
  shade[cloth] = 0.95 + (0.1 / 3) * (lx * u[cloth] + ly * v[cloth])
  shade[lab == 0] = 1
  return shade


def _soften_edges(img, lab):
  """Replaces each pixel at a label boundary by the 3x3 box mean around it: 1-px anti-aliasing."""
  edge = np.zeros(lab.shape, bool)
  dx, dy = lab[:, 1:] != lab[:, :-1], lab[1:] != lab[:-1]
  edge[:, 1:] |= dx
  edge[:, :-1] |= dx
  edge[1:] |= dy
  edge[:-1] |= dy
  ys, xs = np.nonzero(edge)
  p = np.empty((img.shape[0] + 2, img.shape[1] + 2, 3), img.dtype)  # edge padding, faster than np.pad
  p[1:-1, 1:-1] = img
  p[0], p[-1] = p[1], p[-2]
  p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
  total = sum(p[ys + i, xs + j] for i in range(3) for j in range(3))
  img[ys, xs] = total * (1 / 9)
  return img


def _colour(g, t, w, toon, noise_rng):
  lab, u, v = g["lab"], g["u"], g["v"]
  img = _palette(t, toon)[lab]
  img = np.where((lab == 0)[..., None], _background(lab.shape[0], w, toon), img)
  _details(img, g, t, w, toon)
  if toon:  # a dark outline on one side of every boundary, in a darker tone of the part itself
    edge = np.zeros(lab.shape, bool)
    edge[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    edge[:-1] |= lab[1:] != lab[:-1]
    img[edge] *= 0.3 if lab.shape[0] >= 64 else 0.55  # at 32 px full-dark lines would drown the features
    return img
  img *= _shading(lab, u, v, t, w)[..., None]
  img = _soften_edges(img, lab)
  noise = noise_rng.standard_normal(lab.shape, dtype=np.float32)
  grain = math.sqrt(min(1.0, lab.shape[0] / 128))  # a small picture averages the grain of a large one
  return img + ((4 * grain) * (1 + 0.5 * _SKIN_LIKE[lab]) * noise)[..., None]


def render(seed: int, index: int, resolution: int, domain: str = "photo",
           num_identities: int | None = None) -> dict:
  """Renders example `index`; its identity is `index % num_identities` (every index its own if None)."""
  _check(resolution, domain, seed, num_identities)
  resolution, index = int(resolution), operator.index(index)
  identity = index if num_identities is None else index % num_identities
  t = _identity_traits(seed, identity)
  w = _view_traits(seed, index)
  toon = domain == "toon"
  geometry = _label_map(resolution, t, w, toon)
  img = _colour(geometry, t, w, toon, np.random.default_rng([seed, 2, index]))
  group = _group(t["male"], t["glasses"])
  scalar = lambda x: np.asarray(x, np.int32)  # fixed dtypes: grain batches examples by stacking
  return {"image": np.clip(img + 0.5, 0, 255).astype(np.uint8), "label": geometry["lab"],
          "identity": scalar(identity), "group": scalar(group), "male": scalar(t["male"]),
          "long_hair": scalar(t["style"] == "long"), "glasses": scalar(t["glasses"]), "hat": scalar(t["hat"]),
          "earrings": scalar(t["earrings"])}


def _check_group_counts(group_counts) -> tuple[int, ...]:
  counts = tuple(group_counts)
  if (len(counts) != len(GROUP_NAMES) or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                                 and c >= 0 for c in counts) or not sum(counts)):
    raise errors.ConfigError(f"synthetic group_counts={group_counts!r} is invalid: use {len(GROUP_NAMES)} "
                             f"non-negative ints, one per group {GROUP_NAMES}, e.g. (1050, 249, 49, 38)")
  return tuple(int(c) for c in counts)


def _identity_groups(seed: int, start: int, stop: int) -> np.ndarray:
  return np.array([identity_group(seed, i) for i in range(start, stop)], np.int64)


def _indices_with_counts(seed: int, num_identities: int | None,
                         counts: tuple[int, ...]) -> tuple[np.ndarray, int]:
  """(the render indices, sorted, of counts[g] faces of each group g; the number of identities they use).

  Index n shows identity n % num_identities. Group g uses its first ceil(counts[g] / 4) identities (4 views
  each, as num_examples // 4 does), or with `num_identities` all of its identities below it; its m-th face
  is identity m % k of those k, view m // k: every identity of a group gets an equal share, +-1."""
  if num_identities is None:
    wanted = [-(-count // 4) for count in counts]
    groups = np.zeros(0, np.int64)
    while any(np.count_nonzero(groups == g) < k for g, k in enumerate(wanted)):
      groups = np.concatenate([groups, _identity_groups(seed, len(groups), len(groups) + 1024)])
    members = [np.flatnonzero(groups == g)[:k] for g, k in enumerate(wanted)]
    num_identities = 1 + max(int(ids[-1]) for ids in members if ids.size)
  else:
    groups = _identity_groups(seed, 0, num_identities)
    members = [np.flatnonzero(groups == g) for g in range(len(counts))]
  chosen = []
  for g, (count, identities) in enumerate(zip(counts, members)):
    if count and not identities.size:
      raise errors.ConfigError(
          f"synthetic group_counts asks for {count} faces of group {g} ({GROUP_NAMES[g]}) but none of the "
          f"{num_identities} identities (seed {seed}) is in it: raise num_identities or leave it None")
    m = np.arange(count)
    k = max(identities.size, 1)
    chosen.append(identities[m % k] + (m // k) * num_identities)
  return np.sort(np.concatenate(chosen)), num_identities


class SyntheticFaces:
  """A Grain RandomAccessDataSource of `render`ed faces; `num_identities` defaults to num_examples // 4.

  Record i is render index i, or with `group_counts` (faces per group, summing to num_examples) the i-th of
  the render indices `_indices_with_counts` picks, so that group g has exactly group_counts[g] records (and
  ~4 views of each of its identities unless num_identities is given).
  """

  def __init__(self, num_examples: int, resolution: int, *, seed: int = 0, domain: str = "photo",
               num_identities: int | None = None, group_counts=None):
    _check(resolution, domain, seed, num_identities)
    if num_examples < 1:
      raise errors.ConfigError(f"synthetic num_examples={num_examples!r} is invalid: use an integer >= 1")
    self.num_examples, self.resolution, self.seed, self.domain = num_examples, resolution, seed, domain
    self.num_identities = max(1, num_examples // 4) if num_identities is None else num_identities
    self.group_counts = None
    self._indices = None
    self._record_groups = None  # Computed when first asked for: only group sampling needs it.
    if group_counts is not None:
      self.group_counts = _check_group_counts(group_counts)
      if sum(self.group_counts) != num_examples:
        raise errors.ConfigError(f"synthetic group_counts {self.group_counts} sum to {sum(self.group_counts)}, "
                                 f"not num_examples={num_examples}: pass num_examples=sum(group_counts)")
      self._indices, self.num_identities = _indices_with_counts(seed, num_identities, self.group_counts)

  def __len__(self) -> int:
    return self.num_examples

  def render_index(self, index: int) -> int:
    """The `render` index of record `index`."""
    return index if self._indices is None else int(self._indices[index])

  def __getitem__(self, index: int) -> dict:
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} synthetic examples")
    return render(self.seed, self.render_index(index), self.resolution, self.domain, self.num_identities)

  def record_groups(self) -> np.ndarray:
    """Every record's group (int32, len(self)), from the identities' traits: no image is rendered."""
    if self._record_groups is None:
      indices = np.arange(self.num_examples) if self._indices is None else self._indices
      identities = indices % self.num_identities
      unique, inverse = np.unique(identities, return_inverse=True)
      groups = np.array([identity_group(self.seed, int(i)) for i in unique], np.int32)
      self._record_groups = groups[inverse]
    return self._record_groups

  def __repr__(self) -> str:
    return (f"SyntheticFaces(num_examples={self.num_examples}, resolution={self.resolution}, seed={self.seed}, "
            f"domain={self.domain!r}, num_identities={self.num_identities}"
            + (f", group_counts={self.group_counts}" if self.group_counts else "") + ")")


# --- 68-point landmarks (dlib's layout) of a rendered face, from the geometry that painted it ---

_JAW_ANGLES = np.linspace(-0.15, math.pi + 0.15, 17)  # jaw 0-16 from just above the eye line, image left first


def _landmarks_head(t, w, toon) -> np.ndarray:
  """(68, 2) head coordinates (u right, v down) of dlib's points on the parts `_label_map` paints.

  Jaw on the face outline; brows on their centre lines; nose bridge from the eye line to the tip (the nose
  ellipse's centre), nostrils along its lower edge; eyes as corners and lid points; lips on their outer and
  inner outlines. dlib's 0-16, 17-21 and 36-41 are on the image's left, the person's right ("r_" here).
  """
  pts = np.zeros((68, 2))
  a = _JAW_ANGLES
  v = np.sin(a)
  pts[0:17] = np.stack([-np.cos(a) * t["face_w"] * (1 - t["taper"] * np.clip(v, 0, 1)), v], 1)
  toon_brow = 0.07 if toon else 0.0
  for start, (side, _) in zip((17, 22), _SIDES):
    xn = np.linspace(0.9, -0.9, 5) * -side  # left to right in the image; 1 is the brow's outer end
    u = w["du"] + side * (t["eye_sep"] + 0.02) + xn * side * t["brow_w"]
    pts[start:start + 5] = np.stack([u, -0.3 - w["brow_raise"] - toon_brow - t["brow_arch"] * (1 - (xn - 0.1) ** 2)], 1)
  ns, du = t["nose"], w["du"]
  pts[27:31] = np.stack([np.full(4, du), np.linspace(-0.12, 0.25, 4)], 1)
  k = np.linspace(-1, 1, 5)
  pts[31:36] = np.stack([du + 0.1 * ns * k, 0.25 + 0.075 * ns * (0.6 + 0.3 * (1 - k ** 2))], 1)
  for start, (_, cu, cv, rw, rh, _) in zip((36, 42), _eye_geometry(t, w, toon)):
    # corner, two upper-lid points, corner, two lower-lid points: clockwise from the image-left corner
    s = np.array([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3])
    lid = np.sqrt(1 - s ** 2) * rh * np.array([0, -1, -1, 0, 1, 1])
    pts[start:start + 6] = np.stack([cu + s * rw, cv + lid], 1)
  mw = t["mouth_w"] * (1 + 0.6 * w["smile"])
  half_open = 0.5 * w["mouth_open"]

  def lip(xs, sign, height):  # points on the curve vv = sign * height * sqrt(1 - xn^2) of _paint_mouth
    xn2 = (xs / mw) ** 2
    return np.stack([du + xs, 0.58 - w["smile"] * xn2 + sign * height * np.sqrt(np.clip(1 - xn2, 0, 1))], 1)

  outer = mw * np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1])
  pts[48:55] = lip(outer, -1, t["lip_up"] + half_open)  # 48 left corner .. 51 top .. 54 right corner
  pts[55:60] = lip(outer[5:0:-1], 1, t["lip_lo"] + half_open)  # 55 .. 59 right to left, 57 lowest
  inner = 0.8 * mw * np.array([-1, -0.5, 0, 0.5, 1])
  inner_h = half_open * np.sqrt(np.clip(1 - 1.3 * (inner / mw) ** 2, 0, 1))
  pts[60:65] = np.stack([du + inner, lip(inner, 0, 0)[:, 1] - inner_h], 1)
  pts[65:68] = np.stack([du + inner[3:0:-1], lip(inner[3:0:-1], 0, 0)[:, 1] + inner_h[3:0:-1]], 1)
  return pts


def landmarks68(seed: int, index: int, resolution: int, domain: str = "photo",
                num_identities: int | None = None) -> np.ndarray:
  """dlib-style 68 landmarks (68, 2) of `render(seed, index, resolution, domain, num_identities)`'s face, as
  image x, y in pixels with pixel centres at integers (dlib's and cv2's convention), without rendering it."""
  _check(resolution, domain, seed, num_identities)
  index = operator.index(index)
  identity = index if num_identities is None else index % num_identities
  t, w = _identity_traits(seed, identity), _view_traits(seed, index)
  u, v = _landmarks_head(t, w, domain == "toon").T
  c, s = math.cos(w["angle"]), math.sin(w["angle"])  # _coords' rotation, inverted
  x = w["cx"] + w["scale"] * (c * u - s * v)
  y = w["cy"] + w["scale"] * (s * u + c * v)
  return np.stack([(x + 1) * (resolution / 2) - 0.5, (y + 1) * (resolution / 2) - 0.5], 1)
