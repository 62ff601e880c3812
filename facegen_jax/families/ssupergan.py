"""What SSuperGAN's four families share (vae, intro_vae, ssupervae, ssuper_dcgan): networks from the config, the
ELBO's terms, the backbone's ImageNet weights, sample grids and the completion's eval figures.

Losses as barisbatuhan/SSuperGAN computes them (functional/losses at a4d7a60): the reconstruction term is the
negative log-likelihood of the target under N(decoded, 1) summed over pixels, 0.5 (x - mean)^2 + 0.5 log(2 pi)
each; the KL is KL(N(mu, exp(log_std)) || N(0, 1)) summed over the latent; both are batch means, and the ELBO is
nll + kl_weight * kl (the original's kl_loss_weight 1). z = mu + exp(log_std) * noise (log STD, not log variance).

Config keys the families read (configs/vae.py, intro_vae.py, ssupervae.py, ssuper_dcgan.py):
  config.model.latent_dim, channels, image_size              the IntroVAE network (VAE, IntroVAE, PlainSSuperVAE)
  config.model.backbone ("efficientnet-bN"), embed_dim, static_pad_size (None: the variant's image size, as
      efficientnet_pytorch pads), backbone_weights (the .npz of `python -m facegen_jax.convert efficientnet`:
      ImageNet weights with a fresh fc to embed_dim, as the original's from_pretrained; None: random, with a
      warning), use_lstm, lstm_hidden, bidirectional, num_layers, lstm_dropout, masked_first   (SSuper models)
  config.model.ngf, ndf                                      SSuper-DCGAN's generator and local D
  config.loss_weights.kl                                     the ELBO's KL weight (1)
"""

from __future__ import annotations

import functools
import math

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from facegen_jax import errors
from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets import efficientnet
from facegen_jax.nets import ssupergan as nets
from input_pipeline import panels as panels_lib

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
CONVERT_BACKBONE = "python -m facegen_jax.convert efficientnet --checkpoint {variant}-XXXX.pth --out {path}"


# --- losses ---


def gaussian_nll(target: jax.Array, mean: jax.Array) -> jax.Array:
  """(B,): -log N(target; mean, 1) summed over the pixels (reconstruction_loss_distributional, unit scale)."""
  return jnp.sum(0.5 * jnp.square(target - mean) + _HALF_LOG_2PI, axis=tuple(range(1, target.ndim)))


def kl_divergence(mu: jax.Array, log_std: jax.Array) -> jax.Array:
  """(B,): KL(N(mu, exp(log_std)^2) || N(0, 1)) summed over the latent (kl_loss's analytic divergence)."""
  return jnp.sum(0.5 * (jnp.square(mu) + jnp.exp(2 * log_std) - 1) - log_std, axis=-1)


def elbo(config, target, image, mu, log_std) -> dict[str, jax.Array]:
  """{"loss", "nll", "kl"}: batch means; loss = nll + loss_weights.kl * kl (the original's `elbo`)."""
  nll, kl = gaussian_nll(target, image).mean(), kl_divergence(mu, log_std).mean()
  return {"loss": nll + config.loss_weights.kl * kl, "nll": nll, "kl": kl}


def reconstruction_errors(target: jax.Array, image: jax.Array) -> dict[str, jax.Array]:
  """Per record (B,): "mse" over pixels of [-1, 1] images (the output clipped to that range) and "psnr" in dB
  for that range (peak-to-peak 2)."""
  mse = jnp.mean(jnp.square(jnp.clip(image, -1, 1) - target), axis=tuple(range(1, target.ndim)))
  return {"mse": mse, "psnr": 10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))}


def recon_metrics(prefix: str, target, image) -> dict[str, jax.Array]:
  errors_ = reconstruction_errors(target, image)
  return {f"{prefix}/recon_mse": errors_["mse"].mean(), f"{prefix}/recon_psnr": errors_["psnr"].mean()}


# --- networks ---


def vae_network(config) -> nets.VAE:
  m = config.model
  return nets.VAE(m.latent_dim, tuple(m.channels), m.image_size)


class ToyBackbone(nn.Module):
  """The tiny presets' stand-in for the EfficientNet (config.model.backbone = "toy"): two stride-2 3x3 convs with
  torch's BatchNorm and swish, average pooling, dropout and a Linear to the embedding. The same interface and
  variable collections at a fraction of b0's compile time; tests of the families run it, the cpu and real presets
  run EfficientNet."""

  num_classes: int
  width: int = 8

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i in range(2):
      x = conv_lib.Conv(self.width * 2 ** i, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                        name=f"conv_{i}")(x)
      x = efficientnet.swish(nets.BatchNorm(name=f"bn_{i}")(x, train=train))
    x = nn.Dropout(0.2, deterministic=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(self.num_classes, name="fc")(x)


BACKBONES = (*efficientnet.VARIANTS, "toy")


def backbone(config) -> nn.Module:
  m = config.model
  if m.backbone == "toy":
    return ToyBackbone(m.embed_dim)
  return efficientnet.EfficientNet(m.backbone, num_classes=m.embed_dim, static_pad_size=m.get("static_pad_size"),
                                   remat=bool(m.get("remat", False)))


def _sequence_settings(config) -> dict:
  m = config.model
  return dict(latent_dim=m.latent_dim, use_lstm=m.use_lstm, lstm_hidden=m.lstm_hidden,
              bidirectional=m.bidirectional, num_layers=m.num_layers, lstm_dropout=m.lstm_dropout,
              masked_first=m.masked_first)


def plain_ssupervae(config) -> nets.PlainSSuperVAE:
  m = config.model
  return nets.PlainSSuperVAE(backbone(config), channels=tuple(m.channels), image_size=m.image_size,
                             **_sequence_settings(config))


def ssuper_dcgan(config) -> tuple[nets.SSuperDCGAN, nets.DCGANDiscriminator]:
  return (nets.SSuperDCGAN(backbone(config), ngf=config.model.ngf, **_sequence_settings(config)),
          nets.DCGANDiscriminator(config.model.ndf))


def face_size(config) -> int:
  return int(config.input.panels.face_size if panels_lib.record_kind(config.input) == "panels"
             else config.input.resolution)


def example_face(config) -> jax.Array:
  size = config.model.image_size
  return jnp.zeros((1, size, size, 3))


def example_panels(config) -> jax.Array:
  p = config.input.panels
  return jnp.zeros((1, p.num_panels, p.panel_size, p.panel_size, 3))


# --- validation ---


def validate_vae(config) -> None:
  m = config.model
  if 2 ** len(m.channels) * 4 != m.image_size:
    raise errors.ConfigError(f"config.model.channels {tuple(m.channels)} and image_size {m.image_size}: the IntroVAE "
                             "network needs 2 ** len(channels) * 4 == image_size (4 channels for 64 px)")
  if face_size(config) != m.image_size:
    raise errors.ConfigError(f"config.input.resolution {face_size(config)} differs from config.model.image_size "
                             f"{m.image_size}: set both to the same value")
  if m.latent_dim < 1:
    raise errors.ConfigError(f"config.model.latent_dim must be positive, got {m.latent_dim}")


def validate_ssuper(config) -> None:
  """Panel records, a known backbone, a readable weights file (else the random-backbone warning)."""
  m = config.model
  if panels_lib.record_kind(config.input) != "panels":
    raise errors.ConfigError(f"{config.family} trains on panel sequences: set --config.input.record=panels")
  if m.backbone not in BACKBONES:
    raise errors.ConfigError(f"config.model.backbone {m.backbone!r} is not one of {', '.join(BACKBONES)}")
  if m.use_lstm and m.bidirectional and m.lstm_hidden % 2:
    raise errors.ConfigError(f"config.model.lstm_hidden {m.lstm_hidden} must be even for a bidirectional LSTM "
                             "(each direction has half)")
  path = m.get("backbone_weights")
  logging.info("%s: %s (static padding for %s px) on %d px panels x %d, embedding %d, %s encoder, latent %d",
               config.family, m.backbone, m.get("static_pad_size") or "the variant's", config.input.panels.panel_size,
               config.input.panels.num_panels, m.embed_dim,
               f"LSTM {m.lstm_hidden}{' bidirectional' if m.bidirectional else ''}" if m.use_lstm else "plain",
               m.latent_dim)
  if m.backbone == "toy":
    if path:
      raise errors.ConfigError("config.model.backbone 'toy' (the tests' stand-in) takes no weights: unset "
                               "config.model.backbone_weights or choose an efficientnet-bN backbone")
  elif path:
    if not epath.Path(path).exists():
      raise errors.ConfigError(f"config.model.backbone_weights {path!r} does not exist: convert efficientnet_pytorch's "
                               f"ImageNet weights with `{CONVERT_BACKBONE.format(variant=m.backbone, path=path)}`")
  else:
    logging.warning("The %s backbone starts from a RANDOM init (config.model.backbone_weights is not set; unless this "
                    "run resumes or starts init_from another run). The original starts from ImageNet weights: `%s` "
                    "and --config.model.backbone_weights=FILE", m.backbone,
                    CONVERT_BACKBONE.format(variant=m.backbone, path=f"{m.backbone}.npz"))


# --- the backbone's ImageNet weights ---


@functools.lru_cache(maxsize=2)
def _backbone_file(path: str, variant: str) -> dict:
  """{"params", "batch_stats"} of the converted file without its ImageNet fc, float32 numpy; cached."""
  variables = efficientnet.load_variables(path, variant)
  variables["params"].pop("fc")
  return jax.tree.map(lambda x: np.asarray(x, np.float32), variables)


def with_backbone_weights(config, variables: dict) -> dict:
  """`variables` ({"params", "batch_stats"} of a model with a "backbone") with the backbone's ImageNet weights
  from config.model.backbone_weights, its fc (to embed_dim) kept fresh as from_pretrained's; unchanged without a
  file. The file is read on the host when the init program runs (a callback), so it is an operand of the
  program, not a constant XLA folds."""
  path = config.model.get("backbone_weights")
  if not path:
    return variables
  fresh = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                        {"params": {k: v for k, v in fresh["params"].items() if k != "fc"},
                         "batch_stats": fresh["batch_stats"]})
  loaded = jax.pure_callback(lambda: _backbone_file(path, config.model.backbone), shapes)
  loaded["params"]["fc"] = fresh["params"]["fc"]
  return {c: {**variables[c], "backbone": loaded[c]} for c in variables}


# --- samples ---


def clip_images(x: jax.Array) -> jax.Array:
  return jnp.clip(x, -1.0, 1.0)


def panels_grid(config, panels: jax.Array) -> dict[str, jax.Array]:
  """{"panel_<i>": (B, F, F, 3)}: each context panel (and the masked one, last) resized to the face size, so
  they sit beside the faces in one grid row."""
  size = face_size(config)
  batch, steps = panels.shape[:2]
  return {f"panel_{i}": jax.image.resize(panels[:, i], (batch, size, size, 3), "linear", antialias=True)
          for i in range(steps)}


def sample_batch(config, batch: dict, fields) -> dict:
  return {field: batch[field][:config.num_sample_images] for field in fields}


def completion_scores(inputs: dict, generated: dict, output: str) -> dict:
  """{"face_mse", "face_psnr"} (B,) of the completed face against the real target face when the evaluation
  reads it (the eval output's "image" field); {} otherwise (generate --panels has no real face)."""
  if output not in generated or "image" not in inputs:
    return {}
  found = reconstruction_errors(inputs["image"], generated[output])
  return {"face_mse": found["mse"].astype(jnp.float32), "face_psnr": found["psnr"].astype(jnp.float32)}


def seq_config_dict(**values) -> ml_collections.ConfigDict:
  """config.model for an SSuper model: every key (so each can be set from the command line)."""
  defaults = dict(backbone="efficientnet-b5", embed_dim=256, static_pad_size=None, backbone_weights=None, remat=False,
                  latent_dim=256, use_lstm=False, lstm_hidden=256, bidirectional=False, num_layers=1,
                  lstm_dropout=0.0, masked_first=True)
  unknown = sorted(set(values) - set(defaults) - {"channels", "image_size", "ngf", "ndf"})
  if unknown:
    raise ValueError(f"unknown model keys {unknown}")
  c = ml_collections.ConfigDict()
  for key, default in {**defaults, **values}.items():
    if key == "static_pad_size" and default is None:
      c[key] = ml_collections.config_dict.placeholder(int)
    elif key == "backbone_weights" and default is None:
      c[key] = ml_collections.config_dict.placeholder(str)
    else:
      c[key] = tuple(default) if isinstance(default, list) else default
  return c
