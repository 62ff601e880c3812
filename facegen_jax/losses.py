"""Losses shared by the families.

Every adversarial loss has the same keyword-only signature (compare_gan's habit), so a family picks one by name
from the config: `discriminator_loss(kind, real_logits=..., fake_logits=...)` and
`generator_loss(kind, fake_logits=...)`. Logits may be one array or a list of arrays (multiscale
discriminators); a list is averaged over its members, as SPADE's GANLoss does.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from facegen_jax import errors

GAN_LOSSES = ("bce", "hinge", "lsgan")


def _check_kind(kind: str) -> None:
  if kind not in GAN_LOSSES:
    raise errors.ConfigError(
        f"unknown GAN loss {kind!r}: set --config.gan_loss to one of {', '.join(GAN_LOSSES)}")


def _mean_over_scales(fn, *logit_lists):
  if isinstance(logit_lists[0], Sequence):
    values = [fn(*logits) for logits in zip(*logit_lists)]
    return sum(values) / len(values)
  return fn(*logit_lists)


def discriminator_loss(kind: str, *, real_logits, fake_logits) -> jax.Array:
  """The discriminator's loss on real and fake logits (pre-sigmoid for "bce")."""
  _check_kind(kind)

  def one_scale(real, fake):
    if kind == "bce":
      return (optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real)).mean()
              + optax.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake)).mean())
    if kind == "hinge":
      return jax.nn.relu(1.0 - real).mean() + jax.nn.relu(1.0 + fake).mean()
    return 0.5 * (jnp.square(real - 1.0).mean() + jnp.square(fake).mean())

  return _mean_over_scales(one_scale, real_logits, fake_logits)


def generator_loss(kind: str, *, fake_logits) -> jax.Array:
  """The generator's adversarial loss: non-saturating for "bce", -D(G(z)) for "hinge"."""
  _check_kind(kind)

  def one_scale(fake):
    if kind == "bce":
      return optax.sigmoid_binary_cross_entropy(fake, jnp.ones_like(fake)).mean()
    if kind == "hinge":
      return -fake.mean()
    return 0.5 * jnp.square(fake - 1.0).mean()

  return _mean_over_scales(one_scale, fake_logits)
