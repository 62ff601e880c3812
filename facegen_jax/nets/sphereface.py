"""SphereFace's sphere20a (clcarwin/sphereface_pytorch `net_sphere.py`) and SATNet's identity loss built on it.

The network: four stages, each a stride-2 3x3 convolution followed by 1, 2, 4 and 1 residual units of two 3x3
convolutions; every convolution has a bias and is followed by a per-channel PReLU (slopes initialised to 0.25);
a unit adds its input to the output of its *second* PReLU; there is no normalisation. A 112x96 face becomes a
7x6x512 map, flattened in torch's (C, H, W) order (so a converted `fc5` kernel is torch's weight transposed, no
row permutation) into `fc5`, Linear(21504 -> 512): the embedding. `fc6` is A-Softmax's AngleLinear(512, classes,
m=4) (`num_classes` 0 leaves it out): it returns cos(theta) * |x| and the margin term phi(theta) * |x| as the
original computes them, for fine-tuning with `angle_loss`.

Parameters (torch's count, the PReLU slopes included): 22,786,880 with 227 classes (SATNet's WebCaricature
fine-tune), 28,084,544 with 10,574 (CASIA-WebFace, the published model); fc5 alone 11,010,560.

Input: (B, 112, 96, 3) BGR, scaled (pixel - 127.5) / 128, a face aligned by `facegen_jax.align` (96x112 reference
points). `preprocess` takes a generator's [-1, 1] RGB images there as SATNet's trainer does (224x192 crops are
average-pooled to 112x96 first). `identity_loss` is SATNet's (branch a612e62) identity term; `identity_cosine`
its per-pair figure for evaluation. Both take the parameters as an argument, so a caller keeps them out of every
optimizer; gradients reach the images through the frozen network.

Weights: `python -m facegen_jax.convert sphereface --checkpoint sphere20a_X.pth --out sphere20a.npz`, read by
`load_params`.
"""

from __future__ import annotations

import os
from typing import Mapping

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import compile as compile_lib
from facegen_jax import npz
from facegen_jax.errors import DataError
from facegen_jax.nets import conv as conv_lib
from facegen_jax.nets.spade import avg_pool_exclude_pad

WIDTHS = (64, 128, 256, 512)
UNITS = (1, 2, 4, 1)  # residual units per stage
EMBEDDING_DIM = 512
INPUT_HW = (112, 96)
FINAL_HW = (7, 6)  # INPUT_HW after four stride-2 convolutions
MARGIN = 4  # A-Softmax's m
PRELU_INIT = 0.25
THRESHOLD = 0.2875  # SATNet's sph.thd: about sphere20a's LFW verification threshold
CONVERT_COMMAND = "python -m facegen_jax.convert sphereface --checkpoint sphere20a_X.pth --out {path}"

# torch's kaiming_uniform_(w, a=sqrt(5)): bound = 1 / sqrt(fan_in), the same bound for the bias.
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
  bound = 1 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def layer_names() -> list[str]:
  """conv{stage}_{i} in the original's order: conv1_1 (strided), conv1_2, conv1_3 (a unit), conv2_1, ..."""
  return [f"conv{stage}_{i}" for stage, units in enumerate(UNITS, start=1) for i in range(1, 2 * units + 2)]


class PReLU(nn.Module):
  """torch's `nn.PReLU(channels)`: x where x >= 0, else a * x with one slope per channel (last axis)."""

  init_value: float = PRELU_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("weight", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def _conv_prelu(x, features, stride, name):
  fan_in = 9 * x.shape[-1]
  x = conv_lib.Conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), kernel_init=_TORCH_KERNEL_INIT,
                    bias_init=_torch_bias_init(fan_in), name=f"conv{name}")(x)
  return PReLU(name=f"relu{name}")(x)


def _torch_renorm_columns(w: jax.Array, maxnorm: float = 1e-5) -> jax.Array:
  """`w.renorm(2, 1, maxnorm)`: each column longer than maxnorm scaled to maxnorm (torch adds 1e-7 to the norm)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True))
  return w * jnp.where(norm > maxnorm, maxnorm / (norm + 1e-7), 1.0)


def _chebyshev(c: jax.Array, m: int) -> jax.Array:
  """cos(m theta) from c = cos(theta), for the m the original lists (0..5)."""
  return {0: lambda: jnp.ones_like(c), 1: lambda: c, 2: lambda: 2 * c**2 - 1, 3: lambda: 4 * c**3 - 3 * c,
          4: lambda: 8 * c**4 - 8 * c**2 + 1, 5: lambda: 16 * c**5 - 20 * c**3 + 5 * c}[m]()


def _angle_init(key, shape, dtype=jnp.float32):
  # The original: uniform(-1, 1), then every column to unit length (renorm to 1e-5, times 1e5).
  return _torch_renorm_columns(jax.random.uniform(key, shape, dtype, -1.0, 1.0)) * 1e5


class AngleLinear(nn.Module):
  """A-Softmax's AngleLinear (phiflag=True): weight (in, classes); returns (cos_theta * |x|, phi_theta * |x|).

  cos_theta = x . w_j / (|x| |w_j|) clamped to [-1, 1] (w's columns renormed to unit length first);
  phi_theta = (-1)^k cos(m theta) - 2k with k = floor(m theta / 3.14159265), theta = arccos(cos_theta) taken
  without a gradient, as the original takes it from `.data`.
  """

  features: int
  m: int = MARGIN

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    w = self.param("weight", _angle_init, (x.shape[-1], self.features), jnp.float32)
    ww = _torch_renorm_columns(w) * 1e5
    x_len = jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))
    w_len = jnp.sqrt(jnp.sum(jnp.square(ww), axis=0, keepdims=True))
    cos_theta = jnp.clip(x @ ww / x_len / w_len, -1.0, 1.0)
    theta = jax.lax.stop_gradient(jnp.arccos(cos_theta))
    k = jnp.floor(self.m * theta / 3.14159265)
    sign = jnp.where(jnp.mod(k, 2) == 1, -1.0, 1.0)
    phi_theta = sign * _chebyshev(cos_theta, self.m) - 2 * k
    return cos_theta * x_len, phi_theta * x_len


class Sphere20a(nn.Module):
  """sphere20a on (B, 112, 96, 3) BGR inputs scaled (x - 127.5) / 128.

  Returns {"embedding": fc5's (B, 512)} and, with `num_classes` > 0 and `embedding_only` False, fc6's
  {"cos_theta", "phi_theta"} (B, num_classes), both already multiplied by |embedding| as the original does.
  """

  num_classes: int = 0
  widths: tuple[int, ...] = WIDTHS
  embedding_dim: int = EMBEDDING_DIM

  @nn.compact
  def __call__(self, x: jax.Array, *, embedding_only: bool = False) -> dict[str, jax.Array]:
    if tuple(x.shape[1:3]) != INPUT_HW:
      raise ValueError(f"sphere20a takes {INPUT_HW[0]}x{INPUT_HW[1]} faces (fc5 expects a "
                       f"{FINAL_HW[0]}x{FINAL_HW[1]} map), got {x.shape}; see `preprocess`")
    for stage, (width, units) in enumerate(zip(self.widths, UNITS), start=1):
      x = _conv_prelu(x, width, 2, f"{stage}_1")
      for unit in range(units):
        first = 2 + 2 * unit
        y = _conv_prelu(x, width, 1, f"{stage}_{first}")
        x = x + _conv_prelu(y, width, 1, f"{stage}_{first + 1}")
    flat = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's x.view(B, -1) of (B, C, H, W)
    embedding = nn.Dense(self.embedding_dim, kernel_init=_TORCH_KERNEL_INIT,
                         bias_init=_torch_bias_init(flat.shape[-1]), name="fc5")(flat)
    out = {"embedding": embedding}
    if self.num_classes and not embedding_only:
      out["cos_theta"], out["phi_theta"] = AngleLinear(self.num_classes, name="fc6")(embedding)
    return out


def init_params(key: jax.Array, num_classes: int = 0, widths: tuple[int, ...] = WIDTHS,
                embedding_dim: int = EMBEDDING_DIM) -> dict:
  """Freshly initialised parameters (torch's default init; AngleLinear's own), without the "params" wrapper."""
  dummy = jnp.zeros((1,) + INPUT_HW + (3,), jnp.float32)
  model = Sphere20a(num_classes, tuple(widths), embedding_dim)
  return compile_lib.jit(model.init, run_once=True)(key, dummy)["params"]


def model_for(params: Mapping) -> Sphere20a:
  """The Sphere20a whose parameters these are (widths, embedding size and class count from their shapes)."""
  params = params.get("params", params)
  widths = tuple(int(params[f"conv{stage}_1"]["kernel"].shape[-1]) for stage in range(1, len(UNITS) + 1))
  num_classes = int(params["fc6"]["weight"].shape[-1]) if "fc6" in params else 0
  return Sphere20a(num_classes, widths, int(params["fc5"]["kernel"].shape[-1]))


def apply(params: Mapping, images: jax.Array, *, embedding_only: bool = False) -> dict[str, jax.Array]:
  """The network's outputs (see `Sphere20a`) for preprocessed images."""
  params = params.get("params", params)
  return model_for(params).apply({"params": params}, images, embedding_only=embedding_only)


def embedding(params: Mapping, images: jax.Array) -> jax.Array:
  """fc5's (B, 512) output for preprocessed (B, 112, 96, 3) BGR images (see `preprocess`)."""
  return apply(params, images, embedding_only=True)["embedding"]


def resize_input(x: jax.Array) -> jax.Array:
  """x (B, H, W, 3) as it is if `preprocess` takes its size (224x192, 112x96), else resized (bilinear) to 112x96:
  our extension for images of other sizes (SATNet's are 224x192 crops)."""
  if tuple(x.shape[1:3]) in ((2 * INPUT_HW[0], 2 * INPUT_HW[1]), INPUT_HW):
    return x
  return jax.image.resize(x, (x.shape[0], *INPUT_HW, x.shape[-1]), "linear")


def preprocess(x: jax.Array) -> jax.Array:
  """SATNet's `sphereface_preprocess`: [-1, 1] RGB (B, H, W, 3) -> sphere20a's input.

  Images 224 rows high (SATNet's 224x192 crops) are average-pooled 3x3, stride 2, padding 1, without counting
  the padding, to 112x96; then RGB -> BGR, [-1, 1] -> [0, 255], (x - 127.5) / 128.
  """
  if x.shape[1] == 2 * INPUT_HW[0]:  # the original tests the height only
    x = avg_pool_exclude_pad(x)
  if tuple(x.shape[1:3]) != INPUT_HW:
    raise ValueError(f"sphere20a takes 224x192 or 112x96 images (H x W), got {x.shape[1]}x{x.shape[2]}")
  x = x[..., ::-1]
  x = (x + 1) * 127.5
  return (x - 127.5) / 128.0


def _whole_batch_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-8)


def identity_loss(params: Mapping, translated: jax.Array, source: jax.Array, *,
                  threshold: float = THRESHOLD) -> jax.Array:
  """SATNet's identity term relu(threshold - cos(f(translated), f(source))), f = fc5 of `preprocess`ed images.

  As SATNet's trainer (branch a612e62, `compute_idt_loss`) computes it, the cosine is taken over the whole batch
  at once: the (B, 512) embeddings are treated as one vector each, sum(f_t * f_s) / (|f_t| |f_s| + 1e-8) with
  Frobenius norms, so one scalar per batch, not a mean of per-sample cosines (the same at SATNet's batch 1).
  Gradients flow into both image batches through the network; `params` is an argument so the caller keeps it
  frozen (out of every optimizer), as SATNet does with requires_grad False.

  Args:
    params: sphere20a parameters (`load_params`); fc6, if present, is not used.
    translated, source: [-1, 1] RGB images (B, 224, 192, 3) or (B, 112, 96, 3), e.g. x_ab and x_a.
  """
  both = embedding(params, preprocess(jnp.concatenate([translated, source], axis=0)))
  f_translated, f_source = jnp.split(both, 2, axis=0)
  return jax.nn.relu(threshold - _whole_batch_cosine(f_translated, f_source))


def identity_cosine(params: Mapping, a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-pair SphereFace cosine (B,) between [-1, 1] RGB image batches a and b (an identity-preservation figure).

  Each pair's cosine of fc5 embeddings, f_a . f_b / (|f_a| |f_b| + 1e-5) as clcarwin's lfw_eval.py scores a pair
  (it too scores the unflipped images only).
  """
  both = embedding(params, preprocess(jnp.concatenate([a, b], axis=0)))
  f_a, f_b = jnp.split(both, 2, axis=0)
  dot = jnp.sum(f_a * f_b, axis=-1)
  return dot / (jnp.linalg.norm(f_a, axis=-1) * jnp.linalg.norm(f_b, axis=-1) + 1e-5)


def angle_loss_lambda(iteration: int | jax.Array) -> jax.Array:
  """AngleLoss's annealed lambda at its `iteration`-th call (1 at the first): max(5, 1500 / (1 + 0.1 it))."""
  return jnp.maximum(5.0, 1500.0 / (1.0 + 0.1 * iteration))


def angle_loss(*, cos_theta: jax.Array, phi_theta: jax.Array, labels: jax.Array, lamb,
               gamma: float = 0.0) -> jax.Array:
  """A-Softmax's AngleLoss: softmax cross-entropy on cos_theta with the target logit moved towards phi_theta.

  The target's logit becomes cos + (phi - cos) / (1 + lamb); the loss is the batch mean of -(1 - p)^gamma log p,
  p the target's probability taken without a gradient (gamma 0, the original's, gives plain cross-entropy).
  """
  target = jax.nn.one_hot(labels, cos_theta.shape[-1], dtype=bool)
  logits = jnp.where(target, cos_theta + (phi_theta - cos_theta) / (1 + lamb), cos_theta)
  log_p = jnp.sum(jnp.where(target, jax.nn.log_softmax(logits, axis=-1), 0.0), axis=-1)
  p = jax.lax.stop_gradient(jnp.exp(log_p))
  return jnp.mean(-((1 - p) ** gamma) * log_p)


# --- weights ---


def param_shapes(num_classes: int, widths: tuple[int, ...] = WIDTHS,
                 embedding_dim: int = EMBEDDING_DIM) -> dict[str, tuple[int, ...]]:
  """{"conv1_1/kernel": (3, 3, 3, 64), ..., "relu1_1/weight": (64,), ..., "fc6/weight": (512, classes)}."""
  abstract = jax.eval_shape(lambda: Sphere20a(num_classes, tuple(widths), embedding_dim).init(
      jax.random.key(0), jnp.zeros((1,) + INPUT_HW + (3,), jnp.float32)))["params"]
  return {"/".join(path): tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(abstract).items()}


def load_params(path) -> dict:
  """The .npz `python -m facegen_jax.convert sphereface` writes, as Sphere20a parameters (float32 numpy).

  Widths and the class count come from the file's shapes; every array the network needs must be there.
  """
  path = os.fspath(path)
  fix = f"convert a sphere20a checkpoint with `{CONVERT_COMMAND.format(path=path)}`"
  arrays = npz.read(path, "SphereFace weights", fix)
  try:
    widths = tuple(int(arrays[f"conv{stage}_1/kernel"].shape[-1]) for stage in range(1, len(UNITS) + 1))
    embedding_dim = int(arrays["fc5/kernel"].shape[-1])
  except KeyError as e:
    raise DataError(f"SphereFace weights {path}: {e.args[0]} is missing: {fix}") from None
  num_classes = int(arrays["fc6/weight"].shape[-1]) if "fc6/weight" in arrays else 0
  flat = npz.expected(arrays, param_shapes(num_classes, widths, embedding_dim), path, "SphereFace weights", fix)
  params: dict = {}
  for name, value in flat.items():
    layer, leaf = name.split("/")
    params.setdefault(layer, {})[leaf] = value
  return params
