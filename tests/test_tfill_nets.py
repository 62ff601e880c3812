"""TFill's networks: parameter counts against lyndonzheng/TFill, the partial conv by hand, inits, torch key names, and
each network against tests/tfill_torch.py's torch rebuild of the original's modules (checked once against the
original's own: identical outputs) at toy sizes, weights transferred torch -> flax by the key names."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert import torch_map
from facegen_jax.families import common
from facegen_jax.nets import tfill
from tests import tfill_torch

_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)
_RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}
_TABLE = torch_map.KeyTable(modules=tfill.TORCH_MODULES)


def _abstract(module, *args):
  return jax.eval_shape(functools.partial(module.init, _RNGS), *args)


def _real(name):
  """(module, example inputs) at the original's options (fixed 256, fine 512)."""
  tokens, image = jnp.zeros((1, 16, 16, 512)), jnp.zeros((1, 256, 256, 3))
  return {"E": (tfill.DiffEncoder(), (image, jnp.ones((1, 256, 256, 1)))),
          "T": (tfill.Transformer(), (tokens, jnp.ones((1, 16, 16, 1)))),
          "G": (tfill.DiffDecoder(), (tokens, jnp.ones((1, 512, 512, 1)))),
          "D": (tfill.StyleDiscriminator(256), (image,)),
          "G_Ref": (tfill.RefinedGenerator(), (jnp.zeros((1, 512, 512, 3)), jnp.ones((1, 512, 512, 1)))),
          "D_Ref": (tfill.StyleDiscriminator(512), (jnp.zeros((1, 512, 512, 3)),))}[name]


# torch: sum(p.numel() for p in net.parameters()) of TC's networks built by networks.define_* with the options of
# scripts/train.sh (--attn_G --add_noise); and the number of state-dict keys (D's include 12 / 14 blur buffers).
COUNTS = {"E": (3_328_576, 84), "T": (38_374_912, 175), "G": (22_475_783, 143), "D": (19_048_993, 50),
          "G_Ref": (45_268_041, 197), "D_Ref": (19_056_401, 57)}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts(name):
  module, args = _real(name)
  variables = _abstract(module, *args)
  assert set(variables) == {"params"}
  assert common.count_params(variables["params"]) == COUNTS[name][0]
  out = jax.eval_shape(functools.partial(module.apply, rngs=_RNGS), variables, *args)
  shape = {"E": ((1, 16, 16, 512), (1, 16, 16, 1)), "T": (1, 16, 16, 512), "G": (1, 256, 256, 3),
           "D": (1, 1), "G_Ref": (1, 512, 512, 3), "D_Ref": (1, 1)}[name]
  assert jax.tree.map(lambda a: a.shape, out) == shape


def _hand_example():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # x[i, j] = 4 i + j
  kernel, bias = np.ones((3, 3, 1, 1), np.float32), np.array([0.5], np.float32)
  return x, kernel, bias


def test_partial_conv_by_hand():
  x, kernel, bias = _hand_example()
  mask = np.ones((1, 4, 4, 1), np.float32)
  mask[0, :2, :2] = 0  # a 2x2 hole in the top-left corner
  y, conf = (np.asarray(a)[0, ..., 0] for a in tfill.partial_conv(x, kernel, bias, mask, padding=1))
  # (0, 0): every tap in the hole or outside -> 0. (1, 1): visible 2 + 6 + 8 + 9 + 10 = 35 of 5 taps -> 35 * 9/5 + .5.
  # (0, 2): 2 + 3 + 6 + 7 = 18 of 4 -> 18 * 9/4 + .5. (3, 3): 10 + 11 + 14 + 15 = 50 of 4 -> 113.
  for (i, j), want, taps in (((0, 0), 0.0, 0), ((1, 1), 63.5, 5), ((0, 2), 41.0, 4), ((3, 3), 113.0, 4)):
    assert y[i, j] == pytest.approx(want, rel=1e-6) and conf[i, j] == pytest.approx(taps / 9, rel=1e-6)
  # Without a mask the zero-padded borders are renormalised: (0, 0) 0 + 1 + 4 + 5 = 10 of 4 taps -> 23; (0, 1)
  # 0 + 1 + 2 + 4 + 5 + 6 = 18 of 6 -> 27.5; (1, 1) all 9 -> 45.5, confidence 1.
  y, conf = (np.asarray(a)[0, ..., 0] for a in tfill.partial_conv(x, kernel, bias, None, padding=1))
  for (i, j), want, taps in (((0, 0), 23.0, 4), ((0, 1), 27.5, 6), ((1, 1), 45.5, 9)):
    assert y[i, j] == pytest.approx(want, rel=1e-6) and conf[i, j] == pytest.approx(taps / 9, rel=1e-6)
  # A soft mask 0.1: n = 0.9 inside, so ratio 9 / 0.9 * 0.9 = 9 and the output is scaled by 0.9:
  # (1, 1) (0.1 * 45 * 9 + .5) * 0.9 = 36.9, confidence 0.1.
  y, conf = tfill.partial_conv(x, kernel, bias, np.full((1, 4, 4, 1), 0.1, np.float32), padding=1)
  assert float(y[0, 1, 1, 0]) == pytest.approx(36.9, rel=1e-5) and float(conf[0, 1, 1, 0]) == pytest.approx(0.1)
  # Every call computes its own ratio (the original's cache would reuse the masked one for this mask-less call).
  np.testing.assert_allclose(tfill.partial_conv(x, kernel, bias, None, padding=1)[0][0, 0, 0, 0], 23.0)
  # Stride 2, kernel 2, no padding (E's downsampling): all windows inside, a plain strided conv.
  y, conf = tfill.partial_conv(x, np.ones((2, 2, 1, 1), np.float32), bias, None, stride=2)
  np.testing.assert_allclose(np.asarray(y)[0, ..., 0], [[10.5, 18.5], [42.5, 50.5]])
  np.testing.assert_array_equal(np.asarray(conf), 1.0)


def test_resize_bilinear_align_corners():
  x = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)
  got = np.asarray(tfill.resize_bilinear(jnp.asarray(x), (5, 1)))[0, :, 0, 0]
  np.testing.assert_allclose(got, [0, 0.5, 1, 1.5, 2])  # corners aligned: src = i * (3 - 1) / (5 - 1)
  got = np.asarray(tfill.resize_bilinear(jnp.asarray(x), (2, 1)))[0, :, 0, 0]
  np.testing.assert_allclose(got, [0, 2])


def test_inits():
  e = _jit(tfill.DiffEncoder(ngf=16, embed_dim=64, down_scale=2).init)(
      _RNGS, jnp.zeros((1, 8, 8, 3)), jnp.ones((1, 8, 8, 1)))["params"]
  kernel = np.asarray(e["down_1"]["block_0"]["conv1"]["kernel"])  # 1x1, 32 -> 64: kaiming N(0, 2 / 32)
  assert abs(kernel.std() / np.sqrt(2 / 32) - 1) < 0.1 and np.abs(kernel).max() > 2.5 * np.sqrt(2 / 32)
  assert all(np.all(np.asarray(leaf) == 0) for path, leaf in jax.tree_util.tree_leaves_with_path(e)
             if path[-1].key == "bias")
  assert np.all(np.asarray(e["mid"]["block1"]["norm1"]["alpha"]) == 1)
  t = _jit(tfill.Transformer(embed_dim=64, output_nc=64, dim_conv=128, n_encoders=3).init)(
      _RNGS, jnp.zeros((1, 4, 4, 64)), jnp.ones((1, 4, 4, 1)))["params"]
  layers = t["encoder_trans"]
  jax.tree.map(np.testing.assert_array_equal, layers["layers_0"], layers["layers_2"])  # _get_clones: equal copies
  q = np.asarray(layers["layers_0"]["attn"]["to_q"]["kernel"])
  assert np.sqrt(6 / 128) >= np.abs(q).max() > 0.9 * np.sqrt(6 / 128)  # xavier_uniform
  assert np.all(np.asarray(layers["layers_0"]["attn"]["to_q"]["bias"]) == 0)
  out_bias = np.asarray(layers["layers_0"]["attn"]["to_out"]["bias"])  # torch's Linear default: U(+-1/sqrt(64))
  assert 1 / 8 >= np.abs(out_bias).max() > 0.08
  conv = np.asarray(t["token_embed"]["kernel"])
  assert 1 / 8 >= np.abs(conv).max() > 0.12
  row = np.asarray(t["pos_embed"]["row_embed"]["embedding"])
  assert row.shape == (32, 64) and row.min() >= 0 and row.max() < 1 and row.mean() == pytest.approx(0.5, abs=0.02)
  d = _jit(tfill.StyleDiscriminator(32, max_channels=16).init)(_RNGS, jnp.zeros((4, 32, 32, 3)))["params"]
  kernel = np.asarray(d["final_linear_0"]["kernel"])
  assert abs(kernel.std() - 1) < 0.05 and np.all(np.asarray(d["final_linear_0"]["bias"]) == 0)


def test_torch_key_names():
  assert tfill.torch_key(("up_0", "noise_1", "alpha")) == "up.0.noise.1.alpha"
  assert tfill.torch_key(("convs_2", "conv2", "seq_1", "kernel")) == "convs.2.conv2.1.weight"
  assert tfill.torch_key(("pos_embed", "row_embed", "embedding")) == "pos_embed.row_embed.weight"
  assert tfill.torch_key(("up_1", "attn", "query_conv_0", "alpha")) == "up.1.attn.query_conv.0.alpha"
  module, args = _real("G")
  flat = jax.tree_util.tree_leaves_with_path(_abstract(module, *args)["params"])
  keys = torch_map.expected_keys({"params": _abstract(module, *args)["params"]}, _TABLE)
  assert sorted(keys) == sorted(tfill.torch_key([p.key for p in path]) for path, _ in flat)


# --- the torch rebuild ---


_torch = tfill_torch.rebuild
_randomise = tfill_torch.randomise
_nchw = tfill_torch.nchw


def _to_flax(net, module, *args):
  abstract = _abstract(module, *args)
  state_dict = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  return torch_map.load_variables(tfill.flax_layout_state_dict(state_dict), abstract, _TABLE, "torch rebuild", "")


def _close(got, want, bound=2e-5):
  want = want.detach().numpy()
  want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  assert err < bound, err
  return err


def _inputs(size, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  mask = np.ones((batch, size, size, 1), np.float32)
  mask[0, size // 4: size // 2, size // 8: 3 * size // 4] = 0
  mask[1, size // 2:, :size // 2] = 0
  return image * mask, mask


def test_encoder_and_transformer_match_torch():
  torch, ref = _torch()
  torch.manual_seed(0)
  net_e, net_t = ref["DiffEncoder"](4, 1, 32, 3), ref["Transformer"](32, 32, 32, 48, 8, 3)
  _randomise(torch, net_e, 1)
  _randomise(torch, net_t, 2)
  image, mask = _inputs(32)
  e, t = tfill.DiffEncoder(ngf=4, embed_dim=32, down_scale=3), tfill.Transformer(32, 32, 48, num_heads=8, n_encoders=3)
  variables = _to_flax(net_e, e, image, mask)
  tokens, token_mask = _jit(e.apply)(variables, image, mask)
  with torch.no_grad():
    want_tokens, want_mask = net_e(_nchw(torch, image), _nchw(torch, mask))
  _close(tokens, want_tokens), _close(token_mask, want_mask, 1e-6)
  soft = np.asarray(token_mask)
  assert ((soft > 0) & (soft < 1)).any() and (soft == 0).any()  # a soft mask with holes reaches T
  variables = _to_flax(net_t, t, tokens, token_mask)
  got = _jit(t.apply)(variables, tokens, token_mask)
  with torch.no_grad():
    want = net_t(want_tokens, want_mask)
  _close(got, want)


def test_decoder_matches_torch_with_noise_in_holes():
  torch, ref = _torch()
  torch.manual_seed(0)
  noises = []
  net = ref["DiffDecoder"](24, 2, 3, 8, 32, noises)
  _randomise(torch, net, 3)
  g = tfill.DiffDecoder(ngf=2, up_scale=3, num_heads=8, dim_conv=32)
  tokens = np.random.default_rng(1).normal(size=(2, 4, 4, 24)).astype(np.float32)
  _, mask = _inputs(64)  # the full-size mask, 2x the output as in TC.forward
  variables = _to_flax(net, g, tokens, mask)
  got, state = _jit(functools.partial(g.apply, mutable=["intermediates"]))(variables, tokens, mask, rngs=_RNGS)
  sown = state["intermediates"]
  noises += [_nchw(torch, sown[f"up_{i}"][f"noise_{j}"]["noise"][0]).double() for i in range(3) for j in range(2)]
  with torch.no_grad():  # The original in float64: the exact result, which torch's and XLA's float32 round.
    want = net.double()(_nchw(torch, tokens).double(), _nchw(torch, mask).double())
  assert not noises and got.shape == (2, 32, 32, 3)
  # Measured at these 2-channel widths: torch's own float32 output is 1.4e-5 from this; ours 9.0e-6 with XLA:CPU's
  # fusion emitters, 2.2e-5 with its loop emitters (the suite's).
  _close(got, want, bound=5e-5)


def test_noise_only_in_holes():
  x = jnp.zeros((1, 4, 4, 2))
  mask = np.ones((1, 8, 8, 1), np.float32)
  mask[:, :, 3:] = 0  # bilinear to 4 columns (align corners, src = 7/3 j): 1, 2/3, 0, 0
  variables = {"params": {"alpha": jnp.array([2.0])}}
  y, state = tfill.NoiseInjection().apply(variables, x, mask, rngs=_RNGS, mutable=["intermediates"])
  y, noise = np.asarray(y), np.asarray(state["intermediates"]["noise"][0])
  assert noise.shape == (1, 4, 4, 1) and np.all(y[..., 0, :] == 0)
  np.testing.assert_allclose(y[..., 1, :], np.repeat(2 * noise[..., 1, :] / 3, 2, -1), rtol=1e-5)
  np.testing.assert_allclose(y[..., 2:, :], np.repeat(2 * noise[..., 2:, :], 2, -1), rtol=1e-6)


def test_refined_generator_matches_torch():
  torch, ref = _torch()
  torch.manual_seed(0)
  net = ref["RefinedGenerator"](4, 32, 4, 1, 1)
  _randomise(torch, net, 4)
  g = tfill.RefinedGenerator(ngf=4, embed_dim=32, mid_layers=1, num_res_blocks=1)
  image, mask = _inputs(32)  # the attention-aware layer at 4x4 (H / 8), as at 64x64 of 512
  variables = _to_flax(net, g, image, mask)
  got = _jit(g.apply)(variables, image, mask)
  with torch.no_grad():
    want = net(_nchw(torch, image), _nchw(torch, mask))
  _close(got, want)


def test_style_discriminator_matches_torch():
  torch, ref = _torch()
  torch.manual_seed(0)
  net = ref["StyleDiscriminator"](32, 32, 16)
  _randomise(torch, net, 5)
  d = tfill.StyleDiscriminator(32, max_channels=16)
  image = np.random.default_rng(2).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  variables = _to_flax(net, d, image)
  got = _jit(d.apply)(variables, image)
  with torch.no_grad():
    want = net(_nchw(torch, image))
  _close(got, want)
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(d.apply, variables, jnp.zeros((6, 32, 32, 3)))


@pytest.mark.parametrize("name", list(COUNTS))
def test_real_size_keys_match_the_torch_rebuild(name):
  torch, ref = _torch()
  with torch.device("meta"):
    net = {"E": lambda: ref["DiffEncoder"](32, 1, 512, 4), "T": lambda: ref["Transformer"](512, 512, 512, 2048, 8, 12),
           "G": lambda: ref["DiffDecoder"](512, 32, 4, 8, 2048, []),
           "D": lambda: ref["StyleDiscriminator"](256), "G_Ref": lambda: ref["RefinedGenerator"](32, 512, 4, 6, 2),
           "D_Ref": lambda: ref["StyleDiscriminator"](512)}[name]()
  state_dict = net.state_dict()
  assert len(state_dict) == COUNTS[name][1]
  assert sum(p.numel() for p in net.parameters()) == COUNTS[name][0]
  module, args = _real(name)
  expected = torch_map.expected_keys(_abstract(module, *args), _TABLE)
  blur = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
  state_dict = {k: blur if k.endswith(".kernel") and v.ndim == 2 else np.broadcast_to(np.float32(0), v.shape)
                for k, v in state_dict.items()}
  torch_map.check_keys(tfill.flax_layout_state_dict(state_dict), expected, name, "")
