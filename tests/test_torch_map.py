"""torch_map: each layout against torch's own layer, the key-table walk, the strict check's errors, spectral u/v.

The parity tests convert a torch layer's state_dict through `load_variables` (names and layouts together) and
compare its eval-mode output with our flax layer's on random inputs.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets import spectral_norm as sn_lib


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")


# --- layouts and the key table (no torch) ---


@pytest.mark.parametrize("layout,torch_shape,flax_shape", [
    (torch_map.CONV, (8, 3, 5, 4), (5, 4, 3, 8)),
    (torch_map.CONV, (8, 3, 5), (5, 3, 8)),  # Conv1d
    (torch_map.CONV_TRANSPOSE, (3, 8, 5, 4), (5, 4, 3, 8)),
    (torch_map.LINEAR, (8, 3), (3, 8)),
    (torch_map.AS_IS, (8,), (8,)),
])
def test_layout_shapes_round_trip(layout, torch_shape, flax_shape):
  value = np.arange(np.prod(torch_shape), dtype=np.float64).reshape(torch_shape)
  converted = torch_map.to_flax(layout, value)
  assert converted.shape == flax_shape == torch_map.flax_shape(layout, torch_shape)
  assert torch_map.torch_shape(layout, flax_shape) == torch_shape
  assert converted.dtype == np.float32 and converted.flags.c_contiguous


def test_conv_transpose_kernel_is_flipped_in_space():
  w = np.random.default_rng(0).standard_normal((3, 8, 5, 4))
  np.testing.assert_array_equal(torch_map.to_flax(torch_map.CONV_TRANSPOSE, w),
                                np.float32(w).transpose(2, 3, 0, 1)[::-1, ::-1])
  np.testing.assert_array_equal(torch_map.to_flax(torch_map.CONV, w), np.float32(w).transpose(2, 3, 1, 0))


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = sn_lib.SNConv(6, 3, name="conv")(x, update_stats=False)
    return nn.BatchNorm(use_running_average=True, name="norm")(x)


class _Tiny(nn.Module):
  """Laid out as a torch module with `stem`, `blocks` (a ModuleList), `up`, `ln` and `mlp = Sequential(Linear)`."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="stem")(x)
    x = _Block(name="blocks_0")(x)
    x = conv_lib.ConvTranspose(5, (4, 4), strides=2, use_bias=False, name="up")(x)
    x = nn.LayerNorm(name="ln")(x)
    return nn.Dense(2, name="mlp")(x.mean((1, 2)))


_TABLE = torch_map.KeyTable(modules={r"blocks_(\d+)": r"blocks.\1", "mlp": "mlp.0"}, conv_transpose=("up",))


def _tiny_variables():
  return jax.eval_shape(_Tiny().init, jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))


def test_key_table_walk_names_layouts_and_shapes():
  expected = torch_map.expected_keys(_tiny_variables(), _TABLE)
  E = torch_map.Entry
  assert expected == {
      "blocks.0.norm.running_mean": E("batch_stats", ("blocks_0", "norm", "mean"), (6,), "as_is"),
      "blocks.0.norm.running_var": E("batch_stats", ("blocks_0", "norm", "var"), (6,), "as_is"),
      "blocks.0.conv.bias": E("params", ("blocks_0", "conv", "bias"), (6,), "as_is"),
      "blocks.0.conv.weight_orig": E("params", ("blocks_0", "conv", "kernel"), (6, 4, 3, 3), "conv"),
      "blocks.0.norm.bias": E("params", ("blocks_0", "norm", "bias"), (6,), "as_is"),
      "blocks.0.norm.weight": E("params", ("blocks_0", "norm", "scale"), (6,), "as_is"),
      "ln.bias": E("params", ("ln", "bias"), (5,), "as_is"),
      "ln.weight": E("params", ("ln", "scale"), (5,), "as_is"),
      "mlp.0.bias": E("params", ("mlp", "bias"), (2,), "as_is"),
      "mlp.0.weight": E("params", ("mlp", "kernel"), (2, 5), "linear"),
      "stem.bias": E("params", ("stem", "bias"), (4,), "as_is"),
      "stem.weight": E("params", ("stem", "kernel"), (4, 3, 3, 3), "conv"),
      "up.weight": E("params", ("up", "kernel"), (6, 5, 4, 4), "conv_transpose"),
      "blocks.0.conv.weight_u": E("spectral_stats", ("blocks_0", "conv", "u"), (6,), "as_is"),
      "blocks.0.conv.weight_v": E("spectral_stats", ("blocks_0", "conv", "v"), (36,), "as_is"),
  }


class _ConvBN(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(4, (3, 3), use_bias=False, name="conv")(x))


def test_key_table_module_name_and_leaves_not_in_the_file():
  # TF-style: one name for a layer's conv and BatchNorm, beta for the bias, no gamma (left to the converter).
  table = torch_map.KeyTable(module_name=lambda module: "layers.tower_conv", leaves={"bias": "beta", "scale": None})
  variables = jax.eval_shape(_ConvBN().init, jax.random.key(0), np.zeros((1, 4, 4, 2), np.float32))
  expected = torch_map.expected_keys(variables, table)
  assert {k: e.path for k, e in expected.items()} == {
      "layers.tower_conv.running_mean": ("bn", "mean"), "layers.tower_conv.running_var": ("bn", "var"),
      "layers.tower_conv.beta": ("bn", "bias"), "layers.tower_conv.weight": ("conv", "kernel")}
  state_dict = {k: np.ones(e.shape) for k, e in expected.items()}
  converted = torch_map.convert_variables(state_dict, expected, variables)
  assert set(converted["params"]["bn"]) == {"bias"} and set(converted["batch_stats"]["bn"]) == {"mean", "var"}


def test_two_variables_on_one_key_is_a_table_error():
  with pytest.raises(ValueError, match="both map to the torch key stem.weight"):
    torch_map.expected_keys(_tiny_variables(), torch_map.KeyTable(modules={"up": "stem"}))


# --- the strict check (no torch) ---


def _tiny_state_dict(expected):
  return {key: np.zeros(entry.shape, np.float32) for key, entry in expected.items()}


def test_check_keys_accepts_an_exact_state_dict_and_num_batches_tracked():
  expected = torch_map.expected_keys(_tiny_variables(), _TABLE)
  state_dict = _tiny_state_dict(expected) | {"blocks.0.norm.num_batches_tracked": np.zeros((), np.int64)}
  torch_map.check_keys(state_dict, expected, "tiny.pth", "hint")
  assert not torch_map.compare(state_dict, expected)


def test_check_keys_names_missing_unexpected_and_wrong_shapes():
  expected = torch_map.expected_keys(_tiny_variables(), _TABLE)
  good = _tiny_state_dict(expected)

  def error(state_dict):
    with pytest.raises(UserError) as info:
      torch_map.check_keys(state_dict, expected, "tiny.pth", "Was it saved by Tiny?")
    return str(info.value)

  missing = error({k: v for k, v in good.items() if k != "blocks.0.norm.running_var"})
  assert missing == ("tiny.pth does not match the model read from it: missing keys 1: blocks.0.norm.running_var. "
                     "Was it saved by Tiny?")
  unexpected = error(good | {"head.weight": np.zeros(3), "stem.num_batches_tracked": np.zeros(())})
  assert "unexpected keys 2: head.weight, stem.num_batches_tracked." in unexpected  # stem is no BatchNorm.
  wrong = error(good | {"stem.weight": np.zeros((4, 3, 5, 5))})
  assert "wrong shapes 1: stem.weight (4, 3, 5, 5) (expected (4, 3, 3, 3))." in wrong
  # Eight names at most, sorted.
  everything = error({k: v for k, v in good.items() if not k.startswith(("blocks.", "stem."))} | {"x": np.zeros(1)})
  assert "missing keys 10: blocks.0.conv.bias, " in everything
  assert "blocks.0.norm.weight, ...; unexpected keys 1: x. Was" in everything and "stem" not in everything


def test_pre_1_0_spectral_layout_is_checked_too():
  expected = torch_map.expected_keys(_tiny_variables(), _TABLE)
  old = {k: v for k, v in _tiny_state_dict(expected).items() if k != "blocks.0.conv.weight_v"}
  torch_map.check_keys(old | {"blocks.0.conv.weight": np.zeros((6, 4, 3, 3))}, expected, "old.pth", "")
  wrong = r"wrong shapes 1: blocks.0.conv.weight \(6, 4, 1, 1\) \(expected \(6, 4, 3, 3\)\)"
  with pytest.raises(UserError, match=wrong):
    torch_map.check_keys(old | {"blocks.0.conv.weight": np.zeros((6, 4, 1, 1))}, expected, "old.pth", "")
  with pytest.raises(UserError, match="missing keys 1: blocks.0.conv.weight_v"):
    torch_map.check_keys(old, expected, "old.pth", "")


# --- against torch ---


class _One(nn.Module):
  """A flax layer under the name `layer`, as a torch layer held in a module's attribute `layer`."""
  layer: nn.Module

  @nn.compact
  def __call__(self, x, **kwargs):
    return self.layer(x, **kwargs)


def _torch_layer(torch, kind):
  """(torch layer, our flax layer, its table, input shape NCHW or (N, C)) with non-trivial random parameters."""
  tnn = torch.nn
  layers = {
      "conv2d": (tnn.Conv2d(3, 5, 3, stride=2, padding=1),
                 conv_lib.Conv(5, (3, 3), strides=2, padding=((1, 1), (1, 1))), (2, 3, 9, 9)),
      "conv1d": (tnn.Conv1d(3, 5, 4, padding=2), nn.Conv(5, (4,), padding=((2, 2),)), (2, 3, 9)),
      "conv_transpose2d": (tnn.ConvTranspose2d(4, 6, 4, stride=2, padding=1),
                           conv_lib.ConvTranspose(6, (4, 4), strides=2, padding=conv_lib.torch_transpose_padding(4, 1)),
                           (2, 4, 5, 5)),
      "conv_transpose2d_output_padding": (
          tnn.ConvTranspose2d(4, 6, (3, 5), stride=2, padding=(1, 2), output_padding=1, bias=False),
          conv_lib.ConvTranspose(6, (3, 5), strides=2, use_bias=False,
                                 padding=conv_lib.torch_transpose_padding((3, 5), (1, 2), 1)), (2, 4, 5, 6)),
      "linear": (tnn.Linear(6, 4), nn.Dense(4), (3, 6)),
      "batch_norm": (tnn.BatchNorm2d(5), nn.BatchNorm(use_running_average=True, epsilon=1e-5), (2, 5, 4, 4)),
      "instance_norm": (tnn.InstanceNorm2d(5, affine=True), nn.InstanceNorm(epsilon=1e-5), (2, 5, 4, 4)),
      "layer_norm": (tnn.LayerNorm(5), nn.LayerNorm(epsilon=1e-5), (3, 5)),
  }
  torch_layer, flax_layer, shape = layers[kind]
  with torch.no_grad():
    for tensor in torch_layer.state_dict().values():
      if tensor.is_floating_point():
        tensor.copy_(torch.rand_like(tensor) + 0.5 if kind == "batch_norm" else torch.randn_like(tensor))
  table = torch_map.KeyTable(conv_transpose=("layer",) if kind.startswith("conv_transpose") else ())
  return torch_layer, flax_layer, table, shape


def _channels_last(x):
  return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def _convert_and_compare(torch, torch_layer, flax_layer, table, x, **kwargs):
  holder = torch.nn.Module()
  holder.layer = torch_layer.eval()
  state_dict = {k: v.numpy() for k, v in holder.state_dict().items()}
  model, x_last = _One(flax_layer), _channels_last(x)
  abstract = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), x_last)
  variables = torch_map.load_variables(state_dict, abstract, table, "layer.pth", "")
  got = np.asarray(model.apply(variables, x_last, **kwargs))
  with torch.no_grad():
    want = _channels_last(holder.layer(torch.from_numpy(x)).numpy())
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  return state_dict, variables


@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "conv_transpose2d", "conv_transpose2d_output_padding",
                                  "linear", "batch_norm", "instance_norm", "layer_norm"])
def test_layer_matches_torch(torch, kind):
  torch.manual_seed(0)
  torch_layer, flax_layer, table, shape = _torch_layer(torch, kind)
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  state_dict, _ = _convert_and_compare(torch, torch_layer, flax_layer, table, x)
  if kind == "batch_norm":
    assert "layer.num_batches_tracked" in state_dict  # Allowed beside running_mean, not converted.


def _trained_spectral_conv(torch):
  """A torch spectral-norm conv whose u and v moved over three training-mode forwards, in eval mode."""
  torch.manual_seed(0)
  layer = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 5, 3, padding=1))
  with torch.no_grad():
    for _ in range(3):
      layer(torch.randn(2, 3, 6, 6))
  return layer.eval()


def test_spectral_conv_keeps_torch_u_and_v(torch):
  layer = _trained_spectral_conv(torch)
  x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
  state_dict, variables = _convert_and_compare(torch, layer, sn_lib.SNConv(5, 3, padding=((1, 1), (1, 1))),
                                               torch_map.KeyTable(), x, update_stats=False)
  np.testing.assert_array_equal(variables[sn_lib.SPECTRAL_STATS]["layer"]["u"], state_dict["layer.weight_u"])
  np.testing.assert_array_equal(variables[sn_lib.SPECTRAL_STATS]["layer"]["v"], state_dict["layer.weight_v"])
  np.testing.assert_array_equal(variables["params"]["layer"]["kernel"],
                                state_dict["layer.weight_orig"].transpose(2, 3, 1, 0))


def test_pre_1_0_spectral_checkpoint_solves_v_as_torch_does(torch):
  layer = _trained_spectral_conv(torch)
  x = torch.randn(2, 3, 6, 6)
  with torch.no_grad():
    layer(x)  # Eval mode: weight = weight_orig / sigma from the stored u and v.
  state_dict = {k: v.clone() for k, v in layer.state_dict().items() if k != "weight_v"}
  state_dict["weight"] = layer.weight.detach().clone()  # What torch < 1.0 saved instead of weight_v.
  reference = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 5, 3, padding=1))
  reference.load_state_dict(state_dict)  # torch's own pre-hook solves v.
  reference.eval()
  numpy_dict = {k: v.numpy() for k, v in state_dict.items()}
  v = torch_map.solve_spectral_v(numpy_dict["weight_orig"], numpy_dict["weight_u"], numpy_dict["weight"])
  # torch's float32 pinv of the rank-5 27 x 27 matrix W^T W returns a noisy v, rescaled so that sigma = u . W v is
  # right, and sigma is all an eval-mode output sees. Ours is the exact solution: the v torch >= 1.0 saved.
  u, matrix = numpy_dict["weight_u"], numpy_dict["weight_orig"].reshape(5, -1)
  np.testing.assert_allclose(u @ matrix @ v, u @ matrix @ reference.weight_v.numpy(), rtol=1e-5)
  np.testing.assert_allclose(v, layer.weight_v.numpy(), rtol=1e-4, atol=1e-6)
  holder = {f"layer.{k}": v for k, v in numpy_dict.items()}
  model = _One(sn_lib.SNConv(5, 3, padding=((1, 1), (1, 1))))
  x_last = np.moveaxis(x.numpy(), 1, -1)
  abstract = jax.eval_shape(functools.partial(model.init, update_stats=False), jax.random.key(0), x_last)
  variables = torch_map.load_variables(holder, abstract, torch_map.KeyTable(), "old.pth", "")
  got = np.asarray(model.apply(variables, x_last, update_stats=False))
  with torch.no_grad():
    want = np.moveaxis(reference(x).numpy(), 1, -1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_read_state_dict_unwraps_nesting_and_data_parallel(torch, tmp_path):
  weights = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
  data_parallel = {f"module.{k}": v for k, v in weights.items()}
  for name, saved in (("plain", weights), ("epoch", {"state_dict": data_parallel, "epoch": 3}),
                      ("nested", {"netG": data_parallel})):  # Read as "netG.module.fc.weight", ...
    torch.save(saved, tmp_path / f"{name}.pth")
    state_dict = torch_map.read_state_dict(tmp_path / f"{name}.pth", "generator (G.pth)")
    assert sorted(state_dict) == ["fc.bias", "fc.weight"], name
    np.testing.assert_array_equal(state_dict["fc.weight"], np.ones((2, 3), np.float32))
  torch.save({"netG": {}}, tmp_path / "empty.pth")
  with pytest.raises(UserError, match="empty.pth holds no state_dict"):
    torch_map.read_state_dict(tmp_path / "empty.pth", "generator (G.pth)")
