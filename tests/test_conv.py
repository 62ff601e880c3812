"""facegen_jax.nets.conv against flax's ConvTranspose / Conv: same parameters, same function, same gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from facegen_jax.nets import conv

TORCH_K4_P1 = conv.torch_transpose_padding(4, 1)  # DCGAN's upsampling layers: ((2, 2), (2, 2)).
TORCH_K4_P0 = conv.torch_transpose_padding(4, 0)  # DCGAN's first layer, 1x1 -> 4x4: ((3, 3), (3, 3)).

# (kernel, stride, padding, in, out, input height/width, bias)
TRANSPOSE_CASES = [
    ((4, 4), 2, TORCH_K4_P1, 5, 3, (4, 4), False),
    ((4, 4), 1, TORCH_K4_P0, 7, 4, (1, 1), False),
    ((4, 4), 2, TORCH_K4_P1, 3, 2, (5, 7), True),
    ((3, 3), 1, "SAME", 4, 5, (6, 5), True),
    ((3, 3), 2, "SAME", 3, 4, (5, 6), True),
    ((3, 3), 2, "VALID", 3, 4, (3, 4), False),
    ((5, 3), (3, 2), ((1, 4), (2, 0)), 2, 3, (4, 5), True),
    ((1, 1), 2, "VALID", 3, 2, (3, 3), True),  # kernel < stride: some output phases get no taps.
    ((2, 2), 3, ((1, 1), (0, 2)), 3, 2, (3, 4), False),
    ((4, 4), 2, ((-1, 3), (4, 1)), 2, 3, (5, 4), True),  # negative padding crops.
    ((3, 3), 2, 1, 3, 3, (4, 4), True),  # an int pads both sides of both axes.
]

CONV_CASES = [
    ((4, 4), 2, ((1, 1), (1, 1)), 3, 5, (8, 8), False),  # DCGAN's discriminator layers.
    ((4, 4), 1, "VALID", 6, 1, (4, 4), False),  # Its last layer: 4x4 -> one logit.
    ((3, 3), 2, "SAME", 4, 3, (7, 6), True),
    ((5, 3), (3, 2), ((2, 1), (0, 1)), 2, 3, (9, 7), True),
    ((3, 3), 1, "SAME", 3, 4, (5, 5), True),
    ((4, 4), 2, ((2, 2), (2, 2)), 3, 5, (9, 8), True),  # The SPADE discriminator's (im2col under auto): odd, even.
]


def _modules(kind, kernel, stride, padding, features, bias, dtype=jnp.float32, impl="phase"):
  kwargs = dict(features=features, kernel_size=kernel, strides=stride, padding=padding, use_bias=bias,
                param_dtype=dtype, bias_init=nn.initializers.normal(1.0))
  if kind == "transpose":
    return nn.ConvTranspose(**kwargs), conv.ConvTranspose(**kwargs, impl=impl)
  return nn.Conv(**kwargs), conv.Conv(**kwargs, impl=impl)


def _forward_and_grads(module, params, x, dy):
  y, pullback = jax.vjp(module.apply, params, x)
  return y, pullback(dy)


def _random_like(tree, seed, dtype):
  """Standard normal numbers (from numpy: no XLA compilation per shape) shaped like `tree`'s leaves."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), dtype), tree)


def _compare(kind, case, dtype, impl="phase"):
  """Returns (flax's (y, grads), ours) for one case, with random input, params and output cotangent."""
  kernel, stride, padding, c_in, c_out, hw, bias = case
  reference, ours = _modules(kind, kernel, stride, padding, c_out, bias, dtype, impl)
  x = _random_like(jax.ShapeDtypeStruct((2,) + hw + (c_in,), dtype), 0, dtype)
  params = _random_like(jax.eval_shape(reference.init, jax.random.key(1), x), 1, dtype)
  dy = _random_like(jax.eval_shape(reference.apply, params, x), 2, dtype)
  expected = jax.jit(lambda p, x, dy: _forward_and_grads(reference, p, x, dy))(params, x, dy)
  actual = jax.jit(lambda p, x, dy: _forward_and_grads(ours, p, x, dy))(params, x, dy)
  return expected, actual


def _assert_close(expected, actual, rtol):
  """Leaf by leaf, relative to the leaf's largest magnitude (sums of mixed signs have no elementwise rtol)."""
  assert jax.tree.structure(expected) == jax.tree.structure(actual)
  for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
    assert e.shape == a.shape and e.dtype == a.dtype
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(e))))


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose_matches_flax_float32(case):
  _assert_close(*_compare("transpose", case, jnp.float32), rtol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_flax_float32(case):
  _assert_close(*_compare("conv", case, jnp.float32), rtol=1e-5)


@pytest.mark.parametrize(
    "kind,case",
    [("transpose", TRANSPOSE_CASES[i]) for i in (0, 1, 2, 6, 7, 9)] + [("conv", CONV_CASES[i]) for i in (3, 5)])
def test_matches_flax_float64(kind, case):
  with jax.enable_x64(True):
    _assert_close(*_compare(kind, case, jnp.float64), rtol=1e-12)


def test_comparison_catches_a_wrong_tap():
  # The tolerance above is tight enough to see one kernel tap out of place.
  kernel, stride, padding, c_in, c_out, hw, bias = TRANSPOSE_CASES[0]
  reference, ours = _modules("transpose", kernel, stride, padding, c_out, bias)
  x = _random_like(jax.ShapeDtypeStruct((2,) + hw + (c_in,), jnp.float32), 0, jnp.float32)
  params = _random_like(jax.eval_shape(reference.init, jax.random.key(1), x), 1, jnp.float32)
  shifted = jax.tree.map(lambda k: jnp.roll(k, 1, axis=0), params)
  with pytest.raises(AssertionError):
    _assert_close(reference.apply(params, x), ours.apply(shifted, x), rtol=1e-5)


@pytest.mark.parametrize("kind", ["transpose", "conv"])
def test_xla_impl_is_flax_exactly(kind):
  case = (TRANSPOSE_CASES if kind == "transpose" else CONV_CASES)[2]
  expected, actual = _compare(kind, case, jnp.float32, impl="xla")
  for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
    np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("kind,bias", [("transpose", True), ("transpose", False), ("conv", True)])
def test_parameter_tree_is_flax(kind, bias):
  reference, ours = _modules(kind, (4, 3), 2, "SAME", 5, bias)
  x = jnp.zeros((1, 6, 6, 3))
  expected = jax.tree.map(jnp.shape, reference.init(jax.random.key(0), x))
  actual = jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
  assert actual == expected
  assert actual["params"]["kernel"] == (4, 3, 3, 5)
  # The same initializers draw the same numbers.
  same = jax.tree.map(np.array_equal, reference.init(jax.random.key(0), x), ours.init(jax.random.key(0), x))
  assert all(jax.tree.leaves(same))


def _torch_conv_transpose(x_nchw, w, stride, padding, output_padding=0):
  """torch.nn.functional.conv_transpose2d by its definition: every input pixel scatters w into the output."""
  n, c_in, h, wd = x_nchw.shape
  _, c_out, kh, kw = w.shape
  full = np.zeros((n, c_out, (h - 1) * stride + kh + output_padding, (wd - 1) * stride + kw + output_padding))
  for i in range(h):
    for j in range(wd):
      full[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.einsum(
          "nc,cokl->nokl", x_nchw[:, :, i, j], w)
  return full[:, :, padding : full.shape[2] - padding, padding : full.shape[3] - padding]


@pytest.mark.parametrize("stride,padding,output_padding", [(2, 1, 0), (1, 0, 0), (2, 1, 1), (3, 2, 1)])
def test_torch_padding_and_kernel_conversion(stride, padding, output_padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5))  # NCHW
  w = rng.normal(size=(3, 2, 4, 4))  # torch ConvTranspose2d weight: (in, out, kh, kw)
  expected = _torch_conv_transpose(x, w, stride, padding, output_padding)
  layer = conv.ConvTranspose(2, (4, 4), stride, conv.torch_transpose_padding(4, padding, output_padding),
                             use_bias=False)
  kernel = jnp.asarray(w.transpose(2, 3, 0, 1)[::-1, ::-1].copy(), jnp.float32)
  y = layer.apply({"params": {"kernel": kernel}}, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_composes_with_jit_vmap_and_second_order_grad():
  kernel, stride, padding, c_in, c_out, hw, bias = TRANSPOSE_CASES[2]
  reference, ours = _modules("transpose", kernel, stride, padding, c_out, bias)
  x = _random_like(jax.ShapeDtypeStruct((3, 2) + hw + (c_in,), jnp.float32), 0, jnp.float32)
  params = _random_like(jax.eval_shape(reference.init, jax.random.key(1), x[0]), 1, jnp.float32)

  # vmap over an extra leading axis equals a Python loop, and flax's own handling of extra batch axes.
  batched = jax.jit(jax.vmap(ours.apply, in_axes=(None, 0)))(params, x)
  looped = jnp.stack([ours.apply(params, xi) for xi in x])
  _assert_close(looped, batched, rtol=1e-5)
  _assert_close(reference.apply(params, x), ours.apply(params, x), rtol=1e-5)
  _assert_close(reference.apply(params, x[0, 0]), ours.apply(params, x[0, 0]), rtol=1e-5)  # No batch axis.

  # A gradient penalty: the parameter gradient of a squared input-gradient norm (reverse over reverse).
  def penalty(module):
    def fn(p, x):
      grad_x = jax.grad(lambda x: jnp.sum(jnp.sin(module.apply(p, x))))(x)
      return jnp.sum(grad_x ** 2)
    return jax.jit(jax.grad(fn))
  _assert_close(penalty(reference)(params, x[0]), penalty(ours)(params, x[0]), rtol=1e-4)

  # Per-example gradients: vmap of grad.
  per_example = jax.vmap(jax.grad(lambda p, x: jnp.sum(ours.apply(p, x[None]) ** 2)), in_axes=(None, 0))
  expected = jax.vmap(jax.grad(lambda p, x: jnp.sum(reference.apply(p, x[None]) ** 2)), in_axes=(None, 0))
  _assert_close(expected(params, x[0]), jax.jit(per_example)(params, x[0]), rtol=1e-5)


def test_auto_uses_the_phase_formulation_on_cpu():
  assert jax.default_backend() == "cpu"
  x, kernel = jnp.ones((1, 4, 4, 3)), jnp.ones((4, 4, 3, 2))
  auto = str(jax.make_jaxpr(lambda x, k: conv.conv_transpose(x, k, 2, TORCH_K4_P1))(x, kernel))
  xla = str(jax.make_jaxpr(lambda x, k: conv.conv_transpose(x, k, 2, TORCH_K4_P1, impl="xla"))(x, kernel))
  assert "custom_vjp" in auto and "custom_vjp" not in xla
  # The phase formulation never dilates its input: no zeros are multiplied.
  assert "lhs_dilation=(2, 2)" in xla and "lhs_dilation=(2, 2)" not in auto


def test_unknown_impl_raises():
  with pytest.raises(ValueError, match="impl must be one of"):
    conv.conv_transpose(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)), 2, "SAME", impl="fast")


# (kernel, stride, padding, in, out, input height/width, batch) for the im2col lowering.
IM2COL_CASES = [
    ((1, 1), 1, "VALID", 3, 4, (5, 6), 2),  # A 1x1 conv: the matmul alone.
    ((3, 3), 1, "SAME", 3, 4, (5, 7), 2),
    ((3, 3), 1, "SAME", 4, 3, (7, 5), 1),  # Batch 1, odd sizes.
    ((4, 4), 1, ((2, 2), (2, 2)), 3, 2, (5, 5), 2),  # The SPADE discriminator's stride-1 layers.
    ((4, 4), 2, ((2, 2), (2, 2)), 3, 2, (9, 8), 1),  # Its stride-2 layers.
    ((3, 3), 2, ((1, 1), (1, 1)), 2, 3, (7, 6), 2),  # The VAE encoder's.
    ((5, 3), (3, 2), ((2, -1), (0, 1)), 2, 3, (9, 7), 1),  # Asymmetric, cropping.
]


def _lax_and_im2col(case, dtype):
  kernel, stride, padding, c_in, c_out, hw, batch = case
  x = _random_like(jax.ShapeDtypeStruct((batch,) + hw + (c_in,), dtype), 0, dtype)
  k = _random_like(jax.ShapeDtypeStruct(kernel + (c_in, c_out), dtype), 1, dtype)
  strides = conv._pair(stride)
  pads = padding if isinstance(padding, str) else list(padding)

  def reference(x, k):
    return jax.lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  dy = _random_like(jax.eval_shape(reference, x, k), 2, dtype)
  def value_and_grads(f):
    y, pullback = jax.vjp(f, x, k)
    return y, pullback(dy)

  expected = jax.jit(lambda: value_and_grads(reference))()
  actual = jax.jit(lambda: value_and_grads(lambda x, k: conv.conv(x, k, stride, padding, impl="im2col")))()
  return expected, actual


@pytest.mark.parametrize("case", IM2COL_CASES)
def test_im2col_matches_lax_float32(case):
  _assert_close(*_lax_and_im2col(case, jnp.float32), rtol=1e-5)


@pytest.mark.parametrize("case", IM2COL_CASES)
def test_im2col_matches_lax_float64(case):
  with jax.enable_x64(True):
    _assert_close(*_lax_and_im2col(case, jnp.float64), rtol=1e-12)


def test_im2col_module_is_flax():
  # Same parameters, same function as nn.Conv, gradients included.
  case = ((4, 4), 1, ((2, 2), (2, 2)), 3, 5, (6, 5), True)
  _assert_close(*_compare("conv", case, jnp.float32, impl="im2col"), rtol=1e-5)


# (input size, kernel, stride, padding) -> the lowering `auto` picks on CPU: the phase path for strided
# convolutions padded (k - s) / 2, XLA's for "same" stride-1 convolutions on inputs of at least XLA_MIN_SIZE, im2col otherwise.
_AUTO_CASES = [
    (8, 4, 1, 2, "im2col"), (8, 4, 2, 2, "im2col"), (8, 3, 1, 1, "im2col"), (16, 3, 1, 1, "xla"),
    (16, 1, 1, 0, "xla"), (32, 3, 1, 0, "im2col"), (32, 3, 2, 1, "im2col"), (64, 4, 2, 1, "phase"),
    (17, 4, 1, 2, "im2col"),  # the SPADE discriminator's last layer: XLA's kernel gradient is a slow loop here
]


@pytest.mark.parametrize("size, k, stride, pad, expected", _AUTO_CASES)
def test_auto_lowering_on_cpu(size, k, stride, pad, expected):
  assert jax.default_backend() == "cpu"
  assert conv._conv_impl("auto", (1, size, size, 3), (k, k, 3, 2), (stride, stride), ((pad, pad),) * 2) == expected
  x, kernel = jnp.ones((1, size, size, 3)), jnp.ones((k, k, 3, 2))
  fn = lambda x, k: conv.conv(x, k, stride, ((pad, pad), (pad, pad)))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: fn(x, k).sum(), (0, 1)))(x, kernel))
  assert ("conv_general_dilated" in jaxpr) == (expected != "im2col"), jaxpr
  assert ("custom_vjp_call" in str(jax.make_jaxpr(fn)(x, kernel))) == (expected == "phase")
  reference = lax.conv_general_dilated(x, kernel, (stride,) * 2, ((pad, pad),) * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(fn(x, kernel), reference, rtol=1e-6)


def test_im2col_is_not_a_conv_transpose_impl():
  with pytest.raises(ValueError, match="for conv_transpose"):
    conv.conv_transpose(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)), 2, "SAME", impl="im2col")

