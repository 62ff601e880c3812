"""Spectral normalisation as `torch.nn.utils.spectral_norm` computes it, for 2-D convolutions and dense layers.

The kernel is divided by sigma, an estimate of the largest singular value of the convolution's weight read as
torch reads it: the OIHW weight reshaped to an (out, in*kh*kw) matrix W. Torch keeps two unit vectors, `weight_u`
(out,) and `weight_v` (in*kh*kw,), as buffers. A forward in training mode runs one power iteration,

  v <- normalize(W^T u),  u <- normalize(W v),   normalize(x) = x / max(|x|, eps), eps = 1e-12,

stores the new u and v, and uses sigma = u . (W v) with u and v held constant for the gradient. A forward in eval
mode iterates nothing: sigma = u . (W v) from the stored vectors and the current W.

Why our own module and not `flax.linen.SpectralNorm`: flax's runs the power iteration in eval mode too, keeps no
v, stores the sigma of the last training step instead of recomputing it from the current kernel, and reads an
HWIO kernel as a (kh*kw*in, out) matrix, so neither its outputs in eval mode nor its stored vectors match torch's.

`SNConv` keeps its kernel in flax's HWIO layout (so its parameters are a `Conv`'s: `kernel`, `bias`) and its
vectors `u` and `v` in the collection `SPECTRAL_STATS`, in torch's order, so a torch checkpoint's `weight_orig`
(transposed OIHW -> HWIO), `weight_u` and `weight_v` map one to one. `SNDense` does the same for a Linear layer:
its flax (in, out) kernel is torch's (out, in) weight transposed, u is (out,) and v (in,).

`MunitSNConv` is the other spectral norm the originals use: the `SpectralNorm` wrapper NVlabs/MUNIT's and SATNet's
networks.py define (after christiancosgrove/pytorch-spectral-normalization-gan). It reads the same matrix and
keeps the same u and v, but normalises by x / (|x| + eps) and runs its power iteration at EVERY forward, in
training and in eval alike, so its output depends on how often it was called before. torch keeps the kernel as
`weight_bar` and u, v as parameters without gradient (`weight_u`, `weight_v`); ours are a `Conv`'s `kernel`/`bias`
and the same `SPECTRAL_STATS` u, v.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from facegen_jax.nets import conv as conv_lib

# The non-parameter collection holding the power iteration's vectors; mutable in training steps.
SPECTRAL_STATS = "spectral_stats"
TORCH_EPS = 1e-12


def torch_weight_matrix(kernel_hwio: jax.Array) -> jax.Array:
  """The (out, in*kh*kw) matrix torch's spectral norm reads from the same convolution's OIHW weight."""
  return kernel_hwio.transpose(3, 2, 0, 1).reshape(kernel_hwio.shape[3], -1)


def normalize(x: jax.Array, eps: float = TORCH_EPS) -> jax.Array:
  """torch.nn.functional.normalize for a vector: x / max(|x|, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def l2normalize(x: jax.Array, eps: float = TORCH_EPS) -> jax.Array:
  """MUNIT's `l2normalize`: x / (|x| + eps)."""
  return x / (jnp.linalg.norm(x) + eps)


def _matvec(kernel_hwio: jax.Array, v: jax.Array) -> jax.Array:
  """W v for torch's matrix W without forming it: v is (in, kh, kw) flattened, as torch orders the columns."""
  kh, kw, c_in, _ = kernel_hwio.shape
  # A product and a sum over the leading axes, not a dot: for a dot contracting the kernel's leading axes,
  # XLA:CPU first copies the kernel into the transposed layout (~80 ms per 1024x1024x3x3 kernel, 1.2 s of a
  # SPADE128 step); the reduction reads it once in place (74 -> 28 ms for power iteration + sigma + gradient).
  return jnp.sum(kernel_hwio * v.reshape(c_in, kh, kw).transpose(1, 2, 0)[..., None], axis=(0, 1, 2))


def _rmatvec(kernel_hwio: jax.Array, u: jax.Array) -> jax.Array:
  """W^T u, flattened in torch's (in, kh, kw) order."""
  return jnp.einsum("hwio,o->ihw", kernel_hwio, u).reshape(-1)


# The products below read the HWIO kernel in place instead of transposing it into torch's matrix: the same sums,
# and the gradient of sigma is the outer product u v^T laid out as the kernel (XLA:CPU spent ~1 s per
# 1024x1024x3x3 kernel reducing through the transpose in SPADE128's step).
def power_iteration(kernel_hwio: jax.Array, u: jax.Array, *, num_iterations: int = 1, eps: float = TORCH_EPS,
                    normalize_fn: Callable[[jax.Array, float], jax.Array] = normalize
                    ) -> tuple[jax.Array, jax.Array]:
  """Torch's update of (u, v) for the kernel's matrix; both results are constants for the gradient.

  `normalize_fn=l2normalize` gives MUNIT's update instead."""
  kernel_hwio = jax.lax.stop_gradient(kernel_hwio)
  v = None
  for _ in range(num_iterations):
    v = normalize_fn(_rmatvec(kernel_hwio, u), eps)
    u = normalize_fn(_matvec(kernel_hwio, v), eps)
  return u, v


def sigma(kernel_hwio: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """u . (W v): the gradient flows through the kernel only, as in torch (where u and v are detached clones)."""
  return jnp.dot(jax.lax.stop_gradient(u), _matvec(kernel_hwio, jax.lax.stop_gradient(v)))


class SNConv(nn.Module):
  """A 2-D NHWC convolution (`facegen_jax.nets.conv.conv`) whose kernel is divided by its spectral norm.

  Call with `update_stats=True` in training (one power iteration, `SPECTRAL_STATS` must be mutable) and
  `update_stats=False` in eval. `init` leaves u and v at their random unit starting values, as torch's
  `spectral_norm(module)` does before the first forward.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  num_power_iterations: int = 1
  eps: float = TORCH_EPS

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    kernel_size = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features))
    # The power iteration and sigma in float32 even when the kernel arrives cast to bfloat16 (mixed precision);
    # the convolution then runs in the input's dtype.
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    kh, kw, c_in, c_out = kernel.shape
    u = self._unit_vector("u", c_out)
    v = self._unit_vector("v", c_in * kh * kw)
    if update_stats and not self.is_initializing():
      u.value, v.value = power_iteration(kernel, u.value, num_iterations=self.num_power_iterations,
                                         eps=self.eps)
    kernel = (kernel / sigma(kernel, u.value, v.value)).astype(x.dtype)
    y = conv_lib.conv(x, kernel, self.strides, canonicalize_padding(self.padding, 2))
    if self.use_bias:
      y += self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
    return y

  def _unit_vector(self, name: str, size: int):
    # The rng is drawn only when the variable is created, i.e. during `init`.
    return self.variable(SPECTRAL_STATS, name,
                         lambda: normalize(jax.random.normal(self.make_rng("params"), (size,)), self.eps))


class SNDense(nn.Module):
  """A dense layer whose kernel is divided by its spectral norm, as `spectral_norm(nn.Linear(...))` computes it.

  torch reads the (out, in) weight as the matrix W; our kernel is its transpose, so W v is `v @ kernel` and
  W^T u is `kernel @ u`. `update_stats` as for `SNConv`.
  """

  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  num_power_iterations: int = 1
  eps: float = TORCH_EPS

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    u = self.variable(SPECTRAL_STATS, "u", lambda: self._random_unit(self.features))
    v = self.variable(SPECTRAL_STATS, "v", lambda: self._random_unit(x.shape[-1]))
    if update_stats and not self.is_initializing():
      fixed = jax.lax.stop_gradient(kernel)
      new_u = u.value
      for _ in range(self.num_power_iterations):
        new_v = normalize(fixed @ new_u, self.eps)
        new_u = normalize(new_v @ fixed, self.eps)
      u.value, v.value = new_u, new_v
    sigma = jnp.dot(jax.lax.stop_gradient(u.value), jax.lax.stop_gradient(v.value) @ kernel)
    y = x @ (kernel / sigma).astype(x.dtype)
    if self.use_bias:
      y += self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
    return y

  def _random_unit(self, size: int) -> jax.Array:
    return normalize(jax.random.normal(self.make_rng("params"), (size,)), self.eps)


class MunitSNConv(nn.Module):
  """MUNIT's / SATNet's `SpectralNorm(nn.Conv2d(...))`: a 2-D NHWC convolution (`conv.conv`) whose kernel is
  divided by sigma after one power iteration at every call (see the module docstring).

  The iteration runs whether or not `SPECTRAL_STATS` is mutable, so the output is always the original's for the
  vectors passed in; the new u and v are stored only when the collection is mutable. To follow the original
  from call to call (training and inference alike) pass it mutable and carry the result into the next call.
  `init` stores the random unit starting vectors, un-iterated, as the wrapper holds them before its first forward.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Any = "VALID"
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  num_power_iterations: int = 1
  eps: float = TORCH_EPS
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features))
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))  # As SNConv: sigma in float32.
    kh, kw, c_in, c_out = kernel.shape
    init_unit = lambda size: l2normalize(jax.random.normal(self.make_rng("params"), (size,)), self.eps)
    u = self.variable(SPECTRAL_STATS, "u", init_unit, c_out)
    v = self.variable(SPECTRAL_STATS, "v", init_unit, c_in * kh * kw)
    new_u, new_v = u.value, v.value
    if not self.is_initializing():
      new_u, new_v = power_iteration(kernel, u.value, num_iterations=self.num_power_iterations, eps=self.eps,
                                     normalize_fn=l2normalize)
      if self.is_mutable_collection(SPECTRAL_STATS):
        u.value, v.value = new_u, new_v
    kernel = (kernel / sigma(kernel, new_u, new_v)).astype(x.dtype)
    y = conv_lib.conv(x, kernel, self.strides, canonicalize_padding(self.padding, 2), impl=self.impl)
    if self.use_bias:
      y += self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
    return y
