"""`convert ugatit` against a torch rebuild of UGATIT-pytorch's networks (and Face2webtoon's group head).

The torch modules below rebuild networks.py's ResnetGenerator, ResnetBlock, ResnetAdaILNBlock, adaILN, ILN and
Discriminator with the original's module names (so their state_dicts have the original's keys) and forward
passes. Tiny widths (ngf 8, 2 residual blocks) at 128 px, the smallest size the global D (n_layers 7) takes.
"""

import functools

import numpy as np
import pytest
from PIL import Image

import jax

from facegen_jax import compile as compile_lib
from facegen_jax import infer
from facegen_jax import rundir
from facegen_jax import translate
from facegen_jax.convert import torch_map
from facegen_jax.convert import ugatit as convert_ugatit
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import UserError
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets import ugatit

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
nn, F = torch.nn, torch.nn.functional
sn = torch.nn.utils.spectral_norm

pytestmark = pytest.mark.slow
ATOL = 1e-4
SIZE = 128
_FAST_COMPILE = compile_lib.CPU_FAST_COMPILE_OPTIONS


def _mix_norm(x, rho, eps=1e-5):
  """rho * instance norm + (1 - rho) * layer norm, both with torch.var's unbiased variance."""
  out_in = (x - x.mean(dim=[2, 3], keepdim=True)) / torch.sqrt(x.var(dim=[2, 3], keepdim=True) + eps)
  out_ln = (x - x.mean(dim=[1, 2, 3], keepdim=True)) / torch.sqrt(x.var(dim=[1, 2, 3], keepdim=True) + eps)
  return rho * out_in + (1 - rho) * out_ln


class TorchAdaILN(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.rho = nn.Parameter(torch.full((1, channels, 1, 1), 0.9))

  def forward(self, x, gamma, beta):
    return _mix_norm(x, self.rho) * gamma[:, :, None, None] + beta[:, :, None, None]


class TorchILN(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.rho = nn.Parameter(torch.zeros(1, channels, 1, 1))
    self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
    self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

  def forward(self, x):
    return _mix_norm(x, self.rho) * self.gamma + self.beta


def _padded_conv(c_in, c_out, kernel, pad, stride=1):
  return [nn.ReflectionPad2d(pad), nn.Conv2d(c_in, c_out, kernel, stride, 0, bias=False)]


class TorchResnetBlock(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.conv_block = nn.Sequential(*_padded_conv(dim, dim, 3, 1), nn.InstanceNorm2d(dim), nn.ReLU(),
                                    *_padded_conv(dim, dim, 3, 1), nn.InstanceNorm2d(dim))

  def forward(self, x):
    return x + self.conv_block(x)


class TorchResnetAdaILNBlock(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.pad1, self.pad2 = nn.ReflectionPad2d(1), nn.ReflectionPad2d(1)
    self.conv1 = nn.Conv2d(dim, dim, 3, bias=False)
    self.conv2 = nn.Conv2d(dim, dim, 3, bias=False)
    self.norm1, self.norm2 = TorchAdaILN(dim), TorchAdaILN(dim)

  def forward(self, x, gamma, beta):
    y = F.relu(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
    return x + self.norm2(self.conv2(self.pad2(y)), gamma, beta)


def _cam(x, gap_fc, gmp_fc):
  """The original's CAM: logits from the pooled features, features scaled by each layer's FIRST parameter."""
  gap_logit = gap_fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
  gmp_logit = gmp_fc(F.adaptive_max_pool2d(x, 1).flatten(1))
  gap = x * list(gap_fc.parameters())[0][:, :, None, None]
  gmp = x * list(gmp_fc.parameters())[0][:, :, None, None]
  return torch.cat([gap, gmp], 1), torch.cat([gap_logit, gmp_logit], 1)


class TorchGenerator(nn.Module):

  def __init__(self, ngf, n_blocks, img_size, light):
    super().__init__()
    self.light, self.n_blocks = light, n_blocks
    down = [*_padded_conv(3, ngf, 7, 3), nn.InstanceNorm2d(ngf), nn.ReLU()]
    for mult in (1, 2):
      down += [*_padded_conv(ngf * mult, ngf * mult * 2, 3, 1, stride=2), nn.InstanceNorm2d(ngf * mult * 2),
               nn.ReLU()]
    down += [TorchResnetBlock(4 * ngf) for _ in range(n_blocks)]
    self.DownBlock = nn.Sequential(*down)
    dim = 4 * ngf
    self.gap_fc, self.gmp_fc = nn.Linear(dim, 1, bias=False), nn.Linear(dim, 1, bias=False)
    self.conv1x1 = nn.Conv2d(2 * dim, dim, 1)
    fc_in = dim if light else (img_size // 4) ** 2 * dim
    self.FC = nn.Sequential(nn.Linear(fc_in, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False),
                            nn.ReLU())
    self.gamma, self.beta = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
    for i in range(n_blocks):
      setattr(self, f"UpBlock1_{i + 1}", TorchResnetAdaILNBlock(dim))
    up = []
    for mult in (4, 2):
      up += [nn.Upsample(scale_factor=2), *_padded_conv(ngf * mult, ngf * mult // 2, 3, 1),
             TorchILN(ngf * mult // 2), nn.ReLU()]
    self.UpBlock2 = nn.Sequential(*up, *_padded_conv(ngf, 3, 7, 3), nn.Tanh())

  def forward(self, x):
    x, cam_logit = _cam(self.DownBlock(x), self.gap_fc, self.gmp_fc)
    x = F.relu(self.conv1x1(x))
    heatmap = x.sum(dim=1, keepdim=True)
    features = F.adaptive_avg_pool2d(x, 1) if self.light else x
    features = self.FC(features.reshape(x.shape[0], -1))
    gamma, beta = self.gamma(features), self.beta(features)
    for i in range(self.n_blocks):
      x = getattr(self, f"UpBlock1_{i + 1}")(x, gamma, beta)
    return self.UpBlock2(x), cam_logit, heatmap


class TorchDiscriminator(nn.Module):

  def __init__(self, ndf, n_layers, groups):
    super().__init__()
    widths = [3] + [ndf * 2 ** i for i in range(n_layers - 1)]
    model = []
    for i in range(n_layers - 1):
      stride = 2 if i < n_layers - 2 else 1
      model += [nn.ReflectionPad2d(1), sn(nn.Conv2d(widths[i], widths[i + 1], 4, stride)), nn.LeakyReLU(0.2)]
    self.model = nn.Sequential(*model)
    dim = widths[-1]
    self.gap_fc, self.gmp_fc = sn(nn.Linear(dim, 1, bias=False)), sn(nn.Linear(dim, 1, bias=False))
    self.conv1x1 = nn.Conv2d(2 * dim, dim, 1)
    self.pad = nn.ReflectionPad2d(1)
    self.conv = sn(nn.Conv2d(dim, 1, 4, bias=False))
    self.group_classfier = sn(nn.Linear(dim, groups)) if groups else None

  def forward(self, x):
    x, cam_logit = _cam(self.model(x), self.gap_fc, self.gmp_fc)
    x = F.leaky_relu(self.conv1x1(x), 0.2)
    heatmap = x.sum(dim=1, keepdim=True)
    group = self.group_classfier(x.mean(dim=(2, 3))) if self.group_classfier is not None else None
    return self.conv(self.pad(x)), cam_logit, heatmap, group


@functools.cache
def _torch_networks(*, light, groups, ngf=8, n_blocks=2, seed=0):
  """The six networks, with random (Ada)ILN parameters and spectral vectors moved by train-mode forwards.

  Shared between tests: callers must not change them (a test that trains one rebuilds it with another seed)."""
  torch.manual_seed(seed)
  nets = {name: TorchGenerator(ngf, n_blocks, SIZE, light) for name in ("genA2B", "genB2A")}
  nets.update({name: TorchDiscriminator(ngf, 7, groups) for name in ("disGA", "disGB")})
  nets.update({name: TorchDiscriminator(ngf, 5, groups) for name in ("disLA", "disLB")})
  with torch.no_grad():
    for name, net in nets.items():
      for key, value in net.named_parameters():
        if key.endswith(("rho", "gamma", "beta")) and value.ndim == 4:  # Away from their constant inits.
          value.copy_(torch.rand_like(value) if key.endswith("rho") else 1 + 0.3 * torch.randn_like(value))
      if name.startswith("dis"):
        for _ in range(2):
          net(torch.rand(1, 3, SIZE, SIZE) * 2 - 1)
  return {name: net.eval() for name, net in nets.items()}


def _save(tmp_path, nets, name="params.pt"):
  path = tmp_path / name
  torch.save({name: net.state_dict() for name, net in nets.items()}, path)
  return path


def _images(batch=2, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)


def _torch_outputs(net, images):
  with torch.no_grad():
    outputs = net(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  return [None if o is None else (o.numpy().transpose(0, 2, 3, 1) if o.ndim == 4 else o.numpy()) for o in outputs]


def _assert_close(got, want, what):
  diff = np.abs(np.asarray(got) - want).max()
  print(f"{what}: max abs diff {diff:.2e} (scale {np.abs(want).max():.3f})")
  scale = np.abs(want).max()
  # Within ATOL and within 0.1% of the output's scale (D's patch logits are ~0.02 here), of a non-vanishing output.
  assert diff <= min(ATOL, 1e-3 * scale) and scale > 1e-3, what


@functools.cache
def _compiled(module, **kwargs):
  """One compilation per network shape (the two generators, each D pair share it), at XLA's lowest level."""
  return jax.jit(functools.partial(module.apply, **kwargs), compiler_options=_FAST_COMPILE)


def _apply(module, variables, images, **kwargs):
  return _compiled(module, **kwargs)(variables, images)


@pytest.mark.parametrize("light, groups", [(True, 0), (False, 4)])
def test_converted_networks_match_torch(tmp_path, light, groups):
  nets = _torch_networks(light=light, groups=groups)
  path = _save(tmp_path, nets)
  networks = convert_ugatit.read_networks(path)
  model = convert_ugatit.detect(networks, path, img_size=SIZE)
  assert model == dict(ngf=8, n_res=2, light=light, img_size=SIZE, n_layers_global=7, n_layers_local=5,
                       num_groups=groups)
  variables = convert_ugatit.convert_networks(networks, model, path)
  modules, _ = convert_ugatit.networks_for(model)
  images = _images()
  for name in ("genA2B", "genB2A"):
    got = _apply(modules[name], variables[name], images)
    for what, g, w in zip(("image", "cam_logit", "heatmap"), got, _torch_outputs(nets[name], images)):
      _assert_close(g, w, f"{name} {what}")
  for name in ("disGA", "disGB", "disLA", "disLB"):
    got = _apply(modules[name], variables[name], images, update_stats=False)
    want = _torch_outputs(nets[name], images)
    for what, g, w in zip(ugatit.DiscriminatorOutput._fields, got, want):
      if w is None:
        assert g is None and not groups
      else:
        _assert_close(g, w, f"{name} {what}")


def test_discriminator_training_mode_updates_vectors_as_torch(tmp_path):
  nets = _torch_networks(light=True, groups=4, seed=1)  # Its own: the train-mode forward below moves u, v.
  networks = convert_ugatit.read_networks(_save(tmp_path, nets))
  model = convert_ugatit.detect(networks, "params.pt", img_size=SIZE)
  variables = convert_ugatit.convert_networks(networks, model, "params.pt")
  modules, _ = convert_ugatit.networks_for(model)
  images = _images(batch=1, seed=3)
  got, updated = _apply(modules["disLB"], variables["disLB"], images, update_stats=True,
                        mutable=(sn_lib.SPECTRAL_STATS,))
  net = nets["disLB"].train()
  want = _torch_outputs(net, images)
  for what, g, w in zip(ugatit.DiscriminatorOutput._fields, got, want):
    _assert_close(g, w, f"train {what}")
  state_dict = net.state_dict()
  spectral = updated[sn_lib.SPECTRAL_STATS]
  for module, key in (("conv_0", "model.1"), ("gap_fc", "gap_fc"), ("group_classifier", "group_classfier"),
                      ("conv_out", "conv")):
    for leaf in ("u", "v"):
      np.testing.assert_allclose(spectral[module][leaf], state_dict[f"{key}.weight_{leaf}"].numpy(), atol=1e-5)


def test_translate_on_the_converted_run_directory(tmp_path, capsys):
  nets = _torch_networks(light=False, groups=4)
  path, out = _save(tmp_path, nets), tmp_path / "run"
  assert convert_main(["ugatit", "--checkpoint", str(path), "--out", str(out), "--img_size", str(SIZE)]) == 0
  assert "U-GAT-IT full (ngf 8, n_res 2, img 128, D n_layers 7/5, 4 groups)" in capsys.readouterr().out
  config = rundir.load_config(out)
  assert (config.model.light, config.model.num_groups, config.input.resolution) == (False, 4, SIZE)
  state, step = rundir.restore_state(out, config)
  assert step == 0
  # Key by key: a reflect-padded conv (OIHW -> HWIO), the full FC (torch's C, H, W flatten order kept), an
  # AdaILN rho ((1, C, 1, 1) -> (C,)), a spectral-norm D's weight_orig and u.
  a2b, disgb = nets["genA2B"].state_dict(), nets["disGB"].state_dict()
  g = state.params["g"]["a2b"]
  np.testing.assert_array_equal(g["ResnetBlock_1"]["conv_1"]["kernel"],
                                a2b["DownBlock.13.conv_block.5.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(g["FC_0"]["kernel"], a2b["FC.0.weight"].numpy().T)
  np.testing.assert_array_equal(g["ResnetAdaILNBlock_1"]["norm_1"]["rho"], a2b["UpBlock1_2.norm2.rho"].numpy().ravel())
  np.testing.assert_array_equal(state.params["d"]["gb"]["group_classifier"]["kernel"],
                                disgb["group_classfier.weight_orig"].numpy().T)
  np.testing.assert_array_equal(state.collections["d"][sn_lib.SPECTRAL_STATS]["gb"]["conv_3"]["u"],
                                disgb["model.10.weight_u"].numpy())
  # translate --save_raw against the original generators on the same inputs (the images as translate reads them).
  images = tmp_path / "faces"
  images.mkdir()
  for i, image in enumerate(_images(batch=2, seed=5)):
    Image.fromarray(np.uint8((image + 1) * 127.5)).save(images / f"{i}.png")
  inputs = np.stack([infer.read_image(images / f"{i}.png", (SIZE, SIZE), "--images") for i in range(2)])
  # a2b only: b2a is the same program on the other generator's parameters (another compilation).
  translate.run(str(out), str(tmp_path / "a2b"), images=str(images), direction="a2b", save_raw=True)
  got = np.stack([np.load(tmp_path / "a2b" / f"{i}.npy") for i in range(2)])
  _assert_close(got, _torch_outputs(nets["genA2B"], inputs)[0], "translate a2b")
  np.testing.assert_array_equal(state.params["g"]["b2a"]["conv_out"]["kernel"],
                                nets["genB2A"].state_dict()["UpBlock2.11.weight"].numpy().transpose(2, 3, 1, 0))


def test_full_size_keys_map_one_to_one():
  # Shapes only: the 279M-parameter torch generator lives on the meta device, the flax side is eval_shape.
  with torch.device("meta"):
    generator = TorchGenerator(64, 4, 256, light=False).state_dict()
    global_d, local_d = TorchDiscriminator(64, 7, 4).state_dict(), TorchDiscriminator(64, 5, 4).state_dict()
  networks = {"genA2B": generator, "genB2A": generator, "disGA": global_d, "disGB": global_d, "disLA": local_d,
              "disLB": local_d}
  networks = {n: {k: convert_ugatit._iln_vector(k, v) for k, v in sd.items()} for n, sd in networks.items()}
  model = convert_ugatit.detect(networks, "f2w.pt")
  assert model == dict(ngf=64, n_res=4, light=False, img_size=256, n_layers_global=7, n_layers_local=5,
                       num_groups=4)
  modules, image = convert_ugatit.networks_for(model)
  for name, table, count in (("genA2B", convert_ugatit.GENERATOR_KEYS, 278_959_808),
                             ("disGA", convert_ugatit.DISCRIMINATOR_KEYS, 53_138_372),
                             ("disLA", convert_ugatit.DISCRIMINATOR_KEYS, 3_292_612)):
    kwargs = {} if name.startswith("gen") else {"update_stats": False}
    abstract = jax.eval_shape(functools.partial(modules[name].init, jax.random.key(0), image, **kwargs))
    expected = torch_map.expected_keys(abstract, table)
    torch_map.check_keys(networks[name], expected, name, "")
    assert set(expected) == set(networks[name])
    buffers = ("weight_u", "weight_v")
    assert sum(np.prod(v.shape) for k, v in networks[name].items() if not k.endswith(buffers)) == count


def test_wrong_files_are_one_line_errors(tmp_path, capsys):
  def fails(path, *flags):
    code = convert_main(["ugatit", "--checkpoint", str(path), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o").exists(), err
    return err

  assert "absent.pt does not exist" in fails(tmp_path / "absent.pt")
  nets = _torch_networks(light=False, groups=0, n_blocks=1)
  torch.save(nets["genA2B"].state_dict(), tmp_path / "G.pt")
  assert "one network's state_dict" in fails(tmp_path / "G.pt")
  path = _save(tmp_path, nets)
  assert "pass --img_size 128" in fails(path)  # A full G fixes the image size; the default is 256.
  broken = {name: net.state_dict() for name, net in nets.items()}
  del broken["genB2A"]["UpBlock1_1.norm1.rho"]
  broken["genB2A"]["extra.weight"] = torch.ones(1)
  torch.save(broken, tmp_path / "broken.pt")
  err = fails(tmp_path / "broken.pt", "--img_size", "128")
  assert "(genB2A)" in err and "missing keys 1: UpBlock1_1.norm1.rho" in err
  assert "unexpected keys 1: extra.weight" in err
  mixed = {name: net.state_dict() for name, net in nets.items()}
  mixed["disGA"] = TorchDiscriminator(8, 7, 4).state_dict()
  torch.save(mixed, tmp_path / "mixed.pt")
  assert "some discriminators have a group classifier" in fails(tmp_path / "mixed.pt", "--img_size", "128")


def test_detection_errors_raise_user_error():
  with pytest.raises(UserError, match="genA2B has no DownBlock.1.weight"):
    convert_ugatit.detect_generator({"FC.0.weight": np.zeros((32, 32))}, "genA2B", "x.pt", img_size=256)
  with pytest.raises(UserError, match="its size fits no square image"):
    convert_ugatit.detect_generator({"DownBlock.1.weight": np.zeros((8, 3, 7, 7)),
                                     "FC.0.weight": np.zeros((32, 33))}, "genA2B", "x.pt", img_size=256)
