"""MUNIT's VGG16 perceptual loss (nets/vgg.py VGG16Features / munit_loss, convert vgg16, the MUNIT family's "vgg"
group) against torch rebuilds of NVlabs/MUNIT's code, through the converter CLI.

The torch side is written here from MUNIT's code: networks.py `Vgg16` (13 convs named conv{b}_{i}, max-pools after
blocks 1-3 only, returns relu5_3), utils.py `vgg_preprocess` (RGB -> BGR, [-1, 1] -> [0, 255], minus the BGR means)
and trainer.py `compute_vgg_loss` (InstanceNorm2d(512, affine=False) on both features, mean squared difference).
torchvision cannot be imported beside the pinned torch, so its `vgg16().features` is built from its layer list
(configuration "D"): the same modules at the same indices, hence the same state_dict keys.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax import families
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.families import common
from facegen_jax.families import munit
from facegen_jax.nets import vgg
from tests.conftest import tiny_config

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")

# torchvision.models.vgg cfgs["D"]: channels of each 3x3 conv (+ ReLU), "M" a 2x2 max-pool.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_BGR_MEAN = (103.939, 116.779, 123.680)
_SIZE = 32  # relu5_3 at 4x4


class _MunitVgg16(torch.nn.Module):
  """NVlabs/MUNIT networks.py Vgg16: conv{b}_{i} 3x3 pad 1, ReLU after each, max-pool 2/2 after blocks 1, 2, 3."""

  def __init__(self):
    super().__init__()
    channels = 3
    for block, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
      for i in range(1, convs + 1):
        setattr(self, f"conv{block}_{i}", torch.nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1))
        channels = width

  def forward(self, x):
    for block, convs in enumerate((2, 2, 3, 3, 3), start=1):
      for i in range(1, convs + 1):
        x = torch.relu(getattr(self, f"conv{block}_{i}")(x))
      if block <= 3:
        x = torch.nn.functional.max_pool2d(x, kernel_size=2, stride=2)
    return x


def _vgg_preprocess(batch):
  """MUNIT utils.py vgg_preprocess."""
  r, g, b = torch.chunk(batch, 3, dim=1)
  batch = (torch.cat((b, g, r), dim=1) + 1) * 255 * 0.5
  return batch - torch.tensor(_BGR_MEAN).view(1, 3, 1, 1)


def _compute_vgg_loss(net, img, target):
  """MUNIT trainer.py compute_vgg_loss."""
  norm = torch.nn.InstanceNorm2d(512, affine=False)
  return torch.mean((norm(net(_vgg_preprocess(img))) - norm(net(_vgg_preprocess(target)))) ** 2)


def _torchvision_vgg16_features():
  layers, channels = [], 3
  for v in _VGG16_CFG:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(channels, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
      channels = v
  return torch.nn.Sequential(*layers)


def _he_init(module):
  """He init keeps activations O(1) through 13 layers, so the tolerances below mean something."""
  for m in module.modules():
    if isinstance(m, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      torch.nn.init.uniform_(m.bias, -0.1, 0.1)
  return module.eval()


def _nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def _images(seed, count=2):
  rng = np.random.default_rng(seed)
  return [rng.uniform(-1, 1, (2, 3, _SIZE, _SIZE)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(MUNIT's Vgg16 in torch, the converted params, its state_dict, the directory): random weights saved as
  load_vgg16 saves them (torch < 1.6 then: the legacy format) and run through the CLI."""
  torch.manual_seed(0)
  net = _he_init(_MunitVgg16())
  directory = tmp_path_factory.mktemp("vgg16")
  state_dict = net.state_dict()
  torch.save(state_dict, directory / "vgg16.weight", _use_new_zipfile_serialization=False)
  assert convert_main(["vgg16", "--from", str(directory / "vgg16.weight"), "--out", str(directory / "vgg16.npz")]) == 0
  return net, vgg.load_vgg16_params(directory / "vgg16.npz"), state_dict, directory


def test_parameter_counts_match_torchvision_and_munit(converted):
  net, params, _, _ = converted
  features = _torchvision_vgg16_features()
  # All 13 convolutions (relu5_3 is MUNIT's output: torchvision's features[:30]).
  torch_count = sum(p.numel() for p in features[:30].parameters())
  assert torch_count == sum(p.numel() for p in net.parameters()) == 14_714_688
  shapes = jax.eval_shape(vgg.VGG16Features().init, jax.random.key(0), jnp.zeros((1, _SIZE, _SIZE, 3)))
  assert common.count_params(shapes["params"]) == torch_count
  assert common.count_params({k: v for k, v in params.items() if k != vgg.INPUT}) == torch_count
  assert list(params) == [*vgg.VGG16_LAYER_NAMES, vgg.INPUT]
  # No pool between conv4_3 and conv5_1: relu5_3 at 1/8, where torchvision's features[:30] is at 1/16.
  out = jax.eval_shape(vgg.VGG16Features().apply, shapes, jnp.zeros((1, _SIZE, _SIZE, 3)))
  assert out.shape == (1, _SIZE // 8, _SIZE // 8, 512)
  np.testing.assert_array_equal(params[vgg.INPUT]["mean"], np.float32(_BGR_MEAN))
  np.testing.assert_array_equal(params[vgg.INPUT]["scale"], np.ones(3, np.float32))


def test_features_loss_and_gradients_match_munit(converted):
  net, params, _, _ = converted
  img, target = _images(1)
  with torch.no_grad():
    expected = net(_vgg_preprocess(torch.from_numpy(img))).numpy().transpose(0, 2, 3, 1)
  got = jax.jit(vgg.VGG16Features().apply)(
      {"params": {k: v for k, v in params.items() if k != vgg.INPUT}},
      vgg.munit_preprocess(_nhwc(img), params[vgg.INPUT]))
  assert got.shape == expected.shape == (2, 4, 4, 512)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())

  with torch.no_grad():
    expected_loss = _compute_vgg_loss(net, torch.from_numpy(img), torch.from_numpy(target)).item()
  assert 0.1 < expected_loss < 4  # two independent images: IN features far apart, so the figure means something
  np.testing.assert_allclose(jax.jit(vgg.munit_loss)(params, _nhwc(img), _nhwc(target)), expected_loss, rtol=1e-5)

  # Gradients in float64: in float32 an instance-normed channel of small variance over the 4x4 map amplifies
  # rounding (torch's own float32 gradient for the target's second image is 7% of the range off its float64 one).
  # float64 convolutions are slow on XLA:CPU (VGG16's gradient at 32 px, batch 4: 20-80 s), so one 16 px pair.
  img, target = img[:1, :, :16, :16], target[:1, :, 16:, 16:]
  net64 = net.double()
  t_img, t_target = (torch.from_numpy(x).double().requires_grad_() for x in (img, target))
  _compute_vgg_loss(net64, t_img, t_target).backward()
  net.float()
  # The project's CPU options at the lowest optimisation level (XLA:CPU's default convolutions are off by 1% here).
  options = {**compile_lib.CPU_COMPILER_OPTIONS, **compile_lib.CPU_FAST_COMPILE_OPTIONS}
  with jax.enable_x64(True):
    as64 = lambda x: jnp.asarray(x, jnp.float64)
    grads = jax.jit(jax.grad(vgg.munit_loss, argnums=(1, 2)), compiler_options=options)(
        jax.tree.map(as64, params), as64(_nhwc(img)), as64(_nhwc(target)))
  for ours, theirs in zip(grads, (t_img.grad.numpy(), t_target.grad.numpy())):  # MUNIT's target is not detached
    assert ours.dtype == jnp.float64
    # Measured 1.5e-13 and 2.7e-13 of the range (the BGR means are float32 in the .npz, float64 in torch here).
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), theirs, rtol=0,
                               atol=1e-10 * np.abs(theirs).max())


def test_family_term_is_munits_sum_over_both_directions(converted):
  net, params, _, _ = converted
  x_ba, x_b, x_ab, x_a = _images(2, count=4)
  with torch.no_grad():
    expected = [_compute_vgg_loss(net, *(torch.from_numpy(x) for x in pair)).item()
                for pair in ((x_ba, x_b), (x_ab, x_a))]
  config = tiny_config("munit")
  got = jax.jit(functools.partial(munit.vgg_terms, config))(
      params, [(_nhwc(x_ba), _nhwc(x_b)), (_nhwc(x_ab), _nhwc(x_a))])
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_torchvision_layout_converts_with_its_own_preprocessing(tmp_path):
  torch.manual_seed(1)
  features = _he_init(_torchvision_vgg16_features())
  state_dict = {f"features.{k}": v for k, v in features.state_dict().items()}
  state_dict.update({"classifier.0.weight": torch.randn(8, 16), "classifier.6.bias": torch.randn(10)})  # ignored
  torch.save(state_dict, tmp_path / "vgg16-random.pth")
  assert convert_main(["vgg16", "--from", str(tmp_path / "vgg16-random.pth"), "--out", str(tmp_path / "tv.npz")]) == 0
  params = vgg.load_vgg16_params(tmp_path / "tv.npz")

  # The reference: MUNIT's Vgg16 holding torchvision's weights, fed the input they were trained on.
  net = _MunitVgg16().eval()
  net.load_state_dict({f"{layer}.{kind}": state_dict[f"features.{index}.{kind}"]
                       for layer, index in vgg.VGG16_TORCHVISION_INDICES.items() for kind in ("weight", "bias")})
  norm = torch.nn.InstanceNorm2d(512, affine=False)
  mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
  [x] = _images(3, count=1)
  with torch.no_grad():
    expected = norm(net(((torch.from_numpy(x) + 1) / 2 - mean) / std)).numpy().transpose(0, 2, 3, 1)
  got = jax.jit(vgg.munit_features)(params, _nhwc(x))
  np.testing.assert_allclose(got, expected, atol=2e-4)
  np.testing.assert_array_equal(params["conv1_1"]["kernel"][:, :, 0],  # BGR: our channel 0 is torch's blue
                                state_dict["features.0.weight"].numpy()[:, 2].transpose(1, 2, 0))
  np.testing.assert_array_equal(params["conv5_3"]["kernel"],
                                state_dict["features.28.weight"].numpy().transpose(2, 3, 1, 0))


def test_wrong_files_are_one_line_errors(converted, tmp_path, capsys):
  _, _, state_dict, _ = converted
  out = tmp_path / "o.npz"
  torch.save({k: v for k, v in state_dict.items() if k != "conv5_3.bias"}, tmp_path / "partial.weight")
  assert convert_main(["vgg16", "--from", str(tmp_path / "partial.weight"), "--out", str(out)]) == 2
  assert "missing keys 1: conv5_3.bias" in capsys.readouterr().err
  # vgg19's features: conv3_4 at 16, conv4_1 at 19, ... where vgg16 has conv4_1 at 17.
  cfg19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
  layers, channels = [], 3
  for v in cfg19:
    layers += ([torch.nn.MaxPool2d(2, 2)] if v == "M" else [torch.nn.Conv2d(channels, v, 3, padding=1),
                                                             torch.nn.ReLU()])
    channels = channels if v == "M" else v
  torch.save({f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()},
             tmp_path / "vgg19.pth")
  assert convert_main(["vgg16", "--from", str(tmp_path / "vgg19.pth"), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "features.17.weight" in err and "not vgg16_bn or vgg19" in err
  torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
  assert convert_main(["vgg16", "--from", str(tmp_path / "other.pth"), "--out", str(out)]) == 2
  assert "is not a VGG16 state_dict" in capsys.readouterr().err
  assert not out.exists()
  with pytest.raises(errors.DataError, match=r"nowhere\.npz not found.*python -m facegen_jax\.convert vgg16 --from"):
    vgg.load_vgg16_params(tmp_path / "nowhere.npz")


def test_vgg_weight_without_weights_is_a_config_error(converted):
  with pytest.raises(errors.ConfigError, match=r"config.vgg.weights is empty.*convert vgg16 --from vgg16.weight "
                                               r"--out vgg16.npz.*--config.loss_weights.vgg=0"):
    munit.validate(tiny_config("munit", **{"loss_weights.vgg": 1.0}))
  with pytest.raises(errors.ConfigError, match=r"config.vgg.weights 'missing.npz' does not exist"):
    munit.validate(tiny_config("munit", **{"loss_weights.vgg": 1.0, "vgg.weights": "missing.npz"}))
  weights = str(converted[3] / "vgg16.npz")
  munit.validate(tiny_config("munit", **{"loss_weights.vgg": 1.0, "vgg.weights": weights}))


def _vgg_config(converted, **overrides):
  config = tiny_config("munit", **{"loss_weights.vgg": 1.0, "vgg.weights": str(converted[3] / "vgg16.npz"),
                                   **overrides})
  munit.validate(config)
  return config


def test_vgg_loss_has_a_gradient_into_g(converted):
  # MUNIT's plain networks (no spectral state) with random parameters: compiling the tiny init costs minutes.
  config = tiny_config("munit", **{"model.attention": False, "model.dis.norm": "none"})
  _, params, _, _ = converted
  shapes = jax.eval_shape(munit._generator(config).init, jax.random.key(0), jnp.zeros((1, _SIZE, _SIZE, 3)))
  rng = np.random.default_rng(0)  # numpy: jax.random per parameter shape compiled a program per shape, eagerly
  g = {d: jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes["params"]) for d in "ab"}
  x_a = jnp.asarray(_images(4, count=1)[0].transpose(0, 2, 3, 1))
  grads = jax.jit(functools.partial(_vgg_gradient, config), compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)(
      g, params, {"g": {}, "d": {}}, x_a)
  norm = lambda tree: float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads["b"]["dec"]) > 0 and norm(grads["a"]["enc_content"]) > 0
  assert norm(grads["a"]["enc_style"]) == 0 and norm(grads["b"]["enc_content"]) == 0
  # VGG16 is not differentiated in the step (test_the_step_reports_g_vgg_and_leaves_vgg_as_it_is).


def _vgg_gradient(config, g, vgg_params, stats, x_a):
  """The gradient in G's parameters of the vgg term of a -> b (a zero style) against x_a."""
  def loss(g):
    calls = munit._Networks(config, {"g": g}, stats)
    x_ab = calls.decode("b", calls.content("a", x_a), jnp.zeros((x_a.shape[0], config.model.gen.style_dim)))
    [term] = munit.vgg_terms(config, vgg_params, [(x_ab, x_a)])
    return term
  return jax.grad(loss)(g)


def test_the_step_reports_g_vgg_and_leaves_vgg_as_it_is(converted):
  """Traced, not compiled: the step's metrics have g/vgg, and its new state's VGG16 is its input's, untouched."""
  # MUNIT's plain step (no attention, spectral norm or identity loss): a third of the tiny preset's tracing.
  config = _vgg_config(converted, **{"model.attention": False, "model.dis.norm": "none", "loss_weights.identity": 0.0})
  state = jax.eval_shape(functools.partial(families.init_state, config), jax.random.key(0))
  image = jax.ShapeDtypeStruct((config.batch_size, _SIZE, _SIZE, 3), jnp.float32)
  batch = {"a/image": image, "b/image": image}
  rng = jax.random.key(1)
  closed, out = jax.make_jaxpr(functools.partial(munit.train_step, config), return_shape=True)(state, batch, rng)
  assert {"g/vgg", "g/loss"} <= set(out[1])
  assert munit.VGG in state.params and munit.VGG not in state.opt_state  # no optimizer: frozen
  in_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path((state, batch, rng))[0]]
  out_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(out)[0]]
  is_vgg = lambda path: munit.VGG in [getattr(k, "key", None) for k in path]
  inputs = {jax.tree_util.keystr(p[1:]): closed.jaxpr.invars[i] for i, p in enumerate(in_paths) if is_vgg(p)}
  outputs = {jax.tree_util.keystr(p[1:]): closed.jaxpr.outvars[i] for i, p in enumerate(out_paths) if is_vgg(p)}
  assert len(inputs) == len(outputs) == 2 * 13 + 2
  assert all(outputs[name] is inputs[name] for name in inputs)


def test_vgg_weights_come_from_the_file_as_an_operand(converted):
  config = _vgg_config(converted)
  fn = jax.jit(lambda: munit._vgg_params(config))
  loaded = fn()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), converted[1])
  hlo = fn.lower().as_text()
  assert "callback" in hlo and not [line for line in hlo.splitlines() if "constant" in line and "512x512" in line]
