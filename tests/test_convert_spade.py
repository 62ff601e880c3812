"""`convert spade` against a torch rebuild of NVlabs/SPADE's generator and encoder: same outputs in eval mode.

The torch modules below follow the original's module names and forward passes (SPADEGenerator,
SPADEResnetBlock, SPADE, ConvEncoder), with BatchNorm2d(affine=False) standing in for SynchronizedBatchNorm2d
(same state_dict keys, same single-device computation). Tiny widths keep every case to seconds.
"""

import functools

import numpy as np
import pytest
from PIL import Image

import jax

from facegen_jax import compile as compile_lib
from facegen_jax import generate
from facegen_jax import rundir
from facegen_jax.convert import spade as convert_spade
from facegen_jax.convert import torch_map
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import UserError
from facegen_jax import families
from facegen_jax.families import spade

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
nn, F = torch.nn, torch.nn.functional
sn = torch.nn.utils.spectral_norm

LABEL_NC = 19
ATOL = 1e-4
_FAST_COMPILE = compile_lib.CPU_FAST_COMPILE_OPTIONS


class TorchSPADE(nn.Module):

  def __init__(self, norm_nc, label_nc, batch):
    super().__init__()
    self.param_free_norm = (nn.BatchNorm2d(norm_nc, affine=False) if batch
                            else nn.InstanceNorm2d(norm_nc, affine=False))
    self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, 128, 3, padding=1), nn.ReLU())
    self.mlp_gamma = nn.Conv2d(128, norm_nc, 3, padding=1)
    self.mlp_beta = nn.Conv2d(128, norm_nc, 3, padding=1)

  def forward(self, x, seg):
    seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
    hidden = self.mlp_shared(seg)
    return self.param_free_norm(x) * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)


class TorchBlock(nn.Module):

  def __init__(self, fin, fout, opt):
    super().__init__()
    self.learned_shortcut = fin != fout
    fmiddle = min(fin, fout)
    wrap = sn if opt["spectral"] else (lambda m: m)
    self.conv_0 = wrap(nn.Conv2d(fin, fmiddle, 3, padding=1))
    self.conv_1 = wrap(nn.Conv2d(fmiddle, fout, 3, padding=1))
    if self.learned_shortcut:
      self.conv_s = wrap(nn.Conv2d(fin, fout, 1, bias=False))
    self.norm_0 = TorchSPADE(fin, opt["label_nc"], opt["batch"])
    self.norm_1 = TorchSPADE(fmiddle, opt["label_nc"], opt["batch"])
    if self.learned_shortcut:
      self.norm_s = TorchSPADE(fin, opt["label_nc"], opt["batch"])

  def forward(self, x, seg):
    x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
    dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
    dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
    return x_s + dx


class TorchGenerator(nn.Module):
  """NVlabs/SPADE's SPADEGenerator; opt keys: label_nc, ngf, crop, mode, use_vae, z_dim, spectral, batch."""

  def __init__(self, **opt):
    super().__init__()
    self.opt = opt
    nf = opt["ngf"]
    self.sw = opt["crop"] // 2 ** {"normal": 5, "more": 6, "most": 7}[opt["mode"]]
    self.sh = self.sw
    if opt["use_vae"]:
      self.fc = nn.Linear(opt["z_dim"], 16 * nf * self.sw * self.sh)
    else:
      self.fc = nn.Conv2d(opt["label_nc"], 16 * nf, 3, padding=1)
    self.head_0 = TorchBlock(16 * nf, 16 * nf, opt)
    self.G_middle_0 = TorchBlock(16 * nf, 16 * nf, opt)
    self.G_middle_1 = TorchBlock(16 * nf, 16 * nf, opt)
    self.up_0 = TorchBlock(16 * nf, 8 * nf, opt)
    self.up_1 = TorchBlock(8 * nf, 4 * nf, opt)
    self.up_2 = TorchBlock(4 * nf, 2 * nf, opt)
    self.up_3 = TorchBlock(2 * nf, nf, opt)
    final_nc = nf
    if opt["mode"] == "most":
      self.up_4 = TorchBlock(nf, nf // 2, opt)
      final_nc = nf // 2
    self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
    self.up = nn.Upsample(scale_factor=2)

  def forward(self, seg, z=None):
    if self.opt["use_vae"]:
      x = self.fc(z).view(-1, 16 * self.opt["ngf"], self.sh, self.sw)
    else:
      x = self.fc(F.interpolate(seg, size=(self.sh, self.sw)))
    x = self.G_middle_0(self.up(self.head_0(x, seg)), seg)
    if self.opt["mode"] in ("more", "most"):
      x = self.up(x)
    x = self.G_middle_1(x, seg)
    for block in (self.up_0, self.up_1, self.up_2, self.up_3):
      x = block(self.up(x), seg)
    if self.opt["mode"] == "most":
      x = self.up_4(self.up(x), seg)
    return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class TorchEncoder(nn.Module):
  """NVlabs/SPADE's ConvEncoder for crop >= 256 (with layer6), norm_E 'spectralinstance'."""

  def __init__(self, ngf):
    super().__init__()
    def layer(fin, fout):  # get_nonspade_norm_layer: spectral conv without bias, then InstanceNorm2d.
      return nn.Sequential(sn(nn.Conv2d(fin, fout, 3, stride=2, padding=1, bias=False)),
                           nn.InstanceNorm2d(fout, affine=False))
    widths = [3, ngf, 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf, 8 * ngf]
    for i in range(6):
      self.add_module(f"layer{i + 1}", layer(widths[i], widths[i + 1]))
    self.fc_mu = nn.Linear(8 * ngf * 16, 256)
    self.fc_var = nn.Linear(8 * ngf * 16, 256)

  def forward(self, x):
    if x.shape[2:] != (256, 256):
      x = F.interpolate(x, size=(256, 256), mode="bilinear")
    x = self.layer1(x)
    for i in range(2, 7):
      x = getattr(self, f"layer{i}")(F.leaky_relu(x, 0.2))
    x = F.leaky_relu(x, 0.2).reshape(x.shape[0], -1)
    return self.fc_mu(x), self.fc_var(x)


def _labels(crop, batch=2, seed=0):
  """Blocky random parsing maps (int, (B, H, W)), so every resize keeps several classes."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, LABEL_NC, (batch, crop // 4, crop // 4))
  return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)


def _one_hot(labels):
  return torch.from_numpy(np.eye(LABEL_NC, dtype=np.float32)[labels].transpose(0, 3, 1, 2))


def _trained_generator(steps=2, **opt):
  """A torch G whose spectral vectors and running statistics have moved: `steps` training-mode forwards."""
  torch.manual_seed(0)
  opt = dict(dict(label_nc=LABEL_NC, ngf=4, crop=32, mode="normal", use_vae=False, z_dim=8, spectral=True,
                  batch=True), **opt)
  generator = TorchGenerator(**opt)
  with torch.no_grad():
    for seed in range(steps):
      z = torch.randn(2, opt["z_dim"]) if opt["use_vae"] else None
      generator(_one_hot(_labels(opt["crop"], 2, seed=10 + seed)), z)
  return generator.eval()


def _convert(tmp_path, state_dict, *flags, name="G"):
  path, out = tmp_path / f"{name}.pth", tmp_path / f"run_{name}"
  torch.save(state_dict, path)
  assert convert_main(["spade", "--checkpoint", str(path), "--out", str(out), "--ndf", "4", *flags]) == 0
  return out


def _generated(out, labels, tmp_path):
  """generate.run on PNG label maps -> (B, H, W, 3) from the .npy files."""
  maps = tmp_path / "maps"
  maps.mkdir(exist_ok=True)
  for i, label in enumerate(labels):
    Image.fromarray(label.astype(np.uint8), mode="L").save(maps / f"{i}.png")
  images = tmp_path / f"images_{out.name}"
  generate.run(str(out), str(images), labels=str(maps), save_raw=True)
  return np.stack([np.load(images / f"{i}.npy") for i in range(len(labels))])


def _expected(generator, labels, z=None):
  with torch.no_grad():
    return generator(_one_hot(labels), z).numpy().transpose(0, 2, 3, 1)


def _assert_close(got, want):
  diff = np.abs(got - want).max()
  print(f"max abs diff {diff:.2e}")
  assert diff <= ATOL and np.abs(want).max() > 0.05  # A real image, not a saturated or vanishing one.


def test_faceit_style_generator_through_generate(tmp_path, capsys):
  generator = _trained_generator()
  sd = generator.state_dict()
  out = _convert(tmp_path, sd, "--crop_size", "32")
  line = capsys.readouterr().out
  assert "label_nc 19, ngf 4, crop 32, normal" in line and f"--workdir {out}" in line
  labels = _labels(32)
  _assert_close(_generated(out, labels, tmp_path), _expected(generator, labels))

  # Nested in a dict and with DataParallel's `module.` prefix: the same state.
  wrapped = _convert(tmp_path, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "--crop_size", "32",
                     name="module")
  config = rundir.load_config(out)
  assert (config.model.label_nc, config.input.num_classes, config.input.resolution) == (19, 19, 32)
  (a, _), (b, _) = rundir.restore_state(out, config), rundir.restore_state(wrapped, config)
  generator_vars = lambda s: (s.params["g"], s.collections["g"])
  jax.tree.map(np.testing.assert_array_equal, generator_vars(a), generator_vars(b))
  # Key by key, as the docstring of facegen_jax.nets.spade says.
  np.testing.assert_array_equal(a.params["g"]["fc"]["kernel"], sd["fc.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(a.params["g"]["up_0"]["conv_s"]["kernel"],
                                sd["up_0.conv_s.weight_orig"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(a.collections["g"]["spectral_stats"]["up_0"]["conv_s"]["v"], sd["up_0.conv_s.weight_v"].numpy())
  np.testing.assert_array_equal(a.collections["g"]["batch_stats"]["head_0"]["norm_1"]["param_free_norm"]["running_var"],
                                sd["head_0.norm_1.param_free_norm.running_var"].numpy())
  assert not np.allclose(sd["head_0.norm_1.param_free_norm.running_var"].numpy(), 1)  # Moved by training.


def _restored_generate(out, labels, style=None, seed=0):
  config = rundir.load_config(out)
  state, step = rundir.restore_state(out, config)
  assert step == 0
  inputs = {"label": labels.astype(np.int32)}
  if style is not None:
    inputs["style"] = style
  # Compiled once per test, so at XLA's lowest optimisation level: seconds instead of a minute on 2 cores.
  run = jax.jit(functools.partial(spade.generate, config), compiler_options=_FAST_COMPILE)
  return np.asarray(run(state, inputs, jax.random.key(seed))["generated"]), config


def test_most_with_pre_1_0_spectral_norm_checkpoint(tmp_path):
  generator = _trained_generator(crop=128, mode="most")
  sd = generator.state_dict()
  # torch < 1.0 stored the normalised weight instead of weight_v; torch's load pre-hook solves v back.
  old = {}
  for key, value in sd.items():
    if key.endswith(".weight_v"):
      base = key[:-len("_v")]
      module = generator.get_submodule(base[:-len(".weight")])
      old[base] = module.weight.detach().clone()  # weight_orig / sigma from the stored u and v (eval mode).
    else:
      old[key] = value
  out = _convert(tmp_path, old, name="old")
  reference = TorchGenerator(**generator.opt)
  reference.load_state_dict(old)  # Runs torch's own pre-hook for the missing weight_v.
  reference.eval()
  labels = _labels(128, batch=1)
  got, config = _restored_generate(out, labels)
  assert config.model.num_upsampling_layers == "most"
  _assert_close(got, _expected(reference, labels))


def test_instance_norm_without_spectral_norm_and_more_by_flag(tmp_path):
  # Nothing to train: no running statistics, no spectral vectors. Crop 128, as torch's instance norm refuses
  # the 1x1 start of 'more' at crop 64.
  generator = _trained_generator(steps=0, crop=128, mode="more", spectral=False, batch=False)
  out = _convert(tmp_path, generator.state_dict(), "--num_upsampling_layers", "more")
  labels = _labels(128, batch=1)
  got, config = _restored_generate(out, labels)
  assert (config.model.g_param_free_norm, config.model.g_spectral_norm) == ("instance", False)
  _assert_close(got, _expected(generator, labels))


def test_use_vae_generator_and_encoder_with_style(tmp_path):
  # 'more' at crop 64 (a 1x1 start) is what fc's size says; no flag is needed.
  generator = _trained_generator(use_vae=True, z_dim=256, crop=64, mode="more")
  torch.manual_seed(1)
  encoder = TorchEncoder(ngf=4)
  with torch.no_grad():
    for _ in range(2):
      encoder(torch.rand(2, 3, 256, 256) * 2 - 1)  # Moves u and v.
  encoder.eval()
  torch.save(encoder.state_dict(), tmp_path / "E.pth")
  out = _convert(tmp_path, generator.state_dict(), "--crop_size", "64", "--encoder", str(tmp_path / "E.pth"))
  labels = _labels(64)
  style = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  got, config = _restored_generate(out, labels, style=style, seed=3)
  assert (config.model.use_vae, config.model.z_dim, config.model.e_spectral_norm) == (True, 256, True)
  assert config.model.num_upsampling_layers == "more"
  # spade.generate draws the reparameterization noise from its rng first.
  noise = torch.from_numpy(np.array(jax.random.normal(jax.random.key(3), (2, 256))))
  with torch.no_grad():
    mu, logvar = encoder(torch.from_numpy(style.transpose(0, 3, 1, 2)))
  _assert_close(got, _expected(generator, labels, mu + torch.exp(0.5 * logvar) * noise))


def test_full_size_faceit_generator_keys_map_one_to_one():
  # Shapes only: the 92M-parameter torch module lives on the meta device, the flax side is eval_shape.
  with torch.device("meta"):
    sd = TorchGenerator(label_nc=19, ngf=64, crop=128, mode="normal", use_vae=False, z_dim=256, spectral=True,
                        batch=True).state_dict()
  model = convert_spade.detect_generator(sd, "faceit")
  assert model == dict(label_nc=19, ngf=64, crop_size=128, aspect_ratio=1.0, use_vae=False, g_spectral_norm=True,
                       g_param_free_norm="batch", num_upsampling_layers="normal")
  config = convert_spade.build_config(model)
  abstract = jax.eval_shape(functools.partial(families.init_state, config), jax.random.key(0))
  expected = torch_map.expected_keys(convert_spade._generator_variables(abstract), convert_spade.GENERATOR_KEYS)
  torch_map.check_keys(sd, expected, "faceit", "")
  assert set(expected) == {k for k in sd if not k.endswith("num_batches_tracked")}
  buffers = ("_u", "_v", "running_mean", "running_var", "num_batches_tracked")
  assert sum(np.prod(v.shape) for k, v in sd.items() if not k.endswith(buffers)) == 92_538_819  # The original's.


def test_wrong_files_are_one_line_errors(tmp_path, capsys):
  def fails(path, *flags):
    code = convert_main(["spade", "--checkpoint", str(path), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o").exists()
    return err

  assert "absent.pth does not exist" in fails(tmp_path / "absent.pth")
  d_like = {"discriminator_0.model0.0.weight": torch.zeros(4, 22, 4, 4),
            "discriminator_0.model1.0.0.weight_orig": torch.zeros(8, 4, 4, 4)}
  torch.save(d_like, tmp_path / "D.pth")
  assert "looks like a discriminator" in fails(tmp_path / "D.pth")
  torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
  assert "VGG19" in fails(tmp_path / "vgg.pth")
  torch.save(TorchEncoder(ngf=2).state_dict(), tmp_path / "E.pth")
  assert "pass it with --encoder" in fails(tmp_path / "E.pth")

  sd = _trained_generator().state_dict()
  torch.save(sd, tmp_path / "G.pth")
  assert "has no up_4 block" in fails(tmp_path / "G.pth", "--num_upsampling_layers", "most", "--crop_size", "128")
  assert "not a multiple of 32" in fails(tmp_path / "G.pth", "--crop_size", "48")
  assert "trained without use_vae" in fails(tmp_path / "G.pth", "--encoder", str(tmp_path / "E.pth"))
  torch.save({k: v for k, v in sd.items() if not k.startswith("up_3.norm_s")} | {"extra.weight": torch.ones(1)},
             tmp_path / "broken.pth")
  err = fails(tmp_path / "broken.pth")
  assert "missing keys 8: up_3.norm_s.mlp_beta.bias" in err and "unexpected keys 1: extra.weight" in err

  vae = _trained_generator(use_vae=True).state_dict()
  torch.save(vae, tmp_path / "vae.pth")
  assert "fc maps z to 1 cells" in fails(tmp_path / "vae.pth", "--crop_size", "128")


def test_detection_errors_raise_user_error():
  with pytest.raises(UserError, match="no layer6"):
    convert_spade.detect_encoder({"layer1.0.weight_orig": np.zeros((4, 3, 3, 3)),
                                  "fc_mu.weight": np.zeros((256, 8))}, "E.pth")
