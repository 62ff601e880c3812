"""SPADE networks: parameter counts against NVlabs/SPADE, shapes, and each part against hand-computed numbers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax.families import common
from facegen_jax.nets import spade
from facegen_jax.nets import spectral_norm as sn_lib

_STATS = ["batch_stats", sn_lib.SPECTRAL_STATS]


def _segmap(rng, batch, size, label_nc=19):
  labels = jax.random.randint(rng, (batch, size, size), 0, label_nc)
  return jax.nn.one_hot(labels, label_nc)


def _init_shapes(module, *args, **kwargs):
  return jax.eval_shape(functools.partial(module.init, jax.random.key(0), *args, train=False, **kwargs))


def test_full_size_parameter_counts_match_the_original():
  # torch: sum(p.numel() for p in net.parameters()) with label_nc 19, no instance map, ngf = ndf = 64, crop 128;
  # spectral norm's weight_u / weight_v and sync-BN's running stats are buffers, not parameters.
  seg, image = jnp.zeros((1, 128, 128, 19)), jnp.zeros((1, 128, 128, 3))
  g_vars = _init_shapes(spade.SPADEGenerator(), seg)
  assert common.count_params(g_vars["params"]) == 92_538_819
  assert set(g_vars) == {"params", "batch_stats", sn_lib.SPECTRAL_STATS}
  # D, per scale: model0 22*64*16 + 64; model1-3 without bias 64*128*16 + 128*256*16 + 256*512*16; model4
  # 512*16 + 1; = 2,783,297, times num_D 2.
  d_vars = _init_shapes(spade.MultiscaleDiscriminator(), seg, image)
  assert common.count_params(d_vars["params"]) == 5_566_594
  # VAE: fc becomes Linear(256, 1024*4*4): 5,566,594 aside, G - (19*1024*9 + 1024) + (256*16384 + 16384).
  vae_vars = _init_shapes(spade.SPADEGenerator(use_vae=True), seg, jnp.zeros((1, 256)))
  assert common.count_params(vae_vars["params"]) == 92_538_819 - 176_128 + 4_210_688
  # Encoder (the original's list at crop >= 256; no conv biases under spectralinstance): 3*64*9 + 64*128*9 +
  # 128*256*9 + 256*512*9 + 2 * 512*512*9 = 6,268,608 convs, plus fc_mu and fc_var 2 * (8192*256 + 256).
  e_vars = _init_shapes(spade.ConvEncoder(), image)
  assert common.count_params(e_vars["params"]) == 6_268_608 + 4_194_816


def test_full_size_output_shapes():
  seg, image = jnp.zeros((2, 128, 128, 19)), jnp.zeros((2, 128, 128, 3))
  generator, discriminator = spade.SPADEGenerator(), spade.MultiscaleDiscriminator()
  g_vars = _init_shapes(generator, seg)
  fake = jax.eval_shape(functools.partial(generator.apply, train=False), g_vars, seg)
  assert fake.shape == (2, 128, 128, 3)
  vae_generator = spade.SPADEGenerator(use_vae=True)
  vae_vars = _init_shapes(vae_generator, seg, jnp.zeros((2, 256)))
  fake = jax.eval_shape(functools.partial(vae_generator.apply, train=False), vae_vars, seg, jnp.zeros((2, 256)))
  assert fake.shape == (2, 128, 128, 3)
  d_vars = _init_shapes(discriminator, seg, image)
  outputs = jax.eval_shape(functools.partial(discriminator.apply, train=False), d_vars, seg, image)
  # k4 p2: stride 2 maps h -> h // 2 + 1, stride 1 maps h -> h + 1; the second scale sees 64x64.
  assert [[f.shape[1] for f in scale] for scale in outputs] == [[65, 33, 17, 18, 19], [33, 17, 9, 10, 11]]
  assert [f.shape[-1] for f in outputs[0]] == [64, 128, 256, 512, 1]


def _random_variables(module, *args, **kwargs):
  """Variables of `init`'s shapes filled by numpy: compiling a jitted `init` costs ~30 s on a loaded 2-core CPU."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == "running_mean":
      return np.zeros(leaf.shape, np.float32)
    if name == "running_var":
      return np.ones(leaf.shape, np.float32)
    if name in ("u", "v"):
      unit = rng.normal(size=leaf.shape)
      return (unit / np.linalg.norm(unit)).astype(np.float32)
    if name == "bias":
      return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    fan_in = np.prod(leaf.shape[:-1])
    return rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, _init_shapes(module, *args, **kwargs))


def test_tiny_generator_batch_norm_spans_the_batch():
  seg = _segmap(jax.random.key(0), 4, 32)
  generator = spade.TinySPADEGenerator()
  variables = _random_variables(generator, seg)

  @jax.jit
  def run(seg):
    train = lambda s: generator.apply(variables, s, train=True, mutable=_STATS)[0]
    evaluate = lambda s: generator.apply(variables, s, train=False)
    one_at_a_time = lambda f: jax.vmap(lambda s: f(s[None])[0])(seg)  # Each example in a batch of its own.
    return train(seg), one_at_a_time(train), evaluate(seg), one_at_a_time(evaluate)

  together, separately, eval_together, eval_separately = run(seg)
  assert together.shape == (4, 32, 32, 3) and float(jnp.abs(together).max()) <= 1.0
  # Training mode normalises with the statistics of the whole batch, so batching changes each output ...
  assert float(jnp.abs(together - separately).max()) > 1e-3
  # ... and with the running statistics of eval mode the examples are independent again.
  np.testing.assert_allclose(eval_together, eval_separately, atol=1e-5)


def test_tiny_discriminator_and_encoder():
  seg, image = _segmap(jax.random.key(0), 2, 32), jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  discriminator, encoder = spade.TinyMultiscaleDiscriminator(), spade.TinyConvEncoder()
  d_vars, e_vars = _random_variables(discriminator, seg, image), _random_variables(encoder, image)

  @jax.jit
  def run(seg, image):
    outputs, _ = discriminator.apply(d_vars, seg, image, train=True, mutable=_STATS)
    (mu, logvar), _ = encoder.apply(e_vars, image, train=True, mutable=_STATS)
    return outputs, mu, logvar

  outputs, mu, logvar = run(seg, image)
  assert [[f.shape[1] for f in scale] for scale in outputs] == [[17, 9, 5, 6, 7], [9, 5, 3, 4, 5]]
  assert outputs[0][-1].shape == (2, 7, 7, 1)
  assert mu.shape == logvar.shape == (2, 8)


def _np_conv3x3(x, kernel, bias):
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1])) + bias
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + h, j:j + w] @ kernel[i, j]
  return out


def test_spade_norm_matches_numpy_reference():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 4, 3))) * 3 + 1
  seg = np.asarray(_segmap(jax.random.key(1), 2, 8, label_nc=5))
  norm = spade.SPADE()
  variables = norm.init(jax.random.key(2), x, seg, train=False)
  out, updates = norm.apply(variables, x, seg, train=True, mutable=["batch_stats"])
  p = jax.tree.map(np.asarray, variables["params"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  normalized = (x - mean) / np.sqrt(var + 1e-5)
  seg_small = seg[:, ::2, ::2]  # torch nearest 8 -> 4 takes rows and columns 0, 2, 4, 6.
  hidden = np.maximum(_np_conv3x3(seg_small, p["mlp_shared"]["kernel"], p["mlp_shared"]["bias"]), 0)
  gamma = _np_conv3x3(hidden, p["mlp_gamma"]["kernel"], p["mlp_gamma"]["bias"])
  beta = _np_conv3x3(hidden, p["mlp_beta"]["kernel"], p["mlp_beta"]["bias"])
  np.testing.assert_allclose(out, normalized * (1 + gamma) + beta, rtol=1e-4, atol=1e-4)
  # torch's running statistics: momentum 0.1, unbiased variance (n = 32 values per channel).
  stats = updates["batch_stats"]["param_free_norm"]
  np.testing.assert_allclose(stats["running_mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(stats["running_var"], 0.9 + 0.1 * var * 32 / 31, rtol=1e-5)
  eval_out = norm.apply({**variables, "batch_stats": updates["batch_stats"]}, x, seg, train=False)
  expected = (x - stats["running_mean"]) / np.sqrt(stats["running_var"] + 1e-5) * (1 + gamma) + beta
  np.testing.assert_allclose(eval_out, expected, rtol=1e-4, atol=1e-4)


def test_spectral_matrix_is_torchs_out_by_in_kh_kw():
  # At one output position a VALID conv is W_torch @ patch, the patch flattened as (in, kh, kw), as in torch.
  kernel = jax.random.normal(jax.random.key(0), (3, 2, 4, 5))
  patch = jax.random.normal(jax.random.key(1), (1, 3, 2, 4))
  out = jax.lax.conv_general_dilated(patch, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  matrix = sn_lib.torch_weight_matrix(kernel)
  np.testing.assert_allclose(out[0, 0, 0], matrix @ patch[0].transpose(2, 0, 1).reshape(-1), rtol=1e-5)


def test_spectral_norm_power_iteration_converges_and_eval_keeps_vectors():
  layer = sn_lib.SNConv(6, (3, 3), padding=((1, 1), (1, 1)))
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 4))
  variables = layer.init(jax.random.key(1), x, update_stats=False)
  kernel = variables["params"]["kernel"]
  matrix = np.asarray(sn_lib.torch_weight_matrix(kernel))
  train = jax.jit(lambda v: layer.apply(v, x, update_stats=True, mutable=[sn_lib.SPECTRAL_STATS])[1])
  stats = variables[sn_lib.SPECTRAL_STATS]
  u0 = np.asarray(stats["u"])
  stats = train(variables)[sn_lib.SPECTRAL_STATS]
  v1 = matrix.T @ u0 / np.linalg.norm(matrix.T @ u0)  # One torch iteration by hand.
  np.testing.assert_allclose(stats["v"], v1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["u"], matrix @ v1 / np.linalg.norm(matrix @ v1), rtol=1e-5, atol=1e-6)
  for _ in range(50):
    stats = train({**variables, sn_lib.SPECTRAL_STATS: stats})[sn_lib.SPECTRAL_STATS]
  u_svd, s_svd, vt_svd = np.linalg.svd(matrix)
  sigma = float(stats["u"] @ matrix @ stats["v"])
  assert abs(sigma / s_svd[0] - 1) < 1e-3  # So the normalised kernel's top singular value is ~1.
  assert abs(abs(float(stats["u"] @ u_svd[:, 0])) - 1) < 1e-3
  assert abs(abs(float(stats["v"] @ vt_svd[0])) - 1) < 1e-3
  # Eval: no iteration, sigma from the stored vectors and the current kernel.
  frozen = {**variables, sn_lib.SPECTRAL_STATS: stats}
  out, updates = layer.apply(frozen, x, update_stats=False, mutable=[sn_lib.SPECTRAL_STATS])
  jax.tree.map(np.testing.assert_array_equal, updates[sn_lib.SPECTRAL_STATS], stats)
  plain = jax.lax.conv_general_dilated(x, kernel / sigma, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(out, plain + variables["params"]["bias"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fin, fout", [(8, 8), (4, 8), (8, 4)])
def test_learned_shortcut_iff_channels_change(fin, fout):
  x, seg = jnp.zeros((1, 4, 4, fin)), jnp.zeros((1, 4, 4, 3))
  params = _init_shapes(spade.SPADEResnetBlock(fout), x, seg)["params"]
  assert ("conv_s" in params) == ("norm_s" in params) == (fin != fout)
  if fin != fout:
    assert set(params["conv_s"]) == {"kernel"} and params["conv_s"]["kernel"].shape == (1, 1, fin, fout)
  assert params["conv_0"]["kernel"].shape == (3, 3, fin, min(fin, fout))
  assert params["conv_1"]["kernel"].shape == (3, 3, min(fin, fout), fout)


def test_avg_pool_between_scales_excludes_padding():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  pooled = spade.avg_pool_exclude_pad(x)[0, :, :, 0]
  assert pooled.shape == (2, 2)
  assert float(pooled[0, 0]) == (0 + 1 + 4 + 5) / 4  # 4 real values; padding would make it /9.
  assert float(pooled[0, 1]) == (1 + 2 + 3 + 5 + 6 + 7) / 6


def test_nearest_resize_uses_torchs_index_rule():
  x = jnp.arange(128.0).reshape(1, 128, 1, 1) * jnp.ones((1, 1, 128, 1))
  assert spade.nearest_resize(x, (4, 4))[0, :, 0, 0].tolist() == [0, 32, 64, 96]  # floor(dst * 32), not +16.


def test_upsample_equals_two_repeats():
  """upsample2 (a broadcast, its gradient four strided slices) computes two jnp.repeat calls (nn.Upsample nearest
  x2): values exactly; first and second derivatives in float64 (it is also SSuperGAN's, MUNIT's, U-GAT-IT's)."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (3, 4, 6, 5), jnp.float64)
    weights = jax.random.normal(jax.random.key(1), (3, 8, 12, 5), jnp.float64)
    reference = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(spade.upsample2(x), reference(x))
    loss = lambda fn: lambda x: jnp.sum(jnp.sin(fn(x)) * weights)
    np.testing.assert_allclose(jax.grad(loss(spade.upsample2))(x), jax.grad(loss(reference))(x), rtol=1e-14,
                               atol=1e-14)
    grad_norm = lambda fn: lambda x: jnp.sum(jnp.square(jax.grad(loss(fn))(x)))
    np.testing.assert_allclose(jax.grad(grad_norm(spade.upsample2))(x), jax.grad(grad_norm(reference))(x),
                               rtol=1e-12, atol=1e-12)
