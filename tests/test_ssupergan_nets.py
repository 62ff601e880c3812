"""SSuperGAN networks: parameter counts against the originals, BatchNorm and the LSTM against torch, inits."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.families import common
from facegen_jax.nets import efficientnet
from facegen_jax.nets import ssupergan

# Each program here runs once: XLA's lowest optimisation compiles in seconds.
_jit = functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


def _abstract(module, *inputs, **kwargs):
  return jax.eval_shape(functools.partial(module.init, train=False, **kwargs), jax.random.key(0), *inputs)


def _counts(params):
  return {name: common.count_params(tree) for name, tree in params.items()}


def test_vae_parameter_counts_and_shapes():
  # torch: IntroVAE(image_size=64, channels=[64, 128, 256, 512], hdim=256) (networks/intro_vae.py, a4d7a60).
  image = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  module = ssupergan.VAE()
  variables = _abstract(module, image)
  assert _counts(variables["params"]) == {"encoder": 13_740_864, "decoder": 9_401_027}
  assert common.count_params(variables["params"]) == 23_141_891
  out = jax.eval_shape(functools.partial(module.apply, train=False), variables, image)
  assert (out.mu.shape, out.log_std.shape, out.image.shape) == ((2, 256), (2, 256), (2, 64, 64, 3))
  # Only channel changes get a 1x1 skip: res_in_32/16/8 in the encoder, res_in_8/16/32 in the decoder.
  assert sorted(k for k, v in variables["params"]["encoder"].items() if "conv_expand" in v) == [
      "res_in_16", "res_in_32", "res_in_8"]
  assert sorted(k for k, v in variables["params"]["decoder"].items() if "conv_expand" in v) == [
      "res_in_16", "res_in_32", "res_in_8"]


def test_dcgan_parameter_counts_and_shapes():
  # DCGANGenerator(64, 3, 512, 64) and DCGANDiscriminator(64, 3, 512, 64) (e979e94).
  z = jax.ShapeDtypeStruct((2, 512), jnp.float32)
  g = _abstract(ssupergan.DCGANGenerator(), z)
  assert common.count_params(g["params"]) == 6_951_808
  image = jax.eval_shape(functools.partial(ssupergan.DCGANGenerator().apply, train=False), g, z)
  assert image.shape == (2, 64, 64, 3)
  d = _abstract(ssupergan.DCGANDiscriminator(), image)
  assert common.count_params(d["params"]) == 2_765_568
  logits = jax.eval_shape(functools.partial(ssupergan.DCGANDiscriminator().apply, train=False), d, image)
  assert logits.shape == (2,)


@pytest.mark.parametrize("kwargs, count", [
    (dict(use_lstm=False), 2 * (768 * 256 + 256)),  # fc_mean, fc_lgstd on 3 x 256
    (dict(use_lstm=True, lstm_hidden=256), 4 * 256 * 512 + 8 * 256 + 2 * (256 * 256 + 256)),
    (dict(use_lstm=True, lstm_hidden=1024, bidirectional=True, latent_dim=512, embed=1024),
     6_299_648 + 1_049_600),
    (dict(use_lstm=True, lstm_hidden=64, bidirectional=True, num_layers=3, embed=16),
     2 * (4 * 32 * 48 + 8 * 32) + 4 * (4 * 32 * 96 + 8 * 32) + 2 * (64 * 256 + 256)),
])
def test_sequence_encoder_parameter_counts(kwargs, count):
  kwargs = {**dict(latent_dim=256, use_lstm=False, lstm_hidden=256, bidirectional=False, num_layers=1,
                   lstm_dropout=0.0, masked_first=True), **kwargs}
  embed = kwargs.pop("embed", 256)
  module = ssupergan.sequence_encoder(**kwargs)
  variables = _abstract(module, jax.ShapeDtypeStruct((2, 3, embed), jnp.float32))
  assert common.count_params(variables["params"]) == count
  mu, log_std = jax.eval_shape(functools.partial(module.apply, train=False), variables,
                               jax.ShapeDtypeStruct((2, 3, embed), jnp.float32))
  assert mu.shape == log_std.shape == (2, kwargs["latent_dim"])


@pytest.mark.parametrize("model, kwargs, counts", [
    # SSuperVAE('efficientnet-b5', ...) of networks/ssupervae.py: 38,660,083 plain, 38,924,275 with the LSTM.
    ("plain", dict(), dict(backbone=28_865_328, sequence_encoder=393_728, decoder=9_401_027)),
    ("plain", dict(use_lstm=True), dict(backbone=28_865_328, sequence_encoder=657_920, decoder=9_401_027)),
    # SSuperDCGAN at the seed config: embedder 30,438,960 + LSTM 6,299,648 + fc 1,049,600 + G 6,951,808.
    ("dcgan", dict(), dict(backbone=30_438_960, sequence_encoder=7_349_248, generator=6_951_808)),
])
def test_ssuper_parameter_counts(model, kwargs, counts):
  panels = jax.ShapeDtypeStruct((1, 3, 300, 300, 3), jnp.float32)
  if model == "plain":
    module = ssupergan.PlainSSuperVAE(efficientnet.EfficientNet("efficientnet-b5", num_classes=256), **kwargs)
    total = 38_924_275 if kwargs else 38_660_083
  else:
    module = ssupergan.SSuperDCGAN(efficientnet.EfficientNet("efficientnet-b5", num_classes=1024))
    total = 47_505_584 - 2_765_568  # less the local D
  variables = _abstract(module, panels)
  assert _counts(variables["params"]) == counts and common.count_params(variables["params"]) == total
  out = jax.eval_shape(functools.partial(module.apply, train=False), variables, panels)
  assert out.image.shape == (1, 64, 64, 3) and out.mu.shape == (1, 512 if model == "dcgan" else 256)


def test_batch_norm_is_torchs():
  rng = np.random.default_rng(0)
  x = rng.normal(1.5, 2.0, (3, 4, 5, 6)).astype(np.float32)
  module = ssupergan.BatchNorm()
  variables = module.init(jax.random.key(0), x, train=True)
  np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(6))  # init stores nothing
  scale, bias = rng.normal(1, 0.3, 6).astype(np.float32), rng.normal(0, 0.3, 6).astype(np.float32)
  params = {"scale": scale, "bias": bias}
  stats = {"mean": rng.normal(0, 1, 6).astype(np.float32), "var": rng.uniform(0.5, 2, 6).astype(np.float32)}
  y, updated = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  x64 = x.astype(np.float64).reshape(-1, 6)
  mean, var = x64.mean(0), x64.var(0)
  np.testing.assert_allclose(y.reshape(-1, 6), (x64 - mean) / np.sqrt(var + 1e-5) * scale + bias, atol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.9 * stats["mean"] + 0.1 * mean, rtol=1e-5)
  # torch moves the running variance with the unbiased batch variance (n / (n - 1) of the biased one).
  np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 * stats["var"] + 0.1 * x64.var(0, ddof=1),
                             rtol=1e-5)
  y = module.apply({"params": params, "batch_stats": stats}, x, train=False)
  np.testing.assert_allclose(y.reshape(-1, 6), (x64 - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * scale + bias,
                             atol=1e-5)
  # In training without a mutable batch_stats: batch statistics, nothing stored.
  y_frozen = module.apply({"params": params, "batch_stats": stats}, x, train=True)
  np.testing.assert_allclose(y_frozen.reshape(-1, 6), (x64 - mean) / np.sqrt(var + 1e-5) * scale + bias, atol=1e-5)


def _lstm_case(seed=0, *, hidden=6, layers=2, bidirectional=True, embed=5, batch=3, steps=4):
  torch = pytest.importorskip("torch", reason="the reference is torch.nn.LSTM: see requirements-test.txt")
  torch.manual_seed(seed)
  reference = torch.nn.LSTM(embed, hidden, num_layers=layers, bidirectional=bidirectional)
  params = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  x = np.random.default_rng(seed).normal(0, 1, (batch, steps, embed)).astype(np.float32)
  return torch, reference, params, x


def test_lstm_matches_torch_bidirectional_two_layers():
  torch, reference, params, x = _lstm_case()
  module = ssupergan.LSTM(6, num_layers=2, bidirectional=True)
  # Same names and shapes as torch's state_dict: a checkpoint loads one to one.
  assert jax.tree.map(np.shape, _abstract(module, x)["params"]) == {k: v.shape for k, v in params.items()}
  out, h_n, c_n = _jit(functools.partial(module.apply, train=False))({"params": params}, x)
  with torch.no_grad():
    want, (want_h, want_c) = reference(torch.from_numpy(x).transpose(0, 1))
  np.testing.assert_allclose(out, want.transpose(0, 1).numpy(), atol=2e-6)
  np.testing.assert_allclose(h_n, want_h.numpy(), atol=2e-6)
  np.testing.assert_allclose(c_n, want_c.numpy(), atol=2e-6)


def test_lstm_dropout_only_between_layers_in_training():
  _, _, params, x = _lstm_case(1)
  module = ssupergan.LSTM(6, num_layers=2, bidirectional=True, dropout=0.5)
  eval_out = _jit(functools.partial(module.apply, train=False))({"params": params}, x)
  train_out = _jit(functools.partial(module.apply, train=True))({"params": params}, x,
                                                                 rngs={"dropout": jax.random.key(3)})
  np.testing.assert_array_equal(train_out[1][:2], eval_out[1][:2])  # layer 0: its input is never dropped
  assert np.abs(train_out[1][2:] - eval_out[1][2:]).max() > 1e-3  # layer 1 reads dropped, rescaled outputs


def _torch_lstm_encoder(torch, lstm, embeddings, num_layers, bidirectional):
  """LSTMSequentialEncoder.forward after its embedder (networks/panel_encoder/lstm_sequential_encoder.py)."""
  outs = torch.from_numpy(embeddings).permute(1, 0, 2)
  steps, batch = outs.shape[:2]
  outs = outs[[-1, *np.arange(steps - 1)], :, :]
  directions = 2 if bidirectional else 1
  zeros = torch.zeros(num_layers * directions, batch, lstm.hidden_size)
  _, (outs, _) = lstm(outs, (zeros, zeros))
  return outs.view(num_layers, directions, batch, -1).permute(2, 0, 1, 3)[:, -1, :, :].reshape(batch, -1)


@pytest.mark.parametrize("num_layers, bidirectional", [(2, True), (1, False)])
def test_lstm_sequence_encoder_takes_the_masked_panel_first_and_the_last_layers_state(num_layers, bidirectional):
  torch, reference, lstm_params, x = _lstm_case(2, layers=num_layers, bidirectional=bidirectional)
  module = ssupergan.LSTMSequenceEncoder(latent_dim=4, hidden=12 if bidirectional else 6,
                                         bidirectional=bidirectional, num_layers=num_layers)
  variables = jax.tree.map(np.asarray, module.init(jax.random.key(0), x, train=False))
  variables["params"]["lstm"] = lstm_params
  mu, log_std = module.apply(variables, x, train=False)
  with torch.no_grad():
    h = _torch_lstm_encoder(torch, reference, x, num_layers, bidirectional).numpy()
  fc = variables["params"]
  np.testing.assert_allclose(mu, h @ fc["fc_mean"]["kernel"] + fc["fc_mean"]["bias"], atol=2e-6)
  np.testing.assert_allclose(log_std, h @ fc["fc_lgstd"]["kernel"] + fc["fc_lgstd"]["bias"], atol=2e-6)
  # Order matters: the same panels in the original order give another code.
  unordered = ssupergan.LSTMSequenceEncoder(latent_dim=4, hidden=module.hidden, bidirectional=bidirectional,
                                            num_layers=num_layers, masked_first=False)
  assert np.abs(unordered.apply(variables, x, train=False)[0] - mu).max() > 1e-4


def test_plain_sequence_encoder_concatenates_in_panel_order():
  x = np.random.default_rng(0).normal(0, 1, (2, 3, 4)).astype(np.float32)
  module = ssupergan.PlainSequenceEncoder(latent_dim=5)
  variables = module.init(jax.random.key(0), x, train=False)
  mu, log_std = module.apply(variables, x, train=False)
  p = variables["params"]
  flat = np.concatenate([x[:, 0], x[:, 1], x[:, 2]], axis=-1)  # torch's reshape(B, -1) of (B, S, E)
  np.testing.assert_allclose(mu, flat @ p["fc_mean"]["kernel"] + p["fc_mean"]["bias"], atol=1e-6)
  np.testing.assert_allclose(log_std, flat @ p["fc_lgstd"]["kernel"] + p["fc_lgstd"]["bias"], atol=1e-6)


class _TinyBackbone(nn.Module):
  """The backbone interface (N, H, W, 3) -> (N, E) at no cost."""
  features: int = 8

  @nn.compact
  def __call__(self, x, *, train):
    return nn.Dense(self.features)(x.mean(axis=(1, 2)))


def test_samples_and_reconstructions():
  panels = jax.random.uniform(jax.random.key(1), (2, 3, 8, 8, 3), minval=-1, maxval=1)
  module = ssupergan.PlainSSuperVAE(_TinyBackbone(), latent_dim=4, use_lstm=True, lstm_hidden=6,
                                    channels=(4, 8), image_size=16)
  noise = jax.random.normal(jax.random.key(2), (2, 4))

  def run(key):
    variables = module.init(key, panels, train=False)
    sampled, recon = (module.apply(variables, panels, train=False, noise=n) for n in (noise, None))
    return sampled, recon, module.apply(variables, recon.mu, train=False, method="decode")

  sampled, recon, decoded = _jit(run)(jax.random.key(0))
  np.testing.assert_allclose(sampled.z, sampled.mu + np.exp(sampled.log_std) * noise, rtol=1e-6)
  np.testing.assert_array_equal(recon.z, recon.mu)
  np.testing.assert_allclose(recon.image, decoded, atol=1e-6)
  assert np.abs(sampled.image - recon.image).max() > 1e-4


def test_inits():
  def init(key):  # One program for every network.
    return dict(
        g=ssupergan.DCGANGenerator(ngf=16).init(key, jnp.zeros((1, 32)), train=False)["params"],
        d=ssupergan.DCGANDiscriminator(ndf=8).init(key, jnp.zeros((1, 64, 64, 3)), train=False)["params"],
        lstm=ssupergan.LSTM(16).init(key, jnp.zeros((1, 2, 4)), train=False)["params"],
        vae=ssupergan.VAE(latent_dim=8, channels=(4, 8), image_size=16).init(
            key, jnp.zeros((1, 16, 16, 3)), train=False)["params"])

  params = _jit(init)(jax.random.key(0))
  g, d = params["g"], params["d"]
  kernels = np.concatenate([np.ravel(g[f"conv_{i}"]["kernel"]) for i in range(5)])
  scales = np.concatenate([g[f"bn_{i}"]["scale"] for i in range(4)])
  assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001  # N(0, 0.02): weights_init
  assert abs(scales.std() - 0.02) < 0.005 and abs(scales.mean() - 1) < 0.005  # N(1, 0.02)
  bound = 1 / np.sqrt(8 * 16)  # torch's default for conv_1 (fan_in 8 * 4 * 4)
  assert bound >= np.abs(d["conv_1"]["kernel"]).max() > 0.95 * bound
  np.testing.assert_array_equal(d["bn_1"]["scale"], np.ones(16))  # the original gives its D no weights_init
  for value in params["lstm"].values():
    assert 0.25 >= np.abs(value).max() > 0.2  # U(+-1/sqrt(hidden))
  fc = params["vae"]["encoder"]["fc"]
  assert 1 / np.sqrt(8 * 16) >= np.abs(fc["bias"]).max() > 0.5 / np.sqrt(8 * 16)


def test_size_errors():
  with pytest.raises(ValueError, match="2 \\*\\* len"):
    _abstract(ssupergan.VAE(channels=(64, 128)), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  with pytest.raises(ValueError, match="built for 64 px"):
    _abstract(ssupergan.VAE(), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  with pytest.raises(ValueError, match="64 px"):
    _abstract(ssupergan.DCGANDiscriminator(), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  with pytest.raises(ValueError, match="even"):
    _abstract(ssupergan.LSTMSequenceEncoder(hidden=5, bidirectional=True),
              jax.ShapeDtypeStruct((1, 3, 4), jnp.float32))

