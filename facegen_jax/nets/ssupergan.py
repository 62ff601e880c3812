"""SSuperGAN's networks (barisbatuhan/SSuperGAN): the IntroVAE network (VAE, IntroVAE), the panel-sequence
encoders, PlainSSuperVAE and SSuper-DCGAN.

Images are NHWC. Faces are 64x64; panels (B, S, H, W, 3) with the masked panel last (its face painted white).
- `Encoder` (x, *, train) -> (mu, log_std), each (B, latent): 5x5 conv + BN + LeakyReLU + avg-pool, then per
  further channel step a `ResidualBlock` and avg-pool, a last block, Linear(C*4*4 -> 2 latent) split into mu and
  log sigma (log std, not log variance). `Decoder` (z, *, train) -> (B, 64, 64, 3), unbounded (no output
  activation: the original has none, its faces live in [-1, 1]): Linear + ReLU to 4x4, per channel step
  (reversed) a block and nearest x2, a last block, 5x5 conv with bias. networks/intro_vae.py at a4d7a60.
  `VAE` holds both (the VAE and IntroVAE models are this one network; IntroVAE trains it differently).
- `LSTM`: torch.nn.LSTM (gates i, f, g, o; the two biases b_ih and b_hh; torch's parameter names and (4H, in)
  layout, so a checkpoint converts one to one; dropout between layers in training).
- `PlainSequenceEncoder` / `LSTMSequenceEncoder`: panel embeddings (B, S, E) -> (mu, log_std). The plain one
  concatenates them; the LSTM one runs the masked panel first (order [S-1, 0, ..., S-2]) and takes the last
  layer's final hidden state, directions concatenated [forward, backward]. networks/panel_encoder/ (a4d7a60).
- `PlainSSuperVAE`: backbone per panel -> sequence encoder -> `Decoder`; `SSuperDCGAN`: the same encoder ->
  `DCGANGenerator` (tanh, [-1, 1]); `DCGANDiscriminator`: the local D on 64 px faces, returning logits (B,): the
  original's Sigmoid belongs in the loss (BCE with logits, the same math without the log of a rounded
  probability). networks/ssuper_model.py, generator/dcgan_generator.py, discriminator/dcgan_discriminator.py at
  e979e94. The backbone is any module `backbone(x (N, H, W, 3), *, train) -> (N, E)` (SSuperGAN's is
  `nets/efficientnet.py`'s EfficientNet with num_classes = the embedding size).

BatchNorm is torch's (`BatchNorm`: eps 1e-5, momentum 0.1, unbiased running variance) in the "batch_stats"
collection. Init is torch's default (kaiming_uniform(a=sqrt(5)) kernels, U(+-1/sqrt(fan_in)) biases, LSTM
U(+-1/sqrt(H))) except the DCGAN generator's, which the original sets: kernels N(0, 0.02), BN scale N(1, 0.02).

Parameters as torch counts them (at the seed's configs): VAE 23,141,891 (encoder 13,740,864, decoder 9,401,027);
DCGAN G (latent 512) 6,951,808, D 2,765,568; LSTM 256 -> 256 526,336; bidirectional 1024 -> 2 x 512 6,299,648.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.nets import batch_norm
from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets.spade import upsample2

_LEAKY_SLOPE = 0.2
# torch's kaiming_uniform_(w, a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_DCGAN_INIT = nn.initializers.normal(0.02)
_DCGAN_PAD_0 = conv_lib.torch_transpose_padding(4, 0)
_DCGAN_PAD_1 = conv_lib.torch_transpose_padding(4, 1)


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _torch_bias_init(fan_in: int):
  return _uniform(1 / np.sqrt(fan_in))


def _scale_normal(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _leaky(x):
  return nn.leaky_relu(x, _LEAKY_SLOPE)


def _conv(x, features, kernel_size, *, name, use_bias=False):
  """Conv2d(kernel_size, stride 1, padding kernel_size // 2), torch's init."""
  pad = kernel_size // 2
  fan_in = x.shape[-1] * kernel_size ** 2
  return conv_lib.Conv(features, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                       kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(fan_in), name=name)(x)


def _dense(x, features, *, name):
  """nn.Linear with torch's init."""
  return nn.Dense(features, kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(x.shape[-1]), name=name)(x)


def _avg_pool2(x):
  # flax's reduce_window pool: a reshape + mean was slower on XLA:CPU (fwd+bwd of the encoder's four pools at
  # batch 64: 342 vs 238 ms median, interleaved, load 9-18).
  return nn.avg_pool(x, (2, 2), (2, 2))


BatchNorm = batch_norm.BatchNorm  # torch's BatchNorm2d (momentum 0.1, eps 1e-5).


# --- the IntroVAE network ---


class ResidualBlock(nn.Module):
  """IntroVAE's _Residual_Block: LReLU(BN(conv3(LReLU(BN(conv3(x)))) + skip)), the BN after the sum; the skip is
  a 1x1 conv (no bias) only where the channels change (the original's `inc is not outc`)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    skip = x if x.shape[-1] == self.features else _conv(x, self.features, 1, name="conv_expand")
    y = _leaky(BatchNorm(name="bn1")(_conv(x, self.features, 3, name="conv1"), train=train))
    y = _conv(y, self.features, 3, name="conv2")
    return _leaky(BatchNorm(name="bn2")(y + skip, train=train))


def _check_sizes(channels: Sequence[int], image_size: int) -> None:
  if 2 ** len(channels) * 4 != image_size:
    raise ValueError(f"IntroVAE's network needs 2 ** len(channels) * 4 == image_size; got {len(channels)} "
                     f"channels for {image_size} px")


class Encoder(nn.Module):
  """x (B, image_size, image_size, 3) -> (mu, log_std), each (B, latent_dim)."""

  latent_dim: int = 256
  channels: Sequence[int] = (64, 128, 256, 512)
  image_size: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    _check_sizes(self.channels, self.image_size)
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"the encoder is built for {self.image_size} px images, got {x.shape[1:3]}")
    x = _conv(x, self.channels[0], 5, name="conv_in")
    x = _avg_pool2(_leaky(BatchNorm(name="bn_in")(x, train=train)))
    size = self.image_size // 2
    for features in self.channels[1:]:
      x = _avg_pool2(ResidualBlock(features, name=f"res_in_{size}")(x, train=train))
      size //= 2
    x = ResidualBlock(self.channels[-1], name=f"res_in_{size}")(x, train=train)
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's (C, H, W) flattening order.
    mu, log_std = jnp.split(_dense(x, 2 * self.latent_dim, name="fc"), 2, axis=-1)
    return mu, log_std


class Decoder(nn.Module):
  """z (B, latent_dim) -> image (B, image_size, image_size, 3), no output activation."""

  channels: Sequence[int] = (64, 128, 256, 512)
  image_size: int = 64

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    _check_sizes(self.channels, self.image_size)
    top = self.channels[-1]
    x = nn.relu(_dense(z.reshape(z.shape[0], -1), top * 16, name="fc"))
    x = x.reshape(-1, top, 4, 4).transpose(0, 2, 3, 1)
    size = 4
    for features in reversed(self.channels):
      x = upsample2(ResidualBlock(features, name=f"res_in_{size}")(x, train=train))
      size *= 2
    x = ResidualBlock(self.channels[0], name=f"res_in_{size}")(x, train=train)
    return _conv(x, 3, 5, name="predict", use_bias=True)


class VAEOutput(NamedTuple):
  mu: jax.Array  # (B, latent)
  log_std: jax.Array  # (B, latent): log sigma of q(z | x)
  z: jax.Array  # (B, latent): mu + exp(log_std) * noise, or mu without noise
  image: jax.Array  # (B, 64, 64, 3): the decoder's (VAE) or generator's (SSuper-DCGAN) output for z


def _sample(mu, log_std, noise):
  """The reparameterised sample (torch's Normal(mu, exp(log_std)).rsample()); mu itself without noise."""
  return mu if noise is None else mu + jnp.exp(log_std) * noise


class VAE(nn.Module):
  """The VAE / IntroVAE network: `encoder` and `decoder` (torch's IntroVAE(image_size, channels, hdim))."""

  latent_dim: int = 256
  channels: Sequence[int] = (64, 128, 256, 512)
  image_size: int = 64

  def setup(self):
    self.encoder = Encoder(self.latent_dim, self.channels, self.image_size)
    self.decoder = Decoder(self.channels, self.image_size)

  def encode(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x, train=train)

  def decode(self, z: jax.Array, *, train: bool) -> jax.Array:
    return self.decoder(z, train=train)

  def __call__(self, x: jax.Array, noise: jax.Array | None = None, *, train: bool) -> VAEOutput:
    """noise (B, latent) ~ N(0, 1) samples z; without it z = mu (a reconstruction)."""
    mu, log_std = self.encode(x, train=train)
    z = _sample(mu, log_std, noise)
    return VAEOutput(mu, log_std, z, self.decode(z, train=train))


# --- sequence encoders ---


class LSTM(nn.Module):
  """torch.nn.LSTM(input, hidden_size, num_layers, bidirectional, dropout) on x (B, S, input), zero initial state.

  Returns (outputs (B, S, dirs * hidden_size), h_n (num_layers * dirs, B, hidden_size), c_n likewise), h_n/c_n
  ordered as torch's: layer-major, forward before backward. Parameters have torch's names and layouts
  (`weight_ih_l0` (4H, in), `weight_hh_l0` (4H, H), `bias_ih_l0`, `bias_hh_l0`, `..._reverse`), gate order
  i, f, g, o, init U(+-1/sqrt(H)). Dropout (rng "dropout") on every layer's outputs but the last's, in training.
  """

  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool):
    init = _uniform(1 / np.sqrt(self.hidden_size))
    gates = 4 * self.hidden_size
    h_n, c_n = [], []
    for layer in range(self.num_layers):
      if layer and self.dropout and train:
        x = nn.Dropout(self.dropout)(x, deterministic=False)
      outputs = []
      for suffix in ("", "_reverse") if self.bidirectional else ("",):
        name = f"l{layer}{suffix}"
        w_ih = self.param(f"weight_ih_{name}", init, (gates, x.shape[-1]))
        w_hh = self.param(f"weight_hh_{name}", init, (gates, self.hidden_size))
        b_ih = self.param(f"bias_ih_{name}", init, (gates,))
        b_hh = self.param(f"bias_hh_{name}", init, (gates,))
        inputs = jnp.einsum("bsi,gi->sbg", x, w_ih) + b_ih + b_hh  # Every step's input term at once.
        y, (h, c) = _lstm_scan(inputs, w_hh, reverse=bool(suffix))
        outputs.append(y)
        h_n.append(h)
        c_n.append(c)
      x = jnp.concatenate(outputs, axis=-1).transpose(1, 0, 2)
    return x, jnp.stack(h_n), jnp.stack(c_n)


def _lstm_scan(inputs, w_hh, *, reverse: bool):
  """One direction of one layer: inputs (S, B, 4H) the input terms; -> (outputs (S, B, H), (h_n, c_n))."""
  hidden = w_hh.shape[1]
  zeros = jnp.zeros(inputs.shape[1:2] + (hidden,), inputs.dtype)

  def step(carry, gate_input):
    h, c = carry
    i, f, g, o = jnp.split(gate_input + h @ w_hh.T, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  (h, c), outputs = jax.lax.scan(step, (zeros, zeros), inputs, reverse=reverse)
  return outputs, (h, c)


class PlainSequenceEncoder(nn.Module):
  """Embeddings (B, S, E) concatenated -> `fc_mean`, `fc_lgstd` (PlainSequentialEncoder without its embedder)."""

  latent_dim: int = 256

  @nn.compact
  def __call__(self, embeddings: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    del train
    x = embeddings.reshape(embeddings.shape[0], -1)
    return _dense(x, self.latent_dim, name="fc_mean"), _dense(x, self.latent_dim, name="fc_lgstd")


class LSTMSequenceEncoder(nn.Module):
  """Embeddings (B, S, E) -> `lstm` -> the last layer's h_n, directions concatenated (B, hidden) -> `fc_mean`,
  `fc_lgstd` (LSTMSequentialEncoder without its embedder). `hidden` is the concatenated size: each direction of a
  bidirectional LSTM has hidden // 2, as the original's lstm_hidden."""

  latent_dim: int = 256
  hidden: int = 256
  bidirectional: bool = False
  num_layers: int = 1
  dropout: float = 0.0
  masked_first: bool = True

  @nn.compact
  def __call__(self, embeddings: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    directions = 2 if self.bidirectional else 1
    if self.hidden % directions:
      raise ValueError(f"a bidirectional LSTM's hidden size must be even, got {self.hidden}")
    steps = embeddings.shape[1]
    if self.masked_first:  # The masked (last) panel first, then the context panels in order.
      embeddings = embeddings[:, np.array([steps - 1, *range(steps - 1)])]
    _, h_n, _ = LSTM(self.hidden // directions, self.num_layers, self.bidirectional, self.dropout,
                     name="lstm")(embeddings, train=train)
    x = h_n[-directions:].transpose(1, 0, 2).reshape(embeddings.shape[0], -1)
    return _dense(x, self.latent_dim, name="fc_mean"), _dense(x, self.latent_dim, name="fc_lgstd")


def sequence_encoder(*, latent_dim: int, use_lstm: bool, lstm_hidden: int, bidirectional: bool, num_layers: int,
                     lstm_dropout: float, masked_first: bool, name: str = "sequence_encoder") -> nn.Module:
  if not use_lstm:
    return PlainSequenceEncoder(latent_dim, name=name)
  return LSTMSequenceEncoder(latent_dim, lstm_hidden, bidirectional, num_layers, lstm_dropout, masked_first,
                             name=name)


def _embed(backbone: nn.Module, panels: jax.Array, *, train: bool) -> jax.Array:
  """panels (B, S, H, W, 3) -> the backbone's embedding of each panel, (B, S, E)."""
  batch, steps = panels.shape[:2]
  out = backbone(panels.reshape((batch * steps,) + panels.shape[2:]), train=train)
  return out.reshape(batch, steps, -1)


# --- SSuper models ---


class PlainSSuperVAE(nn.Module):
  """Panels (B, S, H, W, 3) in [-1, 1], the last with its face painted white -> (mu, log_std) -> the face.

  SSuperVAE of networks/ssupervae.py (a4d7a60): `backbone` embeds each panel, `sequence_encoder` (plain, or the
  LSTM with `use_lstm`) gives q(z | panels), `decoder` the IntroVAE decoder (64 px, unbounded).
  """

  backbone: nn.Module
  latent_dim: int = 256
  use_lstm: bool = False
  lstm_hidden: int = 256
  bidirectional: bool = False
  num_layers: int = 1
  lstm_dropout: float = 0.0
  masked_first: bool = True
  channels: Sequence[int] = (64, 128, 256, 512)
  image_size: int = 64

  def setup(self):
    self.sequence_encoder = sequence_encoder(
        latent_dim=self.latent_dim, use_lstm=self.use_lstm, lstm_hidden=self.lstm_hidden,
        bidirectional=self.bidirectional, num_layers=self.num_layers, lstm_dropout=self.lstm_dropout,
        masked_first=self.masked_first, name=None)
    self.decoder = Decoder(self.channels, self.image_size)

  def encode(self, panels: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    return self.sequence_encoder(_embed(self.backbone, panels, train=train), train=train)

  def decode(self, z: jax.Array, *, train: bool) -> jax.Array:
    return self.decoder(z, train=train)

  def __call__(self, panels: jax.Array, noise: jax.Array | None = None, *, train: bool) -> VAEOutput:
    """noise (B, latent) ~ N(0, 1) samples z; without it z = mu (the original's reconstruct)."""
    mu, log_std = self.encode(panels, train=train)
    z = _sample(mu, log_std, noise)
    return VAEOutput(mu, log_std, z, self.decode(z, train=train))


class DCGANGenerator(nn.Module):
  """z (B, latent) -> (B, 64, 64, 3) in [-1, 1]: ConvT(4, s1, p0) to 4x4 then four ConvT(4, s2, p1), BN + ReLU
  between, tanh; no biases; kernels N(0, 0.02), BN scale N(1, 0.02) (the original's weights_init)."""

  ngf: int = 64

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    x = z.reshape(z.shape[0], 1, 1, -1)
    for i, mult in enumerate((8, 4, 2, 1)):
      x = conv_lib.ConvTranspose(self.ngf * mult, (4, 4), strides=(1, 1) if i == 0 else (2, 2),
                                 padding=_DCGAN_PAD_0 if i == 0 else _DCGAN_PAD_1, use_bias=False,
                                 kernel_init=_DCGAN_INIT, name=f"conv_{i}")(x)
      x = nn.relu(BatchNorm(scale_init=_scale_normal, name=f"bn_{i}")(x, train=train))
    x = conv_lib.ConvTranspose(3, (4, 4), strides=(2, 2), padding=_DCGAN_PAD_1, use_bias=False,
                               kernel_init=_DCGAN_INIT, name="conv_4")(x)
    return jnp.tanh(x)


class DCGANDiscriminator(nn.Module):
  """The local D: x (B, 64, 64, 3) -> logits (B,); sigmoid(logits) is the original's output.

  Four Conv(4, s2, p1) (BN after all but the first) with LeakyReLU 0.2, Conv(4, s1, p0) to one channel; no
  biases; torch's default init (the original gives its D no weights_init). Real and fake in one batch share the
  batch statistics, as the original's single D call on cat([real, fake]) does.
  """

  ndf: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.shape[1:3] != (64, 64):
      raise ValueError(f"the DCGAN discriminator takes 64 px images, got {x.shape[1:3]}")
    for i, mult in enumerate((1, 2, 4, 8)):
      x = conv_lib.Conv(self.ndf * mult, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                        kernel_init=_TORCH_KERNEL_INIT, name=f"conv_{i}")(x)
      if i:
        x = BatchNorm(name=f"bn_{i}")(x, train=train)
      x = _leaky(x)
    x = conv_lib.Conv(1, (4, 4), padding="VALID", use_bias=False, kernel_init=_TORCH_KERNEL_INIT, name="conv_4")(x)
    return x.reshape(x.shape[0])


class SSuperDCGAN(nn.Module):
  """SSuper-DCGAN's generator side (networks/models.py SSuperDCGAN at e979e94 without its local D): `backbone`
  per panel -> `sequence_encoder` (LSTM by default: bidirectional, 1024 = 2 x 512) -> z (latent 512) ->
  `generator` (DCGAN, tanh). The D is `DCGANDiscriminator`, a separate network.
  """

  backbone: nn.Module
  latent_dim: int = 512
  use_lstm: bool = True
  lstm_hidden: int = 1024
  bidirectional: bool = True
  num_layers: int = 1
  lstm_dropout: float = 0.0
  masked_first: bool = True
  ngf: int = 64

  def setup(self):
    self.sequence_encoder = sequence_encoder(
        latent_dim=self.latent_dim, use_lstm=self.use_lstm, lstm_hidden=self.lstm_hidden,
        bidirectional=self.bidirectional, num_layers=self.num_layers, lstm_dropout=self.lstm_dropout,
        masked_first=self.masked_first, name=None)
    self.generator = DCGANGenerator(self.ngf)

  def encode(self, panels: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    return self.sequence_encoder(_embed(self.backbone, panels, train=train), train=train)

  def decode(self, z: jax.Array, *, train: bool) -> jax.Array:
    """z (B, latent) -> faces (B, 64, 64, 3) in [-1, 1]."""
    return self.generator(z, train=train)

  def __call__(self, panels: jax.Array, noise: jax.Array | None = None, *, train: bool) -> VAEOutput:
    """noise (B, latent) ~ N(0, 1) samples z as the original's forward; without it z = mu (its reconstruct)."""
    mu, log_std = self.encode(panels, train=train)
    z = _sample(mu, log_std, noise)
    return VAEOutput(mu, log_std, z, self.decode(z, train=train))
