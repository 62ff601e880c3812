"""`convert efficientnet` against efficientnet_pytorch 0.7.1 itself (random weights; nothing is downloaded).

The reference is the package's own `EfficientNet.from_name` with its weights redrawn so activations keep their
scale through the depth (torch's default init shrinks them to ~1e-13 by the head, where any port would agree),
and its BatchNorm statistics and affine parameters random. Inputs are small (64 px) with the variant's default
static padding, as the original pads them.
"""

import functools

import jax
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert import efficientnet as convert_efficientnet
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import DataError, UserError
from facegen_jax.nets import efficientnet

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch", reason="see requirements-test.txt")

RTOL = 1e-5  # of the output's largest magnitude
_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS, static_argnames="train")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _torch_model(variant, num_classes, seed=0, **overrides):
  """efficientnet_pytorch's model with random weights that keep activations O(1), BN statistics random."""
  torch.manual_seed(seed)
  model = efficientnet_pytorch.EfficientNet.from_name(variant, num_classes=num_classes, **overrides)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      leaf = name.rsplit(".", 1)[1]
      is_bn = "_bn" in name
      if is_bn and leaf == "weight":
        tensor.uniform_(0.5, 1.5)
      elif is_bn and leaf == "running_var":
        tensor.uniform_(0.5, 2.0)
      elif leaf in ("bias", "running_mean"):
        tensor.normal_(0.0, 0.2)
      else:  # conv and linear weights: He-normal over the fan-in
        tensor.normal_(0.0, float(np.sqrt(2.0 / (tensor[0].numel()))))
  return model


def _state_dict(model):
  return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def _torch_forward(model, x, train):
  model.train(train)
  with torch.set_grad_enabled(False):
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def _assert_close(got, want, rtol=RTOL):
  scale = np.abs(want).max()
  assert scale > 0.1  # a meaningful output, not one washed out to the fc bias
  error = np.abs(np.asarray(got) - want).max() / scale
  assert error < rtol, error


# float32 rounding grows through b5's 39 blocks to ~2.5e-5 of the output (b0: < 1e-5); in float64 the two agree
# to ~1e-15 (b5 as well, checked once: 2.9e-14; XLA:CPU's float64 depthwise convs make b5 take 2 min here).
@pytest.mark.parametrize("variant, size, rtol", [("efficientnet-b0", 64, RTOL), ("efficientnet-b5", 64, 5e-5)])
def test_eval_mode_equals_efficientnet_pytorch(variant, size, rtol):
  model = _torch_model(variant, num_classes=10)
  variables = convert_efficientnet.variables_from_state_dict(_state_dict(model))
  module = efficientnet.EfficientNet(variant, num_classes=10)
  x = _images(size)
  _assert_close(_jit(module.apply)(variables, x, train=False), _torch_forward(model, x, train=False), rtol)


def test_float64_equals_efficientnet_pytorch():
  # The same computation exactly (every pad, the SE, BN folding): float32's differences above are rounding.
  model = _torch_model("efficientnet-b0", num_classes=10, seed=1).double()
  x = _images(32, seed=3).astype(np.float64)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             convert_efficientnet.variables_from_state_dict(_state_dict(model)))
    out = _jit(efficientnet.EfficientNet("efficientnet-b0", num_classes=10).apply)(variables, x, train=False)
    assert out.dtype == np.float64
  _assert_close(out, _torch_forward(model, x, train=False), 1e-12)


def test_train_mode_equals_efficientnet_pytorch():
  # Batch statistics in the forward pass, torch's running-statistics update (unbiased variance, momentum 0.01)
  # and the gradients; dropout and drop-connect off on both sides (their random draws differ).
  model = _torch_model("efficientnet-b0", num_classes=10, dropout_rate=0.0, drop_connect_rate=0.0)
  variables = convert_efficientnet.variables_from_state_dict(_state_dict(model))
  module = efficientnet.EfficientNet("efficientnet-b0", num_classes=10, dropout_rate=0.0, drop_connect_rate=0.0)
  x = _images(64, batch=3, seed=1)
  weights = np.random.default_rng(4).normal(size=(3, 10)).astype(np.float32)

  def loss(params):
    out, state = module.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return (out * weights).sum(), (out, state["batch_stats"])

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)
  (_, (out, stats)), grads = grad_fn(variables["params"])
  model.train()
  torch_out = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  (torch_out * torch.from_numpy(weights)).sum().backward()
  _assert_close(out, torch_out.detach().numpy(), 5e-5)
  updated = _state_dict(model)
  for got, want in zip(jax.tree.leaves(stats),
                       jax.tree.leaves(convert_efficientnet.variables_from_state_dict(updated)["batch_stats"])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(stats["bn1"]["var"], variables["batch_stats"]["bn1"]["var"])
  torch_grads = dict(updated, **{name: p.grad.numpy() for name, p in model.named_parameters()})
  want_grads = convert_efficientnet.variables_from_state_dict(torch_grads)["params"]
  # Relative to each leaf's largest gradient (measured: < 9e-5), except the projections' BN biases, whose true
  # gradient is 0 (the next train-mode BN removes a per-channel shift): both sides hold rounding noise (~1e-7).
  scale = max(np.abs(g).max() for g in jax.tree.leaves(want_grads))
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(want_grads)):
    error = np.abs(np.asarray(got) - want).max()
    assert error < 2e-4 * max(np.abs(want).max(), 1e-2 * scale), (jax.tree_util.keystr(path), error)


def _save(state_dict, path):
  torch.save({key: torch.from_numpy(value) for key, value in state_dict.items()}, path)


def test_cli_writes_what_load_variables_reads(tmp_path, capsys):
  model = _torch_model("efficientnet-b0", num_classes=7, seed=3)
  state_dict = _state_dict(model)
  _save(state_dict, tmp_path / "efficientnet-b0-random.pth")
  out = tmp_path / "b0.npz"
  assert convert_main(["efficientnet", "--checkpoint", str(tmp_path / "efficientnet-b0-random.pth"),
                       "--out", str(out)]) == 0
  assert "efficientnet-b0 (7 classes)" in capsys.readouterr().out
  loaded = efficientnet.load_variables(out)
  assert jax.tree.structure(loaded) == jax.tree.structure(efficientnet.abstract_variables("efficientnet-b0", 7))
  want = convert_efficientnet.variables_from_state_dict(state_dict)
  for got, expected in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
    np.testing.assert_array_equal(got, expected)
  assert efficientnet.load_variables(out, "efficientnet-b0")["params"]["fc"]["kernel"].shape == (1280, 7)
  x = _images(64, batch=1, seed=2)
  module = efficientnet.EfficientNet("efficientnet-b0", num_classes=7)
  _assert_close(_jit(module.apply)(loaded, x, train=False), _torch_forward(model, x, train=False))

  # The wrong variant, a missing file, a file of another kind: one line naming the fix.
  with pytest.raises(DataError, match=r"are efficientnet-b0's, not efficientnet-b5's: convert .*efficientnet-b5"):
    efficientnet.load_variables(out, "efficientnet-b5")
  with pytest.raises(DataError, match="not found: convert efficientnet_pytorch's weights with"):
    efficientnet.load_variables(tmp_path / "missing.npz", "efficientnet-b5")
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(DataError, match="record no known variant"):
    efficientnet.load_variables(tmp_path / "other.npz")
  assert convert_main(["efficientnet", "--checkpoint", str(tmp_path / "efficientnet-b0-random.pth"), "--out",
                       str(out), "--variant", "efficientnet-b5"]) == 2
  err = capsys.readouterr().err
  assert "efficientnet-b0's shapes (stem 32, head 1280, 16 blocks), not efficientnet-b5's" in err
  assert len(err.strip().splitlines()) == 1


def test_state_dict_errors_and_prefix():
  state_dict = _state_dict(_torch_model("efficientnet-b0", num_classes=5))
  reference = convert_efficientnet.variables_from_state_dict(state_dict, "efficientnet-b0")
  # SSuperGAN's checkpoints hold the backbone as embedder.model.*, beside other networks' keys.
  wrapped = {f"embedder.model.{key}": value for key, value in state_dict.items()}
  wrapped["decoder.fc.0.weight"] = np.zeros((4, 4), np.float32)
  prefixed = convert_efficientnet.variables_from_state_dict(wrapped, prefix="embedder.model.")
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(prefixed), jax.tree.leaves(reference)))

  broken = dict(state_dict)
  del broken["_blocks.3._se_reduce.bias"]
  broken["_blocks.3._se_reduce.extra"] = np.zeros(1, np.float32)
  with pytest.raises(UserError, match=r"missing keys 1: _blocks.3._se_reduce.bias; unexpected keys 1: "
                                      r"_blocks.3._se_reduce.extra"):
    convert_efficientnet.variables_from_state_dict(broken)
  broken = dict(state_dict, **{"_blocks.3._depthwise_conv.weight": np.zeros((144, 1, 3, 3), np.float32)})
  with pytest.raises(UserError, match=r"wrong shapes 1: _blocks.3._depthwise_conv.weight \(144, 1, 3, 3\) "
                                      r"\(expected \(144, 1, 5, 5\)\)"):
    convert_efficientnet.variables_from_state_dict(broken)
  with pytest.raises(UserError, match="not an EfficientNet B0-B7 state_dict"):
    convert_efficientnet.variables_from_state_dict({"features.0.weight": np.zeros((3, 3, 3, 3))})
  with pytest.raises(UserError, match="holds no EfficientNet keys"):
    convert_efficientnet.variables_from_state_dict(state_dict, prefix="embedder.model.")


def test_fresh_head_is_torchs_linear_init():
  # from_pretrained(variant, num_classes=n != 1000): the ImageNet backbone and a fresh Linear(head, n).
  abstract = efficientnet.abstract_variables("efficientnet-b0", 1000)
  variables = jax.tree.map(lambda s: np.ones(s.shape, np.float32), abstract)
  fresh = efficientnet.with_fresh_head(variables, 256, jax.random.key(0))
  kernel, bias = np.asarray(fresh["params"]["fc"]["kernel"]), np.asarray(fresh["params"]["fc"]["bias"])
  assert kernel.shape == (1280, 256) and bias.shape == (256,)
  bound = 1 / np.sqrt(1280)  # kaiming_uniform(a=sqrt(5)) and the bias's uniform(+-1/sqrt(fan_in))
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
  assert fresh["params"]["conv_stem"] is variables["params"]["conv_stem"]
