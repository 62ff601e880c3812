"""sphere20a (nets/sphereface.py), SATNet's identity loss and `convert sphereface`.

Fast tests use narrow widths (the input stays 112x96, which fc5 fixes); the full-size network is built only
abstractly (parameter counts) and in the slow torch-parity test, against a torch rebuild of net_sphere.py's
sphere20a and AngleLinear written below with the original's module names.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert import sphereface as convert_sphereface
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import DataError, UserError
from facegen_jax.nets import sphereface

TINY = (3, 4, 4, 5)  # narrow stages: same layers, same 112x96 input
TINY_EMBEDDING = 6


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract(num_classes):
  x = jax.ShapeDtypeStruct((1, 112, 96, 3), jnp.float32)
  return jax.eval_shape(lambda x: sphereface.Sphere20a(num_classes).init(jax.random.key(0), x), x)["params"]


def test_parameter_counts_are_the_originals():
  assert _count(_abstract(227)) == 22_786_880  # SATNet's WebCaricature fine-tune
  assert _count(_abstract(10_574)) == 28_084_544  # CASIA-WebFace, the published model
  params = _abstract(0)
  assert "fc6" not in params and _count(params["fc5"]) == 11_010_560
  assert params["fc5"]["kernel"].shape == (512 * 7 * 6, 512)
  assert sorted(k for k in params if k.startswith("conv")) == sorted(sphereface.layer_names())
  assert len(sphereface.layer_names()) == 20


@functools.lru_cache(maxsize=None)
def _tiny_params(num_classes=5, seed=0, biases=True):
  """Numpy parameters of the tiny network (no init program to compile): torch-like kernel bounds, PReLU slopes of
  both signs and other than the init's, so their order and per-channel use matter."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in sphereface.param_shapes(num_classes, TINY, TINY_EMBEDDING).items():
    layer, leaf = name.split("/")
    if layer.startswith("relu"):
      value = rng.uniform(-0.5, 1.5, shape)
    elif leaf == "bias":
      value = rng.uniform(-0.1, 0.1, shape) * biases
    else:
      fan_in = np.prod(shape[:-1])
      value = rng.uniform(-1, 1, shape) * np.sqrt(3 / fan_in)
    params.setdefault(layer, {})[leaf] = value.astype(np.float32)
  return params


def _jit(fn):
  return compile_lib.jit(fn, run_once=True)  # tiny programs: compile time is what counts


_apply = _jit(sphereface.apply)


def test_output_shapes_and_input_size_check():
  x = jax.ShapeDtypeStruct((2, 112, 96, 3), jnp.float32)
  out = jax.eval_shape(sphereface.apply, _tiny_params(), x)
  assert {k: v.shape for k, v in out.items()} == {
      "embedding": (2, TINY_EMBEDDING), "cos_theta": (2, 5), "phi_theta": (2, 5)}
  assert jax.eval_shape(sphereface.embedding, _tiny_params(), x).shape == (2, TINY_EMBEDDING)
  no_fc6 = {k: v for k, v in _tiny_params().items() if k != "fc6"}
  assert set(jax.eval_shape(sphereface.apply, no_fc6, x)) == {"embedding"}
  full = jax.eval_shape(sphereface.apply, _abstract(227), x)
  assert {k: v.shape for k, v in full.items()} == {"embedding": (2, 512), "cos_theta": (2, 227),
                                                    "phi_theta": (2, 227)}
  with pytest.raises(ValueError, match="112x96"):
    jax.eval_shape(sphereface.apply, _tiny_params(), jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))


def test_prelu_by_hand():
  y = sphereface.PReLU().apply({"params": {"weight": jnp.array([0.25, 2.0])}}, jnp.array([[-2.0, -3.0], [4.0, 0.0]]))
  np.testing.assert_array_equal(y, [[-0.5, -6.0], [4.0, 0.0]])
  assert sphereface.PReLU().init(jax.random.key(0), jnp.zeros((1, 3)))["params"]["weight"].tolist() == [0.25] * 3


def _numpy_conv3x3(x, kernel, bias, stride):
  """(H, W, C) zero-padded 3x3 correlation, torch's Conv2d(3, stride, padding=1)."""
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  h, w = (x.shape[0] - 1) // stride + 1, (x.shape[1] - 1) // stride + 1
  out = np.zeros((h, w, kernel.shape[-1])) + bias
  for i in range(3):
    for j in range(3):
      out += padded[i:i + stride * h:stride, j:j + stride * w:stride] @ kernel[i, j]
  return out


def _numpy_sphere20a(params, image):
  """net_sphere.py's forward for one (H, W, C) image, layer by layer: x + prelu(conv(prelu(conv(x))))."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  prelu = lambda x, name: np.where(x >= 0, x, p[name]["weight"] * x)
  layer = lambda x, name, stride: prelu(_numpy_conv3x3(x, p["conv" + name]["kernel"], p["conv" + name]["bias"],
                                                       stride), "relu" + name)
  x = np.asarray(image, np.float64)
  for stage, units in enumerate(sphereface.UNITS, start=1):
    x = layer(x, f"{stage}_1", 2)
    for unit in range(units):
      i = 2 + 2 * unit
      x = x + layer(layer(x, f"{stage}_{i}", 1), f"{stage}_{i + 1}", 1)
  flat = x.transpose(2, 0, 1).reshape(-1)  # torch's (C, H, W) view
  return flat @ p["fc5"]["kernel"] + p["fc5"]["bias"]


def test_forward_matches_a_layer_by_layer_numpy_reference():
  """Residual adds after the second PReLU, per-channel slopes, strides, (C, H, W) flatten: all in the reference;
  a residual before the PReLU or an (H, W, C) flatten differs by O(1)."""
  params = _tiny_params()
  x = np.random.default_rng(0).normal(size=(2, 112, 96, 3)).astype(np.float32)
  got = np.asarray(_apply(params, x)["embedding"])
  want = np.stack([_numpy_sphere20a(params, image) for image in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.abs(want).max() > 0.1


def _numpy_angle_linear(x, w, m=4):
  w = w / np.linalg.norm(w, axis=0, keepdims=True)
  x_len = np.linalg.norm(x, axis=1, keepdims=True)
  cos = np.clip(x @ w / x_len, -1, 1)
  theta = np.arccos(cos)
  k = np.floor(m * theta / np.pi)
  return cos * x_len, ((-1.0) ** k * np.cos(m * theta) - 2 * k) * x_len, k


def test_angle_linear_is_a_softmax_s_margin():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 8)).astype(np.float32)
  w = rng.normal(size=(8, 40)).astype(np.float32) * 3

  @_jit
  def forward_and_slope(x, w):
    out = sphereface.AngleLinear(40).apply({"params": {"weight": w}}, x)
    # d phi / d cos at cos = 0.3 (k = 1) for a unit x along a unit column: theta enters k without a gradient, so
    # it is (-1)^k times the derivative of cos(4 theta) = 8c^4 - 8c^2 + 1.
    unit = jnp.array([[1.0], [0.0]])
    slope = jax.grad(lambda c: sphereface.AngleLinear(1).apply(
        {"params": {"weight": unit}}, jnp.stack([c, jnp.sqrt(1 - c**2)])[None])[1][0, 0])(0.3)
    return out, slope

  (cos, phi), slope = forward_and_slope(x, w)
  want_cos, want_phi, k = _numpy_angle_linear(x.astype(np.float64), w.astype(np.float64))
  np.testing.assert_allclose(cos, want_cos, atol=1e-5)
  np.testing.assert_allclose(phi, want_phi, atol=1e-4)
  assert set(np.unique(k)) >= {1, 2}  # both signs of (-1)^k exercised
  np.testing.assert_allclose(slope, -(32 * 0.3**3 - 16 * 0.3), rtol=1e-4)
  init = sphereface.AngleLinear(7).init(jax.random.key(0), jnp.ones((1, 4)))["params"]["weight"]
  np.testing.assert_allclose(np.linalg.norm(init, axis=0), 1.0, rtol=1e-5)


def test_angle_loss():
  rng = np.random.default_rng(2)
  cos, phi = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  labels = np.array([0, 5, 2, 2])
  lamb = float(sphereface.angle_loss_lambda(1))
  assert lamb == pytest.approx(1500 / 1.1) and float(sphereface.angle_loss_lambda(10_000)) == 5.0
  logits = cos.copy()
  logits[np.arange(4), labels] += (phi - cos)[np.arange(4), labels] / (1 + lamb)
  log_p = logits[np.arange(4), labels] - np.log(np.exp(logits).sum(1))
  got = sphereface.angle_loss(cos_theta=cos, phi_theta=phi, labels=labels, lamb=lamb)
  np.testing.assert_allclose(got, -log_p.mean(), rtol=1e-5)
  focal = sphereface.angle_loss(cos_theta=cos, phi_theta=phi, labels=labels, lamb=lamb, gamma=2.0)
  np.testing.assert_allclose(focal, np.mean(-((1 - np.exp(log_p)) ** 2) * log_p), rtol=1e-5)


def test_preprocess_pools_224x192_swaps_to_bgr_and_scales():
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (2, 224, 192, 3)).astype(np.float32)
  y = np.asarray(sphereface.preprocess(x))
  assert y.shape == (2, 112, 96, 3)
  # AvgPool2d(3, 2, 1, count_include_pad=False): a corner averages 2x2 pixels, an inner output 3x3.
  pooled = lambda r, c: x[:, max(2 * r - 1, 0):2 * r + 2, max(2 * c - 1, 0):2 * c + 2].mean(axis=(1, 2))
  for r, c in ((0, 0), (0, 5), (7, 11), (111, 95)):
    want = ((pooled(r, c)[:, ::-1] + 1) * 127.5 - 127.5) / 128
    np.testing.assert_allclose(y[:, r, c], want, atol=1e-6)
  small = rng.uniform(-1, 1, (1, 112, 96, 3)).astype(np.float32)
  np.testing.assert_allclose(sphereface.preprocess(small), small[..., ::-1] * 127.5 / 128, atol=1e-6)
  np.testing.assert_allclose(sphereface.preprocess(-np.ones((1, 112, 96, 3))), -127.5 / 128)
  with pytest.raises(ValueError, match="224x192 or 112x96"):
    sphereface.preprocess(jnp.zeros((1, 128, 128, 3)))


def _images(seed, n=2, size=(224, 192)):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n,) + size + (3,)), jnp.float32)


@_jit
def _identity_figures(params, a, b, threshold):
  return sphereface.identity_loss(params, a, b, threshold=threshold), sphereface.identity_cosine(params, a, b)


def test_identity_loss_is_satnets_whole_batch_cosine():
  # Without biases the random network's embeddings depend on the image enough for the two readings to differ.
  params = _tiny_params(biases=False)
  a, b = _images(4), _images(5)
  fa, fb = ([_numpy_sphere20a(params, image) for image in sphereface.preprocess(x)] for x in (a, b))
  fa, fb = np.stack(fa), np.stack(fb)
  whole = np.sum(fa * fb) / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-8)
  per_pair = np.sum(fa * fb, 1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1) + 1e-5)
  assert abs(whole - per_pair.mean()) > 0.01, (whole, per_pair)  # the two readings differ on this batch
  for threshold in (0.2875, 1.0, 0.5):
    loss, cosines = _identity_figures(params, a, b, threshold)
    np.testing.assert_allclose(loss, max(threshold - whole, 0.0), atol=1e-5)
  assert 0.2875 < whole < 0.5, whole  # so the thresholds gave a zero and two positive losses
  np.testing.assert_allclose(cosines, per_pair, atol=1e-5)
  norm2 = np.sum(fa * fa, 1)
  np.testing.assert_allclose(_identity_figures(params, a, a, 0.0)[1], norm2 / (norm2 + 1e-5), atol=1e-5)


def test_identity_loss_trains_the_generator_not_sphereface():
  """The loss's gradient reaches the translated image through the frozen network; an optimizer over the
  generator alone moves it, and sphere20a's parameters (a closed-over argument) stay as they were."""
  sphere = _tiny_params(biases=False)
  source = _images(6, size=(112, 96))  # 112x96 skips the pooling: a smaller program to compile
  optimizer = optax.sgd(1.0)

  def translate(g):  # a toy generator (a flip); "image" is a zero offset whose gradient is the image's
    return jnp.tanh(g["scale"] * source[:, :, ::-1] + g["shift"]) + g["image"]

  @_jit
  def step(g, opt_state):
    loss, grads = jax.value_and_grad(
        lambda g: sphereface.identity_loss(sphere, translate(g), source, threshold=1.0))(g)
    updates, opt_state = optimizer.update(grads, opt_state, g)
    return optax.apply_updates(g, updates), opt_state, loss, grads

  before = jax.tree.map(np.array, sphere)
  g = {"scale": jnp.array(0.5), "shift": jnp.zeros((1, 1, 1, 3)), "image": jnp.zeros_like(source)}
  moved, opt_state, loss, grads = step(g, optimizer.init(g))
  assert float(jnp.abs(grads["image"]).max()) > 0 and float(jnp.abs(moved["scale"] - g["scale"])) > 0
  _, _, new_loss, _ = step(moved, opt_state)
  assert 0 < float(new_loss) < float(loss)
  jax.tree.map(np.testing.assert_array_equal, before, sphere)


# --- weights: converter and loader ---


def _torch_layout_state_dict(params) -> dict:
  """What torch's state_dict of these parameters holds (numpy), for the converter's fast checks."""
  out = {}
  for name, layer in params.items():
    for leaf, value in layer.items():
      value = np.asarray(value)
      if leaf == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      out[f"{name}.{'weight' if leaf == 'kernel' else leaf}"] = value
  return out


def test_convert_state_dict_round_trip_and_strict_errors(tmp_path):
  params = _tiny_params()
  state_dict = _torch_layout_state_dict(params)
  arrays = convert_sphereface.convert_state_dict(state_dict)
  assert arrays["fc6/weight"].shape == (TINY_EMBEDDING, 5)
  for name, layer in params.items():
    for leaf, value in layer.items():
      np.testing.assert_array_equal(arrays[f"{name}/{leaf}"], value)
  without_fc6 = {k: v for k, v in state_dict.items() if not k.startswith("fc6")}
  assert "fc6/weight" not in convert_sphereface.convert_state_dict(without_fc6)

  def error(sd):
    with pytest.raises(UserError) as info:
      convert_sphereface.convert_state_dict(sd, "x.pth")
    assert "\n" not in str(info.value)
    return str(info.value)

  assert "missing keys 1: relu3_4.weight" in error({k: v for k, v in state_dict.items() if k != "relu3_4.weight"})
  assert "unexpected keys 1: conv5_1.weight" in error({**state_dict, "conv5_1.weight": np.zeros((1, 1, 3, 3))})
  assert "wrong shapes 1: conv2_3.bias (5,)" in error({**state_dict, "conv2_3.bias": np.zeros(5)})
  assert "is not a sphere20a state_dict" in error({"DownBlock.1.weight": np.zeros((1, 1, 3, 3))})


def test_load_params_reads_the_converted_npz_and_says_how_to_get_it(tmp_path):
  from facegen_jax import npz  # pylint: disable=g-import-not-at-top
  path = tmp_path / "sphere20a.npz"
  with pytest.raises(DataError, match=r"not found: convert a sphere20a checkpoint with `python -m facegen_jax"
                                      r"\.convert sphereface --checkpoint sphere20a_X\.pth --out .*sphere20a\.npz`"):
    sphereface.load_params(path)
  arrays = convert_sphereface.convert_state_dict(_torch_layout_state_dict(_tiny_params()))
  npz.write(path, arrays)
  loaded = sphereface.load_params(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, _tiny_params())
  npz.write(path, {k: v for k, v in arrays.items() if k != "conv3_5/bias"})
  with pytest.raises(DataError, match="conv3_5/bias is missing"):
    sphereface.load_params(path)


# --- parity with the original (torch) ---


def _torch_modules():
  torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
  nn = torch.nn

  class TorchAngleLinear(nn.Module):
    """net_sphere.py's AngleLinear(phiflag=True), m = 4."""

    def __init__(self, in_features, out_features):
      super().__init__()
      self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm(2, 1, 1e-5) * 1e5)

    def forward(self, x):
      ww = self.weight.renorm(2, 1, 1e-5).mul(1e5)
      x_len, w_len = x.pow(2).sum(1).pow(0.5), ww.pow(2).sum(0).pow(0.5)
      cos = (x.mm(ww) / x_len.view(-1, 1) / w_len.view(1, -1)).clamp(-1, 1)
      cos4 = 8 * cos**4 - 8 * cos**2 + 1
      k = (4 * cos.detach().acos() / 3.14159265).floor()
      phi = (-1.0) ** k * cos4 - 2 * k
      return cos * x_len.view(-1, 1), phi * x_len.view(-1, 1)

  class TorchSphere20a(nn.Module):
    """net_sphere.py's sphere20a: the same module names (conv{s}_{i}, relu{s}_{i}, fc5, fc6) and forward."""

    def __init__(self, classnum, widths=(64, 128, 256, 512), embedding=512):
      super().__init__()
      channels = 3
      for stage, (width, units) in enumerate(zip(widths, (1, 2, 4, 1)), start=1):
        for i in range(1, 2 * units + 2):
          setattr(self, f"conv{stage}_{i}", nn.Conv2d(channels, width, 3, 2 if i == 1 else 1, 1))
          setattr(self, f"relu{stage}_{i}", nn.PReLU(width))
          channels = width
      self.units = (1, 2, 4, 1)
      self.fc5 = nn.Linear(widths[-1] * 7 * 6, embedding)
      self.fc6 = TorchAngleLinear(embedding, classnum)

    def forward(self, x):
      block = lambda x, name: getattr(self, "relu" + name)(getattr(self, "conv" + name)(x))
      for stage, units in enumerate(self.units, start=1):
        x = block(x, f"{stage}_1")
        for unit in range(units):
          i = 2 + 2 * unit
          x = x + block(block(x, f"{stage}_{i}"), f"{stage}_{i + 1}")
      embedding = self.fc5(x.view(x.size(0), -1))
      return embedding, self.fc6(embedding)

  return torch, TorchSphere20a


@pytest.mark.slow
@pytest.mark.parametrize("classes, widths, embedding", [(227, (64, 128, 256, 512), 512), (9, (8, 16, 16, 24), 32)])
def test_converted_checkpoint_matches_torch(tmp_path, capsys, classes, widths, embedding):
  torch, TorchSphere20a = _torch_modules()
  torch.manual_seed(classes)
  net = TorchSphere20a(classes, widths, embedding).eval()
  with torch.no_grad():  # He-scaled weights keep activations O(1) through the 20 layers: tolerances mean something
    for name, module in net.named_children():
      if name.startswith("relu"):
        module.weight.uniform_(-0.5, 1.0)
      elif name.startswith("conv"):
        torch.nn.init.kaiming_normal_(module.weight, a=0.5)
        module.bias.uniform_(-0.1, 0.1)
  checkpoint, out = tmp_path / "sphere20a_X.pth", tmp_path / "sphere20a.npz"
  torch.save(net.state_dict(), checkpoint)
  assert convert_main(["sphereface", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
  assert f"{classes} classes" in capsys.readouterr().out
  params = sphereface.load_params(out)
  rgb = np.random.default_rng(8).uniform(-1, 1, (3, 224, 192, 3)).astype(np.float32)
  bgr = np.asarray(sphereface.preprocess(rgb))
  with torch.no_grad():
    nchw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    pooled = torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)(nchw)
    want_input = ((pooled.flip(1) + 1) * 255 * 0.5 - 127.5) / 128  # SATNet's sphereface_preprocess
    np.testing.assert_allclose(bgr.transpose(0, 3, 1, 2), want_input.numpy(), atol=1e-5)
    want_embedding, (want_cos, want_phi) = net(want_input)
  got = jax.jit(sphereface.apply)(params, bgr)
  scale = float(want_embedding.abs().max())
  print(f"sphere20a {widths} {classes} classes: |embedding| max {scale:.3g}, differences: embedding "
        f"{np.abs(got['embedding'] - want_embedding.numpy()).max():.2e}, cos_theta "
        f"{np.abs(got['cos_theta'] - want_cos.numpy()).max():.2e}, phi_theta "
        f"{np.abs(got['phi_theta'] - want_phi.numpy()).max():.2e}")
  assert scale > 0.5
  np.testing.assert_allclose(got["embedding"], want_embedding.numpy(), atol=1e-4)
  np.testing.assert_allclose(got["cos_theta"], want_cos.numpy(), atol=1e-4)
  np.testing.assert_allclose(got["phi_theta"], want_phi.numpy(), atol=1e-4)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, capsys):
  torch, _ = _torch_modules()
  checkpoint = tmp_path / "not_sphere.pth"
  torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, checkpoint)
  assert convert_main(["sphereface", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.npz")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("facegen_jax.convert: error:") and "not a sphere20a state_dict" in err and "\n" not in err
  assert not (tmp_path / "x.npz").exists()
