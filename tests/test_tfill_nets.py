"""TFill's networks: parameter counts against lyndonzheng/TFill, the partial conv by hand, inits, torch key names, and
each network against a torch rebuild of the original's modules (below: base_function.py, transformer_function.py,
position_embedding.py, networks.py's RefinedGenerator / StyleDiscriminator, stylegan_ops with their native
fallbacks) at toy sizes, weights transferred torch -> flax by the key names. The rebuild was checked once against the
original's own modules (the e05bc6b checkout, CUDA ops swapped for upfirdn2d_native and the plain fused_leaky_relu,
state dicts loaded strictly): E, T, G (noise replayed), G_Ref and D outputs identical (0.0) at these toy sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax.convert import torch_map
from facegen_jax.families import common
from facegen_jax.nets import tfill

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


@functools.cache
def _torch():
  """The original's modules in plain torch (NVIDIA's PartialConv2d with its shape cache; no einops, no CUDA ops)."""
  torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
  nn, F = torch.nn, torch.nn.functional

  class PartialConv2d(nn.Conv2d):
    def __init__(self, *args, return_mask=False, **kwargs):
      super().__init__(*args, **kwargs)
      self.return_mask = return_mask
      self.slide_winsize = self.kernel_size[0] * self.kernel_size[1]
      self.last_size = None

    def forward(self, x, mask_in=None):
      if mask_in is not None or self.last_size != tuple(x.shape):
        self.last_size = tuple(x.shape)
        with torch.no_grad():
          mask = torch.ones(1, 1, *x.shape[2:]) if mask_in is None else mask_in
          ones = torch.ones(1, 1, *self.kernel_size)
          self.update_mask = F.conv2d(mask, ones, stride=self.stride, padding=self.padding)
          self.update_mask1 = torch.clamp(self.update_mask, 0, 1)
          self.mask_ratio = self.slide_winsize / (self.update_mask + 1e-8) * self.update_mask1
      raw = super().forward(x * mask_in if mask_in is not None else x)
      b = self.bias.view(1, -1, 1, 1)
      out = ((raw - b) * self.mask_ratio + b) * self.update_mask1
      return (out, self.update_mask / self.slide_winsize) if self.return_mask else out

  class PixelwiseNorm(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.alpha = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
      return self.alpha * (x * x.pow(2.).mean(dim=1, keepdim=True).add(1e-8).rsqrt())

  def act(name):
    return nn.LeakyReLU(0.2) if name == "leakyrelu" else nn.GELU()

  class Identity(nn.Module):
    def forward(self, x):
      return x

  class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, kernel, activation="leakyrelu"):
      super().__init__()
      self.norm1, self.norm2, self.act = PixelwiseNorm(cin), PixelwiseNorm(cout), act(activation)
      self.conv1 = PartialConv2d(cin, cout, kernel, padding=(kernel - 1) // 2, return_mask=True)
      self.conv2 = PartialConv2d(cout, cout, kernel, padding=(kernel - 1) // 2, return_mask=True)
      self.short = PartialConv2d(cin, cout, 1) if cin != cout else Identity()

    def forward(self, x, mask=None):
      x_short = self.short(x)
      x, mask = self.conv1(self.act(self.norm1(x)), mask)
      x, mask = self.conv2(self.act(self.norm2(x)), mask)
      return (x + x_short) / np.sqrt(2), mask

  class DownSample(nn.Module):
    def __init__(self, c, kernel):
      super().__init__()
      self.conv = PartialConv2d(c, c, kernel, stride=2, padding=(kernel - 1) // 2, return_mask=True)

    def forward(self, x, mask=None):
      return self.conv(x, mask)

  def up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

  class UpSample(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv = PartialConv2d(c, c, 3, padding=1, return_mask=True)

    def forward(self, x):
      return self.conv(up2(x))[0]

  class ToRGB(nn.Module):
    def __init__(self, cin, cout, upsample, activation="leakyrelu"):
      super().__init__()
      cin = cin + cout if upsample else cin
      self.conv = nn.Sequential(PixelwiseNorm(cin), act(activation), PartialConv2d(cin, cout, 3, padding=1))

    def forward(self, x, skip=None):
      if skip is not None:
        x = torch.cat([x, up2(skip)], 1)
      return torch.tanh(self.conv(x))

  class NoiseInjection(nn.Module):
    def __init__(self, noises):
      super().__init__()
      self.alpha, self.noises = nn.Parameter(torch.zeros(1)), noises  # noises: replayed from flax, in call order

    def forward(self, x, mask=None):
      noise = self.noises.pop(0)
      mask = F.interpolate(mask, size=x.size()[2:], mode="bilinear", align_corners=True)
      return x + self.alpha * noise * (1 - mask)

  class MultiheadAttention(nn.Module):
    def __init__(self, c, heads):
      super().__init__()
      self.heads, self.scale = heads, (c // heads) ** -0.5
      self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(c, c) for _ in range(4))

    def forward(self, q, k, v, key_padding_mask=None):
      b, n, c = q.shape
      split = lambda t: t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
      q, k, v = split(self.to_q(q)), split(self.to_k(k)), split(self.to_v(v))
      dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
      if key_padding_mask is not None:
        m = key_padding_mask.unsqueeze(1).unsqueeze(2)
        dots = torch.where(dots > 0, m * dots, dots / (m + 1e-5))
      out = torch.einsum("bhij,bhjd->bhid", dots.softmax(dim=-1), v)
      return self.to_out(out.transpose(1, 2).reshape(b, n, c))

  class TransformerEncoderLayer(nn.Module):
    def __init__(self, c, heads=8, dim_conv=2048, kernel=1):
      super().__init__()
      self.attn = MultiheadAttention(c, heads)
      self.conv1 = PartialConv2d(c, dim_conv, kernel, padding=(kernel - 1) // 2)
      self.conv2 = PartialConv2d(dim_conv, c, 1)
      self.norm1, self.norm2, self.activation = PixelwiseNorm(c), PixelwiseNorm(c), nn.GELU()

    def forward(self, src, mask=None, pos=None):
      b, c, h, w = src.size()
      src2 = self.norm1(src).flatten(2).transpose(1, 2)
      q = k = src2 if pos is None else src2 + pos
      src2 = self.attn(q, k, src2, key_padding_mask=mask).transpose(1, 2).reshape(b, c, h, w)
      src = src + src2
      return src + self.conv2(self.activation(self.conv1(self.norm2(src))))

  class PositionEmbeddingLearned(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.row_embed, self.col_embed = nn.Embedding(32, c), nn.Embedding(32, c)

    def forward(self, x):
      h, w = x.shape[-2:]
      x_emb = self.col_embed(torch.arange(w)).unsqueeze(0).repeat(h, 1, 1)
      y_emb = self.row_embed(torch.arange(h)).unsqueeze(1).repeat(1, w, 1)
      return (x_emb + y_emb).permute(2, 0, 1).unsqueeze(0).repeat(x.shape[0], 1, 1, 1)

  class TransformerEncoder(nn.Module):
    def __init__(self, c, heads, n, dim_conv):
      super().__init__()
      self.layers = nn.ModuleList([TransformerEncoderLayer(c, heads, dim_conv) for _ in range(n)])

    def forward(self, x, mask, pos):
      for layer in self.layers:
        x, mask = layer(x, mask, pos), mask ** 0.5
      return x

  class Transformer(nn.Module):
    def __init__(self, cin, embed, cout, dim_conv, heads, n):
      super().__init__()
      self.token_embed = PartialConv2d(cin, embed, 1, return_mask=True)
      self.pos_embed = PositionEmbeddingLearned(embed)
      self.encoder_trans = TransformerEncoder(embed, heads, n, dim_conv)
      self.to_token = nn.Sequential(PixelwiseNorm(embed), nn.GELU(), nn.Conv2d(embed, cout, 1))

    def forward(self, x, mask):
      x, mask = self.token_embed(x, mask)
      pos = self.pos_embed(x).flatten(2).transpose(1, 2)
      mask = torch.max(mask, 1e-2 * torch.ones_like(mask)).flatten(1)
      return self.to_token(self.encoder_trans(x, mask, pos))

  class DiffEncoder(nn.Module):
    def __init__(self, ngf, kernel, embed, down):
      super().__init__()
      self.encode = PartialConv2d(3, ngf, kernel, padding=(kernel - 1) // 2, return_mask=True)
      self.down, c = nn.ModuleList(), ngf
      for _ in range(down):
        stage = nn.Module()
        stage.downsample = DownSample(c, 2)
        stage.block = nn.ModuleList([ResnetBlock(c, 2 * c, kernel), ResnetBlock(2 * c, 2 * c, kernel)])
        self.down.append(stage)
        c *= 2
      self.mid = nn.Module()
      self.mid.block1, self.mid.block2 = ResnetBlock(c, c, kernel), ResnetBlock(c, c, kernel)
      self.conv_out = ResnetBlock(c, embed, kernel)

    def forward(self, x, mask):
      x, mask = self.encode(x, mask)
      for stage in self.down:
        x, mask = stage.downsample(x, mask)
        for block in stage.block:
          x, mask = block(x, mask)
      x, mask = self.mid.block1(x, mask)
      x, mask = self.mid.block2(x, mask)
      return self.conv_out(x, mask)

  class DiffDecoder(nn.Module):
    def __init__(self, embed, ngf, up, heads, dim_conv, noises):
      super().__init__()
      c = ngf * 2 ** up
      self.conv_in = PartialConv2d(embed, c, 3, padding=1)
      self.mid = nn.Module()
      self.mid.block1, self.mid.block2 = ResnetBlock(c, c, 3), ResnetBlock(c, c, 3)
      self.mid.attn = TransformerEncoderLayer(c, heads, dim_conv)
      self.up = nn.ModuleList()
      for i in range(up):
        stage = nn.Module()
        stage.block = nn.ModuleList([ResnetBlock(c, c // 2, 3), ResnetBlock(c // 2, c // 2, 3)])
        stage.noise = nn.ModuleList([NoiseInjection(noises), NoiseInjection(noises)])
        stage.attn = nn.ModuleList([TransformerEncoderLayer(c // 2, heads, dim_conv) for _ in range(2 * (i == 0))])
        stage.out = ToRGB(c // 2, 3, i != 0)
        stage.upsample = UpSample(c // 2)
        self.up.append(stage)
        c //= 2
      self.decode = ToRGB(c, 3, True)

    def forward(self, x, mask):
      x = self.mid.block2(self.mid.attn(self.mid.block1(self.conv_in(x))[0]))[0]
      skip = None
      for stage in self.up:
        for j in range(2):
          x = stage.block[j](stage.noise[j](x, mask))[0]
          if len(stage.attn):
            x = stage.attn[j](x)
        skip = stage.out(x, skip)
        x = stage.upsample(x)
      return self.decode(x, skip)

  class AttnAware(nn.Module):
    def __init__(self, c, heads=2):
      super().__init__()
      self.heads, self.scale = heads, (c // heads) ** -0.5
      self.query_conv = nn.Sequential(PixelwiseNorm(c), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 1))
      self.key_conv = nn.Sequential(PixelwiseNorm(c), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 1))
      self.weight = nn.Conv2d(2 * heads, 2, 1)
      self.to_out = ResnetBlock(2 * c, c, 1)

    def forward(self, x, pre, mask):
      b, c, w, h = x.size()
      split = lambda t: t.reshape(b, self.heads, c // self.heads, w * h).transpose(2, 3)  # noqa: E731
      q, k, v = split(self.query_conv(x)), split(self.key_conv(x)), split(x)
      dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
      mask_n = mask.view(b, -1, 1, w * h).expand_as(dots)
      w_visible = (dots.detach() * mask_n).max(dim=-1, keepdim=True)[0]
      w_invisible = (dots.detach() * (1 - mask_n)).max(dim=-1, keepdim=True)[0]
      weight = torch.cat([w_visible.view(b, self.heads, w, h), w_invisible.view(b, self.heads, w, h)], dim=1)
      weight = F.softmax(self.weight(weight), dim=1)
      attn_visible = torch.where(dots > 0, dots * mask_n, dots / (mask_n + 1e-8)).softmax(dim=-1)
      context = torch.einsum("bhij,bhjd->bhid", attn_visible, split(pre))
      attn_invisible = torch.where(dots > 0, dots * (1 - mask_n), dots / ((1 - mask_n) + 1e-8)).softmax(dim=-1)
      own = torch.einsum("bhij,bhjd->bhid", attn_invisible, v)
      merge = lambda t: t.transpose(2, 3).reshape(b, c, w, h)  # noqa: E731
      out = weight[:, :1] * merge(context) + weight[:, 1:] * merge(own)
      return self.to_out(torch.cat([out, x], dim=1))[0]

  class RefinedGenerator(nn.Module):
    def __init__(self, ngf, embed, down, mid, res):
      super().__init__()
      self.encode = PartialConv2d(3, ngf, 3, padding=1)
      self.down, out_dims, c = nn.ModuleList(), [], ngf
      for _ in range(down):
        stage, cin = nn.Module(), c
        out_dims.append(c)
        c = min(2 * c, embed)
        stage.downsample = DownSample(cin, 3)
        stage.block = nn.ModuleList([ResnetBlock(cin if j == 0 else c, c, 3) for j in range(res)])
        self.down.append(stage)
      self.mid = nn.ModuleList([ResnetBlock(c, c, 3) for _ in range(mid)])
      self.up = nn.ModuleList()
      for i in range(down):
        stage, cin = nn.Module(), c
        c = max(out_dims[-i - 1], ngf)
        stage.block = nn.ModuleList([ResnetBlock(cin if j == 0 else c, c, 3) for j in range(res)])
        if i == down - 3:
          stage.attn = AttnAware(c)
        stage.out = ToRGB(c, 3, i != 0)
        stage.upsample = UpSample(c)
        self.up.append(stage)
      self.decode = ToRGB(c, 3, True)

    def forward(self, x, mask):
      x = self.encode(x)
      for i, stage in enumerate(self.down):
        x = stage.downsample(x)[0]
        pre = x if i == 2 else pre if i > 2 else None
        for block in stage.block:
          x = block(x)[0]
      for block in self.mid:
        x = block(x)[0]
      skip = None
      for i, stage in enumerate(self.up):
        for block in stage.block:
          x = block(x)[0]
        if i == len(self.up) - 3:
          x = stage.attn(x, pre, F.interpolate(mask, size=x.size()[2:], mode="bilinear", align_corners=True))
        skip = stage.out(x, skip)
        x = stage.upsample(x)
      return self.decode(x, skip)

  def upfirdn2d_native(x, kernel, pad):  # stylegan_ops/upfirdn2d.py's fallback, up = down = 1
    _, c, in_h, in_w = x.shape
    out = F.pad(x.reshape(-1, 1, in_h, in_w), [pad[0], pad[1], pad[0], pad[1]])
    out = F.conv2d(out, torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape))
    return out.reshape(-1, c, out.shape[-2], out.shape[-1])

  def fused_leaky_relu(x, bias):
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.ndim - 2)), 0.2) * 2 ** 0.5

  class FusedLeakyReLU(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
      return fused_leaky_relu(x, self.bias)

  class Blur(nn.Module):
    def __init__(self, pad):
      super().__init__()
      k = torch.tensor([1., 3., 3., 1.])
      self.register_buffer("kernel", (k[None, :] * k[:, None]) / 64)
      self.pad = pad

    def forward(self, x):
      return upfirdn2d_native(x, self.kernel, self.pad)

  class EqualConv2d(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, bias):
      super().__init__()
      self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
      self.scale, self.stride, self.padding = 1 / np.sqrt(cin * k * k), stride, padding
      self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
      return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)

  class EqualLinear(nn.Module):
    def __init__(self, cin, cout, activation=None):
      super().__init__()
      self.weight, self.bias = nn.Parameter(torch.randn(cout, cin)), nn.Parameter(torch.zeros(cout))
      self.scale, self.activation = 1 / np.sqrt(cin), activation

    def forward(self, x):
      if self.activation:
        return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias)
      return F.linear(x, self.weight * self.scale, bias=self.bias)

  class ConvLayer(nn.Sequential):
    def __init__(self, cin, cout, k, downsample=False, bias=True, activate=True):
      layers = []
      if downsample:
        p = 2 + k - 1
        layers.append(Blur(((p + 1) // 2, p // 2)))
        stride, padding = 2, 0
      else:
        stride, padding = 1, k // 2
      layers.append(EqualConv2d(cin, cout, k, stride, padding, bias and not activate))
      if activate:
        layers.append(FusedLeakyReLU(cout))
      super().__init__(*layers)

  class StyleBlock(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.conv1, self.conv2 = ConvLayer(cin, cin, 3), ConvLayer(cin, cout, 3, downsample=True)
      self.skip = ConvLayer(cin, cout, 1, downsample=True, activate=False, bias=False)

    def forward(self, x):
      return (self.conv2(self.conv1(x)) + self.skip(x)) / np.sqrt(2)

  class StyleDiscriminator(nn.Module):
    def __init__(self, size, ndf=32, top=512):
      super().__init__()
      m = ndf / 64
      channels = {4: top, 8: top, 16: top, 32: int(top * m), 64: int(top / 2 * m), 128: int(top / 4 * m),
                  256: int(top / 8 * m), 512: int(top / 16 * m)}
      convs, cin = [ConvLayer(3, channels[size], 1)], channels[size]
      for i in range(int(np.log2(size)), 2, -1):
        convs.append(StyleBlock(cin, channels[2 ** (i - 1)]))
        cin = channels[2 ** (i - 1)]
      self.convs = nn.Sequential(*convs)
      self.final_conv = ConvLayer(cin + 1, channels[4], 3)
      self.final_linear = nn.Sequential(EqualLinear(channels[4] * 16, channels[4], activation="fused_lrelu"),
                                        EqualLinear(channels[4], 1))

    def forward(self, x):
      out = self.convs(x)
      b, c, h, w = out.shape
      group = min(b, 4)
      stddev = out.view(group, -1, 1, c, h, w)
      stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdims=True).squeeze(2)
      out = torch.cat([out, stddev.repeat(group, 1, h, w)], 1)
      return self.final_linear(self.final_conv(out).view(b, -1))

  return torch, {name: value for name, value in locals().items() if isinstance(value, type)}


def _randomise(torch, net, seed):
  """Nonzero biases and alphas (the inits make them 0 or 1), so a misplaced one shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, value in net.named_parameters():
      if key.endswith("bias") or key.endswith("alpha"):
        value.copy_((1.0 if key.endswith("norm1.alpha") else 0.0) + 0.3 * torch.randn(value.shape, generator=gen))
      elif value.ndim > 1 and "embed" not in key:
        value.copy_(torch.randn(value.shape, generator=gen) / np.sqrt(np.prod(value.shape[1:])) * 1.3)


def _to_flax(net, module, *args):
  abstract = _abstract(module, *args)
  state_dict = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  return torch_map.load_variables(tfill.flax_layout_state_dict(state_dict), abstract, _TABLE, "torch rebuild", "")


def _nchw(torch, x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


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
  noises += [_nchw(torch, sown[f"up_{i}"][f"noise_{j}"]["noise"][0]) for i in range(3) for j in range(2)]
  with torch.no_grad():
    want = net(_nchw(torch, tokens), _nchw(torch, mask))
  assert not noises and got.shape == (2, 32, 32, 3)
  # 1.2e-5 here: float32 rounding (torch's own float32 output is 1.4e-5 from its float64 one at these 2-channel widths).
  _close(got, want)


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
