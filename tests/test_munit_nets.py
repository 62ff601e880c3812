"""MUNIT / SATNet networks: parameter counts against NVlabs/MUNIT and SATNet, shapes, and the parts against numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.families import common
from facegen_jax.nets import munit
from facegen_jax.nets import spectral_norm as sn_lib

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)
SATNET_G = dict(attention=True)
SATNET_D = dict(norm="sn", attention=True)


def _abstract(module, shape=(1, 224, 192, 3)):
  image = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(functools.partial(module.init, jax.random.key(0)), image), image


@pytest.mark.parametrize("kwargs, count, buffers", [({}, 15_026_187, 0), (SATNET_G, 17_814_157, 2_176)])
def test_generator_parameter_counts_and_shapes(kwargs, count, buffers):
  # torch: sum(p.numel() for p in AdaINGen(3, gen).parameters() if p.requires_grad) with the configs' gen; SATNet's
  # u and v are Parameters without gradient there (17,816,333 in all), `spectral_stats` here.
  generator = munit.AdaINGen(**kwargs)
  variables, image = _abstract(generator)
  assert common.count_params(variables["params"]) == count
  assert common.count_params(variables.get(sn_lib.SPECTRAL_STATS, {})) == buffers
  content, style = jax.eval_shape(functools.partial(generator.apply, method="encode"), variables, image)
  assert (content.shape, style.shape) == ((1, 56, 48, 256), (1, 8))
  decoded = jax.eval_shape(functools.partial(generator.apply, method="decode"), variables, content, style)
  assert decoded.shape == jax.eval_shape(generator.apply, variables, image).shape == (1, 224, 192, 3)
  # The MLP feeds 8 (MUNIT) or 10 (SATNet) AdaIN layers of 256 channels a mean and a std each.
  layers = 10 if kwargs else 8
  assert variables["params"]["mlp"]["fc_2"]["kernel"].shape == (256, 2 * 256 * layers)


@pytest.mark.parametrize("kwargs, scales, count, buffers", [
    ({}, 3, 8_271_171, 0), (SATNET_D, 3, 9_256_134, 30_720), (SATNET_D, 2, 6_170_756, 20_480)])
def test_discriminator_parameter_counts_and_shapes(kwargs, scales, count, buffers):
  # SATNet's HEAD config has 2 scales (6,191,236 with u, v), its branch and README 3 (9,286,854).
  discriminator = munit.MsImageDis(num_scales=scales, **kwargs)
  variables, image = _abstract(discriminator)
  assert common.count_params(variables["params"]) == count
  assert common.count_params(variables.get(sn_lib.SPECTRAL_STATS, {})) == buffers
  outputs = jax.eval_shape(discriminator.apply, variables, image)
  assert [o.shape for o in outputs] == [(1, 14, 12, 1), (1, 7, 6, 1), (1, 3, 3, 1)][:scales]
  square = jax.eval_shape(discriminator.apply, variables, jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32))
  assert [o.shape for o in square] == [(2, 8, 8, 1), (2, 4, 4, 1), (2, 2, 2, 1)][:scales]


def test_too_small_inputs_say_so():
  with pytest.raises(ValueError, match="input is too small"):
    _abstract(munit.MsImageDis(dim=4), (1, 16, 16, 3))


def test_munit_layer_norm_matches_numpy_with_unbiased_std():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (2, 5, 4, 6)).astype(np.float32)
  gamma, beta = rng.uniform(0, 1, 6).astype(np.float32), rng.normal(0, 1, 6).astype(np.float32)
  got = munit.LayerNorm().apply({"params": {"gamma": gamma, "beta": beta}}, x)
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=(1, 2, 3), keepdims=True)
  std = x64.std(axis=(1, 2, 3), ddof=1, keepdims=True)  # torch's Tensor.std(): unbiased
  np.testing.assert_allclose(got, (x64 - mean) / (std + 1e-5) * gamma + beta, atol=2e-6)
  # (std + eps), not sqrt(var + eps): a constant map stays finite, at 0 before beta.
  flat = munit.LayerNorm().apply({"params": {"gamma": gamma, "beta": beta}}, np.ones((1, 2, 2, 6), np.float32))
  np.testing.assert_allclose(flat, np.broadcast_to(beta, (1, 2, 2, 6)), atol=1e-6)


def test_adain_params_are_assigned_in_munits_order():
  # MUNIT's assign_adain_params walks the AdaIN layers in order; each takes [mean (C), std (C)] of what is left.
  params = jnp.arange(2 * 3 + 2 * 4, dtype=jnp.float32)[None].repeat(2, 0)
  (m0, s0), (m1, s1) = munit.assign_adain_params(params, [3, 4])
  np.testing.assert_array_equal(m0[0], [0, 1, 2])
  np.testing.assert_array_equal(s0[0], [3, 4, 5])
  np.testing.assert_array_equal(m1[0], [6, 7, 8, 9])
  np.testing.assert_array_equal(s1[0], [10, 11, 12, 13])
  with pytest.raises(ValueError, match="need 16"):
    munit.assign_adain_params(params[:, :-1], [4, 4])
  # AdaIN itself: instance norm with the biased variance, * std + mean per example and channel.
  x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype(np.float32)
  mean, std = np.float32([[1, 2, 3, 4], [5, 6, 7, 8]]), np.float32([[2, 2, 2, 2], [0.5, 1, 1, 1]])
  normed = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(munit.adain(x, mean, std), normed * std[:, None, None] + mean[:, None, None],
                             atol=1e-5)


def _l2n(x):
  return x / (np.linalg.norm(x) + 1e-12)


def test_munit_spectral_norm_iterates_at_every_call_like_numpy():
  layer = sn_lib.MunitSNConv(5, (3, 3), padding="VALID")
  x = np.random.default_rng(2).normal(size=(1, 6, 7, 4)).astype(np.float32)
  variables = _jit(layer.init)(jax.random.key(0), x)
  update = _jit(functools.partial(layer.apply, mutable=[sn_lib.SPECTRAL_STATS]))
  kernel, bias = (np.asarray(variables["params"][k], np.float64) for k in ("kernel", "bias"))
  u0 = np.asarray(variables[sn_lib.SPECTRAL_STATS]["u"], np.float64)
  assert u0.shape == (5,) and variables[sn_lib.SPECTRAL_STATS]["v"].shape == (36,)
  weight = kernel.transpose(3, 2, 0, 1).reshape(5, -1)  # torch's (out, in * kh * kw) reading of weight_bar
  v1 = _l2n(weight.T @ u0)
  u1 = _l2n(weight @ v1)
  want = jax.lax.conv_general_dilated(x, (kernel / (u1 @ weight @ v1)).astype(np.float32), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  # Not mutable: the output is still the iterated one (the original iterates in eval too), nothing is stored.
  np.testing.assert_allclose(_jit(layer.apply)(variables, x), want, atol=1e-5)
  y, updated = update(variables, x)
  np.testing.assert_allclose(y, want, atol=1e-5)
  np.testing.assert_allclose(updated[sn_lib.SPECTRAL_STATS]["u"], u1, atol=1e-6)
  np.testing.assert_allclose(updated[sn_lib.SPECTRAL_STATS]["v"], v1, atol=1e-6)
  # The second call iterates again from the stored vectors.
  v2 = _l2n(weight.T @ u1)
  u2 = _l2n(weight @ v2)
  _, again = update({**variables, **updated}, x)
  np.testing.assert_allclose(again[sn_lib.SPECTRAL_STATS]["u"], u2, atol=1e-6)
  # x / (|x| + eps), not torch's x / max(|x|, eps): visible on a tiny vector.
  tiny = jnp.float32([3e-13, 4e-13])
  np.testing.assert_allclose(sn_lib.l2normalize(tiny), [3 / 15, 4 / 15], rtol=1e-5)  # / (5e-13 + 1e-12)
  np.testing.assert_allclose(sn_lib.normalize(tiny), [0.3, 0.4], rtol=1e-5)  # / max(5e-13, 1e-12)
  # The gradient of the output reaches the kernel through sigma with u and v held, as torch's.
  grad = _jit(jax.grad(lambda p: layer.apply({**variables, "params": p}, x).sum()))(variables["params"])
  assert np.isfinite(grad["kernel"]).all() and np.abs(grad["kernel"]).max() > 0


@pytest.mark.parametrize("pad_type", ["reflect", "zero", "replicate"])
def test_upsample_conv_by_phases_is_the_upsampled_conv(pad_type):
  # The decoder's nn.Upsample + 5x5 Conv2dBlock, as four 3x3 phase convs of the low-res map (+ reflect's border
  # strips), against upsampling, padding and convolving; non-square, every impl, the conv's own parameters.
  x = np.random.default_rng(4).normal(size=(2, 6, 5, 3)).astype(np.float32)
  module = munit.UpsampleConv(4, pad_type=pad_type, impl="phase")
  params = _jit(module.init)(jax.random.key(0), x)["params"]
  assert (params["kernel"].shape, params["bias"].shape) == ((5, 5, 3, 4), (4,))
  params = {"kernel": params["kernel"], "bias": jnp.float32([0.1, -0.2, 0.3, 0.0])}
  upsampled = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  mode = {"reflect": "reflect", "zero": "constant", "replicate": "edge"}[pad_type]
  want = jax.lax.conv_general_dilated(np.pad(upsampled, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=mode),
                                      params["kernel"], (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
  got = _jit(module.apply)({"params": params}, x)
  assert got.shape == (2, 12, 10, 4)
  np.testing.assert_allclose(got, want, atol=2e-6)
  direct = munit.UpsampleConv(4, pad_type=pad_type, impl="direct")
  np.testing.assert_allclose(_jit(direct.apply)({"params": params}, x), want, atol=2e-6)


def _attention_numpy(x, f, g, k, gamma):
  b, h, w, c = x.shape
  flat = x.reshape(b, h * w, c).astype(np.float64)
  fq, gq, kq = (flat @ m[0] + m[1] for m in (f, g, k))
  energy = np.einsum("bic,bjc->bij", fq, gq)
  attention = np.exp(energy - energy.max(-1, keepdims=True))
  attention /= attention.sum(-1, keepdims=True)
  return (gamma * np.einsum("bij,bjc->bic", attention, kq) + flat).reshape(b, h, w, c)


def test_self_attention_matches_numpy_and_is_the_identity_at_gamma_zero():
  module = munit.SelfAttention(spectral=False)
  x = np.random.default_rng(3).normal(size=(2, 3, 5, 16)).astype(np.float32)  # non-square map
  params = _jit(module.init)(jax.random.key(0), x)["params"]
  apply = _jit(module.apply)
  assert params["gamma"].shape == (1,) and abs(float(params["gamma"][0]) - 1e-8) < 1e-15
  assert (params["f_conv"]["kernel"].shape, params["k_conv"]["kernel"].shape) == ((1, 1, 16, 2), (1, 1, 16, 16))
  np.testing.assert_array_equal(apply({"params": {**params, "gamma": jnp.zeros(1)}}, x), x)
  params = {**params, "gamma": jnp.float32([0.7])}
  dense = lambda name: (np.asarray(params[name]["kernel"][0, 0], np.float64), np.asarray(params[name]["bias"]))
  want = _attention_numpy(x, dense("f_conv"), dense("g_conv"), dense("k_conv"), 0.7)
  np.testing.assert_allclose(apply({"params": params}, x), want, atol=2e-5)


# Building blocks, each with an input shape (a whole generator's init compiles for half a minute).
_BLOCKS = {
    "down": (munit.ConvBlock(32, 4, 2, 1, norm="in"), (1, 8, 8, 16)),  # G: 'kaiming'
    "mlp": (munit.MLP(10, dim=64), (2, 8)),
    "plain": (munit.ConvBlock(32, 4, 2, 1, weight_init="gaussian"), (1, 8, 8, 16)),  # D: 'gaussian'
    "spectral": (munit.ConvBlock(32, 4, 2, 1, norm="sn", weight_init="gaussian"), (1, 8, 8, 16)),
    "attention": (munit.SelfAttention(spectral=True), (1, 4, 4, 64)),
    "layer_norm": (munit.ConvBlock(32, 5, 1, 2, norm="ln"), (1, 8, 8, 16)),
}


def test_initialisation_follows_the_originals_weights_init():
  # One program at XLA's lowest level: eagerly each op would compile on its own (~40 s cold).
  init = _jit(lambda key: {name: module.init(key, jnp.zeros(shape))["params"]
                           for name, (module, shape) in _BLOCKS.items()})
  params = init(jax.random.key(0))
  # kaiming_normal fan_in, zero bias: a content encoder's 4x4 16->32 conv (fan_in 256), the MLP.
  down = params["down"]["conv"]
  assert abs(np.std(down["kernel"]) / np.sqrt(2 / 256) - 1) < 0.05 and not np.any(down["bias"])
  mlp = params["mlp"]
  assert abs(np.std(mlp["fc_1"]["kernel"]) / np.sqrt(2 / 64) - 1) < 0.05 and not np.any(mlp["fc_2"]["bias"])
  # N(0, 0.02) for plain convs; spectral-normed ones keep torch's default U(+-1/sqrt(fan_in)) weight and bias
  # whatever weight_init says (fan_in 16 * 16).
  assert abs(np.std(params["plain"]["conv"]["kernel"]) / 0.02 - 1) < 0.05
  spectral = params["spectral"]["conv"]
  assert 1 / 16 >= np.abs(spectral["kernel"]).max() > 0.06 and 1 / 16 >= np.abs(spectral["bias"]).max() > 0.03
  attention = params["attention"]  # fan_in 64
  assert 0.125 >= np.abs(attention["k_conv"]["kernel"]).max() > 0.12
  assert abs(float(attention["gamma"][0]) - 1e-8) < 1e-15
  norm = params["layer_norm"]["norm"]
  assert 0 <= norm["gamma"].min() and norm["gamma"].max() <= 1 and np.std(norm["gamma"]) > 0.2
  assert not np.any(norm["beta"])
  with pytest.raises(ValueError, match="init must be one of"):
    munit.kernel_init("he")
