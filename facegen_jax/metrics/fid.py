"""FID and KID on Inception pool3 features: sharded feature extraction, statistics files, the two distances.

* `extract_features` runs `inception.InceptionV3` jitted over a mesh (batch split over the axis "data",
  variables replicated), as training does, on batches of NHWC images (uint8, or floats in [0, 1]).
* `frechet_distance` is pytorch-fid's `calculate_frechet_distance`: float64, scipy's `sqrtm`, eps*I added to
  both covariances when the product's square root is not finite, and an error if the imaginary part left by
  rounding is not negligible.
* `kid` is torch-fidelity's KID: the unbiased MMD^2 with the kernel (x.y / d + 1)^3 over `num_subsets`
  random subsets of `subset_size` from each side (drawn by `np.random.RandomState(seed).choice` without
  replacement, as torch-fidelity draws them), reported as mean and std.
* `Statistics` (mu, sigma, count and optionally the features, which KID needs) save to and load from .npz;
  pytorch-fid's own statistics files (mu, sigma) load too.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

from absl import logging
import jax
import numpy as np
import scipy.linalg
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from facegen_jax import npz
from facegen_jax.errors import ConfigError, DataError
from facegen_jax.metrics import inception
from facegen_jax import compile as compile_lib

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default rng_seed


def create_mesh() -> Mesh:
  """All devices on one axis "data", as `train.create_mesh`."""
  return Mesh(np.asarray(jax.devices()), ("data",))


@functools.cache
def feature_fn(mesh: Mesh):
  """jit of `(variables, images) -> (N, 2048) float32` with images split over "data", the rest replicated.

  Cached per mesh, so repeated evaluations (every eval step in training) reuse the compiled program.
  """
  replicated = NamedSharding(mesh, P())

  def features(variables, images):
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 255.0  # torchvision's ToTensor, as pytorch-fid reads images
    return inception.InceptionV3().apply(variables, images)

  # On CPU Eigen's convolutions (compile.CPU_COMPILER_OPTIONS): 2-2.5x XLA:CPU's default (YNNPACK) here.
  return compile_lib.jit(features, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                         out_shardings=replicated)


def extract_features(variables, batches: Iterable[np.ndarray], *, mesh: Mesh | None = None,
                     batch_size: int = 50) -> np.ndarray:
  """Pool3 features (N, 2048) float32 of every image in `batches` (host NHWC arrays, uint8 or [0, 1] floats).

  Images are regrouped into batches of `batch_size` (rounded up to a multiple of the device count) and the last
  one is zero-padded, so each image size compiles once. Batches may differ in image size.
  """
  mesh = mesh or create_mesh()
  devices = mesh.devices.size
  batch_size = -(-max(int(batch_size), 1) // devices) * devices
  fn = feature_fn(mesh)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  out, pending, pending_count = [], [], 0

  def flush(chunk):
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
    out.append(fn(variables, chunk)[:n])  # dispatched now, fetched at the end

  for batch in batches:
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3:
      raise DataError(f"images must be NHWC with 3 channels, got shape {batch.shape}")
    if pending and batch.shape[1:] != pending[0].shape[1:]:
      flush(np.concatenate(pending))
      pending, pending_count = [], 0
    pending.append(batch)
    pending_count += len(batch)
    while pending_count >= batch_size:
      joined = np.concatenate(pending)
      flush(joined[:batch_size])
      pending, pending_count = [joined[batch_size:]], pending_count - batch_size
  if pending_count:
    flush(np.concatenate(pending))
  if not out:
    return np.zeros((0, inception.FEATURE_DIM), np.float32)
  return np.concatenate([np.asarray(f) for f in out])


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Mean and covariance of features (float64, as pytorch-fid); `features` kept when KID needs them."""

  mu: np.ndarray
  sigma: np.ndarray
  count: int
  features: np.ndarray | None = None

  @classmethod
  def of(cls, features: np.ndarray, keep_features: bool = True) -> "Statistics":
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 2:
      raise DataError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}")
    f64 = features.astype(np.float64)
    return cls(np.mean(f64, axis=0), np.cov(f64, rowvar=False), len(features),
               features.astype(np.float32) if keep_features else None)

  def save(self, path) -> None:
    arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count)}
    if self.features is not None:
      arrays["features"] = self.features
    npz.write(path, arrays)  # complete or absent: a reused cache must never be a truncated file

  @classmethod
  def load(cls, path) -> "Statistics":
    arrays = npz.read(path, "statistics file")
    mu, sigma = arrays.get("mu"), arrays.get("sigma")
    if mu is None or sigma is None or mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
      raise DataError(f"statistics file {path} has no mu (d,) and sigma (d, d): not FID statistics")
    features = arrays.get("features")
    count = int(arrays["count"]) if "count" in arrays else (len(features) if features is not None else 0)
    return cls(mu.astype(np.float64), sigma.astype(np.float64), count, features)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(s1 + s2 - 2 sqrt(s1 s2)) in float64, with pytorch-fid's handling of singular products."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise DataError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                    f"{sigma2.shape}")
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    # A (near-)singular product, e.g. fewer samples than dimensions: regularise both covariances.
    offset = np.eye(len(sigma1)) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise DataError(f"FID: the matrix square root has an imaginary part of {np.max(np.abs(covmean.imag)):.3g} "
                      "(covariances far from positive semi-definite): use more images")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(a: Statistics, b: Statistics) -> float:
  """FID of two statistics: pytorch-fid's `frechet_distance`, or with few samples a faster exact route.

  With at most d samples on each side and their features at hand, sigma = F^T F for the centred, scaled
  features F (n, d), and Tr sqrt(s1 s2) is the nuclear norm of F1 F2^T (n1 x n2): an SVD of a small matrix
  instead of `sqrtm` of a singular d x d product (30-60 s for d = 2048 on 2 CPU cores). Same value up to
  rounding; tested against `frechet_distance`.
  """
  d = len(a.mu)
  if a.features is None or b.features is None or max(a.count, b.count) > d:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
  fa, fb = ((s.features.astype(np.float64) - s.mu) / np.sqrt(s.count - 1) for s in (a, b))
  tr_covmean = np.sum(np.linalg.svd(fa @ fb.T, compute_uv=False))
  diff = a.mu - b.mu
  return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of two equal-size samples under k(a, b) = (a.b / d + 1)^3 (torch-fidelity's `mmd2`)."""
  m, d = x.shape
  k_xx, k_yy, k_xy = ((p @ q.T / d + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
  # Within-sample sums drop the diagonal (k(x_i, x_i)): that is what makes the estimate unbiased.
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features_a: np.ndarray, features_b: np.ndarray, *, num_subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED, option: str = "subset_size") -> tuple[float, float]:
  """(mean, std) of `polynomial_mmd2` over random subsets; `option` names the setting in the error message."""
  features_a, features_b = np.float64(features_a), np.float64(features_b)
  n_a, n_b = len(features_a), len(features_b)
  if subset_size < 2 or num_subsets < 1:
    raise ConfigError(f"KID needs {option} >= 2 and at least one subset, got {subset_size} and {num_subsets}")
  if min(n_a, n_b) < subset_size:
    raise ConfigError(f"KID subset size {subset_size} is larger than the number of samples ({n_a} and {n_b}): "
                      f"lower {option} to at most {min(n_a, n_b)} or use more images")
  rng = np.random.RandomState(seed)
  mmds = np.zeros(num_subsets)
  for i in range(num_subsets):
    x = features_a[rng.choice(n_a, subset_size, replace=False)]
    y = features_b[rng.choice(n_b, subset_size, replace=False)]
    mmds[i] = polynomial_mmd2(x, y)
  return float(np.mean(mmds)), float(np.std(mmds))


def default_kid_subset_size(*counts: int) -> int:
  """KID's subset size when none was set: torch-fidelity's 1000, or the most the smaller image count allows
  (small sets, such as a few hundred personal photos, are normal in fine-tuning)."""
  size = min(KID_SUBSET_SIZE, *counts)
  if size < KID_SUBSET_SIZE:
    logging.info("KID: subsets of %d images (the default %d is more than the %d images there are); set the "
                 "subset size to choose another", size, KID_SUBSET_SIZE, min(counts))
  return size


def metrics(real: Statistics, fake: Statistics, *, with_kid: bool = True, num_subsets: int = KID_SUBSETS,
            subset_size: int | None = None, option: str = "subset_size") -> dict[str, float]:
  """{"fid": ..., "kid_mean": ..., "kid_std": ...} (KID only `with_kid`, which needs both sides' features).

  subset_size None: `default_kid_subset_size` of the two counts."""
  result = {"fid": fid(real, fake)}
  if with_kid:
    if real.features is None or fake.features is None:
      raise DataError("KID needs the features, and a statistics file without them (e.g. pytorch-fid's) has only "
                      "mu and sigma: compute from images, or skip KID")
    if subset_size is None:
      subset_size = default_kid_subset_size(len(real.features), len(fake.features))
    result["kid_mean"], result["kid_std"] = kid(real.features, fake.features, num_subsets=num_subsets,
                                                subset_size=subset_size, option=option)
  return result
