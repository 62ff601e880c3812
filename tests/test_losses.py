import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import errors
from facegen_jax import losses

REAL = jnp.array([2.0, -1.0, 0.5])
FAKE = jnp.array([-3.0, 0.0, 1.5])


def _softplus(x):
  return np.log1p(np.exp(x))


def test_bce_matches_hand_computed():
  # BCE(sigmoid(x), 1) = softplus(-x); BCE(sigmoid(x), 0) = softplus(x).
  d = losses.discriminator_loss("bce", real_logits=REAL, fake_logits=FAKE)
  g = losses.generator_loss("bce", fake_logits=FAKE)
  np.testing.assert_allclose(d, _softplus(-np.array(REAL)).mean() + _softplus(np.array(FAKE)).mean(), rtol=1e-6)
  np.testing.assert_allclose(g, _softplus(-np.array(FAKE)).mean(), rtol=1e-6)


def test_hinge_matches_hand_computed():
  d = losses.discriminator_loss("hinge", real_logits=REAL, fake_logits=FAKE)
  # relu(1 - real) = [0, 2, 0.5]; relu(1 + fake) = [0, 1, 2.5].
  np.testing.assert_allclose(d, 2.5 / 3 + 3.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss("hinge", fake_logits=FAKE), 0.5, rtol=1e-6)  # -mean(FAKE).


def test_lsgan_matches_hand_computed():
  d = losses.discriminator_loss("lsgan", real_logits=REAL, fake_logits=FAKE)
  expected = 0.5 * (np.mean((np.array(REAL) - 1) ** 2) + np.mean(np.array(FAKE) ** 2))
  np.testing.assert_allclose(d, expected, rtol=1e-6)


def test_multiscale_logits_are_averaged_over_scales():
  two = losses.discriminator_loss("hinge", real_logits=[REAL, REAL * 0], fake_logits=[FAKE, FAKE * 0])
  one_a = losses.discriminator_loss("hinge", real_logits=REAL, fake_logits=FAKE)
  one_b = losses.discriminator_loss("hinge", real_logits=REAL * 0, fake_logits=FAKE * 0)
  np.testing.assert_allclose(two, (one_a + one_b) / 2, rtol=1e-6)


def test_unknown_loss_names_the_choices():
  with pytest.raises(errors.ConfigError, match="bce, hinge, lsgan"):
    losses.generator_loss("wgan", fake_logits=FAKE)
