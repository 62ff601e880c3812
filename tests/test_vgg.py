"""VGG19 features and SPADE's VGG loss against the PyTorch originals, through the converter CLI.

torchvision cannot be imported beside the pinned torch, so the test builds `vgg19().features` by hand from
torchvision's layer list (configuration "E"): same modules at the same indices, hence the same state_dict keys.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import DataError
from facegen_jax.families import common
from facegen_jax.nets import vgg

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")

# torchvision.models.vgg cfgs["E"]: channels of each 3x3 conv (+ ReLU), "M" a 2x2 max-pool.
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# SPADE's VGG19 slices of `features`: [0, 2), [2, 7), [7, 12), [12, 21), [21, 30).
_SPADE_SLICES = [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]


def _torchvision_vgg19_features():
  layers, channels = [], 3
  for v in _VGG19_CFG:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(channels, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
      channels = v
  return torch.nn.Sequential(*layers)


def _spade_vgg_loss(features, x, y):
  """NVlabs/SPADE's VGGLoss.forward with its VGG19 slices."""
  def slices(h):
    outs = []
    for start, stop in _SPADE_SLICES:
      h = features[start:stop](h)
      outs.append(h)
    return outs

  loss = 0
  for weight, fx, fy in zip(vgg.LOSS_WEIGHTS, slices(x), slices(y)):
    loss = loss + weight * torch.nn.functional.l1_loss(fx, fy.detach())
  return loss


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(torch features, converted params): random weights saved like torchvision's file and run through the CLI."""
  torch.manual_seed(0)
  features = _torchvision_vgg19_features().eval()
  for module in features:
    if isinstance(module, torch.nn.Conv2d):
      # He init keeps activations O(1) through 13 layers, so the tolerances below mean something.
      torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
      torch.nn.init.uniform_(module.bias, -0.1, 0.1)
  state_dict = {f"features.{k}": v for k, v in features.state_dict().items()}
  # torchvision's classifier keys (shrunk here), which the converter must ignore.
  state_dict.update({"classifier.0.weight": torch.randn(8, 16), "classifier.0.bias": torch.randn(8),
                     "classifier.6.weight": torch.randn(10, 8), "classifier.6.bias": torch.randn(10)})
  directory = tmp_path_factory.mktemp("vgg")
  # vgg19-dcbb9e9d.pth predates torch 1.6, so it is in the legacy format: convert from that format.
  source = directory / "vgg19-random.pth"
  torch.save(state_dict, source, _use_new_zipfile_serialization=False)
  out = directory / "vgg19.npz"
  assert convert_main(["vgg19", "--from", str(source), "--out", str(out)]) == 0
  return features, vgg.load_params(out), state_dict, directory


def test_features_match_torchvision(converted):
  features, params, _, _ = converted
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    h, expected = torch.from_numpy(x), []
    for start, stop in _SPADE_SLICES:
      h = features[start:stop](h)
      expected.append(h.numpy().transpose(0, 2, 3, 1))
  got = jax.jit(vgg.VGG19Features().apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert [g.shape for g in got] == [e.shape for e in expected] == [
      (2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256), (2, 4, 4, 512), (2, 2, 2, 512)]
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_perceptual_loss_and_its_gradient_match_spade_vgg_loss(converted):
  features, params, _, _ = converted
  rng = np.random.default_rng(1)
  x, y = (rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32) for _ in range(2))
  tx, ty = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).requires_grad_()
  expected = _spade_vgg_loss(features, tx, ty)
  expected.backward()

  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
  # Compiled as the project compiles its programs: with XLA:CPU's default YNNPACK convolutions (plain jax.jit,
  # jax 0.10.2) the second example's gradient is off by 0.5% of the largest entry, the first's is exact.
  grad = compile_lib.jit(jax.value_and_grad(vgg.perceptual_loss, argnums=(1, 2)))
  loss, (gx, gy) = grad(params, nhwc(x), nhwc(y))
  np.testing.assert_allclose(loss, expected.item(), rtol=1e-4)
  scale = np.abs(tx.grad.numpy()).max()
  np.testing.assert_allclose(np.asarray(gx).transpose(0, 3, 1, 2), tx.grad.numpy(), rtol=1e-3, atol=1e-4 * scale)
  # y's features are detached in SPADE; only the gradient through x flows.
  assert ty.grad is None or not ty.grad.abs().max()
  assert not np.abs(gy).max()


def test_parameter_count_matches_torchvision(converted):
  features, params, _, _ = converted
  # torchvision's features[:30] (through relu5_1): the 13 convolutions SPADE's slices use.
  torch_count = sum(p.numel() for p in features[:30].parameters())
  assert torch_count == 12_944_960
  assert common.count_params(params) == torch_count
  shapes = jax.eval_shape(vgg.VGG19Features().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert common.count_params(shapes["params"]) == torch_count
  assert list(params) == list(vgg.LAYER_NAMES)


def test_zip_format_converts_to_the_same_arrays(converted):
  _, params, state_dict, directory = converted
  torch.save(state_dict, directory / "zip.pth")
  assert convert_main(["vgg19", "--from", str(directory / "zip.pth"), "--out", str(directory / "zip.npz")]) == 0
  again = vgg.load_params(directory / "zip.npz")
  for layer in vgg.LAYER_NAMES:
    for kind in ("kernel", "bias"):
      np.testing.assert_array_equal(again[layer][kind], params[layer][kind])
  np.testing.assert_array_equal(params["conv3_2"]["kernel"],
                                state_dict["features.12.weight"].numpy().transpose(2, 3, 1, 0))


def test_missing_or_wrong_weights_say_how_to_convert(converted, tmp_path, capsys):
  with pytest.raises(DataError, match=r"nowhere\.npz not found.*python -m facegen_jax\.convert vgg19 --from"):
    vgg.load_params(tmp_path / "nowhere.npz")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(DataError, match=r"junk\.npz is not a readable \.npz.*facegen_jax\.convert vgg19"):
    vgg.load_params(tmp_path / "junk.npz")
  np.savez(tmp_path / "partial.npz", **{"conv1_1/kernel": np.zeros((3, 3, 3, 64), np.float32)})
  with pytest.raises(DataError, match=r"conv1_1/bias is missing"):
    vgg.load_params(tmp_path / "partial.npz")

  # The CLI reports user errors in one line with exit status 2 and writes nothing.
  _, _, state_dict, _ = converted
  bn_like = {k: v for k, v in state_dict.items() if k != "features.2.weight"}  # as in vgg19_bn: a BatchNorm at 1
  torch.save(bn_like, tmp_path / "vgg19_bn.pth")
  assert convert_main(["vgg19", "--from", str(tmp_path / "vgg19_bn.pth"), "--out", str(tmp_path / "o.npz")]) == 2
  assert "features.2 (conv1_2) is missing" in capsys.readouterr().err
  assert not (tmp_path / "o.npz").exists()
  assert convert_main(["vgg19", "--from", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "o.npz")]) == 2
  assert "absent.pth does not exist" in capsys.readouterr().err
