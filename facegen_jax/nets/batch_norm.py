"""torch's BatchNorm2d (affine) for the networks whose checkpoints come from torch (EfficientNet, SSuperGAN).

flax's nn.BatchNorm keeps the biased batch variance as its running variance; torch moves the running variance by
the *unbiased* one, which is what a torch checkpoint holds and what eval mode then divides by, so converted
networks need this layer to match the original in both modes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
  """BatchNorm over all but the last axis (NHWC, or (B, C)), torch's momentum convention.

  Training normalises with the batch's biased variance and moves the running mean and the unbiased variance as
  new = (1 - momentum) old + momentum batch (only when "batch_stats" is mutable; applied in training without it,
  it normalises by the batch and leaves the running statistics alone). Statistics in float32 at least (also under
  bfloat16 compute; float64 when the input is).
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = x.mean(axis=axes)
      var = jnp.square(x - mean).mean(axis=axes)
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        count = x.size // channels
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = ((1 - self.momentum) * running_var.value
                             + self.momentum * var * (count / max(count - 1, 1)))
    else:
      mean, var = running_mean.value, running_var.value
    factor = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x * factor + (bias - mean * factor)).astype(dtype)
