"""U-GAT-IT networks: parameter counts against UGATIT-pytorch / Face2webtoon, shapes, and the parts against numpy."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax import optim
from facegen_jax.families import common
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets import ugatit

# Each program here runs once or twice: XLA's lowest optimisation compiles in seconds instead of a minute.
_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


def _shapes(module, size, **kwargs):
  image = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(functools.partial(module.init, jax.random.key(0), image, **kwargs))
  return variables, jax.eval_shape(functools.partial(module.apply, **kwargs), variables, image)


@pytest.mark.parametrize("light, size, count", [(True, 256, 10_589_888), (True, 128, 10_589_888),
                                                 (False, 256, 278_959_808)])
def test_generator_parameter_counts_and_shapes(light, size, count):
  # torch: sum(p.numel() for p in ResnetGenerator(3, 3, 64, 4, size, light).parameters()); full's FC.0 alone is
  # Linear(64 * 64 * 256, 256) = 268,435,456 at 256.
  variables, out = _shapes(ugatit.ResnetGenerator(light=light, img_size=size), size)
  assert set(variables) == {"params"} and common.count_params(variables["params"]) == count
  assert (out.image.shape, out.cam_logit.shape, out.heatmap.shape) == (
      (1, size, size, 3), (1, 2), (1, size // 4, size // 4, 1))


@pytest.mark.parametrize("n_layers, num_groups, count, out_hw", [
    (7, 0, 53_130_176, 6), (5, 0, 3_290_560, 30), (7, 4, 53_138_372, 6), (5, 4, 3_292_612, 30)])
def test_discriminator_parameter_counts_and_shapes(n_layers, num_groups, count, out_hw):
  # Spectral norm's u and v are buffers in torch, `spectral_stats` here; the group head is
  # Linear(C, 4) with bias: 2048 * 4 + 4 = 8,196 (global), 512 * 4 + 4 = 2,052 (local).
  module = ugatit.Discriminator(n_layers=n_layers, num_groups=num_groups)
  variables, out = _shapes(module, 256, update_stats=False)
  assert common.count_params(variables["params"]) == count
  assert set(variables) == {"params", sn_lib.SPECTRAL_STATS}
  assert out.out.shape == (1, out_hw, out_hw, 1) and out.cam_logit.shape == (1, 2)
  assert out.heatmap.shape == (1, out_hw + 1, out_hw + 1, 1)
  assert (out.group_logit is None) if not num_groups else out.group_logit.shape == (1, num_groups)


def test_size_errors():
  with pytest.raises(ValueError, match="at least 96 px"):
    _shapes(ugatit.Discriminator(n_layers=7, ndf=4), 64, update_stats=False)
  _shapes(ugatit.Discriminator(n_layers=7, ndf=4), 96, update_stats=False)  # 96 -> 3 -> 2 -> 1x1 out.
  with pytest.raises(ValueError, match="built for"):
    generator = ugatit.ResnetGenerator(ngf=4, n_blocks=1, img_size=64)
    variables, _ = _shapes(generator, 64)
    jax.eval_shape(generator.apply, variables, jnp.zeros((1, 32, 32, 3)))


def test_bottleneck_pattern_selects_the_encoder_blocks():
  variables, _ = _shapes(ugatit.ResnetGenerator(light=True, img_size=128), 128)
  params = {"a2b": variables["params"], "b2a": variables["params"]}
  for tree, prefix in ((variables["params"], ""), (params, "a2b/")):
    names = {optim.path_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    selected = {n for n in names if re.fullmatch(ugatit.BOTTLENECK_PATTERN, n) and n.startswith(prefix)}
    # Face2webtoon's DownBlock.12..15: 4 blocks x 2 convs of 256 * 256 * 3 * 3, no biases.
    assert sum(np.prod(names[n].shape) for n in selected) == 4_718_592
    assert selected == {f"{prefix}ResnetBlock_{i}/conv_{j}/kernel" for i in range(4) for j in range(2)}


@functools.cache
def _small_discriminator():
  """A D with every kind of layer (ndf 4, n_layers 4, 4 groups) on 32 px, its initial variables and an input."""
  module = ugatit.Discriminator(ndf=4, n_layers=4, num_groups=4)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  return module, _jit(functools.partial(module.init, update_stats=False))(jax.random.key(0), x), x


def test_torch_default_init():
  # kaiming_uniform(a=sqrt(5)) and the bias rule both give U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  _, variables, _ = _small_discriminator()
  params = variables["params"]
  for module, fan_in in (("conv_1", 4 * 16), ("conv1x1", 2 * 16), ("group_classifier", 16)):
    bound = 1 / np.sqrt(fan_in)
    kernel, bias = np.abs(params[module]["kernel"]), np.abs(params[module]["bias"])
    assert bound >= kernel.max() > 0.8 * bound and bias.max() <= bound, module
  assert np.abs(params["conv1x1"]["bias"]).max() > 0.3 / np.sqrt(32)  # 16 draws, so not a smaller range.
  generator = _jit(ugatit.ResnetGenerator(ngf=4, n_blocks=1, light=True, img_size=32).init)(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  np.testing.assert_array_equal(generator["ResnetAdaILNBlock_0"]["norm_0"]["rho"], np.full(16, 0.9, np.float32))
  iln = generator["up_norm_0"]
  assert (np.all(iln["rho"] == 0), np.all(iln["gamma"] == 1), np.all(iln["beta"] == 0)) == (True, True, True)


def _numpy_iln(x, rho, gamma, beta, eps=1e-5):
  """The original's (ada)ILN on NHWC x in float64, torch.var's unbiased variance written out."""
  x = x.astype(np.float64)
  h, w, c = x.shape[1:]
  in_mean = x.mean(axis=(1, 2), keepdims=True)
  in_var = ((x - in_mean) ** 2).sum(axis=(1, 2), keepdims=True) / (h * w - 1)
  ln_mean = x.mean(axis=(1, 2, 3), keepdims=True)
  ln_var = ((x - ln_mean) ** 2).sum(axis=(1, 2, 3), keepdims=True) / (h * w * c - 1)
  mixed = rho * (x - in_mean) / np.sqrt(in_var + eps) + (1 - rho) * (x - ln_mean) / np.sqrt(ln_var + eps)
  gamma, beta = (t[:, None, None, :] if t.ndim == 2 else t for t in (gamma, beta))
  return mixed * gamma + beta


def test_ada_iln_and_iln_match_numpy_with_unbiased_variance():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (2, 5, 4, 6)).astype(np.float32)
  rho = rng.uniform(0, 1, 6).astype(np.float32)
  gamma, beta = rng.normal(1, 0.5, (2, 6)).astype(np.float32), rng.normal(0, 0.5, (2, 6)).astype(np.float32)
  got = ugatit.AdaILN().apply({"params": {"rho": rho}}, x, gamma, beta)
  np.testing.assert_allclose(got, _numpy_iln(x, rho, gamma, beta), atol=2e-5)
  iln = {"rho": rho, "gamma": gamma[0], "beta": beta[0]}
  np.testing.assert_allclose(ugatit.ILN().apply({"params": iln}, x), _numpy_iln(x, rho, gamma[0], beta[0]),
                             atol=2e-5)
  # With the biased variance a 5x4 map's instance-norm half would be off by sqrt(20/19): ~2.5%.
  assert np.abs(_numpy_iln(x, np.ones(6), np.ones(6), np.zeros(6)).std(axis=(1, 2)) - np.sqrt(19 / 20)).max() < 1e-5


def test_clip_rho_clips_only_rho():
  params = {"a2b": {"up_norm_0": {"rho": jnp.array([-0.5, 0.3, 1.7]), "gamma": jnp.array([-2.0, 0.5, 3.0])},
                    "ResnetAdaILNBlock_0": {"norm_0": {"rho": jnp.array([1.2])}}, "FC_0": {"kernel": jnp.ones(2) * 5}}}
  clipped = ugatit.clip_rho(params)
  np.testing.assert_array_equal(clipped["a2b"]["up_norm_0"]["rho"], np.float32([0.0, 0.3, 1.0]))
  np.testing.assert_array_equal(clipped["a2b"]["ResnetAdaILNBlock_0"]["norm_0"]["rho"], [1.0])
  np.testing.assert_array_equal(clipped["a2b"]["up_norm_0"]["gamma"], params["a2b"]["up_norm_0"]["gamma"])
  np.testing.assert_array_equal(clipped["a2b"]["FC_0"]["kernel"], [5.0, 5.0])


def test_sn_dense_matches_a_numpy_power_iteration():
  layer = sn_lib.SNDense(5)
  x = np.random.default_rng(1).normal(size=(3, 7)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x, update_stats=False)
  kernel, bias = (np.asarray(variables["params"][k], np.float64) for k in ("kernel", "bias"))
  u0 = np.asarray(variables[sn_lib.SPECTRAL_STATS]["u"], np.float64)
  assert kernel.shape == (7, 5) and u0.shape == (5,) and variables[sn_lib.SPECTRAL_STATS]["v"].shape == (7,)
  assert abs(np.linalg.norm(u0) - 1) < 1e-6
  # torch: W = weight (out, in) = kernel.T; v = normalize(W^T u), u = normalize(W v), sigma = u . W v.
  weight = kernel.T
  v1 = weight.T @ u0
  v1 /= np.linalg.norm(v1)
  u1 = weight @ v1
  u1 /= np.linalg.norm(u1)
  sigma = u1 @ weight @ v1
  y, updated = layer.apply(variables, x, update_stats=True, mutable=[sn_lib.SPECTRAL_STATS])
  np.testing.assert_allclose(updated[sn_lib.SPECTRAL_STATS]["u"], u1, atol=1e-6)
  np.testing.assert_allclose(updated[sn_lib.SPECTRAL_STATS]["v"], v1, atol=1e-6)
  np.testing.assert_allclose(y, x @ (weight / sigma).T + bias, atol=1e-5)
  # Eval mode: sigma from the stored vectors and the current kernel, nothing iterated.
  stored = {**variables, sn_lib.SPECTRAL_STATS: updated[sn_lib.SPECTRAL_STATS]}
  np.testing.assert_allclose(layer.apply(stored, x, update_stats=False), y, atol=1e-6)
  # Iterated to convergence, sigma is the largest singular value.
  state = variables
  for _ in range(100):
    _, new = layer.apply(state, x, update_stats=True, mutable=[sn_lib.SPECTRAL_STATS])
    state = {**state, **new}
  u, v = (np.asarray(state[sn_lib.SPECTRAL_STATS][k], np.float64) for k in ("u", "v"))
  np.testing.assert_allclose(u @ weight @ v, np.linalg.svd(weight, compute_uv=False)[0], rtol=1e-5)
  # The gradient reaches the kernel through sigma too (u and v held constant), as in torch.
  grad = jax.grad(lambda p: layer.apply({**state, "params": p}, x, update_stats=False).sum())(state["params"])
  # L = sum(x W^T) / sigma + ..., sigma = u . W v: dL/dW = S / sigma - sum(S * W) u v^T / sigma^2, S = 1^T x.
  s_matrix, sigma = np.ones((3, 5)).T @ x.astype(np.float64), u @ weight @ v
  w_grad = s_matrix / sigma - np.outer(u, v) * (s_matrix * weight).sum() / sigma ** 2
  np.testing.assert_allclose(grad["kernel"], w_grad.T, rtol=1e-4, atol=1e-5)


def test_cam_scales_by_the_raw_weight_in_the_discriminator():
  # UGATIT-pytorch scales the CAM features by weight_orig while the logit uses weight_orig / sigma: flipping the
  # stored u flips sigma's sign, which must change the gap logit only.
  module, variables, x = _small_discriminator()
  apply = _jit(functools.partial(module.apply, update_stats=False))
  out = apply(variables, x)
  stats = variables[sn_lib.SPECTRAL_STATS]
  flipped = {**stats, "gap_fc": {"u": -stats["gap_fc"]["u"], "v": stats["gap_fc"]["v"]}}
  out2 = apply({**variables, sn_lib.SPECTRAL_STATS: flipped}, x)
  np.testing.assert_allclose(out2.cam_logit[:, 0], -out.cam_logit[:, 0], rtol=1e-6)  # sigma changed sign.
  np.testing.assert_allclose(out2.out, out.out, rtol=1e-6)  # The features did not.
  np.testing.assert_allclose(out2.heatmap, out.heatmap, rtol=1e-6)


def test_batched_calls_equal_separate_calls():
  # num_calls=2 on [real; fake] must give what the original's two calls give: each its own power iteration (the
  # second from the first's u), outputs, stored vectors after the second, and the gradient of both.
  module, variables, real = _small_discriminator()
  fake = jax.random.uniform(jax.random.key(2), real.shape, minval=-1, maxval=1)
  stats = sn_lib.SPECTRAL_STATS

  def loss(params, batched):
    if batched:
      out, new = module.apply({**variables, "params": params}, jnp.concatenate([real, fake]), update_stats=True,
                              num_calls=2, mutable=[stats])
      outs = [jax.tree.map(lambda a, i=i: a[2 * i:2 * i + 2], out) for i in range(2)]
    else:
      first, new = module.apply({**variables, "params": params}, real, update_stats=True, mutable=[stats])
      second, new = module.apply({"params": params, **new}, fake, update_stats=True, mutable=[stats])
      outs = [first, second]
    # Weighted differently per call and per output, so a swapped call or a shared sigma shows.
    value = sum((k + 1) * (i + 2) * jnp.sum(jnp.tanh(a)) for i, o in enumerate(outs)
                for k, a in enumerate(jax.tree.leaves(o)))
    return value, (outs, new)

  (_, (outs_b, new_b)), grads_b = _jit(jax.value_and_grad(functools.partial(loss, batched=True), has_aux=True))(
      variables["params"])
  (_, (outs_s, new_s)), grads_s = _jit(jax.value_and_grad(functools.partial(loss, batched=False), has_aux=True))(
      variables["params"])
  for got, want in ((outs_b, outs_s), (new_b, new_s), (grads_b, grads_s)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * float(np.abs(b).max()))
  # The two calls' sigmas differ (different u), so sharing one would not pass.
  assert not np.allclose(new_s[stats]["conv_0"]["u"], variables[stats]["conv_0"]["u"])
  with pytest.raises(ValueError, match="does not split into 3 calls"):
    module.apply(variables, jnp.concatenate([real, fake]), update_stats=False, num_calls=3)
