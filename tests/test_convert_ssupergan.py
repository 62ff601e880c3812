"""`convert ssupergan` against torch rebuilds of SSuperGAN's networks, end to end through checkpoint files.

The torch modules below rebuild networks/intro_vae.py (_Residual_Block, Encoder, Decoder, IntroVAE), networks/
ssupervae.py with panel_encoder/ (CNNEmbedder, PlainSequentialEncoder, LSTMSequentialEncoder) at a4d7a60 and
networks/ssuper_model.py's SSuperDCGAN parts with generator/dcgan_generator.py and discriminator/
dcgan_discriminator.py at e979e94, with the originals' module names (so their state_dicts have the originals'
keys) and forward passes; the backbone is efficientnet_pytorch's EfficientNet (b0 here). Files are written as
the trainers' save_checkpoint does ({epoch, model_state_dict, loss, optimizer..., scheduler...}). Tiny widths;
BatchNorm statistics and affine parameters randomised so eval mode is tested off the init.
"""

import copy
import functools
import json

import jax
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert import ssupergan as convert_ssupergan
from facegen_jax.convert import torch_map
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import UserError
from facegen_jax.families import common

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch", reason="the backbone's reference: "
                                           "see requirements-test.txt")
nn = torch.nn

RTOL = 1e-5
torch.set_num_threads(1)  # A second thread only fights the other jobs on these cores for tiny forwards.


def _apply(module, variables, *inputs, **kwargs):
  """module.apply(variables, *inputs, **kwargs) as one program compiled at XLA's lowest optimisation."""
  fn = functools.partial(module.apply, **kwargs)
  return jax.jit(fn, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)(variables, *inputs)


class TorchResidualBlock(nn.Module):
  """_Residual_Block(inc, outc): the skip conv only where the channels change; BN after the residual add."""

  def __init__(self, inc, outc):
    super().__init__()
    self.conv_expand = nn.Conv2d(inc, outc, 1, 1, 0, bias=False) if inc != outc else None
    self.conv1 = nn.Conv2d(inc, outc, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(outc)
    self.relu1 = nn.LeakyReLU(0.2)
    self.conv2 = nn.Conv2d(outc, outc, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(outc)
    self.relu2 = nn.LeakyReLU(0.2)

  def forward(self, x):
    identity = self.conv_expand(x) if self.conv_expand is not None else x
    out = self.conv2(self.relu1(self.bn1(self.conv1(x))))
    return self.relu2(self.bn2(out + identity))


class TorchEncoder(nn.Module):

  def __init__(self, hdim, channels, image_size):
    super().__init__()
    cc = channels[0]
    self.main = nn.Sequential(nn.Conv2d(3, cc, 5, 1, 2, bias=False), nn.BatchNorm2d(cc), nn.LeakyReLU(0.2),
                              nn.AvgPool2d(2))
    sz = image_size // 2
    for ch in channels[1:]:
      self.main.add_module(f"res_in_{sz}", TorchResidualBlock(cc, ch))
      self.main.add_module(f"down_to_{sz // 2}", nn.AvgPool2d(2))
      cc, sz = ch, sz // 2
    self.main.add_module(f"res_in_{sz}", TorchResidualBlock(cc, cc))
    self.fc = nn.Linear(cc * 4 * 4, 2 * hdim)

  def forward(self, x):
    return self.fc(self.main(x).view(x.size(0), -1))


class TorchDecoder(nn.Module):

  def __init__(self, hdim, channels, image_size):
    super().__init__()
    cc = channels[-1]
    self.fc = nn.Sequential(nn.Linear(hdim, cc * 4 * 4), nn.ReLU(True))
    sz = 4
    self.main = nn.Sequential()
    for ch in channels[::-1]:
      self.main.add_module(f"res_in_{sz}", TorchResidualBlock(cc, ch))
      self.main.add_module(f"up_to_{sz * 2}", nn.Upsample(scale_factor=2, mode="nearest"))
      cc, sz = ch, sz * 2
    self.main.add_module(f"res_in_{sz}", TorchResidualBlock(cc, cc))
    self.main.add_module("predict", nn.Conv2d(cc, 3, 5, 1, 2))

  def forward(self, z):
    return self.main(self.fc(z.view(z.size(0), -1)).view(z.size(0), -1, 4, 4))


class TorchIntroVAE(nn.Module):
  """GenericVAE(encoder, decoder): encode chunks the encoder's output into mu and log std."""

  def __init__(self, hdim, channels, image_size):
    super().__init__()
    self.encoder = TorchEncoder(hdim, channels, image_size)
    self.decoder = TorchDecoder(hdim, channels, image_size)

  def encode(self, x):
    return torch.chunk(self.encoder(x), 2, dim=1)


class TorchEmbedder(nn.Module):
  """CNNEmbedder: EfficientNet(num_classes=embed) on every panel."""

  def __init__(self, variant, embed):
    super().__init__()
    self.model = efficientnet_pytorch.EfficientNet.from_name(variant, num_classes=embed)

  def forward(self, x):
    b, s, c, h, w = x.shape
    return self.model(x.reshape(-1, c, h, w)).reshape(b, s, -1)


class TorchPlainSequentialEncoder(nn.Module):

  def __init__(self, variant, latent, embed, seq_size=3):
    super().__init__()
    self.embedder = TorchEmbedder(variant, embed)
    self.fc_mean = nn.Linear(seq_size * embed, latent)
    self.fc_lgstd = nn.Linear(seq_size * embed, latent)

  def forward(self, x):
    outs = self.embedder(x).reshape(x.shape[0], -1)
    return self.fc_mean(outs), self.fc_lgstd(outs)


class TorchLSTMSequentialEncoder(nn.Module):

  def __init__(self, variant, latent, embed, lstm_hidden, bidirectional, num_layers):
    super().__init__()
    self.num_layers, self.bidirectional = num_layers, bidirectional
    self.hidden = lstm_hidden // 2 if bidirectional else lstm_hidden
    self.embedder = TorchEmbedder(variant, embed)
    self.lstm = nn.LSTM(embed, self.hidden, bidirectional=bidirectional, num_layers=num_layers)
    self.fc_mean = nn.Linear(lstm_hidden, latent)
    self.fc_lgstd = nn.Linear(lstm_hidden, latent)

  def forward(self, x):
    b, s = x.shape[:2]
    outs = self.embedder(x).reshape(b, s, -1).permute(1, 0, 2)
    outs = outs[[-1, *np.arange(s - 1)], :, :]  # masked_first
    directions = 2 if self.bidirectional else 1
    zeros = torch.zeros(self.num_layers * directions, b, self.hidden)
    _, (outs, _) = self.lstm(outs, (zeros, zeros))
    outs = outs.view(self.num_layers, directions, b, -1).permute(2, 0, 1, 3)[:, -1, :, :].reshape(b, -1)
    return self.fc_mean(outs), self.fc_lgstd(outs)


def _sequence_encoder(variant, latent, embed, use_lstm, lstm_hidden, bidirectional, num_layers):
  if not use_lstm:
    return TorchPlainSequentialEncoder(variant, latent, embed)
  return TorchLSTMSequentialEncoder(variant, latent, embed, lstm_hidden, bidirectional, num_layers)


class TorchSSuperVAE(nn.Module):

  def __init__(self, variant, latent, embed, channels, image_size, **lstm):
    super().__init__()
    self.encoder = _sequence_encoder(variant, latent, embed, **lstm)
    self.decoder = TorchDecoder(latent, channels, image_size)


class TorchDCGANGenerator(nn.Module):

  def __init__(self, nz, ngf):
    super().__init__()
    layers = [nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU()]
    for mult in (8, 4, 2):
      layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                 nn.BatchNorm2d(ngf * mult // 2), nn.ReLU()]
    self.model = nn.Sequential(*layers, nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())

  def forward(self, z):
    return self.model(z)


class TorchDCGANDiscriminator(nn.Module):

  def __init__(self, ndf):
    super().__init__()
    layers = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for mult in (1, 2, 4):
      layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult * 2),
                 nn.LeakyReLU(0.2, inplace=True)]
    self.model = nn.Sequential(*layers, nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

  def forward(self, x):
    return self.model(x)


class TorchSSuperDCGAN(nn.Module):

  def __init__(self, variant, latent, embed, ngf, ndf, **lstm):
    super().__init__()
    self.seq_encoder = _sequence_encoder(variant, latent, embed, **lstm)
    self.generator = TorchDCGANGenerator(latent, ngf)
    self.local_discriminator = TorchDCGANDiscriminator(ndf)


# --- helpers ---


def _randomize(model, seed):
  """Random BN affine parameters and running statistics, so eval mode is not the init's identity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return model


def _save_checkpoint(path, model, *, parallel=False, epoch=7):
  """BaseTrainer.save_checkpoint's file: the model's state_dict with an Adam's and a LambdaLR's states."""
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999), weight_decay=2.5e-5)
  model.zero_grad()
  sum(p.sum() for p in model.parameters()).backward()
  optimizer.step()  # Adam moments in the file, as a real checkpoint has.
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (100 - e) / 100)
  state_dict = (nn.DataParallel(model) if parallel else model).state_dict()
  torch.save({"epoch": epoch, "model_state_dict": state_dict,
              "loss": {"train_losses": {"loss": [1.5, 1.2]}, "test_losses": {}},
              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)


def _convert(tmp_path, model, torch_model, *extra, parallel=False):
  checkpoint, out = tmp_path / "model-checkpoint-epoch7.pth", tmp_path / "converted"
  _save_checkpoint(checkpoint, torch_model, parallel=parallel)
  assert convert_main(["ssupergan", "--model", model, "--checkpoint", str(checkpoint), "--out", str(out),
                       *extra]) == 0
  return convert_ssupergan.load(out)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, -3)))


def _nhwc(t):
  return np.moveaxis(t.detach().numpy(), -3, -1)


def _close(got, want, rtol=RTOL):
  """Within rtol of the reference's range."""
  want = np.asarray(want)
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-3))


def _torch_bn_stats(module, prefix=""):
  return {name: (m.running_mean.numpy().copy(), m.running_var.numpy().copy())
          for name, m in module.named_modules(prefix=prefix) if isinstance(m, nn.BatchNorm2d)}


def _flat_stats(batch_stats):
  flat = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  return {tuple(k.key for k in path): np.asarray(v) for path, v in flat}


# --- VAE / IntroVAE ---


@pytest.fixture(scope="module")
def vae_case(tmp_path_factory):
  torch.manual_seed(0)
  reference = _randomize(TorchIntroVAE(8, [8, 16], 16), 1).eval()
  converted = _convert(tmp_path_factory.mktemp("vae"), "intro_vae", reference)
  return reference, converted


def test_vae_settings_from_the_shapes(vae_case):
  _, converted = vae_case
  assert converted.model == "intro_vae"
  assert converted.settings == {"latent_dim": 8, "channels": [8, 16], "image_size": 16}


def test_vae_matches_torch_in_eval_mode(vae_case):
  reference, converted = vae_case
  [module] = convert_ssupergan.networks_for(converted.model, **converted.settings).values()
  variables = converted.variables["vae"]
  x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  out = _apply(module, variables, x, train=False)
  with torch.no_grad():
    mu, log_std = reference.encode(_nchw(x))
    image = reference.decoder(mu)
  _close(out.mu, mu.numpy())
  _close(out.log_std, log_std.numpy())
  _close(out.image, _nhwc(image))  # The original's reconstruct: decoded from mu.


def test_vae_matches_torch_with_training_batch_norm(vae_case):
  reference, converted = vae_case
  [module] = convert_ssupergan.networks_for(converted.model, **converted.settings).values()
  variables = converted.variables["vae"]
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  noise = rng.normal(0, 1, (4, 8)).astype(np.float32)
  out, updated = _apply(module, variables, x, noise, train=True, mutable=["batch_stats"])
  trained = _randomize(TorchIntroVAE(8, [8, 16], 16), 0)
  trained.load_state_dict(reference.state_dict())
  trained.train()
  with torch.no_grad():
    mu, log_std = trained.encode(_nchw(x))
    image = trained.decoder(mu + log_std.exp() * torch.from_numpy(noise))
  _close(out.mu, mu.numpy())
  _close(out.log_std, log_std.numpy())
  _close(out.image, _nhwc(image))
  # The running statistics move as torch's (momentum 0.1, unbiased variance).
  stats = _flat_stats(updated["batch_stats"])
  table = convert_ssupergan.key_table("intro_vae")
  for (*path, leaf), value in stats.items():
    key = f"{table.prefix(('vae', *path))}.{table.leaf(leaf)}"
    _close(value, trained.state_dict()[key].numpy())


# --- SSuper-DCGAN ---

_DCGAN = dict(latent=8, embed=8, ngf=4, ndf=4, use_lstm=True, lstm_hidden=8, bidirectional=True, num_layers=1)
_PANEL = 32


@pytest.fixture(scope="module")
def dcgan_case(tmp_path_factory):
  torch.manual_seed(0)
  reference = _randomize(TorchSSuperDCGAN("efficientnet-b0", **_DCGAN), 2).eval()
  # The seed config trains it under nn.DataParallel: every key starts with "module.".
  converted = _convert(tmp_path_factory.mktemp("dcgan"), "ssuper_dcgan", reference, "--backbone",
                       "efficientnet-b0", "--panel_size", str(_PANEL), parallel=True)
  return reference, converted


def test_ssuper_dcgan_settings_from_the_shapes(dcgan_case):
  _, converted = dcgan_case
  assert converted.settings == dict(latent_dim=8, embed_dim=8, use_lstm=True, lstm_hidden=8, bidirectional=True,
                                    num_layers=1, seq_size=3, backbone="efficientnet-b0", panel_size=_PANEL,
                                    ngf=4, ndf=4)


def test_ssuper_dcgan_matches_torch(dcgan_case):
  reference, converted = dcgan_case
  modules = convert_ssupergan.networks_for(converted.model, **converted.settings)
  g_vars, d_vars = converted.variables["ssuper_dcgan"], converted.variables["discriminator"]
  rng = np.random.default_rng(2)
  panels = rng.uniform(-1, 1, (2, 3, _PANEL, _PANEL, 3)).astype(np.float32)
  faces = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  out = _apply(modules["ssuper_dcgan"], g_vars, panels, train=False)
  logits = _apply(modules["discriminator"], d_vars, faces, train=False)
  with torch.no_grad():
    mu, log_std = reference.seq_encoder(_nchw(panels))
    image = reference.generator(mu[:, :, None, None])
    prob = reference.local_discriminator(_nchw(faces)).view(-1)
  _close(out.mu, mu.numpy())
  _close(out.log_std, log_std.numpy())
  _close(out.image, _nhwc(image))
  _close(jax.nn.sigmoid(logits), prob.numpy())


def test_dcgan_generator_and_discriminator_with_training_batch_norm(dcgan_case):
  reference, converted = dcgan_case
  modules = convert_ssupergan.networks_for(converted.model, **converted.settings)
  g_vars, d_vars = converted.variables["ssuper_dcgan"], converted.variables["discriminator"]
  rng = np.random.default_rng(3)
  z = rng.normal(0, 1, (4, 8)).astype(np.float32)
  real = rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  generator = copy.deepcopy(reference.generator).train()  # The fixture's reference stays as it is.
  discriminator = copy.deepcopy(reference.local_discriminator).train()
  with torch.no_grad():
    fake = generator(torch.from_numpy(z)[:, :, None, None])
    # The original's D step: real and fake in one batch, so they share the batch statistics.
    prob = discriminator(torch.cat([_nchw(real), fake])).view(-1)
  fake_jax, g_stats = _apply(modules["ssuper_dcgan"], g_vars, z, train=True, method="decode",
                             mutable=["batch_stats"])
  logits, d_stats = _apply(modules["discriminator"], d_vars, np.concatenate([real, np.asarray(fake_jax)]),
                           train=True, mutable=["batch_stats"])
  _close(fake_jax, _nhwc(fake))
  _close(jax.nn.sigmoid(logits), prob.numpy())
  g_want = _torch_bn_stats(generator, "generator")
  d_want = _torch_bn_stats(discriminator, "local_discriminator")
  table = convert_ssupergan.key_table("ssuper_dcgan")
  for network, stats, want in (("ssuper_dcgan", g_stats, g_want), ("discriminator", d_stats, d_want)):
    got = {path: v for path, v in _flat_stats(stats["batch_stats"]).items() if path[0] != "backbone"}
    for (*path, leaf), value in got.items():
      module_key = table.prefix((network, *path))
      _close(value, want[module_key][0 if leaf == "mean" else 1])
    assert len(got) == 2 * len(want)


def test_ssuper_dcgan_generator_side_in_training(dcgan_case):
  # Training mode through the backbone too (its BatchNorm over all B * S panels at once, as CNNEmbedder's
  # reshape does), with dropout and drop-connect off on both sides: the only random parts.
  reference, converted = dcgan_case
  module = convert_ssupergan.networks_for(converted.model, **converted.settings)["ssuper_dcgan"]
  module = module.clone(backbone=module.backbone.clone(dropout_rate=0.0, drop_connect_rate=0.0))
  trained = copy.deepcopy(reference).train()
  backbone = trained.seq_encoder.embedder.model
  backbone._global_params = backbone._global_params._replace(drop_connect_rate=0.0)  # pylint: disable=protected-access
  backbone._dropout.p = 0.0  # pylint: disable=protected-access
  rng = np.random.default_rng(5)
  panels = rng.uniform(-1, 1, (2, 3, _PANEL, _PANEL, 3)).astype(np.float32)
  noise = rng.normal(0, 1, (2, 8)).astype(np.float32)
  out, updated = _apply(module, converted.variables["ssuper_dcgan"], panels, noise, train=True,
                        mutable=["batch_stats"])
  with torch.no_grad():
    mu, log_std = trained.seq_encoder(_nchw(panels))
    image = trained.generator((mu + log_std.exp() * torch.from_numpy(noise))[:, :, None, None])
  # Batch statistics of 6 panels through b0's 16 blocks: 8e-6 of the range here, so a looser bound.
  _close(out.mu, mu.numpy(), rtol=3e-5)
  _close(out.log_std, log_std.numpy(), rtol=3e-5)
  _close(out.image, _nhwc(image), rtol=3e-5)
  stem = updated["batch_stats"]["backbone"]["bn0"]
  before = converted.variables["ssuper_dcgan"]["batch_stats"]["backbone"]["bn0"]["var"]
  assert np.abs(stem["var"] - before).max() > 1e-4  # moved (momentum 0.01) ...
  _close(stem["var"], backbone._bn0.running_var.numpy())  # ... as torch's  # pylint: disable=protected-access


# --- PlainSSuperVAE ---


@pytest.mark.parametrize("lstm", [dict(use_lstm=False, lstm_hidden=256, bidirectional=False, num_layers=1),
                                  dict(use_lstm=True, lstm_hidden=6, bidirectional=False, num_layers=2)])
def test_plain_ssupervae_matches_torch(tmp_path, lstm):
  torch.manual_seed(1)
  reference = _randomize(TorchSSuperVAE("efficientnet-b0", 8, 8, [8, 16], 16, **lstm), 3).eval()
  converted = _convert(tmp_path, "plain_ssupervae", reference, "--backbone", "efficientnet-b0",
                       "--panel_size", str(_PANEL))
  assert converted.settings == dict(latent_dim=8, embed_dim=8, seq_size=3, backbone="efficientnet-b0",
                                    panel_size=_PANEL, channels=[8, 16], image_size=16, **lstm)
  [module] = convert_ssupergan.networks_for(converted.model, **converted.settings).values()
  panels = np.random.default_rng(4).uniform(-1, 1, (2, 3, _PANEL, _PANEL, 3)).astype(np.float32)
  out = _apply(module, converted.variables["ssupervae"], panels, train=False)
  with torch.no_grad():
    mu, log_std = reference.encoder(_nchw(panels))
    image = reference.decoder(mu)
  _close(out.mu, mu.numpy())
  _close(out.log_std, log_std.numpy())
  _close(out.image, _nhwc(image))


# --- errors ---


def test_errors_name_the_problem(tmp_path, vae_case, capsys):
  reference, _ = vae_case
  checkpoint = tmp_path / "vae.pth"
  _save_checkpoint(checkpoint, reference)
  out = str(tmp_path / "out")
  assert convert_main(["ssupergan", "--model", "ssuper_dcgan", "--checkpoint", str(checkpoint),
                       "--out", out]) == 2
  assert "not an SSuperGAN ssuper_dcgan checkpoint" in capsys.readouterr().err
  # A key the model does not have (SSuperVAE's fc_projector, absent from the configs) is refused by name.
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  state_dict["encoder.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(UserError, match="unexpected keys 1: encoder.extra.weight"):
    convert_ssupergan.variables_from_state_dict("vae", state_dict)
  torch.save(reference, tmp_path / "model.pth")  # the playgrounds' save_best_loss_model: a pickled module
  assert convert_main(["ssupergan", "--model", "vae", "--checkpoint", str(tmp_path / "model.pth"),
                       "--out", out]) == 2
  assert "ckpts/<name>-checkpoint-epoch<N>.pth" in capsys.readouterr().err
  with pytest.raises(UserError, match="convert a checkpoint"):
    convert_ssupergan.load(tmp_path / "nothing")


def test_written_files(vae_case, tmp_path):
  reference, converted = vae_case
  convert_ssupergan.save(tmp_path, converted)
  meta = json.loads((tmp_path / convert_ssupergan.MODEL_FILE).read_text())
  assert meta == {"model": "intro_vae", "settings": converted.settings}
  again = convert_ssupergan.load(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, again.variables, converted.variables)
  assert set(converted.variables["vae"]) == {"params", "batch_stats"}


@pytest.mark.parametrize("model", ["plain_ssupervae", "ssuper_dcgan"])
def test_full_size_keys_one_to_one(model):
  # The seed configs' sizes, built on torch's meta device (shapes only): every key but the backbone's has its
  # variable, and the totals are the originals' (38,924,275 with the LSTM; 47,505,584).
  with torch.device("meta"):
    if model == "plain_ssupervae":
      reference = TorchSSuperVAE("efficientnet-b5", 256, 256, [64, 128, 256, 512], 64, use_lstm=True,
                                 lstm_hidden=256, bidirectional=False, num_layers=1)
    else:
      reference = TorchSSuperDCGAN("efficientnet-b5", latent=512, embed=1024, ngf=64, ndf=64, use_lstm=True,
                                   lstm_hidden=1024, bidirectional=True, num_layers=1)
  state_dict = reference.state_dict()
  settings = convert_ssupergan.detect(model, state_dict)
  abstract = convert_ssupergan.abstract_variables(model, settings)
  backbone = "encoder.embedder.model." if model == "plain_ssupervae" else "seq_encoder.embedder.model."
  expected = torch_map.expected_keys(convert_ssupergan.without_backbone(abstract), convert_ssupergan.key_table(model))
  assert not torch_map.compare({k: v for k, v in state_dict.items() if not k.startswith(backbone)}, expected)
  total = sum(p.numel() for p in reference.parameters())
  assert total == (38_924_275 if model == "plain_ssupervae" else 47_505_584)
  assert sum(common.count_params(v["params"]) for v in abstract.values()) == total
