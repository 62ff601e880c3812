"""`convert munit` / `convert satnet` against a torch rebuild of NVlabs/MUNIT's and SATNet's networks.py.

The torch modules below rebuild AdaINGen, MsImageDis and their blocks (Conv2dBlock, ResBlock(s), AdaIN, MUNIT's
LayerNorm, the christiancosgrove SpectralNorm, SATNet's SelfAttention) with the originals' module names, so their
state_dicts have the originals' keys, and their forward passes. Tiny widths (dim 8, mlp_dim 16, n_res 1) on
non-square 80x64 images, with random biases, norms and attention gammas, and spectral vectors moved by forwards.
"""

import functools

import numpy as np
import pytest

import jax

from facegen_jax import compile as compile_lib
from facegen_jax import rundir
from facegen_jax import translate
from facegen_jax.convert import munit as convert_munit
from facegen_jax.convert import torch_map
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.nets import spectral_norm as sn_lib

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
nn, F = torch.nn, torch.nn.functional

pytestmark = pytest.mark.slow
ATOL = 1e-5
HEIGHT, WIDTH = 80, 64
TINY_GEN = dict(dim=8, style_dim=8, mlp_dim=16, n_downsample=2, n_res=1)
TINY_DIS = dict(dim=8, n_layer=4, num_scales=3)


@pytest.fixture(autouse=True)
def _one_torch_thread():
  """These networks are tiny: torch's second thread only fights JAX's for the cores (a forward took 0.4-4 s with
  2 threads on the loaded machine, 0.05 s with 1)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _l2n(v):
  return v / (v.norm() + 1e-12)


class TorchSpectralNorm(nn.Module):
  """The originals' SpectralNorm: the wrapped conv holds weight_bar, weight_u, weight_v; every forward iterates."""

  def __init__(self, module):
    super().__init__()
    self.module = module
    weight = module.weight.data
    del module._parameters["weight"]
    module.weight_u = nn.Parameter(_l2n(torch.randn(weight.shape[0])), requires_grad=False)
    module.weight_v = nn.Parameter(_l2n(torch.randn(weight[0].numel())), requires_grad=False)
    module.weight_bar = nn.Parameter(weight)

  def forward(self, x):
    m = self.module
    matrix = m.weight_bar.view(m.weight_bar.shape[0], -1)
    m.weight_v.data = _l2n(matrix.data.t() @ m.weight_u.data)
    m.weight_u.data = _l2n(matrix.data @ m.weight_v.data)
    sigma = m.weight_u @ (matrix @ m.weight_v)
    return F.conv2d(x, m.weight_bar / sigma, m.bias, m.stride, m.padding)


class TorchAdaIN(nn.Module):
  """AdaptiveInstanceNorm2d: batch norm over (1, B*C, H, W) with the assigned weight (std) and bias (mean)."""

  def __init__(self, channels):
    super().__init__()
    self.num_features = channels
    self.weight = self.bias = None
    self.register_buffer("running_mean", torch.zeros(channels))
    self.register_buffer("running_var", torch.ones(channels))

  def forward(self, x):
    b, c = x.shape[:2]
    out = F.batch_norm(x.reshape(1, b * c, *x.shape[2:]), self.running_mean.repeat(b), self.running_var.repeat(b),
                       self.weight, self.bias, True, 0.1, 1e-5)
    return out.view(x.shape)


class TorchLayerNorm(nn.Module):
  """MUNIT's LayerNorm: per-sample mean and unbiased std."""

  def __init__(self, channels):
    super().__init__()
    self.gamma = nn.Parameter(torch.rand(channels))
    self.beta = nn.Parameter(torch.zeros(channels))

  def forward(self, x):
    flat = x.view(x.shape[0], -1)
    mean, std = flat.mean(1).view(-1, 1, 1, 1), flat.std(1).view(-1, 1, 1, 1)
    return (x - mean) / (std + 1e-5) * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


_ACTIVATIONS = {"relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh}


class TorchConv2dBlock(nn.Module):

  def __init__(self, c_in, c_out, kernel, stride, padding, norm="none", activation="relu"):
    super().__init__()
    self.pad = nn.ReflectionPad2d(padding)
    norms = {"in": lambda: nn.InstanceNorm2d(c_out), "ln": lambda: TorchLayerNorm(c_out),
             "adain": lambda: TorchAdaIN(c_out)}
    self.norm = norms[norm]() if norm in norms else None
    self.activation = _ACTIVATIONS[activation]() if activation != "none" else None
    conv = nn.Conv2d(c_in, c_out, kernel, stride)
    self.conv = TorchSpectralNorm(conv) if norm == "sn" else conv

  def forward(self, x):
    x = self.conv(self.pad(x))
    x = self.norm(x) if self.norm is not None else x
    return self.activation(x) if self.activation is not None else x


class TorchResBlock(nn.Module):

  def __init__(self, dim, norm):
    super().__init__()
    self.model = nn.Sequential(TorchConv2dBlock(dim, dim, 3, 1, 1, norm),
                               TorchConv2dBlock(dim, dim, 3, 1, 1, norm, "none"))

  def forward(self, x):
    return self.model(x) + x


class TorchResBlocks(nn.Module):

  def __init__(self, n, dim, norm):
    super().__init__()
    self.model = nn.Sequential(*[TorchResBlock(dim, norm) for _ in range(n)])

  def forward(self, x):
    return self.model(x)


class TorchSelfAttention(nn.Module):

  def __init__(self, dim, spectral):
    super().__init__()
    wrap = TorchSpectralNorm if spectral else (lambda m: m)
    self.f_conv, self.g_conv = wrap(nn.Conv2d(dim, dim // 8, 1)), wrap(nn.Conv2d(dim, dim // 8, 1))
    self.k_conv = wrap(nn.Conv2d(dim, dim, 1))
    self.gamma = nn.Parameter(torch.zeros(1) + 1e-8)

  def forward(self, x):
    b, c, h, w = x.shape
    f, g, k = (conv(x).view(b, -1, h * w) for conv in (self.f_conv, self.g_conv, self.k_conv))
    attention = torch.softmax(torch.bmm(f.permute(0, 2, 1), g), dim=-1)
    return self.gamma * torch.bmm(k, attention.permute(0, 2, 1)).view(b, c, h, w) + x


class TorchStyleEncoder(nn.Module):

  def __init__(self, dim, style_dim):
    super().__init__()
    layers = [TorchConv2dBlock(3, dim, 7, 1, 3)]
    for i in range(4):
      layers.append(TorchConv2dBlock(dim, dim * 2 if i < 2 else dim, 4, 2, 1))
      dim = dim * 2 if i < 2 else dim
    self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1))

  def forward(self, x):
    return self.model(x)


class TorchContentEncoder(nn.Module):

  def __init__(self, dim, n_downsample, n_res, attention):
    super().__init__()
    layers = [TorchConv2dBlock(3, dim, 7, 1, 3, "in")]
    for _ in range(n_downsample):
      layers.append(TorchConv2dBlock(dim, 2 * dim, 4, 2, 1, "in"))
      dim *= 2
    layers.append(TorchResBlocks(n_res, dim, "in"))
    if attention:
      layers += [TorchSelfAttention(dim, True), TorchResBlock(dim, "in")]
    self.model = nn.Sequential(*layers)

  def forward(self, x):
    return self.model(x)


class TorchDecoder(nn.Module):

  def __init__(self, n_upsample, n_res, dim, attention):
    super().__init__()
    layers = [TorchResBlocks(n_res, dim, "adain")]
    if attention:
      layers += [TorchSelfAttention(dim, True), TorchResBlock(dim, "adain")]
    for _ in range(n_upsample):
      layers += [nn.Upsample(scale_factor=2), TorchConv2dBlock(dim, dim // 2, 5, 1, 2, "ln")]
      dim //= 2
    self.model = nn.Sequential(*layers, TorchConv2dBlock(dim, 3, 7, 1, 3, "none", "tanh"))

  def forward(self, x):
    return self.model(x)


class TorchLinearBlock(nn.Module):

  def __init__(self, c_in, c_out, relu):
    super().__init__()
    self.fc, self.relu = nn.Linear(c_in, c_out), relu

  def forward(self, x):
    return F.relu(self.fc(x)) if self.relu else self.fc(x)


class TorchMLP(nn.Module):

  def __init__(self, c_in, c_out, dim):
    super().__init__()
    self.model = nn.Sequential(TorchLinearBlock(c_in, dim, True), TorchLinearBlock(dim, dim, True),
                               TorchLinearBlock(dim, c_out, False))

  def forward(self, x):
    return self.model(x.view(x.shape[0], -1))


class TorchAdaINGen(nn.Module):

  def __init__(self, dim, style_dim, mlp_dim, n_downsample, n_res, attention=False):
    super().__init__()
    self.enc_style = TorchStyleEncoder(dim, style_dim)
    self.enc_content = TorchContentEncoder(dim, n_downsample, n_res, attention)
    self.dec = TorchDecoder(n_downsample, n_res, dim * 2 ** n_downsample, attention)
    adain = sum(2 * m.num_features for m in self.dec.modules() if isinstance(m, TorchAdaIN))
    self.mlp = TorchMLP(style_dim, adain, mlp_dim)

  def encode(self, x):
    return self.enc_content(x), self.enc_style(x)

  def decode(self, content, style):
    params = self.mlp(style)
    for m in self.dec.modules():
      if isinstance(m, TorchAdaIN):
        c = m.num_features
        m.bias, m.weight = params[:, :c].reshape(-1), params[:, c:2 * c].reshape(-1)
        params = params[:, 2 * c:]
    return self.dec(content)

  def forward(self, x):
    return self.decode(*self.encode(x))


class TorchMsImageDis(nn.Module):

  def __init__(self, dim, n_layer, num_scales, norm="none", attention=False):
    super().__init__()
    self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)
    self.cnns = nn.ModuleList()
    for _ in range(num_scales):
      width, layers = dim, [TorchConv2dBlock(3, dim, 4, 2, 1, "none", "lrelu")]
      for _ in range(n_layer - 1):
        layers.append(TorchConv2dBlock(width, width * 2, 4, 2, 1, norm, "lrelu"))
        width *= 2
      if attention:
        layers.append(TorchSelfAttention(width, norm == "sn"))
      self.cnns.append(nn.Sequential(*layers, nn.Conv2d(width, 1, 1)))

  def forward(self, x):
    outputs = []
    for model in self.cnns:
      outputs.append(model(x))
      x = self.downsample(x)
    return outputs


def _images(seed, batch=2):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, HEIGHT, WIDTH, 3)).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _randomise(net):
  """Biases, norms and attention gammas away from their constant inits (gamma 1e-8 would hide the attention)."""
  with torch.no_grad():
    for key, value in net.named_parameters():
      if key.endswith("gamma") and value.shape == (1,):
        value.uniform_(0.3, 1.0)
      elif key.endswith(("bias", "beta")):
        value.normal_(0, 0.1)
      elif key.endswith("norm.gamma"):
        value.uniform_(0.5, 1.5)


@functools.cache
def _torch_networks(variant, seed=0):
  """{"gen": {a, b}, "dis": {a, b}} after two train-like forwards each (so u, v have moved). Shared: callers that
  run them further must rebuild them (the spectral vectors move at every forward, also in eval)."""
  torch.manual_seed(seed)
  satnet = variant == "satnet"
  gen = {d: TorchAdaINGen(**TINY_GEN, attention=satnet) for d in "ab"}
  dis = {d: TorchMsImageDis(**TINY_DIS, norm="sn" if satnet else "none", attention=satnet) for d in "ab"}
  for net in (*gen.values(), *dis.values()):
    _randomise(net)
  with torch.no_grad():
    for i in range(2):
      x = _nchw(_images(10 + i))
      for d in "ab":
        gen[d](x)
        dis[d](x)
  return {"gen": {d: net.eval() for d, net in gen.items()}, "dis": {d: net.eval() for d, net in dis.items()}}


def _save(tmp_path, nets, name):
  path = tmp_path / name
  torch.save({d: net.state_dict() for d, net in nets.items()}, path)
  return path


def _assert_close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  diff, scale = np.abs(got - want).max(), np.abs(want).max()
  print(f"{what}: max abs diff {diff:.2e} (scale {scale:.3f})")
  assert diff <= ATOL * max(scale, 1.0) and scale > 1e-3, what


def _to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.detach().numpy().reshape(t.shape[0], -1)


_FAST = compile_lib.CPU_FAST_COMPILE_OPTIONS


def _apply(module, method, variables, *args):
  """One call carrying the spectral vectors as the original's modules carry them: (output, new variables)."""
  out, updated = module.apply(variables, *args, method=method, mutable=[sn_lib.SPECTRAL_STATS])
  return out, {**variables, **updated}


@functools.cache
def _generator_calls(module):
  """encode, decode (with another style), the reconstruction, in that order, in one program (one compilation,
  at XLA's lowest optimisation level, instead of three)."""
  def calls(variables, images, style):
    (content, own_style), variables = _apply(module, "encode", variables, images)
    decoded, variables = _apply(module, "decode", variables, content, style)
    recon, variables = _apply(module, "__call__", variables, images)
    return (content, own_style, decoded, recon), variables
  return jax.jit(calls, compiler_options=_FAST)


@functools.cache
def _discriminator_call(module):
  return jax.jit(functools.partial(_apply, module, "__call__"), compiler_options=_FAST)


def _compare_spectral(variables, net, module_name, what):
  """Our u, v after the calls against the torch network's; returns how many were compared."""
  state_dict = net.state_dict()
  stats = variables.get(sn_lib.SPECTRAL_STATS, {})
  paths = [(tuple(k.key for k in path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(stats)]
  spectral = {names[:-1] for names, _ in paths}
  for names, leaf in paths:
    key = f"{module_name(names[:-1], spectral=spectral)}.weight_{names[-1]}"
    np.testing.assert_allclose(leaf, state_dict[key].numpy(), atol=1e-5, err_msg=f"{what} {key}")
  return len(jax.tree.leaves(stats))


@pytest.mark.parametrize("variant", ["munit", "satnet"])
def test_converted_networks_match_torch(tmp_path, variant):
  nets = _torch_networks(variant)
  gen_path, dis_path = _save(tmp_path, nets["gen"], "gen_00001000.pt"), _save(tmp_path, nets["dis"], "dis_00001000.pt")
  converted = convert_munit.convert(gen_path, variant=variant, dis=dis_path)
  satnet = variant == "satnet"
  assert converted.model["gen"] == dict(TINY_GEN, attention=satnet, activ="relu", pad_type="reflect")
  assert converted.model["dis"] == dict(TINY_DIS, norm="sn" if satnet else "none", attention=satnet, activ="lrelu",
                                        pad_type="reflect")
  assert (converted.model["input_dim_a"], converted.model["input_dim_b"]) == (3, 3)
  generators = convert_munit.generators_for(converted.model)
  discriminators = convert_munit.discriminators_for(converted.model)
  # The torch networks are shared: run copies, as every forward moves their vectors.
  torch_gen = {d: TorchAdaINGen(**TINY_GEN, attention=satnet).eval() for d in "ab"}
  torch_dis = {d: TorchMsImageDis(**TINY_DIS, norm="sn" if satnet else "none", attention=satnet).eval()
               for d in "ab"}
  for d in "ab":
    torch_gen[d].load_state_dict(nets["gen"][d].state_dict())
    torch_dis[d].load_state_dict(nets["dis"][d].state_dict())
  images = _images(1)
  x = _nchw(images)
  for d in "ab":
    # The same calls in the same order on both sides: encode, decode (a's content with b's style for a), the
    # reconstruction, so SATNet's attention iterates its spectral norm as often on each side.
    variables, net, module = converted.generators[d], torch_gen[d], generators[d]
    with torch.no_grad():
      content, style = net.encode(x)
      other_style = torch.randn(2, 8, 1, 1, generator=torch.Generator().manual_seed(3))
      decoded = net.decode(content, other_style)
      recon = net(x)
    got, variables = _generator_calls(module)(variables, images, other_style.numpy().reshape(2, 8))
    got_content, got_style, got_decoded, got_recon = got
    _assert_close(got_content, _to_nhwc(content), f"gen_{d} content")
    _assert_close(got_style, style.numpy().reshape(2, 8), f"gen_{d} style")
    _assert_close(got_decoded, _to_nhwc(decoded), f"gen_{d} decode")
    _assert_close(got_recon, _to_nhwc(recon), f"gen_{d} recon")
    name = functools.partial(convert_munit.generator_module_name, n_downsample=2, attention=satnet)
    assert _compare_spectral(variables, net, name, f"gen_{d}") == (12 if satnet else 0)  # 2 attentions x f, g, k
    # Each D twice (as on a fake and a real batch): every scale's patch logits.
    dis_variables, dis_net = converted.discriminators[d], torch_dis[d]
    for call in range(2):
      with torch.no_grad():
        want = dis_net(x * (call + 1) / 2)
      got, dis_variables = _discriminator_call(discriminators[d])(dis_variables, images * (call + 1) / 2)
      assert len(got) == len(want) == 3
      for scale, (g, w) in enumerate(zip(got, want)):
        _assert_close(g, _to_nhwc(w), f"dis_{d} call {call} scale {scale}")
    name = functools.partial(convert_munit.discriminator_module_name, n_layer=4, attention=satnet)
    # Per scale convs 2-4 and the attention's f, g, k.
    assert _compare_spectral(dis_variables, dis_net, name, f"dis_{d}") == (3 * 6 * 2 if satnet else 0)


@pytest.mark.parametrize("variant, gen_count, dis_count", [("munit", 15_026_187, 8_271_171),
                                                           ("satnet", 17_814_157, 9_256_134)])
def test_full_size_keys_map_one_to_one(variant, gen_count, dis_count):
  # Shapes only: the torch networks at the configs' sizes on the meta device, the flax side by eval_shape.
  satnet = variant == "satnet"
  with torch.device("meta"):
    gen = TorchAdaINGen(dim=64, style_dim=8, mlp_dim=256, n_downsample=2, n_res=4, attention=satnet).state_dict()
    dis = TorchMsImageDis(64, 4, 3, norm="sn" if satnet else "none", attention=satnet).state_dict()
  model = convert_munit.detect({"a": gen, "b": gen}, {"a": dis, "b": dis}, "gen.pt", variant=variant,
                               dis_source="dis.pt")
  assert model["gen"] == dict(dim=64, style_dim=8, mlp_dim=256, n_downsample=2, n_res=4, attention=satnet,
                              activ="relu", pad_type="reflect")
  assert model["dis"] == dict(dim=64, n_layer=4, num_scales=3, norm="sn" if satnet else "none",
                              attention=satnet, activ="lrelu", pad_type="reflect")
  buffers = ("weight_u", "weight_v", "running_mean", "running_var")  # u, v: Parameters without gradient
  for state_dict, (_, expected), count in ((gen, convert_munit.generator_keys(model, "a"), gen_count),
                                           (dis, convert_munit.discriminator_keys(model, "b"), dis_count)):
    torch_map.check_keys(state_dict, expected, variant, "")
    assert set(expected) == set(state_dict)
    assert sum(v.numel() for k, v in state_dict.items() if not k.endswith(buffers)) == count


def _fails(tmp_path, capsys, *argv):
  code = convert_main([*argv, "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists(), err
  return err


def test_command_line_errors_are_one_line(tmp_path, capsys):
  nets = _torch_networks("munit")
  gen_path, dis_path = _save(tmp_path, nets["gen"], "gen_00001000.pt"), _save(tmp_path, nets["dis"], "dis_00001000.pt")
  assert "--resolution '8x8': give H or H,W" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path),
                                                      "--resolution", "8x8")
  assert "resolution (34, 34) must be divisible by 2^n_downsample = 4" in _fails(
      tmp_path, capsys, "munit", "--checkpoint", str(gen_path), "--resolution", "34")
  assert "absent.pt does not exist" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(tmp_path / "absent.pt"))
  torch.save(nets["gen"]["a"].state_dict(), tmp_path / "gen_a.pt")
  assert "one network's state_dict" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(tmp_path / "gen_a.pt"))
  assert "pass it with --dis" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(dis_path))
  assert "pass the discriminators' file" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path),
                                                   "--dis", str(gen_path))
  broken = {d: dict(net.state_dict()) for d, net in nets["gen"].items()}
  del broken["b"]["dec.model.0.model.0.model.1.norm.running_var"]  # AdaIN's dummy buffers are checked too
  broken["b"]["extra.weight"] = torch.ones(1)
  torch.save(broken, tmp_path / "broken.pt")
  err = _fails(tmp_path, capsys, "munit", "--checkpoint", str(tmp_path / "broken.pt"))
  assert "(gen_b)" in err and "missing keys 1: dec.model.0.model.0.model.1.norm.running_var" in err
  assert "unexpected keys 1: extra.weight" in err
  satnet_path = _save(tmp_path, _torch_networks("satnet")["gen"], "satnet.pt")
  assert "convert it with `python -m facegen_jax.convert satnet`" in _fails(
      tmp_path, capsys, "munit", "--checkpoint", str(satnet_path))
  assert convert_munit.describe(convert_munit.convert(satnet_path, variant="satnet"), "satnet").startswith(
      "SATNet generators (dim 8")


def test_the_yaml_gives_activations_and_padding_and_must_agree(tmp_path, capsys):
  nets = _torch_networks("munit")
  gen_path = _save(tmp_path, nets["gen"], "gen_00001000.pt")
  config = tmp_path / "config.yaml"
  config.write_text("gen:\n  dim: 8\n  n_res: 1\n  activ: lrelu\n  pad_type: zero\ninput_dim_a: 3\n")
  model = convert_munit.convert(gen_path, config=str(config)).model
  assert (model["gen"]["activ"], model["gen"]["pad_type"], model["dis"]) == ("lrelu", "zero", None)
  config.write_text("gen:\n  dim: 64\n  n_res: 4\n")
  assert "says gen.dim 64, but" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path), "--config",
                                          str(config))
  config.write_text("gen:\n  activ: prelu\n")
  assert "gen.activ 'prelu' is not supported" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path),
                                                         "--config", str(config))
  config.write_text("gen: [unclosed\n")
  assert "is not valid YAML" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path), "--config",
                                       str(config))
  config.write_text("max_iter: 10\n")
  assert "has no gen: section" in _fails(tmp_path, capsys, "munit", "--checkpoint", str(gen_path), "--config",
                                         str(config))


def _png(path, images):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.round((images + 1) * 127.5).astype(np.uint8)).save(path)
  return np.asarray(Image.open(path), np.float32) / 127.5 - 1


def test_satnet_run_directory_translates_as_the_original(tmp_path, capsys):
  """convert satnet (with --dis) -> a run directory; translate --style --save_raw on it equals the original's
  test.py (content of gen_a.encode, style of gen_b.encode of the style image, gen_b.decode: one iteration of each
  spectral norm from the saved vectors)."""
  nets = _torch_networks("satnet")
  gen_path, dis_path = _save(tmp_path, nets["gen"], "gen_00001000.pt"), _save(tmp_path, nets["dis"], "dis_00001000.pt")
  out = tmp_path / "run"
  assert convert_main(["satnet", "--checkpoint", str(gen_path), "--dis", str(dis_path), "--out", str(out),
                       "--resolution", f"{HEIGHT},{WIDTH}"]) == 0
  assert "wrote" in capsys.readouterr().out
  config = rundir.load_config(out)
  assert (config.family, config.model.attention, config.model.dis.norm, config.loss_weights.identity) == (
      "munit", True, "sn", 0.0)
  state, _ = rundir.restore_state(out, config)
  np.testing.assert_array_equal(state.collections["d"][sn_lib.SPECTRAL_STATS]["b"]["cnn_1"]["conv_1"]["conv"]["u"],
                                nets["dis"]["b"].state_dict()["cnns.1.1.conv.module.weight_u"].numpy())
  images = tmp_path / "images"
  images.mkdir()
  x = _png(images / "x.png", _images(20, 1)[0])
  style = _png(tmp_path / "style.png", _images(21, 1)[0])
  assert translate.main(["--workdir", str(out), "--images", str(images), "--direction", "a2b", "--style",
                         str(tmp_path / "style.png"), "--save_raw", "--batch_size", "1",
                         "--out", str(tmp_path / "out")]) == 0
  torch_gen = {d: TorchAdaINGen(**TINY_GEN, attention=True).eval() for d in "ab"}
  for d in "ab":
    torch_gen[d].load_state_dict(nets["gen"][d].state_dict())
  with torch.no_grad():
    content, _ = torch_gen["a"].encode(_nchw(x[None]))
    _, code = torch_gen["b"].encode(_nchw(style[None]))
    want = torch_gen["b"].decode(content, code)
  _assert_close(np.load(tmp_path / "out" / "x.npy")[None], _to_nhwc(want), "translate a2b --style")


def test_munit_run_directory_without_dis_has_a_fresh_discriminator(tmp_path, capsys):
  nets = _torch_networks("munit")
  gen_path = _save(tmp_path, nets["gen"], "gen_00001000.pt")
  assert convert_main(["munit", "--checkpoint", str(gen_path), "--out", str(tmp_path / "run")]) == 0
  capsys.readouterr()
  config = rundir.load_config(tmp_path / "run")
  assert (config.model.attention, config.model.gen.dim, config.input.resolution) == (False, 8, 256)
  state, step = rundir.restore_state(tmp_path / "run", config)
  assert step == 0 and state.collections == {"g": {}, "d": {}}
  np.testing.assert_array_equal(state.params["g"]["b"]["dec"]["conv_out"]["conv"]["bias"],
                                nets["gen"]["b"].state_dict()["dec.model.5.conv.bias"].numpy())
  assert state.params["d"]["a"]["cnn_0"]["conv_0"]["conv"]["kernel"].shape == (4, 4, 3, 64)  # configs/munit.py's D
