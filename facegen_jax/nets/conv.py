"""2-D convolutions fast on XLA:CPU, gradients included; drop-ins for flax's `ConvTranspose` and `Conv`.

XLA:CPU differentiates `lax.conv_transpose` into a window-dilated convolution for the kernel gradient that runs
15-50x slower than the forward pass (a DCGAN-64 step: 25 s instead of ~1 s). Here both layers are built from
three convolutions XLA:CPU runs well, with a `jax.custom_vjp` choosing which one computes each gradient.

All three are phrased in terms of one strided convolution `down(z, k)` (NHWC input, HWIO kernel, stride s,
explicit padding), as `lax.conv_general_dilated` computes it:

  down(z, k)      the strided convolution itself;
  up(g, k)        its transpose in z: a transposed convolution, computed by phases (sub-pixel convolution):
                  the outputs at positions p = s*q + r for a fixed r are an ordinary stride-1 correlation of g
                  with the kernel taps that land on r, so one stride-1 convolution whose s*s output groups are
                  the phases, followed by depth-to-space, computes all of it (no zeros are inserted into g);
  wgrad(z, g)     its transpose in k (the kernel gradient), XLA's own rule for a strided convolution.

A transposed convolution `y = conv_transpose(x, kt)` is `up(x, k)` for the flipped, in/out-swapped kernel k,
so its gradients are `down(dy, k)` for x and `wgrad(dy, x)` for k; a strided convolution `y = down(z, k)` has
gradients `up(dy, k)` and `wgrad(z, dy)`. The results are the same linear maps as flax's, summed in another
order: they agree to float rounding (~1e-6 relative in float32, ~1e-15 in float64).

`conv` on CPU (`impl="auto"`, chosen in `_conv_impl`) uses the phase path for strided convolutions padded
(k - s) / 2 (DCGAN's D: 0.95 s per batch-64 step against 1.7 s through im2col), XLA's own convolution for "same"
stride-1 convolutions (odd kernel, padding (k - 1) / 2) on inputs of 16x16 or larger, and im2col for all others: pad x,
take the kh*kw shifted (strided) slices, concatenate them on channels and do one matmul with the kernel reshaped
to (kh*kw*C_in, C_out); autodiff gives the gradients (slices -> pads and adds, the dot -> two dots). Why,
measured fwd+bwd at batch 4 on 2 cores shared with other jobs (load average 4-6, so +-30%):
  XLA:CPU's kernel gradient for k4 p2 (the SPADE discriminator's layers) is a naive loop at 1-2 GFLOP/s:
  k4 p2 256->512 at 17x17 takes 8.9 s through the phase path, 0.17 s through im2col;
  3x3 1024->1024 at 8x8:   phase 302 ms, im2col 173 ms;   at 16x16:  578 vs 597 ms;
  3x3 512->512 at 32x32:   phase 602 ms, im2col 690 ms;   256->256 at 64x64: 474 vs 842 ms;
  3x3 128->128 at 128x128: phase 594 ms, im2col 1131 ms (memory-bound: the patches are 9x the input);
  k4 s2 p2 convs (D, batch 8): fwd 27-29 ms (XLA) vs 100-124 ms (im2col), dk 26-52 vs 52-157 ms.
  SPADE128 D's six k4 s2 p2 convs, fwd+bwd at batch 8 (median of 7, interleaved, load 2-3): phase 366 ms,
  XLA's 479, im2col 655 (they stay on im2col: see `_conv_impl`).
SPADE128 G+D step at batch 4 on the idle machine (median of 5): im2col everywhere 13.4 s; XLA's for "same"
stride-1 convs from 16x16 up 9.6 s (G step alone: from 8x8 6.1 s, 16x16 5.6, 32x32 6.1, 64x64 5.8, 128x128 7.6,
never 12.6); phase everywhere was 44 s under load.
A custom VJP (input gradient as im2col of dy with the flipped kernel, kernel gradient as one dot) was no faster
than autodiff (SPADE step 33-40 s vs 31-42 s in one run, load 6), so there is none. GPU/TPU use XLA's.

Not covered by the fast paths (use `impl="xla"`): kernel or input dilation, feature groups, 'CIRCULAR'
padding, inputs other than 2-D NHWC. `jax.jvp` (forward mode) works through im2col (plain autodiff) but not
through the phase path's `custom_vjp` (`impl="phase"`, `ConvTranspose` on CPU); reverse mode of any order works
through both.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding, default_kernel_init
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "xla", "phase", "im2col")

Pads = tuple[tuple[int, int], tuple[int, int]]


def torch_transpose_padding(kernel_size, padding, output_padding=0) -> list[tuple[int, int]]:
  """The `padding` for `ConvTranspose` (and flax's) equivalent to torch's `ConvTranspose2d` arguments.

  torch pads the output: `padding=p` removes p rows on each side, `output_padding=a` adds a at the end. lax pads
  the stride-dilated input instead, by `k - 1 - p` before and `k - 1 - p + a` after. For DCGAN's k4 s2 p1 layers
  this gives ((2, 2), (2, 2)); for its first layer, k4 s1 p0 on a 1x1 input, ((3, 3), (3, 3)).
  The kernel must also be converted: torch's (in, out, kh, kw) weight w is `w.transpose(2, 3, 0, 1)[::-1, ::-1]`.
  """
  kernel_size, padding, output_padding = (_pair(v) for v in (kernel_size, padding, output_padding))
  return [(k - 1 - p, k - 1 - p + a) for k, p, a in zip(kernel_size, padding, output_padding)]


def _pair(v) -> tuple[int, int]:
  if v is None:
    return (1, 1)
  if isinstance(v, int):
    return (v, v)
  v = tuple(v)
  if len(v) != 2:
    raise ValueError(f"expected an int or 2 ints for a 2-D convolution, got {v}")
  return v


def _use_fast_path(impl: str) -> bool:
  """For `conv_transpose`: whether to use the phase formulation."""
  if impl not in IMPLS or impl == "im2col":
    raise ValueError(f"impl must be one of {IMPLS[:3]} for conv_transpose, got {impl!r}")
  if impl == "auto":
    return jax.default_backend() == "cpu"
  return impl == "phase"


# --- the three convolutions, in the geometry of down(z, k): z (N, L, L', Cz) -> g (N, H, H', Cg). ---


def _down(z, k, strides, pads, precision):
  """The strided convolution; k is (kh, kw, Cz, Cg)."""
  return lax.conv_general_dilated(z, k, strides, pads, dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def _flip_swap(k):
  """Between `down`'s kernel and the kernel of its transpose as `lax.conv_transpose` takes it (an involution)."""
  return jnp.flip(k, (0, 1)).swapaxes(2, 3)


def _wgrad(z, g, kernel_shape, strides, pads, precision):
  """The kernel gradient of `down`: its transpose in k, applied to g. XLA's own rule, fast on Eigen."""
  kernel = jax.ShapeDtypeStruct(kernel_shape, g.dtype)
  return jax.linear_transpose(lambda k: _down(z, k, strides, pads, precision), kernel)(g)[0]


def _phase_plan(z_len: int, k: int, s: int, pad_lo: int):
  """For each output phase r of `up` along one axis: (number of outputs, window offset, first tap, taps).

  Output p = s*q + r of `up` receives g[m] * k[t] for every s*m + t - pad_lo = p: the taps t of one residue
  c = (r + pad_lo) mod s. In the transposed kernel kt[i] = k[k - 1 - i] they are i = first, first + s, ...,
  read against g[q + offset], g[q + offset + 1], ...
  """
  plans = []
  for r in range(s):
    c = (r + pad_lo) % s
    taps = len(range(c, k, s))
    first = k - 1 - (c + s * (taps - 1))
    offset = (r + pad_lo - c) // s - (taps - 1)
    plans.append((len(range(r, z_len, s)), offset, first, taps))
  return plans


def _stack_phase_taps(kt, axis: int, plans, window: int):
  """(.., k, ..) -> (.., s, window, ..): each phase's taps along `axis`, zero-filled to `window` taps."""
  s, parts = len(plans), []
  for _, _, first, taps in plans:
    if taps:
      part = lax.slice_in_dim(kt, first, first + (taps - 1) * s + 1, s, axis)
    else:  # k < s: this phase gets no taps at all.
      part = lax.slice_in_dim(kt, 0, 0, 1, axis)
    pad = [(0, 0, 0)] * kt.ndim
    pad[axis] = (0, window - taps, 0)
    parts.append(lax.pad(part, jnp.zeros((), kt.dtype), pad))
  return jnp.stack(parts, axis=axis)


def _up_phase(g, kt, strides, pads, z_hw, precision):
  """The transpose of `down` in z, i.e. `lax.conv_transpose(g, kt)`, as one stride-1 convolution over phases.

  kt is the transposed convolution's kernel (kh, kw, Cg, Cz), `_flip_swap` of `down`'s. Phase r's outputs
  are out_r[q] = sum_w g[q + offset_r + w] kt_r[w]; one convolution with window max(taps) and s_h*s_w*Cz
  outputs computes them all from a common origin min(offset_r), each phase then reading its rows from
  offset_r - min(offset_r). Where phases' offsets differ this computes a row or two more than needed.
  """
  n, h, w, _ = g.shape
  kh, kw, _, cz = kt.shape
  plans = [_phase_plan(z_len, k, s, p[0]) for z_len, k, s, p in zip(z_hw, (kh, kw), strides, pads)]
  geometry = []
  for axis_plans, g_len in zip(plans, (h, w)):
    used = [offset for _, offset, _, taps in axis_plans if taps]
    base = min(used) if used else 0
    shifts = [offset - base if taps else 0 for _, offset, _, taps in axis_plans]
    q_max = max(q for q, _, _, _ in axis_plans)
    window = max(1, max(taps for _, _, _, taps in axis_plans))
    out_len = max(shifts) + q_max
    geometry.append((shifts, q_max, window, (-base, out_len + base + window - 1 - g_len)))
  (shifts_h, q_h, window_h, pad_h), (shifts_w, q_w, window_w, pad_w) = geometry
  # Kernel (window_h, window_w, Cg, s_h * s_w * Cz): phase (r_h, r_w) in output channel group r_h * s_w + r_w.
  kernel = _stack_phase_taps(kt, 0, plans[0], window_h)
  kernel = _stack_phase_taps(kernel, 2, plans[1], window_w)  # (s_h, win_h, s_w, win_w, Cg, Cz)
  kernel = kernel.transpose(1, 3, 4, 0, 2, 5)
  kernel = kernel.reshape(kernel.shape[:3] + (-1,))
  y = lax.conv_general_dilated(
      g, kernel, (1, 1), [pad_h, pad_w], dimension_numbers=_DIMENSION_NUMBERS, precision=precision)
  s_h, s_w = strides
  y = y.reshape(y.shape[:3] + (s_h, s_w, cz))
  if len(set(shifts_h)) == 1 and len(set(shifts_w)) == 1:
    y = y[:, shifts_h[0] : shifts_h[0] + q_h, shifts_w[0] : shifts_w[0] + q_w]
    y = y.transpose(0, 1, 3, 2, 4, 5)
  else:
    rows = [
        jnp.stack([y[:, a : a + q_h, b : b + q_w, r_h, r_w] for r_w, b in enumerate(shifts_w)], axis=3)
        for r_h, a in enumerate(shifts_h)
    ]
    y = jnp.stack(rows, axis=2)
  # (N, q_h, s_h, q_w, s_w, Cz) is depth-to-space order; drop the phases' overhang past the output size.
  y = y.reshape(n, q_h * s_h, q_w * s_w, cz)
  return y[:, : z_hw[0], : z_hw[1]]


# --- custom gradients: of the three maps, each one's gradients are the other two. ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_transpose_phase(x, kt, strides, pads, z_hw, precision):
  return _up_phase(x, kt, strides, pads, z_hw, precision)


def _conv_transpose_fwd(x, kt, strides, pads, z_hw, precision):
  return _up_phase(x, kt, strides, pads, z_hw, precision), (x, kt)


def _conv_transpose_bwd(strides, pads, z_hw, precision, residuals, dy):
  x, kt = residuals
  dx = _down(dy, _flip_swap(kt), strides, pads, precision)
  k_shape = kt.shape[:2] + (kt.shape[3], kt.shape[2])
  return dx, _flip_swap(_wgrad(dy, x, k_shape, strides, pads, precision))


_conv_transpose_phase.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_phase(z, k, strides, pads, precision):
  return _down(z, k, strides, pads, precision)


def _conv_fwd(z, k, strides, pads, precision):
  return _down(z, k, strides, pads, precision), (z, k)


def _conv_bwd(strides, pads, precision, residuals, dy):
  z, k = residuals
  dz = _up_phase(dy, _flip_swap(k), strides, pads, z.shape[1:3], precision)
  return dz, _wgrad(z, dy, k.shape, strides, pads, precision)


_conv_phase.defvjp(_conv_fwd, _conv_bwd)


# --- functional API ---


def _transpose_pads(padding, kernel_hw, strides) -> Pads:
  """lax.conv_transpose's padding of the stride-dilated input, for 'SAME', 'VALID' or pairs."""
  if isinstance(padding, str):
    pads = []
    for k, s in zip(kernel_hw, strides):
      if padding == "SAME":
        total, lo = k + s - 2, (k - 1 if s > k - 1 else (k + s - 1) // 2)
      elif padding == "VALID":
        total, lo = k + s - 2 + max(k - s, 0), k - 1
      else:
        raise ValueError(f"padding {padding!r} is not supported by the fast path; use impl='xla'")
      pads.append((lo, total - lo))
    return tuple(pads)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv_transpose(x, kernel, strides=None, padding="SAME", *, precision=None, impl: str = "auto"):
  """`lax.conv_transpose(x, kernel, strides, padding)` for NHWC x and HWIO kernel, fast on XLA:CPU.

  Args:
    x: (N, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), not flipped (lax's and flax's `transpose_kernel=False` convention).
    strides: an int or 2 ints (None: 1).
    padding: 'SAME', 'VALID' or 2 (low, high) pairs of padding of the stride-dilated input (lax's meaning;
      see `torch_transpose_padding`).
    precision: as for `lax.conv_general_dilated`.
    impl: 'auto' (the phase formulation on CPU, lax's elsewhere), 'xla' or 'phase'.
  """
  strides = _pair(strides)
  if not _use_fast_path(impl):
    return lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS, precision=precision)
  kh, kw = kernel.shape[:2]
  pads = _transpose_pads(padding, (kh, kw), strides)
  # The same map as the transpose of a strided convolution with the flipped, in/out-swapped kernel and
  # padding k - 1 - p; its output (our input x) has the size of x for an output of size z_hw.
  down_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  z_hw = tuple((size - 1) * s + 1 + lo + hi - k + 1
               for size, s, (lo, hi), k in zip(x.shape[1:3], strides, pads, (kh, kw)))
  if min(z_hw) <= 0:
    raise ValueError(f"conv_transpose output would be empty: input {x.shape}, kernel {kernel.shape}, {pads}")
  return _conv_transpose_phase(x, kernel, strides, down_pads, z_hw, _hashable(precision))


def conv(x, kernel, strides=None, padding="SAME", *, precision=None, impl: str = "auto"):
  """`lax.conv_general_dilated(x, kernel, strides, padding)` for NHWC x and HWIO kernel, fast on XLA:CPU.

  impl: 'auto' (on CPU im2col or phase, see `_conv_impl`; XLA's elsewhere), 'xla', 'phase' or 'im2col'.
  """
  strides = _pair(strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  impl = _conv_impl(impl, x.shape, kernel.shape, strides, pads)
  if impl == "im2col":
    return _conv_im2col(x, kernel, strides, pads, precision)
  if impl == "phase":
    return _conv_phase(x, kernel, strides, pads, _hashable(precision))
  return _down(x, kernel, strides, pads, precision)


# XLA:CPU's own convolution is faster than im2col for "same" stride-1 convolutions on inputs this large or larger
# (the patches of a large input are a large tensor to write, read and scatter back); see the module docstring.
XLA_MIN_SIZE = 16


def _conv_impl(impl: str, x_shape, kernel_shape, strides, pads) -> str:
  """The one place `conv` picks its lowering. On GPU/TPU XLA's. On CPU: the phase path for strided convolutions
  padded (k - s) / 2 each side, XLA's for "same" stride-1 ones (odd kernel, padding (k - 1) / 2 each side) on
  inputs of at least XLA_MIN_SIZE, im2col for the rest (small inputs, other paddings); see the module docstring."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  if tuple(strides) != (1, 1):
    # Only padding (k - s) / 2 each side (DCGAN's k4 s2 p1: output = input / stride). SPADE D's k4 s2 p2 convs
    # would be right on the phase path too (tests/test_conv_sharded.py: within 3e-15 of lax in float64 on 1 and 8
    # devices, XLA's own rounding in float32) and 1.8x faster (SPADE128 D's six, fwd+bwd at batch 8: 366 ms vs
    # 655). They stay on im2col only for test_train's 8-vs-1 SPADE run, which is chaotic: 1e-6 relative noise on
    # G's kernels after step 1 flips one leaky ReLU in G's step 2 (its input -1.1e-6, in a map of scale 3.5),
    # which moves D's step-2 gradient 7% whatever the lowering, even on 1 device. With XLA's convolution (phase
    # or "xla") the 8-device run rounds differently per example and flips it: a G kernel's Adam moment 26% apart
    # after 3 steps (in float64 5e-14). im2col's forward is bitwise the same at any batch split: 0.03% there.
    exact = all((k - s) % 2 == 0 and tuple(pad) == ((k - s) // 2,) * 2
                for k, s, pad in zip(kernel_shape[:2], strides, pads))
    return "phase" if exact else "im2col"
  same = all(k % 2 == 1 and tuple(pad) == ((k - 1) // 2,) * 2 for k, pad in zip(kernel_shape[:2], pads))
  return "xla" if same and min(x_shape[1:3]) >= XLA_MIN_SIZE else "im2col"


def _patches(x, kernel_hw, strides, pads):
  """(N, H, W, C) -> (N, Ho, Wo, kh * kw * C): each output's input window, in the HWIO kernel's (kh, kw, C) order."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  # lax.pad also crops, for negative padding.
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), pads[0] + (0,), pads[1] + (0,), (0, 0, 0)))
  n, h, w, c = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  if ho <= 0 or wo <= 0:
    raise ValueError(f"conv output would be empty: padded input {x.shape}, kernel {kernel_hw}")
  cols = [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _conv_im2col(x, kernel, strides, pads, precision):
  """The convolution as one matmul of the patches with the (kh * kw * C_in, C_out) kernel; plain autodiff."""
  kh, kw, c_in, c_out = kernel.shape
  cols = _patches(x, (kh, kw), strides, pads)
  return lax.dot_general(cols, kernel.reshape(kh * kw * c_in, c_out), (((3,), (0,)), ((), ())),
                         precision=precision)


def _hashable(precision):
  return tuple(precision) if isinstance(precision, list) else precision


# --- modules ---


def _apply_layer(module, inputs, op):
  """Flax's layer body around `op(inputs, kernel)`: parameters, dtype promotion, bias, extra batch axes."""
  batch_shape = inputs.shape[:-3]  # Any number of leading batch axes, including none, as flax allows.
  inputs = inputs.reshape((-1,) + inputs.shape[-3:])
  kernel_shape = _pair(module.kernel_size) + (inputs.shape[-1], module.features)
  kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
  bias = None
  if module.use_bias:
    bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
  inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=module.dtype)
  y = op(inputs, kernel)
  if bias is not None:
    y += bias.reshape((1, 1, 1, -1))
  return y.reshape(batch_shape + y.shape[1:])


class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` for 2-D NHWC inputs, with fast gradients on XLA:CPU.

  Same attributes (a subset), same parameters `kernel` (kh, kw, in, out) and `bias` (out,), same function as
  `nn.ConvTranspose(..., transpose_kernel=False)`, so parameters move freely between the two. For torch-style
  padding pass `padding=torch_transpose_padding(kernel_size, p)`.

  Attributes:
    impl: 'auto' (phase formulation when `jax.default_backend() == 'cpu'`, XLA's `lax.conv_transpose` on
      GPU/TPU), 'xla' (exactly flax's computation) or 'phase'.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, inputs):
    padding = canonicalize_padding(self.padding, 2)
    if padding == "CIRCULAR":
      raise ValueError("padding 'CIRCULAR' is not supported; use flax.linen.ConvTranspose")
    return _apply_layer(self, inputs, functools.partial(
        conv_transpose, strides=self.strides, padding=padding, precision=self.precision, impl=self.impl))


class Conv(nn.Module):
  """`flax.linen.Conv` for 2-D NHWC inputs, fast on XLA:CPU (im2col, see `conv`).

  Same attributes (a subset), parameters and function as `nn.Conv`, for every `impl` ('auto', 'xla', 'phase',
  'im2col').
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, inputs):
    padding = canonicalize_padding(self.padding, 2)
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
      raise ValueError(f"padding {padding!r} is not supported; use flax.linen.Conv")
    return _apply_layer(self, inputs, functools.partial(
        conv, strides=self.strides, padding=padding, precision=self.precision, impl=self.impl))
