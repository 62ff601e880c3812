"""A torch rebuild of lyndonzheng/TFill's networks (e05bc6b) and of TC's inference forward, for the parity tests
(tests/test_tfill_nets.py, tests/test_convert_tfill.py).

`rebuild()` -> (torch, {class name: class}): model/base_function.py's PartialConv2d (NVIDIA's, with its shape
cache), PixelwiseNorm, ResnetBlock, DownSample, UpSample, ToRGB, NoiseInjection, DiffEncoder, DiffDecoder, AttnAware;
transformer_function.py's MultiheadAttention, TransformerEncoderLayer, TransformerEncoder, Transformer;
position_embedding.py's PositionEmbeddingLearned; networks.py's RefinedGenerator and StyleDiscriminator with
stylegan_ops' native fallbacks (upfirdn2d_native, leaky_relu(x + b) * sqrt 2), under the original's module names,
so their state_dicts have the original's keys. It was checked once against the original's own modules (the e05bc6b
checkout, CUDA ops swapped for their native versions, state dicts loaded strictly): E, T, G (noise replayed), G_Ref
and D outputs identical (0.0) at toy sizes. `tc_forward` is TC.test's forward (model/tc_model.py).
"""

import functools

import numpy as np
import pytest


@functools.cache
def rebuild():
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
      self.alpha, self.noises = nn.Parameter(torch.zeros(1)), noises  # noises: a list to replay

    def forward(self, x, mask=None):
      # Replayed in call order while the list lasts, then drawn as the original does.
      noise = self.noises.pop(0) if self.noises else x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
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
      x, pre = self.encode(x), None
      for i, stage in enumerate(self.down):
        x = stage.downsample(x)[0]
        pre = x if i == 2 else pre
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


def randomise(torch, net, seed):
  """Nonzero biases and alphas (the inits make them 0 or 1), so a misplaced one shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, value in net.named_parameters():
      if key.endswith("bias") or key.endswith("alpha"):
        value.copy_((1.0 if key.endswith("norm1.alpha") else 0.0) + 0.3 * torch.randn(value.shape, generator=gen))
      elif value.ndim > 1 and "embed" not in key:
        value.copy_(torch.randn(value.shape, generator=gen) / np.sqrt(np.prod(value.shape[1:])) * 1.3)


def nchw(torch, x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def tc_forward(torch, nets: dict, img_org, mask, fixed_size: int) -> dict:
  """TC.test's forward on NCHW tensors (img_org in [-1, 1], mask 1 = visible): the 256 px input is bicubic
  (align_corners) of mask * img_org clamped to [-1, 1], its mask bicubic > 0.9; E -> T -> G(mask = the full-size
  mask); img_out = the composite with G's output bicubic-resized back and clamped; with nets["G_Ref"], img_ref =
  G_Ref(img_out, mask) and its composite img_ref_out."""
  F = torch.nn.functional
  resize = functools.partial(F.interpolate, mode="bicubic", align_corners=True)
  with torch.no_grad():
    fixed_img = resize(mask * img_org, size=[fixed_size, fixed_size]).clamp(-1, 1)
    fixed_mask = (resize(mask, size=[fixed_size, fixed_size]) > 0.9).type_as(fixed_img)
    tokens, token_mask = nets["E"](fixed_img, fixed_mask)
    img_g = nets["G"](nets["T"](tokens, token_mask), mask)
    img_out = mask * img_org + (1 - mask) * resize(img_g, size=list(img_org.shape[2:])).clamp(-1, 1)
    out = {"fixed_img": fixed_img, "fixed_mask": fixed_mask, "img_g": img_g, "img_out": img_out}
    if "G_Ref" in nets:
      out["img_ref"] = nets["G_Ref"](img_out, mask)
      out["img_ref_out"] = mask * img_org + (1 - mask) * out["img_ref"]
  return out
