"""EfficientNet: parameter counts against efficientnet_pytorch 0.7.1, its static padding, BatchNorm and drop-connect.

Numerical parity with the torch package is in test_convert_efficientnet.py (it converts a random-init model).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.families import common
from facegen_jax.nets import efficientnet

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


def _shapes(module, size, **kwargs):
  variables = efficientnet.abstract_variables(module.variant, module.num_classes)
  image = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  apply = functools.partial(module.apply, train=False, mutable=["intermediates"], **kwargs)
  out, state = jax.eval_shape(apply, variables, image)
  return variables, out, {name: value[0].shape[1:3] for name, value in state["intermediates"].items()}


@pytest.mark.parametrize("variant, num_classes, params, bn_channels", [
    # sum(p.numel() for p in EfficientNet.from_name(variant, num_classes=n).parameters()), and the channels of
    # its BatchNorm2d layers (half its running_mean + running_var entries).
    ("efficientnet-b0", 1000, 5_288_548, 21_008),
    ("efficientnet-b5", 1000, 30_389_784, 86_368),
    # SSuperGAN's embedder: b5 with a fresh Linear(2048, 256) (524,544 of these).
    ("efficientnet-b5", 256, 28_865_328, 86_368),
    # SSuper-DCGAN's: Linear(2048, 1024).
    ("efficientnet-b5", 1024, 30_438_960, 86_368),
])
def test_parameter_counts(variant, num_classes, params, bn_channels):
  variables = efficientnet.abstract_variables(variant, num_classes)
  assert set(variables) == {"params", "batch_stats"}
  assert common.count_params(variables["params"]) == params
  assert common.count_params(variables["batch_stats"]) == 2 * bn_channels


def test_variants_widths_and_depths():
  # (stem, head, number of blocks) of efficientnet_pytorch's from_name(bN).
  expected = {"efficientnet-b0": (32, 1280, 16), "efficientnet-b1": (32, 1280, 23), "efficientnet-b2": (32, 1408, 23),
              "efficientnet-b3": (40, 1536, 26), "efficientnet-b4": (48, 1792, 32), "efficientnet-b5": (48, 2048, 39),
              "efficientnet-b6": (56, 2304, 45), "efficientnet-b7": (64, 2560, 55)}
  got = {name: (efficientnet.round_filters(32, v.width), efficientnet.head_filters(name),
                len(efficientnet.block_specs(name))) for name, v in efficientnet.VARIANTS.items()}
  assert got == expected
  with pytest.raises(ValueError, match="unknown EfficientNet variant"):
    efficientnet.block_specs("efficientnet-b9")


def test_b5_static_padding_on_300px_panels():
  # The original pads for 456 px whatever the input: the stride-2 pads (left, right) are stem (0, 1), blocks 3
  # (0, 1), 8 (1, 2), 13 (1, 1), 27 (2, 2); on 300 px the third reduction is 37x37 (SAME at 300 would be 38).
  specs = efficientnet.block_specs("efficientnet-b5")
  assert {i: spec.pad[1] for i, spec in enumerate(specs) if spec.stride == 2} == {
      3: (0, 1), 8: (1, 2), 13: (1, 1), 27: (2, 2)}
  assert efficientnet.same_padding((456, 456), 3, 2) == ((0, 1), (0, 1))
  module = efficientnet.EfficientNet("efficientnet-b5", num_classes=256)
  _, out, sizes = _shapes(module, 300)
  assert out.shape == (2, 256)
  assert sizes == {"reduction_1": (150, 150), "reduction_2": (75, 75), "reduction_3": (37, 37),
                   "reduction_4": (19, 19), "reduction_5": (10, 10), "reduction_6": (10, 10)}
  _, _, same = _shapes(efficientnet.EfficientNet("efficientnet-b5", 256, static_pad_size=300), 300)
  assert same["reduction_3"] == (38, 38) and same["reduction_5"] == (10, 10)
  _, features, _ = _shapes(module, 300, method=module.features)
  assert features.shape == (2, 2048)


def _tiny_block(stride=1, in_filters=8, out_filters=8):
  spec = efficientnet.BlockSpec(kernel=3, stride=stride, in_filters=in_filters, hidden=6 * in_filters, expand=True,
                                se_filters=2, out_filters=out_filters,
                                pad=efficientnet.same_padding((8, 8), 3, stride),
                                skip=stride == 1 and in_filters == out_filters)
  return efficientnet.MBConvBlock(spec, drop_connect_rate=0.5)


def test_batch_norm_keeps_torchs_running_statistics():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4)) * 2 + 1
  norm = efficientnet.BatchNorm()
  variables = norm.init(jax.random.key(1), x, train=False)
  y, state = norm.apply(variables, x, train=True, mutable=["batch_stats"])
  flat = np.asarray(x).reshape(-1, 4)
  np.testing.assert_allclose(y.reshape(-1, 4), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-3), atol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.01 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"], 0.99 + 0.01 * flat.var(0, ddof=1), rtol=1e-5)


def test_drop_connect_drops_whole_examples_in_training_only():
  block = _tiny_block()
  x = jax.random.normal(jax.random.key(0), (64, 8, 8, 8))
  variables = block.init(jax.random.key(1), x, train=False)
  apply = _jit(functools.partial(block.apply, train=True, mutable=["batch_stats"]))
  out, _ = apply(variables, x, rngs={"dropout": jax.random.key(2)})
  full, _ = _jit(functools.partial(block.clone(drop_connect_rate=0.0).apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  branch, full_branch = np.asarray(out - x).reshape(64, -1), np.asarray(full - x).reshape(64, -1)
  dropped = np.all(branch == 0, axis=1)
  assert 16 < dropped.sum() < 48  # survival probability 0.5 per example
  np.testing.assert_allclose(branch[~dropped], 2 * full_branch[~dropped], rtol=1e-5, atol=1e-6)
  again, _ = apply(variables, x, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(out, again)
  with pytest.raises(Exception, match="dropout"):
    block.apply(variables, x, train=True, mutable=["batch_stats"])
  assert np.all(np.abs(np.asarray(block.apply(variables, x, train=False) - x)).reshape(64, -1).max(1) > 0)
  for no_skip in (_tiny_block(stride=2), _tiny_block(out_filters=16)):  # no residual, so no drop-connect
    v = no_skip.init(jax.random.key(1), x, train=False)
    a, _ = no_skip.apply(v, x, train=True, mutable=["batch_stats"])
    assert a.shape[-1] == no_skip.spec.out_filters


def test_drop_connect_rate_grows_with_the_block_index():
  # efficientnet_pytorch: drop_connect_rate * idx / len(blocks), 0.2 for every variant (block 0: none).
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, efficientnet.MBConvBlock) and context.method_name == "__call__":
      rates[context.module.name] = context.module.drop_connect_rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    efficientnet.abstract_variables("efficientnet-b0", 10)
  assert rates == {f"blocks_{i}": 0.2 * i / 16 for i in range(16)}


@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, ((1, 1), (1, 1))), (5, 2, ((1, 2), (1, 2))),
                                                 (3, 2, ((0, 1), (0, 1))), (5, 2, ((2, 2), (2, 2)))])
def test_depthwise_taps_equal_the_grouped_convolution(kernel, stride, pad):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 6), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, 6), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), efficientnet.depthwise_conv(x, w, stride, pad, "xla").shape,
                           jnp.float64)
    results = {}
    for impl in ("taps", "xla"):
      def out_and_grads(x, w, dy, impl=impl):
        out, vjp = jax.vjp(lambda x, w: efficientnet.depthwise_conv(x, w, stride, pad, impl), x, w)
        return (out, *vjp(dy))
      results[impl] = _jit(out_and_grads)(x, w, dy)
    for taps, xla in zip(results["taps"], results["xla"]):
      np.testing.assert_allclose(taps, xla, rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match="depthwise impl"):
    efficientnet.depthwise_conv(x, w, stride, pad, "im2col")


def test_remat_changes_nothing_but_memory():
  # Eval mode: train-mode BN at 1x1 maps of 2 examples is too ill-conditioned to compare two float orders.
  # Drawn with numpy: a jax.random call per parameter shape compiled one program per shape, eagerly.
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  variables = efficientnet.abstract_variables("efficientnet-b0", 4)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32), variables)
  variables["batch_stats"] = jax.tree.map(lambda v: 1 + np.abs(v), variables["batch_stats"])

  def grads(remat):
    module = efficientnet.EfficientNet("efficientnet-b0", 4, remat=remat)
    return _jit(jax.grad(lambda p: module.apply({**variables, "params": p}, x, train=False).sum()))(
        variables["params"])

  for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
